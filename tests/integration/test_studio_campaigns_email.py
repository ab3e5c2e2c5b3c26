"""Studio's Campaigns and Email pages through the real ASGI app on a real Postgres.

Changes made in Studio (create, pause, resume, cancel a campaign; send a test; add,
remove and import suppressions) are checked through the HTTP API and the audit log.
"""

# The fixtures come from test_studio (imported below), so test parameters shadow them.
# ruff: noqa: F811
from __future__ import annotations

import json
import re
import uuid

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.integration.test_studio import (  # noqa: F401 (fixtures)
    ADMIN,
    VIEWER,
    add_user,
    admin_key,
    api,
    api_factory,
    browser,
    engine,
    quickstart,
    scalar,
    seeded,
    sign_in,
    signed_in_admin,
    token_in,
)

from hogsend.core.tracking import strip_open_pixel
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import outbox_messages


def campaign_form(token: str, **changes: str) -> dict[str, str]:
    registry = quickstart().templates
    assert registry is not None
    form = {
        "csrf_token": token,
        "name": "Spring news",
        "audience": "list",
        "list": "product-updates",
        "bucket": "",
        "template": "newsletter",
        "subject": "",
        "send_at": "2099-03-01T09:30",
        "local_time": "10:00",
        "throttle": "5",
        "props": json.dumps(registry.preview_props("newsletter")),
    }
    return {**form, **changes}


async def test_a_campaign_created_in_studio_is_the_api_campaign_and_obeys_its_controls(
    browser: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await signed_in_admin(browser, engine)
    key = await admin_key(engine)
    new = await browser.get("/studio/campaigns/new")
    assert new.status_code == 200
    token = token_in(new.text)
    assert 'hx-get="/studio/campaigns/preview"' in new.text
    assert 'src="/studio/email/templates/' in new.text  # the preview frame, without JS too
    shown = await browser.get("/studio/campaigns/new", params={"template": "welcome"})
    assert 'title="Preview of welcome"' in shown.text

    bad = {
        "throttle": ("abc", "throttle: must be a number"),
        "local_time": ("25:00", "localTime"),
        "props": ("[1]", "props: must be a JSON object"),
        "bucket": ("nope", "Unknown bucket: nope"),
        "template": ("no-such", "unknown template"),
    }
    for field, (value, message) in bad.items():
        changes = {field: value}
        if field == "bucket":
            changes["audience"] = "bucket"
        refused = await browser.post("/studio/campaigns", data=campaign_form(token, **changes))
        assert refused.status_code == 422, field
        assert message in refused.text, (field, refused.text[:2000])
        assert 'value="Spring news"' in refused.text  # the form keeps what was typed
    forged = await browser.post("/studio/campaigns", data=campaign_form(""))
    assert forged.status_code == 403
    assert await scalar(engine, "SELECT count(*) FROM campaigns") == 0

    created = await browser.post("/studio/campaigns", data=campaign_form(token))
    assert created.status_code == 303, created.text
    campaign_id = created.headers["location"].split("/")[-1].split("?")[0]
    async with httpx.AsyncClient(
        transport=browser._transport, base_url="http://testserver"
    ) as api_client:
        got = (await api_client.get(f"/v1/campaigns/{campaign_id}", headers=key)).json()
        assert got["status"] == "scheduled"
        assert got["audienceKind"] == "list"
        assert got["audienceId"] == "product-updates"
        assert got["templateKey"] == "newsletter"
        assert got["localTime"] == "10:00"
        assert got["throttle"] == 5.0
        assert got["sendAt"].startswith("2099-03-01T09:30:00")
        actor = await scalar(
            engine,
            "SELECT actor FROM audit_logs WHERE action = 'campaigns.create' AND resource_id = :i",
            i=campaign_id,
        )
        assert actor == f"studio:{ADMIN[0]}"

        page = await browser.get(f"/studio/campaigns/{campaign_id}")
        assert page.status_code == 200
        assert "Spring news" in page.text
        assert f'hx-get="/studio/campaigns/{campaign_id}/progress"' in page.text  # live
        assert "Funnel" in page.text
        assert "<svg" in page.text
        progress = await browser.get(f"/studio/campaigns/{campaign_id}/progress")
        assert progress.status_code == 200
        assert "<nav" not in progress.text
        listing = await browser.get("/studio/campaigns")
        assert "Spring news" in listing.text
        assert "scheduled" in listing.text

        token = token_in(page.text)
        for action, status in (("pause", "paused"), ("resume", "queued"), ("cancel", "cancelled")):
            done = await browser.post(
                f"/studio/campaigns/{campaign_id}/{action}", data={"csrf_token": token}
            )
            assert done.status_code == 303, (action, done.text)
            got = (await api_client.get(f"/v1/campaigns/{campaign_id}", headers=key)).json()
            assert got["status"] == status
        again = await browser.post(
            f"/studio/campaigns/{campaign_id}/pause", data={"csrf_token": token}
        )
        assert again.status_code == 409
        assert (
            await browser.post(
                f"/studio/campaigns/{campaign_id}/explode", data={"csrf_token": token}
            )
        ).status_code == 404
    actions = await scalar(
        engine,
        "SELECT string_agg(action, ',' ORDER BY created_at) FROM audit_logs WHERE resource_id = :i",
        i=campaign_id,
    )
    assert actions == "campaigns.create,campaigns.pause,campaigns.resume,campaigns.cancel"
    moves = await scalar(
        engine,
        "SELECT string_agg(concat(detail->'before'->>'status', '>', detail->'after'->>'status'),"
        " ',' ORDER BY created_at) FROM audit_logs WHERE resource_id = :i"
        " AND action <> 'campaigns.create'",
        i=campaign_id,
    )
    assert moves == "scheduled>paused,paused>queued,queued>cancelled"
    ended = await browser.get(f"/studio/campaigns/{campaign_id}")
    assert '/progress"' not in ended.text  # nothing to poll once it is over


async def test_a_viewer_cannot_create_or_control_campaigns_or_touch_email(
    browser: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await add_user(engine, *VIEWER, "viewer")
    assert (await sign_in(browser, *VIEWER)).status_code == 303
    listing = await browser.get("/studio/campaigns")
    assert listing.status_code == 200
    assert "New campaign" not in listing.text
    token = token_in(listing.text)
    assert (await browser.get("/studio/campaigns/new")).status_code == 403
    template = await browser.get("/studio/email/templates/welcome")
    assert template.status_code == 200
    assert "Send a test" not in template.text
    suppressions = await browser.get("/studio/email/suppressions")
    assert "Import a CSV file" not in suppressions.text
    attempts = {
        "/studio/campaigns": campaign_form(token),
        f"/studio/campaigns/{uuid.uuid4()}/pause": {"csrf_token": token},
        "/studio/email/templates/welcome/send-test": {"csrf_token": token, "to": "a@example.com"},
        "/studio/email/suppressions": {"csrf_token": token, "email": "a@example.com"},
        "/studio/email/suppressions/remove": {"csrf_token": token, "email": "a@example.com"},
    }
    for path, data in attempts.items():
        refused = await browser.post(path, data=data)
        assert refused.status_code == 403, path
        assert "viewer" in refused.text
    imported = await browser.post(
        "/studio/email/suppressions/import",
        data={"csrf_token": token},
        files={"file": ("s.csv", b"a@example.com\n", "text/csv")},
    )
    assert imported.status_code == 403
    for table in ("campaigns", "email_suppressions", "email_sends", "audit_logs"):
        assert await scalar(engine, f"SELECT count(*) FROM {table}") == 0, table


async def test_template_gallery_previews_in_sandboxed_frames_and_send_test_lands_in_the_outbox(
    browser: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await signed_in_admin(browser, engine)
    gallery = await browser.get("/studio/email")
    assert gallery.status_code == 200
    keys = set(re.findall(r'href="/studio/email/templates/([a-z-]+)"', gallery.text))
    assert {"welcome", "newsletter", "nudge", "payment-failed"} <= keys
    assert gallery.text.count('sandbox=""') == len(keys)

    page = await browser.get("/studio/email/templates/welcome")
    assert page.status_code == 200
    assert 'width="640"' in page.text
    assert 'width="375"' in page.text
    assert "Text part" in page.text
    frame = await browser.get("/studio/email/templates/welcome/html")
    assert frame.status_code == 200
    policy = frame.headers["content-security-policy"]
    assert "style-src 'unsafe-inline'" in policy
    assert "script-src" not in policy
    assert "frame-ancestors 'self'" in policy
    assert frame.headers["x-frame-options"] == "SAMEORIGIN"
    assert "<html" in frame.text.lower()
    # every other page keeps the strict policy
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    assert (await browser.get("/studio/email/templates/nope")).status_code == 404

    token = token_in(page.text)
    blank = await browser.post(
        "/studio/email/templates/welcome/send-test", data={"csrf_token": token, "to": "x"}
    )
    assert blank.status_code == 400
    assert await scalar(engine, "SELECT count(*) FROM email_sends") == 0
    sent = await browser.post(
        "/studio/email/templates/welcome/send-test",
        data={"csrf_token": token, "to": "Tess@Example.com"},
    )
    assert sent.status_code == 303, sent.text
    assert "decision=" in sent.headers["location"]
    notice = await browser.get(sent.headers["location"])
    assert "Test send recorded" in notice.text
    stored = await scalar(
        engine, "SELECT subject FROM outbox_messages WHERE to_email = 'Tess@example.com'"
    )
    assert stored is not None
    assert stored.startswith("[Test] ")
    kind = await scalar(engine, "SELECT kind FROM email_sends")
    assert kind == "test"
    assert (
        await scalar(engine, "SELECT count(*) FROM audit_logs WHERE action = 'templates.send-test'")
        == 1
    )

    outbox = await browser.get("/studio/email/outbox")
    assert outbox.status_code == 200
    message_id = re.search(r'href="/studio/email/outbox/([0-9a-f-]{36})"', outbox.text)
    assert message_id is not None
    message = await browser.get(f"/studio/email/outbox/{message_id.group(1)}")
    assert message.status_code == 200
    for part in ("Headers", "Text", "HTML", "[Test] ", "decision <strong>"):
        assert part in message.text
    searched = await browser.get("/studio/email/outbox", params={"search": "nobody-here"})
    assert "The outbox is empty" in searched.text


async def test_the_outbox_viewer_strips_the_open_pixel(
    browser: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await signed_in_admin(browser, engine)
    pixel = "https://mail.example.com/t/o/abc.def.gif"
    html = (
        f'<html><body><p>Hello</p><img src="{pixel}" width="1" height="1" alt="" /></body></html>'
    )
    async with make_sessionmaker(engine)() as session:
        message_id = uuid.uuid4()
        await outbox_messages.add_many(
            session,
            [
                {
                    "id": message_id,
                    "to_email": "p@example.com",
                    "from_email": "x@example.com",
                    "subject": "Pixel",
                    "headers": {"X-Test": "1"},
                    "html": html,
                    "text": "Hello",
                }
            ],
        )
        await session.commit()
    frame = await browser.get(f"/studio/email/outbox/{message_id}/html")
    assert frame.status_code == 200
    assert "<p>Hello</p>" in frame.text
    assert "/t/o/" not in frame.text
    assert strip_open_pixel(html) == frame.text
    page = await browser.get(f"/studio/email/outbox/{message_id}")
    assert "X-Test" in page.text
    assert (await browser.get(f"/studio/email/outbox/{uuid.uuid4()}")).status_code == 404
    assert (await browser.get("/studio/email/outbox/nope/html")).status_code == 404


async def test_suppressions_add_remove_and_import_match_the_api(
    browser: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    await signed_in_admin(browser, engine)
    key = await admin_key(engine)
    page = await browser.get("/studio/email/suppressions")
    assert page.status_code == 200
    token = token_in(page.text)
    invalid = await browser.post(
        "/studio/email/suppressions", data={"csrf_token": token, "email": "not an address"}
    )
    assert invalid.status_code == 400
    added = await browser.post(
        "/studio/email/suppressions",
        data={"csrf_token": token, "email": "Blocked@Example.com", "note": "asked by phone"},
    )
    assert added.status_code == 303
    listed = await browser.get(added.headers["location"])
    assert "Blocked@example.com is suppressed" in listed.text
    assert "asked by phone" in listed.text
    async with httpx.AsyncClient(
        transport=browser._transport, base_url="http://testserver"
    ) as api_client:
        found = (
            await api_client.get(
                "/v1/admin/suppressions", params={"search": "blocked"}, headers=key
            )
        ).json()
        assert [s["reason"] for s in found["suppressions"]] == ["manual"]

        imported = await browser.post(
            "/studio/email/suppressions/import",
            data={"csrf_token": token},
            files={
                "file": (
                    "list.csv",
                    b"email,reason\none@example.com,import\ntwo@example.com\nbroken\n",
                    "text/csv",
                )
            },
        )
        assert imported.status_code == 303, imported.text
        report = await browser.get(imported.headers["location"])
        assert "2 addresses suppressed" in report.text
        assert "1 lines refused" in report.text
        total = (await api_client.get("/v1/admin/suppressions", headers=key)).json()
        assert {s["email"] for s in total["suppressions"]} == {
            "Blocked@example.com",
            "one@example.com",
            "two@example.com",
        }

        removed = await browser.post(
            "/studio/email/suppressions/remove",
            data={"csrf_token": token, "email": "blocked@example.com"},
        )
        assert removed.status_code == 303
        after = (
            await api_client.get(
                "/v1/admin/suppressions", params={"search": "blocked"}, headers=key
            )
        ).json()
        assert after["suppressions"] == []
    again = await browser.post(
        "/studio/email/suppressions/remove",
        data={"csrf_token": token, "email": "blocked@example.com"},
    )
    assert again.status_code == 404
    no_token = await browser.post(
        "/studio/email/suppressions/import",
        files={"file": ("list.csv", b"three@example.com\n", "text/csv")},
    )
    assert no_token.status_code == 403
    actions = await scalar(
        engine,
        "SELECT string_agg(action, ',' ORDER BY created_at) FROM audit_logs",
    )
    assert actions == "suppressions.create,suppressions.import,suppressions.delete"
    sides = await scalar(
        engine,
        "SELECT count(*) FROM audit_logs WHERE detail ? 'before' AND detail ? 'after'",
    )
    assert sides == 3
