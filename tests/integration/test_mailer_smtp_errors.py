"""SMTP failures as the decision log records them: real aiosmtpd, real Postgres.

Transient replies (421, 450) are retried with back-off and every wait is recorded in the
row; a refused login is final at once, with a message that names the settings to fix.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend
from hogsend.channels.email import SmtpProvider
from hogsend.channels.mailer import Mailer, SendRequest
from hogsend.settings import Settings
from mail_sink import SecuredServer, Sink, secured_sink

FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]


@pytest.fixture
def server() -> Iterator[SecuredServer]:
    """STARTTLS + AUTH, as a submission port (587) is set up."""
    yield from secured_sink(Sink(), trustme.CA(), "starttls")


@dataclass
class Sent:
    mailer: Mailer
    sleeps: list[float]
    provider: SmtpProvider


@pytest.fixture
async def make_mailer(
    tmp_path: Path, engine: AsyncEngine, database_url: str, server: SecuredServer
) -> AsyncIterator[Callable[..., Sent]]:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "receipt.html").write_text(
        "{#---\nsubject: Your receipt\ncategory: transactional\n---#}\n<p>Paid</p>\n"
    )
    app = Hogsend(templates=templates)
    settings = Settings(env="test", database_url=database_url, secret_key="k" * 40)
    providers: list[SmtpProvider] = []

    def make(password: str = "s3cret") -> Sent:
        provider = SmtpProvider(
            host="127.0.0.1",
            port=server.port,
            tls="starttls",
            username="ada",
            password=password,
            tls_context=server.client_tls,
            timeout=5,
        )
        providers.append(provider)
        sleeps: list[float] = []

        async def record_sleep(seconds: float) -> None:
            sleeps.append(seconds)

        return Sent(Mailer(app, settings, engine, provider, sleep=record_sleep), sleeps, provider)

    yield make
    for provider in providers:
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


async def one_row(fetch_all: FetchAll, send_id: uuid.UUID) -> dict[str, Any]:
    [row] = await fetch_all("SELECT * FROM email_sends WHERE id = :id", id=send_id)
    return row


@pytest.mark.parametrize(
    "reply", ["421 4.7.0 Try again later, closing connection", "450 4.2.1 Mailbox busy"]
)
async def test_a_transient_reply_is_retried_and_the_back_off_recorded(
    make_mailer: Callable[..., Sent],
    server: SecuredServer,
    engine: AsyncEngine,
    fetch_all: FetchAll,
    reply: str,
) -> None:
    sent = make_mailer()
    server.sink.script.append(reply)
    contact_id = await new_contact(engine, "ann@example.com")
    outcome = await sent.mailer.send(
        SendRequest(template="receipt", contact_id=contact_id, idempotency_key="rcpt-1")
    )
    assert outcome.decision == "sent"
    assert sent.sleeps == [1.0]
    assert len(server.sink.messages) == 1
    row = await one_row(fetch_all, outcome.send_id)
    assert (row["decision"], row["attempts"]) == ("sent", 2)
    code = int(reply[:3])
    assert row["decision_detail"]["retries"] == [
        {"status": code, "error": f"SMTP {code}: {reply[4:]}", "waitSeconds": 1.0}
    ]
    # The connection the server gave up on was replaced, not reused.
    assert sent.provider.connections_opened == 2


async def test_transient_replies_give_up_with_every_wait_recorded(
    make_mailer: Callable[..., Sent],
    server: SecuredServer,
    engine: AsyncEngine,
    fetch_all: FetchAll,
) -> None:
    sent = make_mailer()
    server.sink.script.extend(["450 4.2.1 Mailbox busy"] * 3)
    contact_id = await new_contact(engine, "bob@example.com")
    outcome = await sent.mailer.send(
        SendRequest(template="receipt", contact_id=contact_id, idempotency_key="rcpt-2")
    )
    assert outcome.decision == "provider_error"
    assert sent.sleeps == [1.0, 2.0]
    row = await one_row(fetch_all, outcome.send_id)
    assert (row["status"], row["attempts"]) == ("failed", 3)
    assert row["last_error"] == "SMTP 450: 4.2.1 Mailbox busy"
    detail = row["decision_detail"]
    assert (detail["transient"], detail["status"]) == (True, 450)
    assert [r["waitSeconds"] for r in detail["retries"]] == [1.0, 2.0]
    assert row["idempotency_key"] is None
    assert server.sink.messages == []


async def test_a_wrong_password_is_final_at_once(
    make_mailer: Callable[..., Sent],
    server: SecuredServer,
    engine: AsyncEngine,
    fetch_all: FetchAll,
) -> None:
    sent = make_mailer(password="wrong")
    contact_id = await new_contact(engine, "cy@example.com")
    outcome = await sent.mailer.send(
        SendRequest(template="receipt", contact_id=contact_id, idempotency_key="rcpt-3")
    )
    assert outcome.decision == "provider_error"
    assert sent.sleeps == []  # not retried: no wait helps a wrong password
    row = await one_row(fetch_all, outcome.send_id)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["last_error"] == (
        "SMTP 535: authentication as 'ada' refused (5.7.8 Authentication credentials invalid);"
        " check HOGSEND_SMTP_USERNAME and HOGSEND_SMTP_PASSWORD"
    )
    assert (row["decision_detail"]["transient"], row["decision_detail"]["status"]) == (False, 535)
    assert "retries" not in row["decision_detail"]
    assert server.sink.messages == []

    # Fixed credentials: the same key sends (a provider_error does not hold it).
    fixed = make_mailer()
    again = await fixed.mailer.send(
        SendRequest(template="receipt", contact_id=contact_id, idempotency_key="rcpt-3")
    )
    assert again.decision == "sent"
    assert len(server.sink.messages) == 1
