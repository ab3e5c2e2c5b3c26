"""SMTP failures as the decision log records them: real aiosmtpd, real Postgres.

Transient replies (421, 450) are retried with back-off and every wait is recorded in the
row; behind pacing, they pause every send to the server. A refused login is final at
once, with a message that names the settings to fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend
from hogsend.channels.email import PacedProvider, SmtpProvider
from hogsend.channels.mailer import Mailer, SendRequest
from hogsend.settings import Settings
from mail_sink import SecuredServer, Sink, running_sink, secured_sink

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


@dataclass
class Timed(Sink):
    """A sink noting when each transaction began (its MAIL) and when it refused one.

    It answers a message it accepts only after ``busy`` seconds, as a loaded server
    does, so that the lanes sending alongside a refused message are still at the server
    when the refusal arrives, and begin their next messages well after it.
    """

    busy: float = 0.25
    began: dict[str, float] = field(default_factory=dict)  # by X-Hogsend-Send-Id
    mails: list[float] = field(default_factory=list)
    refused: list[float] = field(default_factory=list)

    async def handle_MAIL(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        envelope.began = time.monotonic()
        self.mails.append(envelope.began)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        if self.script:
            self.refused.append(time.monotonic())
            return self.script.pop(0)
        reply = await super().handle_DATA(server, session, envelope)
        self.began[self.messages[-1]["X-Hogsend-Send-Id"]] = envelope.began
        await asyncio.sleep(self.busy)
        return reply


PAUSE = 0.6
"""The paced provider's first back-off in the test below (the default is 1 s)."""


async def test_a_throttling_server_pauses_every_send_and_the_rows_record_the_wait(
    tmp_path: Path, engine: AsyncEngine, database_url: str, fetch_all: FetchAll
) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "receipt.html").write_text(
        "{#---\nsubject: Your receipt\ncategory: transactional\n---#}\n<p>Paid</p>\n"
    )
    settings = Settings(env="test", database_url=database_url, secret_key="k" * 40)
    sleeps: list[float] = []

    async def record_sleep(seconds: float) -> None:
        sleeps.append(seconds)  # the mailer's own back-off: not slept, pacing's pause is

    def receipts(prefix: str, count: int) -> list[SendRequest]:
        return [
            SendRequest(
                template="receipt",
                to_email=f"{prefix}{i}@example.com",
                idempotency_key=f"{prefix}{i}",
            )
            for i in range(count)
        ]

    handler = Timed()
    with contextlib.contextmanager(running_sink)(handler) as (_, port):
        provider = PacedProvider(
            SmtpProvider(host="127.0.0.1", port=port, tls="none", pool_size=4),
            throttle_backoff=PAUSE,
        )
        mailer = Mailer(
            Hogsend(templates=templates), settings, engine, provider, sleep=record_sleep
        )
        try:
            # Four connections open, so the four lanes below start together.
            await mailer.send_batch(receipts("warm", 4), concurrency=4)
            handler.script.append("421 4.7.0 Too many connections, slow down")
            start = len(handler.messages)
            outcomes = await mailer.send_batch(receipts("p", 10), concurrency=4)
        finally:
            await provider.aclose()

    # Every message went, the refused one on the mailer's retry.
    assert [getattr(o, "decision", o) for o in outcomes] == ["sent"] * 10
    assert len(handler.messages) - start == 10
    assert sleeps == [1.0]
    [refused_at] = handler.refused
    # The other lanes were held: none began a message from shortly after the 421 (the
    # transactions begun alongside the refused one may reach the server a little after
    # it) until the pause was over.
    assert not [t for t in handler.mails if refused_at + 0.1 < t < refused_at + PAUSE - 0.02]

    rows = await fetch_all(
        "SELECT id, attempts, decision_detail FROM email_sends WHERE to_email LIKE 'p%'"
    )
    assert len(rows) == 10
    [retried] = [r for r in rows if "retries" in r["decision_detail"]]
    assert retried["attempts"] == 2
    assert retried["decision_detail"]["retries"] == [
        {
            "status": 421,
            "error": "SMTP 421: 4.7.0 Too many connections, slow down",
            "waitSeconds": 1.0,
        }
    ]
    # Each row records what its message waited: the retried one and the next message of
    # each other lane waited out the rest of the pause, and began after it.
    held = [r for r in rows if r["decision_detail"]["waitedSeconds"] > 0]
    assert retried in held
    assert len(held) >= 2  # 4 (three lanes' next messages) unless the machine stalls
    for row in held:
        assert handler.began[str(row["id"])] >= refused_at + PAUSE - 0.02
        assert row["decision_detail"]["waitedSeconds"] <= PAUSE + 0.05
    assert retried["decision_detail"]["waitedSeconds"] >= PAUSE - 0.1
