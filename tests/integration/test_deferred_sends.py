"""Deferred sends go out when their window opens: real Postgres, real aiosmtpd, virtual clock.

The mailer and the sweep share one virtual clock, so "the window opens" is a clock move,
never a real wait.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend, define_list
from hogsend.channels.email import OutgoingEmail, ProviderResult, SmtpProvider
from hogsend.channels.mailer import DEFERRED_KEY_PREFIX, Mailer, SendRequest
from hogsend.core.mailer_gates import SendWindow
from hogsend.runtime.deferred import MAX_ROUNDS, DeferredSweep
from hogsend.settings import Settings
from mail_sink import Sink

FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]

FRIDAY_NIGHT = datetime(2026, 3, 6, 20, 0, tzinfo=UTC)  # 21:00 in Paris
SATURDAY_OPEN = datetime(2026, 3, 7, 8, 0, tzinfo=UTC)  # 09:00 in Paris
OFFICE_HOURS = SendWindow(start=time(9), end=time(17))


class VirtualClock:
    """The instant the mailer and the sweep see; tests move it."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class FailingFirst:
    """The real SMTP provider, made to crash (not refuse) on its first ``failures`` calls.

    A crash that is not a ProviderError is what a bug or a lost process looks like to
    the mailer: it leaves the attempt ``queued`` and propagates.
    """

    name = "smtp"

    def __init__(self, inner: SmtpProvider, failures: int) -> None:
        self.inner = inner
        self.failures = failures

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("provider crashed")
        return await self.inner.send(message)

    async def aclose(self) -> None:
        await self.inner.aclose()


def make_app(tmp_path: Path) -> Hogsend:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "digest.html").write_text(
        "{#---\nsubject: Your digest, {{ name }}\ncategory: newsletter\n---#}\n"
        "<p>{{ count }} new items since {{ since }}</p>\n"
    )
    return Hogsend(
        lists=[define_list(id="newsletter", name="Newsletter", default_opt_in=True)],
        templates=templates,
    )


@dataclass
class Env:
    app: Hogsend
    settings: Settings
    engine: AsyncEngine
    provider: SmtpProvider
    sink: Sink
    clock: VirtualClock
    mailer: Mailer

    def sweep(self, **options: Any) -> DeferredSweep:
        return DeferredSweep(self.mailer, clock=self.clock, **options)


@pytest.fixture
async def env(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[Env]:
    handler, port = sink
    settings = Settings(env="test", database_url=database_url, secret_key="k" * 40)
    provider = SmtpProvider(host="127.0.0.1", port=port, tls="none")
    clock = VirtualClock(FRIDAY_NIGHT)
    app = make_app(tmp_path)
    mailer = Mailer(app, settings, engine, provider, clock=clock)
    yield Env(app, settings, engine, provider, handler, clock, mailer)
    await provider.aclose()


async def new_contact(engine: AsyncEngine, address: str, tz: str = "Europe/Paris") -> uuid.UUID:
    async with engine.begin() as conn:
        contact_id = (
            await conn.execute(
                text("INSERT INTO contacts (email, timezone) VALUES (:e, :tz) RETURNING id"),
                {"e": address, "tz": tz},
            )
        ).scalar_one()
    assert isinstance(contact_id, uuid.UUID)
    return contact_id


async def execute(engine: AsyncEngine, sql: str, **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


def digest(contact_id: uuid.UUID, **changes: Any) -> SendRequest:
    values: dict[str, Any] = {
        "template": "digest",
        "contact_id": contact_id,
        "kind": "campaign",
        "props": {"name": "Ann", "count": 3, "since": "Monday"},
        "send_window": OFFICE_HOURS,
        **changes,
    }
    return SendRequest(**values)


async def test_a_deferred_send_goes_out_when_its_window_opens(
    env: Env, fetch_all: FetchAll
) -> None:
    contact_id = await new_contact(env.engine, "ann@example.com")
    deferred = await env.mailer.send(digest(contact_id))
    assert deferred.decision == "deferred"
    assert deferred.deferred_until == SATURDAY_OPEN
    assert deferred.detail["resend"] == "sweep"
    [kept] = await fetch_all("SELECT * FROM deferred_sends")
    assert (kept["email_send_id"], kept["status"]) == (deferred.send_id, "pending")
    assert kept["due_at"] == SATURDAY_OPEN
    # An unkeyed send gets a key, so its resend is exactly-once.
    assert kept["request"]["idempotency_key"] == f"{DEFERRED_KEY_PREFIX}{deferred.send_id}"

    sweep = env.sweep()
    env.clock.now = SATURDAY_OPEN - timedelta(seconds=1)
    early = await sweep.run_once()
    assert (early.ran, early.resent) == (True, 0)
    assert env.sink.messages == []

    env.clock.now = SATURDAY_OPEN
    report = await sweep.run_once()
    assert dict(report.decisions) == {"sent": 1}
    [message] = env.sink.messages
    assert message["Subject"] == "Your digest, Ann"
    assert "3 new items since Monday" in message.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    rows = await fetch_all(
        "SELECT id, decision, idempotency_key FROM email_sends ORDER BY created_at"
    )
    assert [r["decision"] for r in rows] == ["deferred", "sent"]
    [kept] = await fetch_all("SELECT * FROM deferred_sends")
    assert kept["status"] == "done"
    assert (kept["resent_send_id"], kept["resent_decision"]) == (rows[1]["id"], "sent")
    assert rows[1]["idempotency_key"] == f"{DEFERRED_KEY_PREFIX}{deferred.send_id}"

    # Nothing is due any more: later rounds send nothing.
    env.clock.now += timedelta(hours=1)
    assert (await sweep.run_once()).resent == 0
    assert len(env.sink.messages) == 1


async def test_an_unsubscribe_in_between_wins(env: Env, fetch_all: FetchAll) -> None:
    contact_id = await new_contact(env.engine, "bea@example.com")
    deferred = await env.mailer.send(digest(contact_id, idempotency_key="digest:bea:w10"))
    assert deferred.decision == "deferred"
    await execute(
        env.engine,
        "INSERT INTO list_subscriptions (contact_id, list_id, subscribed)"
        " VALUES (:c, 'newsletter', false)",
        c=contact_id,
    )
    env.clock.now = SATURDAY_OPEN
    report = await env.sweep().run_once()
    assert dict(report.decisions) == {"unsubscribed": 1}
    assert env.sink.messages == []
    rows = await fetch_all("SELECT decision, decision_detail FROM email_sends ORDER BY created_at")
    assert [r["decision"] for r in rows] == ["deferred", "unsubscribed"]
    assert rows[1]["decision_detail"]["listId"] == "newsletter"
    [kept] = await fetch_all("SELECT status, resent_decision FROM deferred_sends")
    assert kept == {"status": "done", "resent_decision": "unsubscribed"}


async def test_a_suppression_in_between_wins_even_for_transactional_mail(
    env: Env, fetch_all: FetchAll
) -> None:
    contact_id = await new_contact(env.engine, "cy@example.com")
    request = digest(contact_id, kind="transactional", category="transactional")
    assert (await env.mailer.send(request)).decision == "deferred"
    await execute(
        env.engine,
        "INSERT INTO email_suppressions (email, suppressed, reason, suppressed_at)"
        " VALUES ('cy@example.com', true, 'complaint', now())",
    )
    env.clock.now = SATURDAY_OPEN
    assert dict((await env.sweep().run_once()).decisions) == {"suppressed": 1}
    assert env.sink.messages == []


async def test_a_sender_that_resends_itself_sends_once(env: Env, fetch_all: FetchAll) -> None:
    """The path of a durable journey: sleep until the window, call again with the same key."""
    contact_id = await new_contact(env.engine, "dan@example.com")
    request = digest(contact_id, idempotency_key="wf-42:3", resend_when_open=False)
    deferred = await env.mailer.send(request)
    assert deferred.decision == "deferred"
    assert deferred.detail["resend"] == "caller"
    assert await fetch_all("SELECT * FROM deferred_sends") == []

    env.clock.now = deferred.deferred_until or FRIDAY_NIGHT
    again = await env.mailer.send(request)
    assert again.decision == "sent"
    # A replay of the step after the send (the workflow recovered) is a duplicate.
    replay = await env.mailer.send(request)
    assert (replay.decision, replay.duplicate_of) == ("duplicate", again.send_id)
    assert len(env.sink.messages) == 1
    assert (await env.sweep().run_once()).resent == 0
    decisions = await fetch_all("SELECT decision FROM email_sends ORDER BY created_at")
    assert [r["decision"] for r in decisions] == ["deferred", "sent", "duplicate"]


async def test_sweep_and_caller_both_resending_send_once(env: Env, fetch_all: FetchAll) -> None:
    contact_id = await new_contact(env.engine, "eve@example.com")
    request = digest(contact_id, idempotency_key="wf-43:1")
    assert (await env.mailer.send(request)).decision == "deferred"
    env.clock.now = SATURDAY_OPEN
    assert (await env.mailer.send(request)).decision == "sent"
    report = await env.sweep().run_once()
    assert dict(report.decisions) == {"duplicate": 1}
    assert len(env.sink.messages) == 1


async def test_closed_again_at_resend_time_is_deferred_again(env: Env, fetch_all: FetchAll) -> None:
    contact_id = await new_contact(env.engine, "fay@example.com")
    assert (await env.mailer.send(digest(contact_id))).decision == "deferred"
    # The contact moved to Tokyo: at 09:00 Paris it is 17:00 there, after hours.
    await execute(
        env.engine, "UPDATE contacts SET timezone = 'Asia/Tokyo' WHERE id = :c", c=contact_id
    )
    env.clock.now = SATURDAY_OPEN
    sweep = env.sweep()
    assert dict((await sweep.run_once()).decisions) == {"deferred": 1}
    monday_tokyo = datetime(2026, 3, 8, 0, 0, tzinfo=UTC)  # Sunday 09:00 in Tokyo
    kept = await fetch_all(
        "SELECT status, due_at, resent_decision FROM deferred_sends ORDER BY created_at"
    )
    assert kept == [
        {"status": "done", "due_at": SATURDAY_OPEN, "resent_decision": "deferred"},
        {"status": "pending", "due_at": monday_tokyo, "resent_decision": None},
    ]
    env.clock.now = monday_tokyo
    assert dict((await sweep.run_once()).decisions) == {"sent": 1}
    assert len(env.sink.messages) == 1


async def test_one_sweep_at_a_time_and_no_duplicates(env: Env, fetch_all: FetchAll) -> None:
    for n in range(12):
        contact_id = await new_contact(env.engine, f"user{n}@example.com")
        assert (await env.mailer.send(digest(contact_id))).decision == "deferred"
    env.clock.now = SATURDAY_OPEN
    # While another worker holds the sweep, this one skips the round.
    async with env.engine.connect() as other:
        assert await other.scalar(
            text("SELECT pg_try_advisory_lock(hashtextextended('hogsend.deferred-sweep', 0))")
        )
        skipped = await env.sweep().run_once()
        assert (skipped.ran, skipped.resent) == (False, 0)
    # Two workers sweeping at once (small batches, so they overlap): each row resent once.
    reports = await asyncio.gather(
        env.sweep(batch_size=5).run_once(), env.sweep(batch_size=5).run_once()
    )
    assert sum(r.decisions["sent"] for r in reports) == 12
    assert sum(r.resent for r in reports) == 12
    assert len(env.sink.messages) == 12
    assert len({m["To"] for m in env.sink.messages}) == 12
    counts = await fetch_all(
        "SELECT decision, count(*) AS n FROM email_sends GROUP BY decision ORDER BY decision"
    )
    assert counts == [{"decision": "deferred", "n": 12}, {"decision": "sent", "n": 12}]


async def test_a_crashed_round_is_retried_then_given_up(env: Env, fetch_all: FetchAll) -> None:
    flaky = FailingFirst(env.provider, failures=1)
    mailer = Mailer(env.app, env.settings, env.engine, flaky, clock=env.clock)
    sweep = DeferredSweep(mailer, clock=env.clock)
    contact_id = await new_contact(env.engine, "gil@example.com")
    assert (await mailer.send(digest(contact_id))).decision == "deferred"

    env.clock.now = SATURDAY_OPEN
    first = await sweep.run_once()
    assert (first.resent, first.retried) == (0, 1)
    [kept] = await fetch_all("SELECT * FROM deferred_sends")
    assert kept["status"] == "pending"
    assert kept["attempts"] == 1
    assert kept["last_error"] == "RuntimeError: provider crashed"
    assert kept["due_at"] == SATURDAY_OPEN + timedelta(seconds=60)
    assert (await sweep.run_once()).resent == 0  # not due yet

    # The crashed attempt was left queued; the retry takes it over with the same key.
    env.clock.now = SATURDAY_OPEN + timedelta(seconds=60)
    assert dict((await sweep.run_once()).decisions) == {"sent": 1}
    rows = await fetch_all("SELECT decision, decision_detail FROM email_sends ORDER BY created_at")
    assert [r["decision"] for r in rows] == ["deferred", "provider_error", "sent"]
    assert rows[1]["decision_detail"]["interrupted"] is True
    assert len(env.sink.messages) == 1

    # A send that crashes every round is given up after MAX_ROUNDS, with its error.
    broken = FailingFirst(env.provider, failures=1_000)
    mailer = Mailer(env.app, env.settings, env.engine, broken, clock=env.clock)
    sweep = DeferredSweep(mailer, clock=env.clock)
    other = await new_contact(env.engine, "hal@example.com")
    env.clock.now = FRIDAY_NIGHT
    assert (await mailer.send(digest(other))).decision == "deferred"
    env.clock.now = SATURDAY_OPEN
    failed = 0
    for _ in range(MAX_ROUNDS):
        report = await sweep.run_once()
        failed += report.failed
        env.clock.now += timedelta(hours=1)  # past the back-off, inside the window
    assert failed == 1
    [given_up] = await fetch_all(
        "SELECT status, attempts, last_error FROM deferred_sends WHERE status <> 'done'"
    )
    assert given_up == {
        "status": "failed",
        "attempts": MAX_ROUNDS,
        "last_error": "RuntimeError: provider crashed",
    }


async def test_a_template_gone_since_fails_at_once(env: Env, fetch_all: FetchAll) -> None:
    contact_id = await new_contact(env.engine, "ivy@example.com")
    assert (await env.mailer.send(digest(contact_id))).decision == "deferred"
    await execute(
        env.engine,
        "UPDATE deferred_sends SET request = jsonb_set(request, '{template}', '\"gone\"')",
    )
    env.clock.now = SATURDAY_OPEN
    report = await env.sweep().run_once()
    assert (report.resent, report.failed) == (0, 1)
    [kept] = await fetch_all("SELECT status, attempts, last_error FROM deferred_sends")
    assert kept["status"] == "failed"
    assert kept["last_error"].startswith("TemplateNotFound")


@pytest.mark.timeout(120)
async def test_the_worker_runs_the_sweep(env: Env, database_url: str, fetch_all: FetchAll) -> None:
    from hogsend.runtime.worker import Worker

    # Deferred "yesterday" to today's window (whole days, UTC), so it is due at real now.
    now = datetime.now(UTC)
    today_only = SendWindow(
        start=time(0), end=time(0), weekdays=frozenset({now.weekday()}), timezone="UTC"
    )
    env.clock.now = now - timedelta(days=1)
    contact_id = await new_contact(env.engine, "jo@example.com")
    deferred = await env.mailer.send(digest(contact_id, send_window=today_only))
    assert deferred.decision == "deferred"
    assert deferred.deferred_until is not None
    assert deferred.deferred_until <= now

    # The worker's own mailer uses the default provider, the outbox.
    settings = Settings(
        env="test",
        database_url=database_url,
        worker_id="sweep-worker",
        secret_key="k" * 40,
        deferred_sweep_seconds=0.1,
        log_format="console",
    )
    worker = Worker(env.app, settings)
    await worker.start()
    try:
        assert worker.deferred is not None
        for _ in range(200):
            stored = await fetch_all("SELECT to_email, subject FROM outbox_messages")
            if stored:
                break
            await asyncio.sleep(0.05)
    finally:
        await worker.stop()
    assert stored == [{"to_email": "jo@example.com", "subject": "Your digest, Ann"}]
    [kept] = await fetch_all("SELECT status, resent_decision FROM deferred_sends")
    assert kept == {"status": "done", "resent_decision": "sent"}
