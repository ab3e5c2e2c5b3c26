"""Provider webhooks through the real ASGI app and Postgres, signed with the svix package.

Sends are made by the real mailer: through a live local stand-in for Resend's HTTP API
(uvicorn) or into a real aiosmtpd sink; the webhook then finds them by message id.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from svix.webhooks import Webhook

from hogsend import Hogsend
from hogsend.channels.email import ResendProvider, SmtpProvider
from hogsend.channels.email.message import EmailProvider
from hogsend.channels.mailer import SEND_ID_HEADER, Mailer, SendRequest
from hogsend.settings import Settings
from live_server import live_server
from mail_sink import Sink

FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]
RESEND_SECRET = "whsec_" + base64.b64encode(b"resend-webhook-signing-key-0001").decode()
GENERIC_SECRET = "whsec_" + base64.b64encode(b"generic-webhook-signing-key-001").decode()
WRONG_SECRET = "whsec_" + base64.b64encode(b"somebody-elses-signing-key-0001").decode()
TABLES = (
    "email_sends",
    "email_suppressions",
    "webhook_receipts",
    "user_events",
    "event_outbox",
    "contacts",
)


# --------------------------------------------------------------------------- fixtures


async def _resend_emails(request: Request) -> JSONResponse:
    await request.body()
    return JSONResponse({"id": str(uuid.uuid4())})


@pytest.fixture(scope="module")
def resend_url() -> Iterator[str]:
    """A live stand-in for Resend's POST /emails, answering with a fresh email id."""
    app = Starlette(routes=[Route("/emails", _resend_emails, methods=["POST"])])
    with live_server(app) as base:
        yield base


def settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "database_url": database_url,
        "secret_key": "s" * 40,
        "rate_limit_admin": 1_000_000,
        "resend_webhook_secret": RESEND_SECRET,
        "generic_webhook_secret": GENERIC_SECRET,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def mail_app(tmp_path: Path) -> Hogsend:
    templates = tmp_path / "templates"
    templates.mkdir(exist_ok=True)
    (templates / "receipt.html").write_text(
        "{#---\nsubject: Your receipt\ncategory: transactional\n---#}\n<p>Paid</p>\n"
    )
    return Hogsend(templates=templates)


@pytest.fixture
def build_api(engine: AsyncEngine, database_url: str) -> Callable[..., FastAPI]:
    from hogsend.api import create_api

    def build(**overrides: object) -> FastAPI:
        return create_api(Hogsend(), settings(database_url, **overrides), engine=engine)

    return build


@pytest.fixture
async def client(build_api: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    api = build_api()
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    await api.state.driver_pool.close()


def make_mailer(
    tmp_path: Path, engine: AsyncEngine, database_url: str, provider: EmailProvider
) -> Mailer:
    return Mailer(mail_app(tmp_path), settings(database_url), engine, provider)


@pytest.fixture
async def resend_mailer(
    tmp_path: Path, engine: AsyncEngine, database_url: str, resend_url: str
) -> AsyncIterator[Mailer]:
    provider = ResendProvider(api_key="re_test", base_url=resend_url)
    yield make_mailer(tmp_path, engine, database_url, provider)
    await provider.aclose()


@pytest.fixture
async def smtp_mailer(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[tuple[Mailer, Sink]]:
    handler, port = sink
    provider = SmtpProvider(host="127.0.0.1", port=port, tls="none", pool_size=2)
    yield make_mailer(tmp_path, engine, database_url, provider), handler
    await provider.aclose()


# --------------------------------------------------------------------------- helpers


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            for table in TABLES
        }


async def new_contact(engine: AsyncEngine, address: str) -> uuid.UUID:
    async with engine.begin() as conn:
        contact_id = (
            await conn.execute(
                text("INSERT INTO contacts (email) VALUES (:e) RETURNING id"), {"e": address}
            )
        ).scalar_one()
    assert isinstance(contact_id, uuid.UUID)
    return contact_id


def resend_body(event_type: str, message_id: str, to: str, **data: Any) -> dict[str, Any]:
    return {
        "type": event_type,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "data": {
            "email_id": message_id,
            "from": "Acme <hi@acme.test>",
            "to": [to],
            "subject": "Your receipt",
            "created_at": datetime.now(UTC).isoformat(),
            **data,
        },
    }


def signed(
    body: dict[str, Any] | bytes,
    *,
    msg_id: str | None = None,
    secret: str = RESEND_SECRET,
    at: datetime | None = None,
    prefix: str = "svix",
) -> tuple[bytes, dict[str, str]]:
    """The body and the headers Svix sends with it, signed by the svix package."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    at = at or datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=raw.decode())
    return raw, {
        f"{prefix}-id": msg_id,
        f"{prefix}-timestamp": str(int(at.timestamp())),
        f"{prefix}-signature": signature,
        "content-type": "application/json",
    }


async def post_resend(
    client: httpx.AsyncClient, body: dict[str, Any] | bytes, **signing: Any
) -> httpx.Response:
    raw, headers = signed(body, **signing)
    return await client.post("/v1/webhooks/resend", content=raw, headers=headers)


async def suppression(fetch_all: FetchAll, address: str) -> dict[str, Any] | None:
    rows = await fetch_all(
        "SELECT * FROM email_suppressions WHERE lower(email) = lower(:e)", e=address
    )
    return rows[0] if rows else None


# --------------------------------------------------------------------------- Resend


async def test_a_hard_bounce_updates_the_send_suppresses_and_emits_an_event(
    client: httpx.AsyncClient, resend_mailer: Mailer, engine: AsyncEngine, fetch_all: FetchAll
) -> None:
    contact_id = await new_contact(engine, "ann@example.com")
    sent = await resend_mailer.send(SendRequest(template="receipt", contact_id=contact_id))
    assert sent.decision == "sent"
    assert sent.provider_message_id is not None
    body = resend_body(
        "email.bounced",
        sent.provider_message_id,
        "Ann@Example.com",
        bounce={"type": "Permanent", "subType": "General", "message": "550 5.1.1 unknown user"},
    )

    response = await post_resend(client, body, msg_id="msg_hard_1")

    assert response.status_code == 200, response.text
    ack = response.json()
    assert ack["ok"] is True
    assert ack["duplicate"] is False
    assert ack["sendId"] == str(sent.send_id)
    assert ack["email"] == "Ann@example.com"
    assert ack["suppressed"] is True
    [send] = await fetch_all("SELECT * FROM email_sends WHERE id = :id", id=sent.send_id)
    assert send["status"] == "bounced"
    assert send["decision"] == "sent"
    assert send["bounced_at"] is not None
    assert send["bounce_type"] == "hard"
    assert send["bounce_reason"] == "550 5.1.1 unknown user"
    row = await suppression(fetch_all, "ann@example.com")
    assert row is not None
    assert (row["suppressed"], row["reason"], row["bounce_count"]) == (True, "hard_bounce", 1)
    assert row["last_bounce_type"] == "hard"
    [event] = await fetch_all(
        "SELECT * FROM user_events WHERE contact_id = :c AND event = 'email.bounced'",
        c=contact_id,
    )
    assert str(event["id"]) == ack["eventId"]
    assert event["idempotency_key"] == "webhook:resend:msg_hard_1"
    assert event["source"] == "webhook"
    assert event["properties"]["sendId"] == str(sent.send_id)
    assert event["properties"]["messageId"] == sent.provider_message_id
    assert event["properties"]["bounceType"] == "hard"
    assert event["properties"]["template"] == "receipt"
    outbox = await fetch_all("SELECT * FROM event_outbox WHERE event_id = :e", e=event["id"])
    assert len(outbox) == 1
    [receipt] = await fetch_all("SELECT * FROM webhook_receipts")
    assert (receipt["source"], receipt["delivery_id"]) == ("resend", "msg_hard_1")
    assert receipt["email_send_id"] == sent.send_id

    # the next attempt to this address is stopped by the suppressed gate
    again = await resend_mailer.send(SendRequest(template="receipt", contact_id=contact_id))
    assert again.decision == "suppressed"


async def test_a_replayed_delivery_changes_nothing(
    client: httpx.AsyncClient, resend_mailer: Mailer, engine: AsyncEngine, fetch_all: FetchAll
) -> None:
    contact_id = await new_contact(engine, "soft@example.com")
    sent = await resend_mailer.send(SendRequest(template="receipt", contact_id=contact_id))
    assert sent.provider_message_id is not None
    body = resend_body(
        "email.bounced",
        sent.provider_message_id,
        "soft@example.com",
        bounce={"type": "Transient", "subType": "MailboxFull", "message": "452 mailbox full"},
    )
    first = await post_resend(client, body, msg_id="msg_soft_1")
    assert first.status_code == 200
    assert first.json()["suppressed"] is False
    before = await counts(engine)
    row_before = await suppression(fetch_all, "soft@example.com")

    for _ in range(3):  # Svix retries re-sign with a new timestamp, same id
        replay = await post_resend(client, body, msg_id="msg_soft_1")
        assert replay.status_code == 200
        assert replay.json()["duplicate"] is True

    assert await counts(engine) == before
    assert await suppression(fetch_all, "soft@example.com") == row_before
    assert row_before is not None
    assert (row_before["bounce_count"], row_before["soft_bounce_streak"]) == (1, 1)


async def test_soft_bounces_suppress_at_the_threshold_and_a_delivery_resets_the_streak(
    build_api: Callable[..., FastAPI], fetch_all: FetchAll
) -> None:
    api = build_api(soft_bounce_threshold=2)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    address = "flaky@example.com"
    soft = {"type": "Transient", "subType": "General", "message": "421 try later"}
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

        async def report(event_type: str, **data: Any) -> dict[str, Any]:
            body = resend_body(event_type, f"re_{uuid.uuid4()}", address, **data)
            response = await post_resend(client, body)
            assert response.status_code == 200, response.text
            payload: dict[str, Any] = response.json()
            return payload

        assert (await report("email.bounced", bounce=soft))["suppressed"] is False
        assert (await report("email.delivered"))["suppressed"] is False
        row = await suppression(fetch_all, address)
        assert row is not None
        assert (row["bounce_count"], row["soft_bounce_streak"]) == (1, 0)
        assert (await report("email.bounced", bounce=soft))["suppressed"] is False
        assert (await report("email.bounced", bounce=soft))["suppressed"] is True
        row = await suppression(fetch_all, address)
        assert row is not None
        assert (row["suppressed"], row["reason"]) == (True, "soft_bounce")
        assert (row["bounce_count"], row["soft_bounce_streak"]) == (3, 2)
        # a message-specific refusal never counts toward the address
        other = "big@example.com"
        for _ in range(3):
            body = resend_body(
                "email.bounced",
                f"re_{uuid.uuid4()}",
                other,
                bounce={"type": "Transient", "subType": "MessageTooLarge"},
            )
            assert (await post_resend(client, body)).json()["suppressed"] is False
    await api.state.driver_pool.close()


async def test_a_complaint_for_an_address_without_any_row_suppresses_every_later_send(
    client: httpx.AsyncClient,
    smtp_mailer: tuple[Mailer, Sink],
    engine: AsyncEngine,
    fetch_all: FetchAll,
) -> None:
    """The GAP: the address has no contact, no preference row and no send on record."""
    mailer, sink = smtp_mailer
    before = await counts(engine)
    body = resend_body("email.complained", "re_never_seen_here", "Zed@Example.COM")

    response = await post_resend(client, body)

    assert response.status_code == 200
    ack = response.json()
    assert ack["sendId"] is None
    assert ack["eventId"] is None  # nobody to attribute it to: no contact is invented
    assert ack["suppressed"] is True
    after = await counts(engine)
    assert after["contacts"] == before["contacts"]
    assert after["user_events"] == before["user_events"]
    assert after["email_suppressions"] == before["email_suppressions"] + 1
    row = await suppression(fetch_all, "zed@example.com")
    assert row is not None
    assert (row["suppressed"], row["reason"], row["complaint_count"]) == (True, "complaint", 1)

    outcome = await mailer.send(SendRequest(template="receipt", to_email="zed@EXAMPLE.com"))

    assert outcome.decision == "suppressed"
    assert outcome.detail == {"gate": "suppressed", "reason": "complaint"}
    assert sink.messages == []
    # and a contact created later for that address is refused too
    contact_id = await new_contact(engine, "zed@example.com")
    later = await mailer.send(SendRequest(template="receipt", contact_id=contact_id))
    assert later.decision == "suppressed"
    assert sink.messages == []


async def test_a_report_for_an_unknown_message_finds_the_contact_by_address(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_all: FetchAll
) -> None:
    contact_id = await new_contact(engine, "bea@example.com")
    body = resend_body("email.complained", "re_sent_before_hogsend", "BEA@example.com")

    response = await post_resend(client, body, msg_id="msg_c1")

    assert response.status_code == 200
    [event] = await fetch_all("SELECT * FROM user_events WHERE event = 'email.complained'")
    assert event["contact_id"] == contact_id
    assert str(event["id"]) == response.json()["eventId"]
    assert "sendId" not in event["properties"]


async def test_statuses_only_move_forward(
    client: httpx.AsyncClient, resend_mailer: Mailer, engine: AsyncEngine, fetch_all: FetchAll
) -> None:
    contact_id = await new_contact(engine, "cal@example.com")
    sent = await resend_mailer.send(SendRequest(template="receipt", contact_id=contact_id))
    assert sent.provider_message_id is not None
    message_id = sent.provider_message_id

    async def status() -> dict[str, Any]:
        [row] = await fetch_all("SELECT * FROM email_sends WHERE id = :id", id=sent.send_id)
        return row

    await post_resend(client, resend_body("email.delivered", message_id, "cal@example.com"))
    delivered = await status()
    assert delivered["status"] == "delivered"
    assert delivered["delivered_at"] is not None
    await post_resend(client, resend_body("email.complained", message_id, "cal@example.com"))
    assert (await status())["status"] == "complained"
    late = resend_body("email.bounced", message_id, "cal@example.com", bounce={"type": "Permanent"})
    await post_resend(client, late)
    await post_resend(client, resend_body("email.delivered", message_id, "cal@example.com"))
    final = await status()
    assert final["status"] == "complained"
    assert final["delivered_at"] == delivered["delivered_at"]
    assert final["bounced_at"] is not None
    names = await fetch_all(
        "SELECT event FROM user_events WHERE contact_id = :c ORDER BY received_at", c=contact_id
    )
    assert [n["event"] for n in names] == [
        "email.sent",  # the mailer's own, with the outcome
        "email.delivered",
        "email.complained",
        "email.bounced",
        "email.delivered",
    ]


async def test_delivery_delayed_is_recorded_only(
    client: httpx.AsyncClient, resend_mailer: Mailer, engine: AsyncEngine, fetch_all: FetchAll
) -> None:
    contact_id = await new_contact(engine, "dee@example.com")
    sent = await resend_mailer.send(SendRequest(template="receipt", contact_id=contact_id))
    assert sent.provider_message_id is not None
    before = await counts(engine)
    body = resend_body("email.delivery_delayed", sent.provider_message_id, "dee@example.com")

    response = await post_resend(client, body)

    assert response.status_code == 200
    after = await counts(engine)
    assert after == {**before, "webhook_receipts": before["webhook_receipts"] + 1}
    [send] = await fetch_all("SELECT status FROM email_sends WHERE id = :id", id=sent.send_id)
    assert send["status"] == "sent"


@pytest.mark.parametrize("event_type", ["email.opened", "email.clicked", "email.sent"])
async def test_types_hogsend_tracks_itself_are_ignored(
    client: httpx.AsyncClient, engine: AsyncEngine, event_type: str
) -> None:
    before = await counts(engine)
    response = await post_resend(client, resend_body(event_type, "re_1", "eve@example.com"))
    assert response.status_code == 200
    assert response.json()["ignored"] is True
    assert await counts(engine) == before


# --------------------------------------------------------------------------- refusals


def _stale(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    return signed(body, at=datetime.now(UTC) - timedelta(minutes=6))


def _future(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    return signed(body, at=datetime.now(UTC) + timedelta(minutes=6))


def _wrong_secret(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    return signed(body, secret=WRONG_SECRET)


def _tampered(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    raw, headers = signed(body)
    return raw.replace(b"complained", b"delivered"), headers


def _without(header: str) -> Callable[[dict[str, Any]], tuple[bytes, dict[str, str]]]:
    def build(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
        raw, headers = signed(body)
        del headers[header]
        return raw, headers

    return build


def _other_id(body: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    raw, headers = signed(body)
    return raw, {**headers, "svix-id": "msg_somebody_else"}


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (_stale, "too old"),
        (_future, "in the future"),
        (_wrong_secret, "no webhook signature matches"),
        (_tampered, "no webhook signature matches"),
        (_other_id, "no webhook signature matches"),
        (_without("svix-id"), "missing webhook headers"),
        (_without("svix-timestamp"), "svix-timestamp"),
        (_without("svix-signature"), "svix-signature"),
    ],
)
async def test_unverifiable_deliveries_are_refused_and_write_nothing(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    forge: Callable[[dict[str, Any]], tuple[bytes, dict[str, str]]],
    reason: str,
) -> None:
    before = await counts(engine)
    raw, headers = forge(resend_body("email.complained", "re_x", "victim@example.com"))

    response = await client.post("/v1/webhooks/resend", content=raw, headers=headers)

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert reason in response.json()["detail"]
    assert await counts(engine) == before


async def test_no_secret_configured_refuses_everything(
    build_api: Callable[..., FastAPI], engine: AsyncEngine
) -> None:
    api = build_api(resend_webhook_secret=None, generic_webhook_secret=None)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    before = await counts(engine)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        raw, headers = signed(resend_body("email.complained", "re_x", "v@example.com"))
        resend = await client.post("/v1/webhooks/resend", content=raw, headers=headers)
        generic = await client.post("/v1/webhooks/generic", content=raw, headers=headers)
    assert resend.status_code == generic.status_code == 401
    assert "HOGSEND_RESEND_WEBHOOK_SECRET is not set" in resend.json()["detail"]
    assert "HOGSEND_GENERIC_WEBHOOK_SECRET is not set" in generic.json()["detail"]
    assert await counts(engine) == before
    await api.state.driver_pool.close()


@pytest.mark.parametrize(
    ("raw", "status", "field"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 422, "body"),
        (b'{"data": {}}', 422, "body.type"),
        (b'{"type": "email.bounced", "data": {"to": [7]}}', 422, "body.data.to[0]"),
    ],
)
async def test_signed_but_malformed_bodies_are_refused_and_write_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, raw: bytes, status: int, field: str | None
) -> None:
    before = await counts(engine)
    response = await post_resend(client, raw)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    if field is not None:
        assert [e["field"] for e in response.json()["errors"]] == [field]
    assert await counts(engine) == before


# --------------------------------------------------------------------------- generic


async def post_generic(client: httpx.AsyncClient, body: dict[str, Any] | bytes) -> httpx.Response:
    raw, headers = signed(body, secret=GENERIC_SECRET, prefix="webhook")
    return await client.post("/v1/webhooks/generic", content=raw, headers=headers)


async def test_generic_bounce_of_an_smtp_send_found_by_its_send_id_header(
    client: httpx.AsyncClient,
    smtp_mailer: tuple[Mailer, Sink],
    engine: AsyncEngine,
    fetch_all: FetchAll,
) -> None:
    mailer, sink = smtp_mailer
    contact_id = await new_contact(engine, "gil@example.com")
    sent = await mailer.send(SendRequest(template="receipt", contact_id=contact_id))
    assert sent.decision == "sent"
    [message] = sink.messages
    # what a bounce processor reads from the returned message's headers
    send_id = message[SEND_ID_HEADER]

    response = await post_generic(
        client,
        {
            "type": "email.bounced",
            "sendId": send_id,
            "bounceType": "hard",
            "reason": "550 no such user",
            "occurredAt": "2026-05-01T12:00:00Z",
        },
    )

    assert response.status_code == 200, response.text
    ack = response.json()
    assert ack["sendId"] == str(sent.send_id)
    assert ack["email"] == "gil@example.com"
    assert ack["suppressed"] is True
    [send] = await fetch_all("SELECT * FROM email_sends WHERE id = :id", id=sent.send_id)
    assert (send["status"], send["bounce_type"]) == ("bounced", "hard")
    assert send["bounced_at"] == datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    [event] = await fetch_all("SELECT * FROM user_events WHERE event = 'email.bounced'")
    assert event["contact_id"] == contact_id
    assert event["occurred_at"] == datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    again = await mailer.send(SendRequest(template="receipt", contact_id=contact_id))
    assert again.decision == "suppressed"
    assert len(sink.messages) == 1


async def test_generic_report_by_message_id_and_provider(
    client: httpx.AsyncClient, smtp_mailer: tuple[Mailer, Sink], fetch_all: FetchAll
) -> None:
    mailer, sink = smtp_mailer
    sent = await mailer.send(SendRequest(template="receipt", to_email="hal@example.com"))
    assert sent.provider_message_id == sink.messages[0]["Message-ID"]
    response = await post_generic(
        client,
        {"type": "email.delivered", "messageId": sent.provider_message_id, "provider": "smtp"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["sendId"] == str(sent.send_id)
    [send] = await fetch_all("SELECT status FROM email_sends WHERE id = :id", id=sent.send_id)
    assert send["status"] == "delivered"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "email.bounced", "email": "a@example.com"}, "body.bounceType"),
        ({"type": "email.complained"}, "body.email"),
        ({"type": "email.complained", "email": "not an address"}, "body.email"),
        ({"type": "email.exploded", "email": "a@example.com"}, "body.type"),
        ({"type": "email.complained", "email": "a@example.com", "extra": 1}, "body.extra"),
        ({"type": "email.complained", "sendId": "nope"}, "body.sendId"),
    ],
)
async def test_generic_reports_are_validated_and_write_nothing(
    client: httpx.AsyncClient, engine: AsyncEngine, body: dict[str, Any], field: str
) -> None:
    before = await counts(engine)
    response = await post_generic(client, body)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert await counts(engine) == before


async def test_generic_webhook_refuses_the_resend_secret(
    client: httpx.AsyncClient, engine: AsyncEngine
) -> None:
    before = await counts(engine)
    raw, headers = signed(
        {"type": "email.complained", "email": "a@example.com"}, secret=RESEND_SECRET
    )
    response = await client.post("/v1/webhooks/generic", content=raw, headers=headers)
    assert response.status_code == 401
    assert await counts(engine) == before


# --------------------------------------------------------------------------- concurrency


async def test_concurrent_redeliveries_and_concurrent_bounces_count_exactly(
    client: httpx.AsyncClient, engine: AsyncEngine, fetch_all: FetchAll
) -> None:
    """Svix may deliver the same id twice at once; distinct bounces may race for a new row."""
    soft = {"type": "Transient", "subType": "MailboxFull"}
    same = resend_body("email.bounced", "re_same", "race@example.com", bounce=soft)
    answers = await asyncio.gather(
        *(post_resend(client, same, msg_id="msg_race") for _ in range(6))
    )
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 5
    distinct = await asyncio.gather(
        *(
            post_resend(
                client, resend_body("email.bounced", f"re_{i}", "new@example.com", bounce=soft)
            )
            for i in range(5)
        )
    )
    assert all(a.status_code == 200 for a in distinct)
    race = await suppression(fetch_all, "race@example.com")
    new = await suppression(fetch_all, "new@example.com")
    assert race is not None
    assert new is not None
    assert (race["bounce_count"], race["suppressed"]) == (1, False)
    assert (new["bounce_count"], new["soft_bounce_streak"]) == (5, 5)
    assert (new["suppressed"], new["reason"]) == (True, "soft_bounce")
    assert sum(a.json()["suppressed"] for a in distinct) == 3  # the 3rd, 4th and 5th
