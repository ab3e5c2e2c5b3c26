"""Who a send is about: address-only sends find their contact, and ``email.sent`` events.

Real mailer, real aiosmtpd sink, real Postgres; the one-click unsubscribe goes through
the ASGI app the way a mailbox provider POSTs it.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend, define_list
from hogsend.api import create_api
from hogsend.channels.email import SmtpProvider
from hogsend.channels.mailer import Mailer, SendRequest
from hogsend.settings import Settings
from mail_sink import Sink, free_port

FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]
SECRET = "r" * 40
PUBLIC = "https://mail.example.test"


def make_app(tmp_path: Path) -> Hogsend:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "news.html").write_text(
        "{#---\nsubject: News\ncategory: newsletter\n---#}\n"
        '<p>News</p><p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
    )
    (templates / "receipt.html").write_text(
        "{#---\nsubject: Your receipt\ncategory: transactional\n---#}\n<p>Paid</p>\n"
    )
    return Hogsend(
        lists=[define_list(id="newsletter", name="Newsletter", default_opt_in=True)],
        templates=templates,
    )


@dataclass
class Env:
    mailer: Mailer
    sink: Sink
    engine: AsyncEngine
    client: httpx.AsyncClient
    app: Hogsend
    settings: Settings


@pytest.fixture
async def env(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[Env]:
    handler, port = sink
    app = make_app(tmp_path)
    settings = Settings(env="test", database_url=database_url, secret_key=SECRET, public_url=PUBLIC)
    provider = SmtpProvider(host="127.0.0.1", port=port, tls="none", pool_size=2)
    api: FastAPI = create_api(app, settings, engine=engine)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Env(Mailer(app, settings, engine, provider), handler, engine, client, app, settings)
    await api.state.driver_pool.close()
    await provider.aclose()


async def new_contact(engine: AsyncEngine, address: str) -> uuid.UUID:
    async with engine.begin() as conn:
        contact_id = (
            await conn.execute(
                text("INSERT INTO contacts (email) VALUES (:e) RETURNING id"), {"e": address}
            )
        ).scalar_one()
    assert isinstance(contact_id, uuid.UUID)
    return contact_id


async def one_click(env: Env) -> None:
    """POST the last message's List-Unsubscribe URL as a mailbox provider does."""
    header = env.sink.messages[-1]["List-Unsubscribe"]
    url = urlparse(header[1:-1])
    response = await env.client.post(
        f"{url.path}?{url.query}",
        content="List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200


async def sent_events(fetch_all: FetchAll) -> list[dict[str, Any]]:
    return await fetch_all(
        "SELECT e.*, o.event AS outbox_event FROM user_events e"
        " LEFT JOIN event_outbox o ON o.event_id = e.id"
        " WHERE e.event = 'email.sent' ORDER BY e.received_at"
    )


# --------------------------------------------------------------------------- address only


async def test_an_address_only_marketing_send_obeys_that_address_unsubscribe(
    env: Env, fetch_all: FetchAll
) -> None:
    ann = await new_contact(env.engine, "Ann.Lee@example.com")
    first = await env.mailer.send(SendRequest(template="news", contact_id=ann, kind="campaign"))
    assert first.decision == "sent"
    await one_click(env)

    # Another spelling of the same address, no contact id: the contact's choice applies.
    gated = await env.mailer.send(
        SendRequest(template="news", to_email="  Ann.Lee@EXAMPLE.COM ", kind="campaign")
    )
    assert gated.decision == "unsubscribed"
    assert gated.detail["listId"] == "newsletter"
    [stored] = await fetch_all("SELECT * FROM email_sends WHERE id = :id", id=gated.send_id)
    assert stored["contact_id"] == ann

    delivered = len(env.sink.messages)
    receipt = await env.mailer.send(
        SendRequest(template="receipt", to_email="ann.lee@example.com", kind="transactional")
    )
    assert receipt.decision == "sent"
    assert [m["Subject"] for m in env.sink.messages[delivered:]] == ["Your receipt"]


async def test_an_address_nobody_holds_is_sent_without_a_contact(
    env: Env, fetch_all: FetchAll
) -> None:
    await new_contact(env.engine, "someone@example.com")
    outcome = await env.mailer.send(
        SendRequest(template="news", to_email="nobody@example.com", kind="campaign")
    )
    assert outcome.decision == "sent"
    [stored] = await fetch_all("SELECT * FROM email_sends WHERE id = :id", id=outcome.send_id)
    assert stored["contact_id"] is None
    assert await sent_events(fetch_all) == []


async def test_a_deleted_contact_address_is_not_taken_for_a_live_one(
    env: Env, fetch_all: FetchAll
) -> None:
    gone = await new_contact(env.engine, "gone@example.com")
    async with env.engine.begin() as conn:
        await conn.execute(
            text("UPDATE contacts SET deleted_at = now() WHERE id = :c"), {"c": gone}
        )
    outcome = await env.mailer.send(
        SendRequest(template="news", to_email="gone@example.com", kind="campaign")
    )
    assert outcome.decision == "sent"
    [stored] = await fetch_all("SELECT * FROM email_sends WHERE id = :id", id=outcome.send_id)
    assert stored["contact_id"] is None


# --------------------------------------------------------------------------- email.sent


async def test_a_send_that_went_out_emits_one_email_sent_event(
    env: Env, fetch_all: FetchAll
) -> None:
    bob = await new_contact(env.engine, "bob@example.com")
    request = SendRequest(
        template="news",
        contact_id=bob,
        kind="journey",
        journey_id="onboarding",
        idempotency_key="onboarding:bob:1",
    )
    outcome = await env.mailer.send(request)
    assert outcome.decision == "sent"
    [event] = await sent_events(fetch_all)
    assert event["contact_id"] == bob
    assert event["idempotency_key"] == f"email.sent:{outcome.send_id}"
    assert event["properties"] == {
        "sendId": str(outcome.send_id),
        "templateKey": "news",
        "journeyId": "onboarding",
        "campaignId": None,
        "kind": "journey",
    }
    assert event["source"] == "mailer"
    # The dispatcher gets it like any event, so email legs of conditions re-evaluate.
    assert event["outbox_event"] == "email.sent"
    [sent_row] = await fetch_all("SELECT * FROM email_sends WHERE id = :id", id=outcome.send_id)
    assert sent_row["sent_at"] is not None

    # A duplicate attempt and a gated one emit nothing.
    assert (await env.mailer.send(request)).decision == "duplicate"
    await one_click(env)
    gated = await env.mailer.send(SendRequest(template="news", contact_id=bob, kind="campaign"))
    assert gated.decision == "unsubscribed"
    assert len(await sent_events(fetch_all)) == 1

    # A transactional one still goes, and emits its own.
    receipt = await env.mailer.send(SendRequest(template="receipt", contact_id=bob))
    assert receipt.decision == "sent"
    events = await sent_events(fetch_all)
    assert [e["properties"]["kind"] for e in events] == ["journey", "transactional"]


async def test_a_redirected_send_and_a_queued_one_emit_email_sent(
    env: Env, fetch_all: FetchAll
) -> None:
    cy = await new_contact(env.engine, "cy@example.com")
    settings = env.settings.model_copy(
        update={"test_mode": True, "test_mode_recipient": "qa@example.com"}
    )
    redirecting = Mailer(env.app, settings, env.engine, env.mailer.provider)
    outcome = await redirecting.send(SendRequest(template="news", contact_id=cy, kind="campaign"))
    assert outcome.decision == "redirected"
    queued = await env.mailer.queue(SendRequest(template="receipt", contact_id=cy))
    assert queued.decision == "queued"
    # The redirected one went out (to the test address); the queued one is not out yet.
    assert len(await sent_events(fetch_all)) == 1
    delivered = await env.mailer.deliver_queued(queued.send_id)
    assert delivered is not None
    assert delivered.decision == "sent"
    events = await sent_events(fetch_all)
    assert [e["properties"]["sendId"] for e in events] == [
        str(outcome.send_id),
        str(queued.send_id),
    ]


async def test_a_provider_error_emits_no_email_sent(
    env: Env, fetch_all: FetchAll, tmp_path: Path
) -> None:
    dan = await new_contact(env.engine, "dan@example.com")
    # Nothing listens on this port: the connection is refused, a transient error each time.
    dead = SmtpProvider(host="127.0.0.1", port=free_port(), tls="none", timeout=2)
    settings = env.settings.model_copy(update={"mailer_max_attempts": 1})
    failing = Mailer(env.app, settings, env.engine, dead)
    outcome = await failing.send(SendRequest(template="receipt", contact_id=dan))
    assert outcome.decision == "provider_error"
    assert await sent_events(fetch_all) == []
    await dead.aclose()
