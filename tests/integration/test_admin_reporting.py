"""The admin reporting API on rows made by the real paths.

Contacts and events come in over HTTP, a real worker (DBOS) runs the journey and the
campaign, messages reach an aiosmtpd sink, and opens, clicks, bounces, complaints and
unsubscribes go through the tracking routes, the signed provider webhook and the
RFC 8058 one-click route. The reports are then checked against what was done.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_emails_api import PUBLIC, settings_for
from test_journeys import _end_running_runs
from test_webhooks_api import GENERIC_SECRET, signed

from hogsend import Contact, Hogsend, JourneyContext, define_journey, define_list
from hogsend.api.app import create_api
from hogsend.channels.mailer import SEND_ID_HEADER
from hogsend.runtime.worker import Worker
from mail_sink import Sink

pytestmark = pytest.mark.timeout(240)

CHROME = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0 Safari/537.36"
)


@define_journey(id="rp-onboard", name="Onboard", trigger="signed.up", exit_on=["churned"])
async def onboard(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="welcome")
    await ctx.wait_for_event("activated", timeout=timedelta(seconds=90))


def write_templates(directory: Path) -> Path:
    """welcome (one link), news (newsletter, one link) and alert."""
    directory.mkdir()
    (directory / "welcome.html").write_text(
        "{#---\nsubject: Welcome\ncategory: onboarding\n---#}\n"
        '<p>Hi</p><a href="https://example.com/start">Start</a>\n'
    )
    (directory / "news.html").write_text(
        "{#---\nsubject: News\ncategory: newsletter\n---#}\n"
        '<p>News</p><a href="https://example.com/read">Read</a>\n'
    )
    (directory / "alert.html").write_text(
        "{#---\nsubject: Alert\ncategory: alerts\n---#}\n"
        "<p>{{ alert.summary }}</p><p>State: {{ alert.state }}</p>\n"
    )
    return directory


@dataclass
class Env:
    api: FastAPI
    client: httpx.AsyncClient
    sink: Sink
    engine: AsyncEngine
    worker: Worker
    key: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def get(self, path: str, **params: Any) -> Any:
        response = await self.client.get(path, params=params, headers=self.headers())
        assert response.status_code == 200, response.text
        return response.json()

    async def event(self, name: str, user: str, **properties: Any) -> None:
        response = await self.client.post(
            "/v1/events",
            json={
                "name": name,
                "userId": user,
                "email": f"{user}@example.com",
                "eventProperties": properties,
            },
            headers=self.headers(),
        )
        assert response.status_code == 202, response.text

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(text(sql), params)]

    async def until(self, check: Callable[[], Any], seconds: float = 60.0) -> None:
        for _ in range(int(seconds / 0.1)):
            if await check():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {check}")

    def message_to(self, address: str) -> EmailMessage:
        [message] = [m for m in self.sink.messages if str(m["To"]) == address]
        return message

    async def open(self, message: EmailMessage) -> None:
        pixel = re.findall(rf'src="{re.escape(PUBLIC)}(/t/o/[^"]+)"', html_of(message))[0]
        response = await self.client.get(pixel, headers={"User-Agent": CHROME})
        assert response.status_code == 200

    async def click(self, message: EmailMessage) -> None:
        link = re.findall(rf'href="{re.escape(PUBLIC)}(/t/c/[^"]+)"', html_of(message))[0]
        response = await self.client.get(link, headers={"User-Agent": CHROME})
        assert response.status_code in (302, 303, 307), response.text

    async def report(self, message: EmailMessage, kind: str, **extra: Any) -> None:
        raw, headers = signed(
            {"type": kind, "sendId": message[SEND_ID_HEADER], **extra},
            secret=GENERIC_SECRET,
            prefix="webhook",
        )
        response = await self.client.post("/v1/webhooks/generic", content=raw, headers=headers)
        assert response.status_code == 200, response.text

    async def unsubscribe(self, message: EmailMessage) -> None:
        url = str(message["List-Unsubscribe"]).strip("<>")
        response = await self.client.post(
            url.removeprefix(PUBLIC), data={"List-Unsubscribe": "One-Click"}
        )
        assert response.status_code == 200, response.text


def html_of(message: EmailMessage) -> str:
    part = message.get_body(("html",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


@pytest.fixture
async def env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    mint_key: Callable[..., Any],
) -> AsyncIterator[Env]:
    handler, port = sink
    app = Hogsend(
        journeys=[onboard],
        lists=[define_list(id="newsletter", name="Newsletter")],
        templates=write_templates(tmp_path / "templates"),
    )
    settings = settings_for(
        database_url,
        port,
        worker_id=f"reporting-{uuid.uuid4().hex[:6]}",
        dispatcher_poll_seconds=0.05,
        campaign_poll_seconds=0.1,
        generic_webhook_secret=GENERIC_SECRET,
        track_bot_click_seconds=0,
    )
    api = create_api(app, settings, engine=engine)
    worker = Worker(app, settings, engine=engine)
    key = await mint_key("ingest", "admin:read", "admin:write")
    await worker.start()
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Env(api, client, handler, engine, worker, key)
    finally:
        await _end_running_runs(engine, worker)
        await worker.stop()
        mailer = getattr(api.state, "mailer", None)
        if mailer is not None:
            await mailer.provider.aclose()
        await api.state.driver_pool.close()


async def test_journey_funnel_templates_deliverability_search_and_overview(env: Env) -> None:
    users = ["ann", "bob", "cyd", "dee"]
    for user in users:
        await env.event("signed.up", user, plan="pro" if user == "ann" else "free")

    async def all_waiting() -> bool:
        runs = await env.rows(
            "SELECT status FROM journey_states WHERE journey_id = 'rp-onboard'"
            " AND waiting_for_event = 'activated'"
        )
        return len(runs) == len(users) and len(env.sink.messages) == len(users)

    await env.until(all_waiting)
    ann, bob = env.message_to("ann@example.com"), env.message_to("bob@example.com")
    await env.open(ann)
    await env.click(ann)
    await env.open(bob)
    await env.report(env.message_to("dee@example.com"), "email.bounced", bounceType="hard")
    # ann completes, bob exits on an event, cyd is cancelled by an operator, dee waits.
    await env.event("activated", "ann")
    await env.event("churned", "bob")
    [cyd_run] = await env.rows(
        "SELECT s.id FROM journey_states s JOIN contacts c ON c.id = s.contact_id"
        " WHERE c.email = 'cyd@example.com'"
    )
    cancelled = await env.client.post(
        f"/v1/admin/journeys/runs/{cyd_run['id']}/cancel", headers=env.headers()
    )
    assert cancelled.status_code == 200, cancelled.text

    async def settled() -> bool:
        statuses = await env.rows(
            "SELECT status, count(*) AS n FROM journey_states GROUP BY status ORDER BY status"
        )
        return {r["status"]: r["n"] for r in statuses} == {
            "completed": 1,
            "exited": 2,
            "waiting": 1,
        }

    await env.until(settled)

    funnel = await env.get("/v1/admin/metrics/journeys/rp-onboard/funnel")
    assert {k: v for k, v in funnel.items() if k != "window"} == {
        "journeyId": "rp-onboard",
        "enrolled": 4,
        "sent": 4,
        "opened": 2,
        "clicked": 1,
        "completed": 1,
        "exited": 2,
        "failed": 0,
        "running": 1,
        "messages": 4,
    }
    # a window that ends before the runs began holds none of them
    early = await env.get("/v1/admin/metrics/journeys/rp-onboard/funnel", to="2000-01-01T00:00:00Z")
    assert (early["enrolled"], early["sent"]) == (0, 0)

    [welcome] = (await env.get("/v1/admin/metrics/templates"))["templates"]
    assert welcome["templateKey"] == "welcome"
    outcomes = welcome["outcomes"]
    assert (outcomes["sent"], outcomes["opened"], outcomes["clicked"]) == (4, 2, 1)
    assert outcomes["bounced"] == 1
    assert outcomes["rates"]["bounceRate"] == 0.25

    trend = await env.get("/v1/admin/metrics/deliverability", days=7)
    assert len(trend["points"]) == 7
    today = datetime.now(UTC).date().isoformat()
    assert trend["points"][-1]["date"] == today
    assert trend["points"][-1]["outcomes"]["sent"] == 4
    assert trend["points"][-1]["outcomes"]["bounced"] == 1
    assert sum(p["outcomes"]["sent"] for p in trend["points"][:-1]) == 0
    assert trend["totals"]["sent"] == 4

    found = await env.get("/v1/admin/event-search", q="SIGNED", property="plan=pro")
    assert [(e["name"], e["email"]) for e in found["events"]] == [("signed.up", "ann@example.com")]
    by_email = await env.get("/v1/admin/event-search", email="BOB@example.com", limit=1)
    assert by_email["events"][0]["email"] == "bob@example.com"
    assert by_email["hasMore"] is True  # signed.up, churned and the tracking events
    # LIKE wildcards are taken literally
    assert (await env.get("/v1/admin/event-search", q="%"))["events"] == []

    overview = await env.get("/v1/admin/metrics/overview")
    assert overview["totalContacts"] == 4
    assert overview["runningJourneyRuns"] == 1
    assert overview["emailsSent24h"] == overview["emailsSent7d"] == 4
    assert overview["emails30d"]["bounced"] == 1
    assert overview["workersAlive"] == 1


async def test_campaign_funnel_and_list(env: Env) -> None:
    readers = [f"reader{n}@example.com" for n in range(6)]
    for address in readers:
        response = await env.client.put(
            "/v1/contacts",
            json={"email": address, "lists": {"newsletter": True}},
            headers=env.headers(),
        )
        assert response.status_code == 200, response.text
    suppressed = await env.client.post(
        "/v1/admin/suppressions", json={"email": readers[5]}, headers=env.headers()
    )
    assert suppressed.status_code == 200, suppressed.text
    created = await env.client.post(
        "/v1/campaigns",
        json={"list": "newsletter", "template": "news", "name": "March news"},
        headers=env.headers(),
    )
    assert created.status_code == 202, created.text
    campaign_id = created.json()["campaignId"]

    async def sent() -> bool:
        campaign = await env.get(f"/v1/campaigns/{campaign_id}")
        return bool(campaign["status"] == "sent")

    await env.until(sent)
    assert len(env.sink.messages) == 5
    first, second, third, fourth, fifth = (env.message_to(a) for a in readers[:5])
    await env.report(first, "email.delivered")
    await env.open(first)
    await env.click(first)
    await env.open(second)
    await env.report(third, "email.bounced", bounceType="hard")
    await env.report(fourth, "email.complained")
    await env.unsubscribe(second)
    await env.unsubscribe(fifth)

    funnel = await env.get(f"/v1/admin/metrics/campaigns/{campaign_id}/funnel")
    assert funnel == {
        "campaignId": campaign_id,
        "name": "March news",
        "status": "sent",
        "templateKey": "news",
        "audience": 6,
        "pending": 0,
        "sent": 5,
        "delivered": 2,  # the reported delivery, and the open (a read message arrived)
        "opened": 2,
        "clicked": 1,
        "unsubscribed": 2,
        "bounced": 1,
        "complained": 1,
        "failed": 0,
        "skipped": {"suppressed": 1},
    }
    listing = await env.get("/v1/admin/metrics/campaigns")
    assert listing["total"] == 1
    [line] = listing["campaigns"]
    assert (line["id"], line["status"], line["sent"], line["skipped"]) == (
        campaign_id,
        "sent",
        5,
        1,
    )
    assert (line["opened"], line["clicked"]) == (2, 1)
    assert (await env.get("/v1/admin/metrics/campaigns", status="paused"))["campaigns"] == []

    [news] = (await env.get("/v1/admin/metrics/templates", template="news"))["templates"]
    assert news["gated"] == 1
    assert news["outcomes"]["complained"] == 1
    missing = await env.client.get(
        f"/v1/admin/metrics/campaigns/{uuid.uuid4()}/funnel", headers=env.headers()
    )
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/v1/admin/metrics/deliverability", {"days": "0"}, "query.days"),
        ("/v1/admin/metrics/deliverability", {"days": "400"}, "query.days"),
        ("/v1/admin/metrics/deliverability", {"day": "3"}, "query.day"),
        (
            "/v1/admin/metrics/templates",
            {"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            "query",
        ),
        ("/v1/admin/metrics/templates", {"from": "yesterday"}, "query.from"),
        ("/v1/admin/metrics/campaigns", {"status": "exploded"}, "query.status"),
        ("/v1/admin/metrics/campaigns/not-a-uuid/funnel", {}, "path.id"),
        ("/v1/admin/event-search", {"property": "no-equals-sign"}, "query.property"),
        ("/v1/admin/event-search", {"property": 'k="\\u0000"'}, "query.property"),
        ("/v1/admin/event-search", {"property": "k=a\x00b"}, "query.property"),
        ("/v1/admin/event-search", {"limit": "0"}, "query.limit"),
    ],
)
async def test_bad_report_queries_are_422_naming_the_field(
    client: httpx.AsyncClient, admin_key: str, path: str, params: dict[str, str], field: str
) -> None:
    response = await client.get(
        path, params=params, headers={"Authorization": f"Bearer {admin_key}"}
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    fields = [e["field"] for e in response.json().get("errors", [])]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields


async def test_unknown_journey_and_bucket_are_404(
    client: httpx.AsyncClient, admin_key: str
) -> None:
    headers = {"Authorization": f"Bearer {admin_key}"}
    for path in ("/v1/admin/metrics/journeys/nope/funnel", "/v1/admin/metrics/buckets/nope"):
        response = await client.get(path, headers=headers)
        assert response.status_code == 404, path
        assert response.headers["content-type"] == "application/problem+json"
