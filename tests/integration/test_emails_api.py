"""POST /v1/emails through the real ASGI app, real Postgres and a real aiosmtpd sink.

The request decides and hands off; a :class:`Courier` (the worker's loop, driven here
one round at a time) delivers through the SMTP provider to the sink.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend, define_list
from hogsend.api import create_api
from hogsend.channels.email import SmtpProvider
from hogsend.channels.mailer import Mailer, SendRequest
from hogsend.channels.templates import TemplateRegistry
from hogsend.runtime.courier import Courier
from hogsend.settings import Settings
from mail_sink import Sink

SECRET = "t" * 40
PUBLIC = "https://mail.example.test"


class ReceiptProps(BaseModel):
    amount: int
    currency: str = "EUR"


def make_app(directory: Path) -> Hogsend:
    directory.mkdir()
    (directory / "receipt.html").write_text(
        "{#---\nsubject: Your receipt\ncategory: transactional\n---#}\n"
        "<p>Paid: {{ amount }} {{ currency }}</p>\n"
    )
    (directory / "password-reset.html").write_text(
        "{#---\nsubject: Reset your password\n---#}\n"
        '<p><a href="{{ link }}">Reset</a> for {{ contact.email }}</p>\n'
    )
    (directory / "news.html").write_text(
        "{#---\nsubject: News\ncategory: newsletter\n---#}\n"
        '<p>News</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>\n'
    )
    (directory / "welcome.html").write_text(
        "{#---\nsubject: Welcome, {{ name }}\npreheader: Glad you came\n---#}\n"
        "<html><body><p>Hi {{ name }}</p></body></html>\n"
    )
    (directory / "welcome.txt").write_text("Hi {{ name }} (text)\n")
    registry = TemplateRegistry(
        directory,
        props={"receipt": ReceiptProps},
        examples={"welcome": {"name": "Ada"}},
    )
    return Hogsend(
        lists=[define_list(id="newsletter", name="Newsletter", default_opt_in=True)],
        templates=registry,
    )


def settings_for(database_url: str, port: int, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "env": "test",
        "database_url": database_url,
        "secret_key": SECRET,
        "public_url": PUBLIC,
        "email_provider": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_port": port,
        "smtp_tls": "none",
        "mailer_retry_base_seconds": 0.0,
        "rate_limit_admin": 1_000_000,
        "rate_limit_data_plane": 1_000_000,
        "rate_limit_emails": 1_000_000,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@dataclass
class Env:
    app: Hogsend
    api: FastAPI
    client: httpx.AsyncClient
    sink: Sink
    engine: AsyncEngine
    settings: Settings
    courier: Courier

    async def deliver(self) -> int:
        """One courier round: what a worker does when woken."""
        return await self.courier.run_once()


async def _env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    **overrides: object,
) -> AsyncIterator[Env]:
    handler, port = sink
    app = make_app(tmp_path / "templates")
    settings = settings_for(database_url, port, **overrides)
    api = create_api(app, settings, engine=engine)
    provider = SmtpProvider(host="127.0.0.1", port=port, tls="none", pool_size=4)
    courier = Courier(
        Mailer(app, settings, engine, provider), poll_seconds=0.05, concurrency=4, listen=False
    )
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Env(app, api, client, handler, engine, settings, courier)
    await provider.aclose()
    mailer = getattr(api.state, "mailer", None)
    if mailer is not None:
        await mailer.provider.aclose()
    await api.state.driver_pool.close()


@pytest.fixture
async def env(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[Env]:
    async for built in _env(tmp_path, engine, database_url, sink):
        yield built


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def new_contact(engine: AsyncEngine, address: str, **columns: object) -> uuid.UUID:
    names = ["email", *columns]
    async with engine.begin() as conn:
        contact_id = (
            await conn.execute(
                text(
                    f"INSERT INTO contacts ({', '.join(names)}) "
                    f"VALUES ({', '.join(':' + n for n in names)}) RETURNING id"
                ),
                {"email": address, **columns},
            )
        ).scalar_one()
    assert isinstance(contact_id, uuid.UUID)
    return contact_id


async def execute(engine: AsyncEngine, sql: str, **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def send_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT * FROM email_sends ORDER BY created_at, id"))
        return [dict(row._mapping) for row in rows]


async def suppress(engine: AsyncEngine, address: str, reason: str = "hard_bounce") -> None:
    await execute(
        engine,
        "INSERT INTO email_suppressions (email, suppressed, reason, suppressed_at)"
        " VALUES (:e, true, :r, now())",
        e=address,
        r=reason,
    )


# --------------------------------------------------------------------------- the happy path


async def test_a_send_is_decided_queued_then_delivered_by_the_courier(
    env: Env, ingest_key: str
) -> None:
    contact_id = await new_contact(env.engine, "ann@example.com", external_id="u-ann")
    response = await env.client.post(
        "/v1/emails",
        json={
            "userId": "u-ann",
            "template": "receipt",
            "props": {"amount": 42},
            "from": "Acme Billing <billing@acme.test>",
            "replyTo": ["help@acme.test", "Ops <ops@acme.test>"],
        },
        headers=bearer(ingest_key),
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued"
    assert body["decision"] == "queued"
    assert "duplicate" not in body
    [row] = await send_rows(env.engine)
    assert str(row["id"]) == body["emailSendId"]
    assert row["decision"] == "queued"
    assert row["kind"] == "transactional"
    assert row["contact_id"] == contact_id
    assert row["to_email"] == "ann@example.com"
    assert row["handoff"]["props"] == {"amount": 42}
    assert env.sink.messages == []  # the request did not wait for the provider

    assert await env.deliver() == 1
    [message] = env.sink.messages
    assert message["To"] == "ann@example.com"
    assert message["From"] == "Acme Billing <billing@acme.test>"
    assert message["Reply-To"] == "help@acme.test, Ops <ops@acme.test>"
    assert message["Subject"] == "Your receipt"
    assert message["X-Hogsend-Send-Id"] == body["emailSendId"]
    assert message["List-Unsubscribe"] is None  # transactional: no unsubscribe header
    part = message.get_body(("html",))
    assert part is not None
    assert "Paid: 42 EUR" in part.get_content()
    [row] = await send_rows(env.engine)
    assert row["decision"] == "sent"
    assert row["status"] == "sent"
    assert row["handoff"] is None
    assert await env.deliver() == 0  # nothing left


async def test_an_address_without_a_contact_gets_it_and_no_contact_is_created(
    env: Env, ingest_key: str, row_counts: Any
) -> None:
    before = await row_counts()
    response = await env.client.post(
        "/v1/emails",
        json={"to": "  New@Example.COM ", "template": "password-reset", "props": {"link": "x"}},
        headers=bearer(ingest_key),
    )
    assert response.status_code == 202, response.text
    assert await row_counts() == before  # no contact, event or alias row
    await env.deliver()
    [message] = env.sink.messages
    assert message["To"] == "New@example.com"
    [row] = await send_rows(env.engine)
    assert row["contact_id"] is None
    assert row["category"] == "transactional"


async def test_transactional_goes_out_to_a_globally_unsubscribed_contact(
    env: Env, ingest_key: str
) -> None:
    contact_id = await new_contact(env.engine, "gone@example.com", external_id="u-gone")
    await execute(
        env.engine,
        "INSERT INTO email_preferences (contact_id, unsubscribed_all, unsubscribed_at)"
        " VALUES (:c, true, now())",
        c=contact_id,
    )
    response = await env.client.post(
        "/v1/emails",
        json={"userId": "u-gone", "template": "receipt", "props": {"amount": 1}},
        headers=bearer(ingest_key),
    )
    assert response.json()["status"] == "queued"
    await env.deliver()
    assert [m["To"] for m in env.sink.messages] == ["gone@example.com"]


async def test_a_suppressed_address_is_refused_whatever_the_key(
    env: Env, ingest_key: str, mint_key: Any
) -> None:
    await suppress(env.engine, "Bounced@Example.com")
    full_admin = await mint_key("full-admin")
    for key, extra in ((ingest_key, {}), (full_admin, {"skipPreferenceCheck": True})):
        response = await env.client.post(
            "/v1/emails",
            json={"to": "bounced@example.com", "template": "receipt", "props": {"amount": 1}}
            | extra,
            headers=bearer(key),
        )
        assert response.status_code == 202
        assert response.json()["status"] == "suppressed"
        assert response.json()["decision"] == "suppressed"
    assert await env.deliver() == 0
    assert env.sink.messages == []
    rows = await send_rows(env.engine)
    assert [(r["decision"], r["status"], r["handoff"]) for r in rows] == [
        ("suppressed", "skipped", None)
    ] * 2


async def test_an_address_suppressed_after_queueing_is_not_sent(env: Env, ingest_key: str) -> None:
    response = await env.client.post(
        "/v1/emails",
        json={"to": "late@example.com", "template": "receipt", "props": {"amount": 1}},
        headers=bearer(ingest_key),
    )
    assert response.json()["status"] == "queued"
    await suppress(env.engine, "late@example.com", reason="complaint")
    assert await env.deliver() == 1
    assert env.sink.messages == []
    [row] = await send_rows(env.engine)
    assert row["decision"] == "suppressed"
    assert row["status"] == "skipped"
    assert row["decision_detail"] == {
        "gate": "suppressed",
        "reason": "complaint",
        "atDelivery": True,
    }
    assert row["handoff"] is None


async def test_a_contact_deleted_after_queueing_is_not_sent(env: Env, ingest_key: str) -> None:
    contact_id = await new_contact(env.engine, "del@example.com", external_id="u-del")
    response = await env.client.post(
        "/v1/emails",
        json={"userId": "u-del", "template": "receipt", "props": {"amount": 1}},
        headers=bearer(ingest_key),
    )
    assert response.json()["status"] == "queued"
    await execute(env.engine, "UPDATE contacts SET deleted_at = now() WHERE id = :c", c=contact_id)
    await env.deliver()
    assert env.sink.messages == []
    [row] = await send_rows(env.engine)
    assert row["decision"] == "skipped_deleted"


async def test_erasing_a_contact_drops_its_waiting_send_and_props(
    env: Env, ingest_key: str
) -> None:
    await new_contact(env.engine, "gone@example.com", external_id="u-gone")
    response = await env.client.post(
        "/v1/emails",
        json={"userId": "u-gone", "template": "receipt", "props": {"amount": 7}},
        headers=bearer(ingest_key),
    )
    assert response.json()["status"] == "queued"
    erased = await env.client.request(
        "DELETE",
        "/v1/contacts",
        json={"userId": "u-gone", "erase": True},
        headers=bearer(ingest_key),
    )
    assert erased.status_code < 300, erased.text
    [row] = await send_rows(env.engine)
    assert row["decision"] == "skipped_deleted"
    assert (row["handoff"], row["idempotency_key"], row["status"]) == (None, None, "skipped")
    await env.deliver()
    assert env.sink.messages == []


async def test_a_list_category_makes_it_a_marketing_send(
    env: Env, ingest_key: str, mint_key: Any
) -> None:
    out = await new_contact(env.engine, "out@example.com", external_id="u-out")
    await new_contact(env.engine, "in@example.com", external_id="u-in")
    await execute(
        env.engine,
        "INSERT INTO list_subscriptions (contact_id, list_id, subscribed)"
        " VALUES (:c, 'newsletter', false)",
        c=out,
    )
    refused = await env.client.post(
        "/v1/emails", json={"userId": "u-out", "template": "news"}, headers=bearer(ingest_key)
    )
    assert refused.json() | {"emailSendId": None} == {
        "emailSendId": None,
        "status": "unsubscribed",
        "decision": "unsubscribed",
    }
    accepted = await env.client.post(
        "/v1/emails", json={"userId": "u-in", "template": "news"}, headers=bearer(ingest_key)
    )
    assert accepted.json()["status"] == "queued"
    # skipPreferenceCheck (full-admin) makes it transactional: no list check, no header
    forced = await env.client.post(
        "/v1/emails",
        json={
            "userId": "u-out",
            "template": "receipt",
            "props": {"amount": 3},
            "category": "newsletter",
            "skipPreferenceCheck": True,
        },
        headers=bearer(await mint_key("full-admin")),
    )
    assert forced.json()["status"] == "queued"
    await env.deliver()
    by_to = {m["To"]: m for m in env.sink.messages}
    assert set(by_to) == {"in@example.com", "out@example.com"}
    assert by_to["in@example.com"]["List-Unsubscribe"].startswith(f"<{PUBLIC}/v1/email/one-click?")
    assert by_to["in@example.com"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert by_to["out@example.com"]["List-Unsubscribe"] is None
    kinds = {(r["to_email"], r["decision"]): r["kind"] for r in await send_rows(env.engine)}
    assert kinds == {
        ("out@example.com", "unsubscribed"): "campaign",
        ("in@example.com", "sent"): "campaign",
        ("out@example.com", "sent"): "transactional",
    }
    listing = await env.client.get(
        f"/v1/admin/contacts/{out}/sends", headers=bearer(await mint_key("admin:read"))
    )
    assert sorted((a["kind"], a["decision"]) for a in listing.json()["sends"]) == [
        ("campaign", "unsubscribed"),
        ("transactional", "sent"),
    ]


async def test_any_other_category_is_a_marketing_send_to_it_with_its_unsubscribes(
    env: Env, ingest_key: str
) -> None:
    registry = env.app.templates
    assert registry is not None
    # The quickstart's win-back in small: a marketing category no list registers.
    (registry.directory / "win-back.html").write_text(
        "{#---\nsubject: We miss you\ncategory: marketing\n---#}\n"
        "<html><body><p>Come back</p></body></html>\n"
    )
    registry.refresh()
    everything = await new_contact(env.engine, "all@example.com", external_id="u-all")
    category = await new_contact(env.engine, "cat@example.com", external_id="u-cat")
    await new_contact(env.engine, "stays@example.com", external_id="u-stays")
    await execute(
        env.engine,
        "INSERT INTO email_preferences (contact_id, unsubscribed_all, unsubscribed_at)"
        " VALUES (:c, true, now())",
        c=everything,
    )
    await execute(
        env.engine,
        "INSERT INTO list_subscriptions (contact_id, list_id, subscribed)"
        " VALUES (:c, 'marketing', false)",
        c=category,
    )

    async def post(user: str, **fields: Any) -> str:
        response = await env.client.post(
            "/v1/emails", json={"userId": user, **fields}, headers=bearer(ingest_key)
        )
        assert response.status_code == 202, response.text
        status = response.json()["status"]
        assert isinstance(status, str)
        return status

    # The template's category, then the body's on a template without one.
    assert await post("u-all", template="win-back") == "unsubscribed"
    assert await post("u-cat", template="win-back") == "unsubscribed"
    assert await post("u-cat", template="welcome", props={"name": "C"}, category="marketing") == (
        "unsubscribed"
    )
    # No category (or `transactional`): transactional, so the unsubscribes do not apply.
    assert await post("u-all", template="welcome", props={"name": "A"}) == "queued"
    assert await post("u-cat", template="welcome", props={"name": "B"}) == "queued"
    assert await post("u-stays", template="win-back") == "queued"
    await env.deliver()
    by_to: dict[str, list[Any]] = {}
    for message in env.sink.messages:
        by_to.setdefault(message["To"], []).append(message)
    assert sorted(by_to) == ["all@example.com", "cat@example.com", "stays@example.com"]
    for address in ("all@example.com", "cat@example.com"):
        [message] = by_to[address]
        assert message["List-Unsubscribe"] is None
        assert "/v1/email/preferences" not in message.get_body(("html",)).get_content()
    [marketing] = by_to["stays@example.com"]
    assert marketing["List-Unsubscribe"].startswith(f"<{PUBLIC}/v1/email/one-click?")
    assert marketing["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    # The template shows no link, so the standard footer carries the preference centre.
    assert f"{PUBLIC}/v1/email/preferences?token=" in marketing.get_body(("html",)).get_content()
    kinds = {
        (r["to_email"], r["template_key"], r["decision"]): r["kind"]
        for r in await send_rows(env.engine)
    }
    assert kinds == {
        ("all@example.com", "win-back", "unsubscribed"): "campaign",
        ("cat@example.com", "win-back", "unsubscribed"): "campaign",
        ("cat@example.com", "welcome", "unsubscribed"): "campaign",
        ("all@example.com", "welcome", "sent"): "transactional",
        ("cat@example.com", "welcome", "sent"): "transactional",
        ("stays@example.com", "win-back", "sent"): "campaign",
    }


# --------------------------------------------------------------------------- refusals


async def test_skip_preference_check_needs_a_full_admin_key(
    env: Env, ingest_key: str, mint_key: Any
) -> None:
    body = {
        "to": "a@example.com",
        "template": "receipt",
        "props": {"amount": 1},
        "skipPreferenceCheck": True,
    }
    for key in (ingest_key, await mint_key("ingest", "admin:write")):
        response = await env.client.post("/v1/emails", json=body, headers=bearer(key))
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
        assert "skipPreferenceCheck" in response.json()["detail"]
    assert await send_rows(env.engine) == []
    missing = await env.client.post("/v1/emails", json=body)
    assert missing.status_code == 401
    read_only = await env.client.post(
        "/v1/emails", json=body, headers=bearer(await mint_key("read", "admin:read"))
    )
    assert read_only.status_code == 403
    assert await send_rows(env.engine) == []


BAD_BODIES: list[tuple[dict[str, Any], int, str]] = [
    ({"to": "a@example.com"}, 422, "body.template"),
    ({"to": "a@example.com", "template": "nope"}, 422, "body.template"),
    ({"to": "a@example.com", "template": "reciept", "props": {"amount": 1}}, 422, "body.template"),
    ({"template": "receipt", "props": {"amount": 1}}, 422, "body"),
    ({"to": "  ", "userId": " ", "template": "receipt"}, 422, "body"),
    ({"to": "not-an-address", "template": "receipt"}, 422, "body.to"),
    (
        {"to": "a@example.com", "template": "receipt", "props": {"amount": "lots"}},
        422,
        "body.props.amount",
    ),
    ({"to": "a@example.com", "template": "receipt"}, 422, "body.props.amount"),
    ({"to": "a@example.com", "template": "password-reset"}, 422, "body.props"),
    (
        {"to": "a@example.com", "template": "password-reset", "props": {"contact": 1}},
        422,
        "body.props",
    ),
    (
        {
            "to": "a@example.com",
            "template": "receipt",
            "props": {"amount": 1},
            "from": "x@y.test\r\nBcc: victim@example.com",
        },
        422,
        "body.from",
    ),
    (
        {
            "to": "a@example.com",
            "template": "receipt",
            "props": {"amount": 1},
            "from": "a@x.test, b@x.test",
        },
        422,
        "body.from",
    ),
    (
        {
            "to": "a@example.com",
            "template": "receipt",
            "props": {"amount": 1},
            "subject": "Hi\nBcc: victim@example.com",
        },
        422,
        "body.subject",
    ),
    (
        {
            "to": "a@example.com",
            "template": "receipt",
            "props": {"amount": 1},
            "replyTo": ["ok@x.test", "nope"],
        },
        422,
        "body.replyTo[1]",
    ),
    (
        {
            "to": "a@example.com",
            "template": "receipt",
            "props": {"amount": 1},
            "category": "not a list!",
        },
        422,
        "body.category",
    ),
    (
        {"to": "a@example.com", "template": "receipt", "props": {"amount": 1}, "bcc": "x@y.test"},
        422,
        "body.bcc",
    ),
    (
        {
            "to": "a@example.com",
            "template": "receipt",
            "props": {"amount": 1},
            "idempotencyKey": "",
        },
        422,
        "body.idempotencyKey",
    ),
    ({"userId": "nobody", "template": "receipt", "props": {"amount": 1}}, 404, ""),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_BODIES)
async def test_bad_requests_are_refused_and_write_nothing(
    env: Env, ingest_key: str, row_counts: Any, body: dict[str, Any], status: int, field: str
) -> None:
    before = await row_counts()
    response = await env.client.post("/v1/emails", json=body, headers=bearer(ingest_key))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    if status == 422:
        assert field in [e["field"] for e in problem["errors"]], problem
    assert await row_counts() == before
    assert await send_rows(env.engine) == []
    assert await env.deliver() == 0


async def test_an_unknown_template_suggests_close_keys_without_server_paths(
    env: Env, ingest_key: str
) -> None:
    response = await env.client.post(
        "/v1/emails",
        json={"to": "a@example.com", "template": "reciept"},
        headers=bearer(ingest_key),
    )
    [error] = response.json()["errors"]
    assert "'receipt'" in error["message"]
    assert str(env.app.templates.directory) not in response.text  # type: ignore[union-attr]


# --------------------------------------------------------------------------- idempotency


async def test_a_repeated_key_answers_with_the_original_and_sends_once(
    env: Env, ingest_key: str
) -> None:
    body = {
        "to": "once@example.com",
        "template": "receipt",
        "props": {"amount": 9},
        "idempotencyKey": "body-key",
    }
    first = await env.client.post(
        "/v1/emails", json=body, headers=bearer(ingest_key) | {"Idempotency-Key": "order-1"}
    )
    again = await env.client.post(
        "/v1/emails", json=body, headers=bearer(ingest_key) | {"Idempotency-Key": "order-1"}
    )
    assert first.status_code == again.status_code == 202
    original = first.json()["emailSendId"]
    assert again.json() == {
        "emailSendId": original,
        "status": "queued",
        "decision": "queued",
        "duplicate": True,
    }
    await env.deliver()
    after = await env.client.post(
        "/v1/emails", json=body, headers=bearer(ingest_key) | {"Idempotency-Key": "order-1"}
    )
    assert after.json() == {
        "emailSendId": original,
        "status": "sent",
        "decision": "sent",
        "duplicate": True,
    }
    assert await env.deliver() == 0
    assert len(env.sink.messages) == 1
    rows = await send_rows(env.engine)
    # one decision row per attempt: the send and two duplicates pointing at it
    assert [r["decision"] for r in rows] == ["sent", "duplicate", "duplicate"]
    assert rows[0]["idempotency_key"] == "order-1"  # the header won over the body's key
    assert {str(r["duplicate_of_id"]) for r in rows[1:]} == {original}
    # the body's key is a different key: a new send
    body_only = await env.client.post("/v1/emails", json=body, headers=bearer(ingest_key))
    assert body_only.json()["emailSendId"] != original
    assert body_only.json()["status"] == "queued"


async def test_concurrent_requests_with_one_key_make_one_send(env: Env, ingest_key: str) -> None:
    body = {"to": "race@example.com", "template": "receipt", "props": {"amount": 5}}
    headers = bearer(ingest_key) | {"Idempotency-Key": "race-1"}
    responses = await asyncio.gather(
        *(env.client.post("/v1/emails", json=body, headers=headers) for _ in range(8))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["emailSendId"] for r in responses}) == 1
    assert sorted(bool(r.json().get("duplicate")) for r in responses) == [False] + [True] * 7
    # two workers racing over the hand-off deliver it once
    other = Courier(env.courier.mailer, poll_seconds=0.05, concurrency=4, listen=False)
    await asyncio.gather(env.deliver(), other.run_once())
    assert len(env.sink.messages) == 1
    decisions = sorted(r["decision"] for r in await send_rows(env.engine))
    assert decisions == ["duplicate"] * 7 + ["sent"]


async def test_a_provider_refusal_releases_the_key_for_a_retry(env: Env, ingest_key: str) -> None:
    body = {"to": "retry@example.com", "template": "receipt", "props": {"amount": 5}}
    headers = bearer(ingest_key) | {"Idempotency-Key": "retry-1"}
    env.sink.script.append("550 No such user")
    first = await env.client.post("/v1/emails", json=body, headers=headers)
    await env.deliver()
    [failed] = await send_rows(env.engine)
    assert failed["decision"] == "provider_error"
    assert failed["idempotency_key"] is None
    assert failed["handoff"] is None
    retry = await env.client.post("/v1/emails", json=body, headers=headers)
    assert retry.json()["status"] == "queued"
    assert retry.json()["emailSendId"] != first.json()["emailSendId"]
    await env.deliver()
    assert len(env.sink.messages) == 1


# --------------------------------------------------------------------------- caps and limits


async def test_the_frequency_cap_neither_applies_to_nor_counts_transactional_sends(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int], ingest_key: str
) -> None:
    async for env in _env(tmp_path, engine, database_url, sink, frequency_cap_count=1):
        contact_id = await new_contact(env.engine, "cap@example.com", external_id="u-cap")
        for amount in (1, 2):
            response = await env.client.post(
                "/v1/emails",
                json={"userId": "u-cap", "template": "receipt", "props": {"amount": amount}},
                headers=bearer(ingest_key),
            )
            assert response.json()["status"] == "queued"
        await env.deliver()
        mailer = env.courier.mailer
        news = SendRequest(template="news", contact_id=contact_id, kind="campaign")
        assert (await mailer.send(news)).decision == "sent"  # two receipts did not count
        assert (await mailer.send(news)).decision == "capped"  # the newsletter did
        response = await env.client.post(
            "/v1/emails",
            json={"userId": "u-cap", "template": "receipt", "props": {"amount": 3}},
            headers=bearer(ingest_key),
        )
        assert response.json()["status"] == "queued"  # and receipts are never capped


async def test_the_emails_route_has_its_own_rate_limit(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int], ingest_key: str
) -> None:
    async for env in _env(tmp_path, engine, database_url, sink, rate_limit_emails=2):
        body = {"to": "rl@example.com", "template": "receipt", "props": {"amount": 1}}
        statuses = []
        for _ in range(3):
            response = await env.client.post("/v1/emails", json=body, headers=bearer(ingest_key))
            statuses.append(response.status_code)
        assert statuses == [202, 202, 429]
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["RateLimit-Limit"] == "2"
        assert response.headers["RateLimit-Remaining"] == "0"
        assert int(response.headers["Retry-After"]) >= 1
        assert len(await send_rows(env.engine)) == 2  # the refused request wrote nothing
        # the data plane's budget is separate
        event = await env.client.post(
            "/v1/events", json={"name": "x", "userId": "rl"}, headers=bearer(ingest_key)
        )
        assert event.status_code == 202
        assert event.headers["RateLimit-Limit"] == "1000000"


async def test_test_mode_redirects_a_handed_off_send(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int], ingest_key: str
) -> None:
    async for env in _env(
        tmp_path, engine, database_url, sink, test_mode=True, test_mode_recipient="qa@acme.test"
    ):
        response = await env.client.post(
            "/v1/emails",
            json={"to": "real@example.com", "template": "receipt", "props": {"amount": 1}},
            headers=bearer(ingest_key),
        )
        assert response.json()["status"] == "queued"
        await env.deliver()
        [message] = env.sink.messages
        assert message["X-Test-Envelope-To"] == "qa@acme.test"
        assert message["X-Hogsend-Original-To"] == "real@example.com"
        [row] = await send_rows(env.engine)
        assert row["decision"] == "redirected"
        assert row["redirected_to"] == "qa@acme.test"
