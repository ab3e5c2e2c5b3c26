"""Admin template routes (list, preview, send-test) and the outbox viewer, through the API.

Real Postgres, the real ASGI app, a real aiosmtpd sink for test sends, and the real
outbox provider (the courier delivering ``POST /v1/emails`` into it) for the viewer.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from test_emails_api import Env, _env, bearer, execute, new_contact, send_rows, suppress

from hogsend.channels.email import OutboxProvider
from hogsend.channels.mailer import Mailer
from hogsend.runtime.courier import Courier
from mail_sink import Sink


@pytest.fixture
async def env(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[Env]:
    async for built in _env(tmp_path, engine, database_url, sink):
        yield built


@pytest.fixture
async def outbox_env(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[Env]:
    """The API and a courier on the outbox provider (what `hogsend dev` runs)."""
    async for built in _env(tmp_path, engine, database_url, sink, email_provider="outbox"):
        built.courier = Courier(
            Mailer(built.app, built.settings, engine, OutboxProvider(engine)),
            poll_seconds=0.05,
            concurrency=2,
            listen=False,
        )
        yield built


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        result = {}
        for table in ("email_sends", "outbox_messages", "audit_logs", "contacts"):
            result[table] = (await conn.exec_driver_sql(f"SELECT count(*) FROM {table}")).scalar()
        return result


def b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


# --------------------------------------------------------------------------- list + preview


async def test_list_templates(env: Env, admin_key: str) -> None:
    response = await env.client.get("/v1/admin/templates", headers=bearer(admin_key))
    assert response.status_code == 200
    templates = {t["key"]: t for t in response.json()["templates"]}
    assert list(templates) == ["news", "password-reset", "receipt", "welcome"]
    assert templates["receipt"]["defaultSubject"] == "Your receipt"
    assert templates["receipt"]["category"] == "transactional"
    assert templates["receipt"]["propsModel"].endswith("ReceiptProps")
    assert templates["receipt"]["propsSchema"]["required"] == ["amount"]
    assert templates["welcome"]["hasText"] is True
    assert templates["welcome"]["hasPreview"] is True
    assert templates["welcome"]["preheader"] == "Glad you came"
    assert templates["news"] | {"propsSchema": None} == {
        "key": "news",
        "defaultSubject": "News",
        "category": "newsletter",
        "preheader": None,
        "description": None,
        "format": "html",
        "hasText": False,
        "hasPreview": False,
        "propsModel": None,
        "propsSchema": None,
    }


async def test_preview_renders_without_writing(env: Env, admin_key: str) -> None:
    before = await counts(env.engine)
    examples = await env.client.get(
        "/v1/admin/templates/welcome/preview", headers=bearer(admin_key)
    )
    assert examples.status_code == 200
    body = examples.json()
    assert body["subject"] == "Welcome, Ada"
    assert body["preheader"] == "Glad you came"
    # No link in the template: the preview shows the standard footer a marketing send gets.
    footer = (
        "Manage your email preferences or unsubscribe: https://example.com/preferences?preview=1"
    )
    assert body["text"] == f"Hi Ada (text)\n\n{footer}\n"
    assert "Hi Ada" in body["html"]
    assert "https://example.com/preferences?preview=1" in body["html"]
    assert body["props"] == {"name": "Ada"}

    given = await env.client.get(
        "/v1/admin/templates/welcome/preview",
        params={"props": b64({"name": "Grace"}), "format": "html"},
        headers=bearer(admin_key),
    )
    assert given.headers["content-type"].startswith("text/html")
    assert "Hi Grace" in given.text
    text = await env.client.get(
        "/v1/admin/templates/welcome/preview",
        params={"props": base64.b64encode(b'{"name": "Linus"}').decode(), "format": "text"},
        headers=bearer(admin_key),
    )
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text == f"Hi Linus (text)\n\n{footer}\n"

    contact_id = await new_contact(env.engine, "real@example.com")
    before["contacts"] += 1
    for_contact = await env.client.get(
        "/v1/admin/templates/password-reset/preview",
        params={"props": b64({"link": "https://x.test/r"}), "contactId": str(contact_id)},
        headers=bearer(admin_key),
    )
    assert "for real@example.com" in for_contact.json()["html"]
    news = await env.client.get("/v1/admin/templates/news/preview", headers=bearer(admin_key))
    assert "https://example.com/unsubscribe?preview=1" in news.json()["html"]
    assert "preferences?preview=1" not in news.json()["html"]  # it shows a link: no footer
    receipt = await env.client.get(
        "/v1/admin/templates/receipt/preview",
        params={"props": b64({"amount": 1})},
        headers=bearer(admin_key),
    )
    assert receipt.status_code == 200, receipt.text
    assert "preferences?preview=1" not in receipt.json()["text"]  # transactional: none
    assert await counts(env.engine) == before


@pytest.mark.parametrize(
    ("params", "status", "field"),
    [
        ({"props": "%%%not-base64"}, 422, "query.props"),
        ({"props": b64([1, 2])}, 422, "query.props"),
        ({"props": b64({"amount": "lots"})}, 422, "query.props.amount"),
        ({"format": "pdf"}, 422, "query.format"),
        ({"surprise": "1"}, 422, "query.surprise"),
        ({"contactId": str(uuid.uuid4())}, 404, None),
    ],
)
async def test_preview_refusals(
    env: Env, admin_key: str, params: dict[str, str], status: int, field: str | None
) -> None:
    response = await env.client.get(
        "/v1/admin/templates/receipt/preview", params=params, headers=bearer(admin_key)
    )
    assert response.status_code == status, response.text
    if field is not None:
        assert field in [e["field"] for e in response.json()["errors"]]


async def test_preview_of_an_unknown_template_is_404(env: Env, admin_key: str) -> None:
    response = await env.client.get("/v1/admin/templates/recept/preview", headers=bearer(admin_key))
    assert response.status_code == 404
    assert "'receipt'" in response.json()["detail"]
    missing_prop = await env.client.get(
        "/v1/admin/templates/password-reset/preview", headers=bearer(admin_key)
    )
    assert missing_prop.status_code == 422
    assert "link" in missing_prop.json()["errors"][0]["message"]


# --------------------------------------------------------------------------- send-test


async def test_send_test_needs_full_admin_and_goes_out_at_once(
    env: Env, mint_key: Any, fetch_all: Any
) -> None:
    body = {"to": "qa@example.com", "props": {"name": "Tester"}}
    writer = await mint_key("admin:write", "ingest")
    refused = await env.client.post(
        "/v1/admin/templates/welcome/send-test", json=body, headers=bearer(writer)
    )
    assert refused.status_code == 403
    assert await send_rows(env.engine) == []

    full = await mint_key("full-admin", name="ops")
    response = await env.client.post(
        "/v1/admin/templates/welcome/send-test", json=body, headers=bearer(full)
    )
    assert response.status_code == 200, response.text
    out = response.json()
    assert out["status"] == "sent"
    assert out["decision"] == "sent"
    assert out["subject"] == "[Test] Welcome, Tester"
    [message] = env.sink.messages  # sent in the request: no worker involved
    assert message["To"] == "qa@example.com"
    assert message["Subject"] == "[Test] Welcome, Tester"
    [row] = await send_rows(env.engine)
    assert str(row["id"]) == out["emailSendId"]
    assert row["kind"] == "test"
    assert row["handoff"] is None
    [audit] = await fetch_all("SELECT * FROM audit_logs")
    assert audit["action"] == "templates.send-test"
    assert audit["actor"] == "ops"
    assert audit["resource_id"] == "welcome"
    assert audit["detail"]["sendId"] == out["emailSendId"]


async def test_send_test_respects_suppression_and_reports_provider_errors(
    env: Env, mint_key: Any
) -> None:
    full = await mint_key("full-admin")
    await suppress(env.engine, "blocked@example.com", reason="complaint")
    blocked = await env.client.post(
        "/v1/admin/templates/welcome/send-test",
        json={"to": "blocked@example.com"},
        headers=bearer(full),
    )
    assert blocked.status_code == 200
    assert blocked.json()["status"] == "skipped"
    assert blocked.json()["decision"] == "suppressed"

    env.sink.script.append("550 Mailbox unavailable")
    failed = await env.client.post(
        "/v1/admin/templates/welcome/send-test",
        json={"to": "gone@example.com"},
        headers=bearer(full),
    )
    assert failed.json()["status"] == "failed"
    assert failed.json()["decision"] == "provider_error"
    assert "550" in failed.json()["error"]
    assert env.sink.messages == []

    unsubscribed = await new_contact(env.engine, "unsub@example.com")
    await execute(
        env.engine,
        "INSERT INTO email_preferences (contact_id, unsubscribed_all) VALUES (:c, true)",
        c=unsubscribed,
    )
    # a test ignores unsubscribes; rendered for the contact, sent to the tester
    sent = await env.client.post(
        "/v1/admin/templates/password-reset/send-test",
        json={"to": "qa@example.com", "contactId": str(unsubscribed), "props": {"link": "x"}},
        headers=bearer(full),
    )
    assert sent.json()["status"] == "sent"
    [message] = env.sink.messages
    assert message["To"] == "qa@example.com"
    part = message.get_body(("html",))
    assert part is not None
    assert "for unsub@example.com" in part.get_content()


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/v1/admin/templates/nope/send-test", {"to": "a@example.com"}, 404),
        ("/v1/admin/templates/welcome/send-test", {"to": "not-an-address"}, 422),
        ("/v1/admin/templates/welcome/send-test", {}, 422),
        ("/v1/admin/templates/receipt/send-test", {"to": "a@example.com"}, 422),
        (
            "/v1/admin/templates/welcome/send-test",
            {"to": "a@example.com", "contactId": str(uuid.UUID(int=7))},
            404,
        ),
    ],
)
async def test_send_test_refusals_write_nothing(
    env: Env, mint_key: Any, path: str, body: dict[str, Any], status: int
) -> None:
    before = await counts(env.engine)
    response = await env.client.post(path, json=body, headers=bearer(await mint_key("full-admin")))
    assert response.status_code == status, response.text
    assert await counts(env.engine) == before
    assert env.sink.messages == []


# --------------------------------------------------------------------------- outbox viewer


async def test_outbox_lists_reads_and_clears(
    outbox_env: Env, ingest_key: str, admin_key: str, mint_key: Any, fetch_all: Any
) -> None:
    env = outbox_env
    sent = []
    for to, amount in (("a@example.com", 1), ("b@example.com", 2), ("A@example.com", 3)):
        response = await env.client.post(
            "/v1/emails",
            json={"to": to, "template": "receipt", "props": {"amount": amount}},
            headers=bearer(ingest_key),
        )
        sent.append(response.json()["emailSendId"])
    assert await env.deliver() == 3

    listing = await env.client.get("/v1/admin/outbox", headers=bearer(admin_key))
    assert listing.status_code == 200
    messages = listing.json()["messages"]
    assert len(messages) == 3
    assert set(messages[0]) == {"id", "emailSendId", "to", "from", "subject", "createdAt"}
    assert {m["emailSendId"] for m in messages} == set(sent)

    only_a = await env.client.get(
        "/v1/admin/outbox", params={"to": "A@EXAMPLE.com"}, headers=bearer(admin_key)
    )
    assert {m["to"] for m in only_a.json()["messages"]} == {"a@example.com", "A@example.com"}
    searched = await env.client.get(
        "/v1/admin/outbox", params={"search": "b@ex"}, headers=bearer(admin_key)
    )
    assert [m["to"] for m in searched.json()["messages"]] == ["b@example.com"]
    by_send = await env.client.get(
        "/v1/admin/outbox", params={"sendId": sent[1]}, headers=bearer(admin_key)
    )
    assert [m["emailSendId"] for m in by_send.json()["messages"]] == [sent[1]]

    seen, cursor = [], None
    while True:
        params = {"limit": "1"} | ({"cursor": cursor} if cursor else {})
        page = (
            await env.client.get("/v1/admin/outbox", params=params, headers=bearer(admin_key))
        ).json()
        seen += [m["id"] for m in page["messages"]]
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [m["id"] for m in messages]
    bad_cursor = await env.client.get(
        "/v1/admin/outbox", params={"cursor": "garbage"}, headers=bearer(admin_key)
    )
    assert bad_cursor.status_code == 422

    # The courier sends concurrently, so which of the three is newest is not fixed.
    (third,) = [m for m in messages if m["emailSendId"] == sent[2]]
    detail = await env.client.get(f"/v1/admin/outbox/{third['id']}", headers=bearer(admin_key))
    assert detail.status_code == 200
    whole = detail.json()
    assert whole["subject"] == "Your receipt"
    assert "Paid: 3 EUR" in whole["html"]
    assert "Paid: 3 EUR" in whole["text"]
    assert whole["headers"]["X-Hogsend-Send-Id"] == whole["emailSendId"] == sent[2]
    assert "Message-ID" in whole["headers"]
    missing = await env.client.get(f"/v1/admin/outbox/{uuid.uuid4()}", headers=bearer(admin_key))
    assert missing.status_code == 404

    refused = await env.client.delete("/v1/admin/outbox", headers=bearer(admin_key))
    assert refused.status_code == 403
    writer = await mint_key("admin:write", name="cleaner")
    cleared_b = await env.client.delete(
        "/v1/admin/outbox", params={"to": "b@example.com"}, headers=bearer(writer)
    )
    assert cleared_b.json() == {"deleted": 1}
    cleared = await env.client.delete("/v1/admin/outbox", headers=bearer(writer))
    assert cleared.json() == {"deleted": 2}
    after = await env.client.get("/v1/admin/outbox", headers=bearer(admin_key))
    assert after.json() == {"messages": [], "nextCursor": None}
    audits = await fetch_all(
        "SELECT action, actor, resource_id, detail FROM audit_logs ORDER BY created_at"
    )
    assert audits == [
        {
            "action": "outbox.clear",
            "actor": "cleaner",
            "resource_id": "b@example.com",
            "detail": {
                "to": "b@example.com",
                "deleted": 1,
                "before": {"matching": 1},
                "after": {"matching": 0},
            },
        },
        {
            "action": "outbox.clear",
            "actor": "cleaner",
            "resource_id": "all",
            "detail": {
                "to": None,
                "deleted": 2,
                "before": {"matching": 2},
                "after": {"matching": 0},
            },
        },
    ]
    # the decision log keeps the attempts
    assert [r["decision"] for r in await send_rows(env.engine)] == ["sent"] * 3
