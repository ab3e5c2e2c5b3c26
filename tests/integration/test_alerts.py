"""Alert rules: the admin API, and the evaluator notifying a real SMTP sink and a live
HTTP receiver (uvicorn), with firing, cooldown, resolve and failed deliveries.

The evaluator runs on a fixed clock moved by hand; the measured rows (sends, bounces,
pending events) are made by the real mailer, the signed provider webhook and the events
API.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import uvicorn
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from test_admin_reporting import write_templates
from test_emails_api import settings_for
from test_webhooks_api import GENERIC_SECRET, signed

from hogsend import Hogsend
from hogsend.api.app import create_api
from hogsend.channels.email import SmtpProvider
from hogsend.channels.mailer import SEND_ID_HEADER, Mailer, SendRequest
from hogsend.core.webhook_signatures import decode_secret, signed_headers, verify
from hogsend.db.engine import libpq_url
from hogsend.db.repos import alerts
from hogsend.runtime.alerts import AlertSweep
from hogsend.settings import Settings
from mail_sink import Sink, free_port

pytestmark = pytest.mark.timeout(120)

HOOK_SECRET = "whsec_" + base64.b64encode(b"alert-webhook-signing-key-00001").decode()


@dataclass
class Receiver:
    """A live HTTP endpoint keeping what it was sent; answers from ``script`` first."""

    url: str
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    script: list[int] = field(default_factory=list)
    # Called (on the server's thread) while a request is being answered.
    during: Callable[[], None] | None = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    port = free_port()
    got = Receiver(url=f"http://127.0.0.1:{port}/hook")

    async def hook(request: Request) -> Response:
        got.requests.append((dict(request.headers), await request.body()))
        if got.during is not None:
            got.during()
        return Response(status_code=got.script.pop(0) if got.script else 204)

    app = Starlette(routes=[Route("/hook", hook, methods=["POST"])])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield got
    server.should_exit = True
    thread.join(timeout=10)


@dataclass
class Env:
    api: FastAPI
    client: httpx.AsyncClient
    sink: Sink
    engine: AsyncEngine
    settings: Settings
    mailer: Mailer
    key: str
    now: list[datetime]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def sweep(self, http: httpx.AsyncClient) -> AlertSweep:
        return AlertSweep(
            self.engine, self.settings, mailer=self.mailer, clock=lambda: self.now[0], http=http
        )

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(text(sql), params)]

    async def create(self, **body: Any) -> dict[str, Any]:
        response = await self.client.post(
            "/v1/admin/alerts/rules", json=body, headers=self.headers()
        )
        assert response.status_code == 201, response.text
        created: dict[str, Any] = response.json()
        return created

    async def create_webhook(self, receiver: Receiver, **body: Any) -> dict[str, Any]:
        """A rule notifying ``receiver``, signed with HOOK_SECRET."""
        return await self.create(
            **body, channel="webhook", channelConfig={"url": receiver.url, "secret": HOOK_SECRET}
        )


@pytest.fixture
async def env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    mint_key: Any,
) -> AsyncIterator[Env]:
    handler, port = sink
    app = Hogsend(templates=write_templates(tmp_path / "templates"))
    settings = settings_for(database_url, port, generic_webhook_secret=GENERIC_SECRET)
    api = create_api(app, settings, engine=engine)
    provider = SmtpProvider(host="127.0.0.1", port=port, tls="none", pool_size=2)
    mailer = Mailer(app, settings, engine, provider)
    key = await mint_key("admin:read", "admin:write", name="operator")
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Env(api, client, handler, engine, settings, mailer, key, [datetime.now(UTC)])
    await provider.aclose()
    mailer_of_api = getattr(api.state, "mailer", None)
    if mailer_of_api is not None:
        await mailer_of_api.provider.aclose()
    await api.state.driver_pool.close()


async def test_rules_crud_is_validated_and_audited_with_before_and_after(env: Env) -> None:
    rule = await env.create(
        name="Bounces",
        type="bounce_rate_exceeded",
        threshold=0.05,
        channel="email",
        channelConfig={"to": "Ops@Example.com"},
    )
    assert rule["channelConfig"] == {"to": "ops@example.com", "template": "alert"}
    assert (rule["windowMinutes"], rule["minVolume"], rule["cooldownMinutes"]) == (60, 20, 60)
    assert rule["firing"] is False
    hook = await env.create(
        name="Lag",
        type="dispatcher_lag",
        threshold=120,
        channel="webhook",
        channelConfig={"url": "https://ops.example.com/hook", "secret": HOOK_SECRET},
    )
    assert hook["channelConfig"] == {"url": "https://ops.example.com/hook"}  # no secret

    patched = await env.client.patch(
        f"/v1/admin/alerts/rules/{rule['id']}",
        json={"threshold": 0.1, "enabled": False},
        headers=env.headers(),
    )
    assert patched.status_code == 200, patched.text
    assert (patched.json()["threshold"], patched.json()["enabled"]) == (0.1, False)
    assert patched.json()["windowMinutes"] == 60

    listed = await env.client.get("/v1/admin/alerts/rules", headers=env.headers())
    assert [r["name"] for r in listed.json()["rules"]] == ["Lag", "Bounces"]
    deleted = await env.client.delete(f"/v1/admin/alerts/rules/{hook['id']}", headers=env.headers())
    assert deleted.json() == {"deleted": True}
    gone = await env.client.get(f"/v1/admin/alerts/rules/{hook['id']}", headers=env.headers())
    assert gone.status_code == 404

    audit = await env.rows(
        "SELECT action, resource_id, actor, detail FROM audit_logs ORDER BY created_at, action"
    )
    assert [a["action"] for a in audit] == [
        "alert-rules.create",
        "alert-rules.create",
        "alert-rules.update",
        "alert-rules.delete",
    ]
    assert {a["actor"] for a in audit} == {"operator"}
    update = audit[2]
    assert update["resource_id"] == rule["id"]
    assert update["detail"]["before"]["threshold"] == 0.05
    assert update["detail"]["after"]["threshold"] == 0.1
    assert update["detail"]["after"]["enabled"] is False
    assert audit[3]["detail"]["after"] is None
    # the secret is never written to the audit trail
    assert HOOK_SECRET not in str(audit)


def _hook(config: dict[str, str]) -> dict[str, Any]:
    return {"channel": "webhook", "channelConfig": config}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channelConfig": {"to": "not-an-address"}}, "body.channelConfig.to"),
        ({"channelConfig": {"to": "a@x.test", "template": "nope"}}, "body.channelConfig.template"),
        ({"channelConfig": {"to": "a@x.test", "url": "https://x"}}, "body.channelConfig.url"),
        (_hook({"url": "ftp://x", "secret": HOOK_SECRET}), "body.channelConfig.url"),
        (_hook({"url": "https://x.test", "secret": "plain"}), "body.channelConfig.secret"),
        ({"type": "mood_swing"}, "body.type"),
        ({"threshold": -1}, "body.threshold"),
        ({"cooldownMinutes": 0}, "body.cooldownMinutes"),
        ({"channel": "slack"}, "body.channel"),
        ({"surprise": 1}, "body.surprise"),
    ],
)  # fmt: skip
async def test_bad_rules_are_422_naming_the_field_and_write_nothing(
    env: Env, body: dict[str, Any], field: str
) -> None:
    good = {
        "name": "x",
        "type": "bounce_rate_exceeded",
        "threshold": 0.1,
        "channel": "email",
        "channelConfig": {"to": "a@example.com"},
    }
    response = await env.client.post(
        "/v1/admin/alerts/rules", json=good | body, headers=env.headers()
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in response.json()["errors"]]
    assert await env.rows("SELECT id FROM alert_rules") == []
    assert await env.rows("SELECT id FROM audit_logs") == []


async def _bounce(env: Env, send_header: str) -> None:
    raw, headers = signed(
        {"type": "email.bounced", "sendId": send_header, "bounceType": "hard"},
        secret=GENERIC_SECRET,
        prefix="webhook",
    )
    response = await env.client.post("/v1/webhooks/generic", content=raw, headers=headers)
    assert response.status_code == 200, response.text


async def test_a_bounce_rate_rule_mails_once_per_cooldown_and_once_resolved(env: Env) -> None:
    rule = await env.create(
        name="Bounces",
        type="bounce_rate_exceeded",
        threshold=0.3,
        minVolume=4,
        windowMinutes=60,
        cooldownMinutes=5,
        channel="email",
        channelConfig={"to": "ops@example.com"},
    )
    http = httpx.AsyncClient()
    sweep = env.sweep(http)
    # three sends: too few for the rule's minimum volume, even all bounced
    for n in range(3):
        await env.mailer.send(SendRequest(template="welcome", to_email=f"u{n}@example.com"))
    for message in env.sink.messages[:2]:
        await _bounce(env, message[SEND_ID_HEADER])
    assert (await sweep.evaluate(uuid.UUID(rule["id"]))) == ("quiet", None)
    await env.mailer.send(SendRequest(template="welcome", to_email="u3@example.com"))
    customer_mail = len(env.sink.messages)

    def alerts_mailed() -> list[Any]:
        return [m for m in env.sink.messages if str(m["To"]) == "ops@example.com"]

    report = await sweep.run_once()  # 2 of 4 bounced: 50% > 30%
    assert (report.ran, report.outcomes) == (True, {"fire": 1})
    [first] = alerts_mailed()
    assert str(first["Subject"]) == "[hogsend] FIRING: Bounces"
    body = str(first.get_body(("html",)).get_content())  # type: ignore[union-attr]
    assert "Bounce rate 50.00% vs threshold 30.00% (4 sent" in body

    env.now[0] += timedelta(minutes=1)
    assert (await sweep.run_once()).outcomes == {"hold": 1}
    assert len(alerts_mailed()) == 1  # still firing, inside the cooldown: silent

    env.now[0] += timedelta(minutes=5)
    assert (await sweep.run_once()).outcomes == {"repeat": 1}
    assert len(alerts_mailed()) == 2

    env.now[0] += timedelta(hours=2)  # the sends are out of the window now
    assert (await sweep.run_once()).outcomes == {"resolve": 1}
    resolved = alerts_mailed()[-1]
    assert str(resolved["Subject"]) == "[hogsend] RESOLVED: Bounces"
    assert (await sweep.run_once()).outcomes == {"quiet": 1}
    assert len(alerts_mailed()) == 3
    assert len(env.sink.messages) == customer_mail + 3

    # alert mails went through the mailer: a decision row each, transactional
    decided = await env.rows(
        "SELECT decision, kind FROM email_sends WHERE to_email = 'ops@example.com'"
    )
    assert decided == [{"decision": "sent", "kind": "transactional"}] * 3
    history = await env.client.get(
        "/v1/admin/alerts/history", params={"ruleId": rule["id"]}, headers=env.headers()
    )
    states = [h["payload"]["state"] for h in history.json()["history"]]
    assert sorted(states) == ["firing", "firing", "resolved"]
    assert {h["deliveryStatus"] for h in history.json()["history"]} == {"sent"}
    after = (
        await env.client.get(f"/v1/admin/alerts/rules/{rule['id']}", headers=env.headers())
    ).json()
    assert (after["firing"], after["lastValue"]) == (False, 0.0)
    await http.aclose()


async def test_webhook_alerts_are_signed_retried_after_failure_and_not_repeated(
    env: Env, receiver: Receiver, ingest_key: str
) -> None:
    lag = await env.create_webhook(receiver, name="Lagging", type="dispatcher_lag", threshold=0)
    down = await env.create_webhook(receiver, name="No workers", type="worker_down", threshold=1)
    http = httpx.AsyncClient()
    sweep = env.sweep(http)
    # no worker runs here: the event waits in the outbox, so the dispatcher lags
    stored = await env.client.post(
        "/v1/events",
        json={"name": "x.happened", "userId": "u1"},
        headers={"Authorization": f"Bearer {ingest_key}"},
    )
    assert stored.status_code == 202
    await asyncio.sleep(0.05)
    receiver.script = [500, 500]  # both notifications of the first round fail
    report = await sweep.run_once()
    assert report.outcomes == {"fire": 2}
    assert report.failed == 2
    assert len(receiver.requests) == 2
    failed = await env.rows("SELECT delivery_status, error FROM alert_history")
    assert {(f["delivery_status"], f["error"]) for f in failed} == {
        ("failed", "webhook answered HTTP 500")
    }
    # not heard, so not firing: the next round fires again, and gets through
    report = await sweep.run_once()
    assert report.outcomes == {"fire": 2}
    assert report.failed == 0
    assert len(receiver.requests) == 4
    for headers, body in receiver.requests[2:]:
        delivery_id = verify(
            decode_secret(HOOK_SECRET), signed_headers(headers), body, now=datetime.now(UTC)
        )
        payload = json.loads(body)
        assert payload["id"] == delivery_id
        assert payload["state"] == "firing"
    types = sorted(json.loads(b)["rule"]["type"] for _, b in receiver.requests[2:])
    assert types == ["dispatcher_lag", "worker_down"]
    assert (await sweep.run_once()).outcomes == {"hold": 2}
    assert len(receiver.requests) == 4
    for rule in (lag, down):
        shown = (
            await env.client.get(f"/v1/admin/alerts/rules/{rule['id']}", headers=env.headers())
        ).json()
        assert shown["firing"] is True
    await http.aclose()


async def test_the_rule_is_not_locked_while_its_webhook_is_called(
    env: Env, receiver: Receiver, database_url: str
) -> None:
    rule = await env.create_webhook(receiver, name="No workers", type="worker_down", threshold=1)
    seen: list[str] = []

    def try_to_lock_the_rule() -> None:
        # What an operator's edit of the rule would need, while the webhook is answered.
        with psycopg.connect(libpq_url(database_url)) as conn:
            try:
                conn.execute(
                    "SELECT id FROM alert_rules WHERE id = %s FOR UPDATE NOWAIT", (rule["id"],)
                )
                seen.append("free")
            except psycopg.errors.LockNotAvailable:
                seen.append("locked")

    receiver.during = try_to_lock_the_rule
    http = httpx.AsyncClient()
    assert (await env.sweep(http).run_once()).outcomes == {"fire": 1}
    await http.aclose()
    assert seen == ["free"]
    history = await env.rows("SELECT delivery_status FROM alert_history")
    assert [h["delivery_status"] for h in history] == ["sent"]
    shown = await env.client.get(f"/v1/admin/alerts/rules/{rule['id']}", headers=env.headers())
    assert shown.json()["firing"] is True


async def test_one_evaluator_at_a_time(env: Env) -> None:
    await env.create(
        name="No workers",
        type="worker_down",
        threshold=1,
        channel="email",
        channelConfig={"to": "ops@example.com"},
    )
    http = httpx.AsyncClient()
    async with env.engine.connect() as other:
        await other.execute(text("SELECT pg_advisory_lock(:k)"), {"k": alerts.SWEEP_LOCK})
        skipped = await env.sweep(http).run_once()
        await other.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": alerts.SWEEP_LOCK})
    assert skipped.ran is False
    assert env.sink.messages == []
    assert (await env.sweep(http).run_once()).outcomes == {"fire": 1}
    assert len(env.sink.messages) == 1
    await http.aclose()
