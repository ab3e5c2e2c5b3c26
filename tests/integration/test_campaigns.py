"""Broadcast campaigns end to end: the API, a real worker (DBOS), real Postgres, an SMTP sink.

Each test creates a campaign over HTTP, lets an in-process worker run it, and counts what
reached the aiosmtpd sink and what the campaign reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_emails_api import Env, _env, bearer, new_contact

from hogsend.core.definitions import define_bucket
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import campaigns as repo
from hogsend.runtime.worker import Worker
from mail_sink import Sink

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def env(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[Env]:
    async for built in _env(tmp_path, engine, database_url, sink, campaign_poll_seconds=0.1):
        # A bucket the API can name (memberships are written directly below).
        built.app._buckets.append(define_bucket(id="vips", name="VIPs"))
        yield built


@pytest.fixture
async def worker(env: Env) -> AsyncIterator[Worker]:
    settings = env.settings.model_copy(update={"worker_id": f"campaigns-{uuid.uuid4().hex[:6]}"})
    running = Worker(env.app, settings)
    await running.start()
    yield running
    await running.stop()


@pytest.fixture
async def writer_key(mint_key: Any) -> str:
    return str(await mint_key("admin:write", name="operator"))


async def until(predicate: Callable[[], Any], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await predicate() if asyncio.iscoroutinefunction(predicate) else predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting")


async def create(env: Env, key: str, body: dict[str, Any], **headers: str) -> str:
    response = await env.client.post("/v1/campaigns", json=body, headers=bearer(key) | headers)
    assert response.status_code == 202, response.text
    return str(response.json()["campaignId"])


async def fetch(env: Env, key: str, campaign_id: str) -> dict[str, Any]:
    response = await env.client.get(f"/v1/campaigns/{campaign_id}", headers=bearer(key))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def finished(env: Env, key: str, campaign_id: str, status: str = "sent") -> dict[str, Any]:
    seen: dict[str, Any] = {}

    async def done() -> bool:
        seen.update(await fetch(env, key, campaign_id))
        return bool(seen["status"] == status)

    await until(done)
    return seen


def _small_batch_worker(env: Env) -> Worker:
    """A worker of its own that sends campaigns three recipients a batch, two at a time."""
    settings = env.settings.model_copy(
        update={
            "worker_id": f"campaigns-{uuid.uuid4().hex[:6]}",
            "campaign_batch_size": 3,
            "campaign_concurrency": 2,
        }
    )
    return Worker(env.app, settings)


def recipients(sink: Sink) -> list[str]:
    return sorted(str(m["To"]) for m in sink.messages)


async def test_list_campaign_reaches_every_subscriber_once_and_skips_with_reasons(
    env: Env, worker: Worker, ingest_key: str, writer_key: str
) -> None:
    # Contacts known only by an address are part of the audience.
    for n in range(5):
        await new_contact(env.engine, f"reader{n}@example.com")
    await new_contact(env.engine, "ext@example.com", external_id="user-1")
    gone = await new_contact(env.engine, "gone@example.com")
    quitter = await new_contact(env.engine, "quit@example.com")
    listless = await new_contact(env.engine, "nolist@example.com")
    await new_contact(env.engine, "blocked@example.com")
    async with env.engine.begin() as conn:
        await conn.execute(
            text("UPDATE contacts SET deleted_at = now() WHERE id = :c"), {"c": gone}
        )
        await conn.execute(
            text("INSERT INTO email_preferences (contact_id, unsubscribed_all) VALUES (:c, true)"),
            {"c": quitter},
        )
        await conn.execute(
            text(
                "INSERT INTO list_subscriptions (contact_id, list_id, subscribed) "
                "VALUES (:c, 'newsletter', false)"
            ),
            {"c": listless},
        )
    suppressed = await env.client.post(
        "/v1/admin/suppressions", json={"email": "blocked@example.com"}, headers=bearer(writer_key)
    )
    assert suppressed.status_code == 200, suppressed.text

    started = time.monotonic()
    campaign_id = await create(env, ingest_key, {"list": "newsletter", "template": "news"})
    # 202 came back before anything was sent.
    assert time.monotonic() - started < 5
    body = await finished(env, ingest_key, campaign_id)

    expected = sorted([f"reader{n}@example.com" for n in range(5)] + ["ext@example.com"])
    assert recipients(env.sink) == expected
    assert body["totalRecipients"] == 9
    assert body["sentCount"] == 6
    assert body["skippedCount"] == 3
    assert body["failedCount"] == 0
    assert body["pendingCount"] == 0
    assert body["skipReasons"] == {"unsubscribed": 2, "suppressed": 1}
    assert body["startedAt"]
    assert body["completedAt"]
    assert body["snapshotAt"]
    # Every message carries the list's unsubscribe headers and one decision row each.
    assert all(m["List-Unsubscribe"] for m in env.sink.messages)
    async with env.engine.connect() as conn:
        sent = (
            await conn.execute(
                text(
                    "SELECT s.idempotency_key, r.contact_id FROM email_sends s "
                    "JOIN campaign_recipients r ON r.email_send_id = s.id "
                    "WHERE s.campaign_id = :c AND s.decision = 'sent'"
                ),
                {"c": campaign_id},
            )
        ).all()
        assert len(sent) == 6
        assert all(k == f"campaign:{campaign_id}:{c}" for k, c in sent)
    listed = await env.client.get("/v1/campaigns?status=sent", headers=bearer(ingest_key))
    assert [c["id"] for c in listed.json()["campaigns"]] == [campaign_id]


async def test_criteria_campaign_honours_the_throttle(
    env: Env, worker: Worker, ingest_key: str
) -> None:
    for n in range(6):
        await new_contact(env.engine, f"pro{n}@example.com", properties='{"plan": "pro"}')
    await new_contact(env.engine, "free@example.com", properties='{"plan": "free"}')
    criteria = {"type": "property", "property": "plan", "op": "equals", "value": "pro"}
    campaign_id = await create(
        env, ingest_key, {"criteria": criteria, "template": "news", "throttle": 4}
    )
    await until(lambda: len(env.sink.messages) >= 1)
    first = time.monotonic()
    body = await finished(env, ingest_key, campaign_id)
    spread = time.monotonic() - first
    assert recipients(env.sink) == [f"pro{n}@example.com" for n in range(6)]
    assert body["sentCount"] == 6
    # 6 messages at 4/s with a burst of 1: the last leaves >= 1.25 s after the first.
    assert spread >= 1.0


async def test_bucket_campaign_includes_members_known_only_by_email(
    env: Env, worker: Worker, ingest_key: str
) -> None:
    anonymous = await new_contact(env.engine, "anon@example.com")
    known = await new_contact(env.engine, "known@example.com", external_id="user-9")
    left = await new_contact(env.engine, "left@example.com")
    async with env.engine.begin() as conn:
        for contact_id, status in ((anonymous, "active"), (known, "active"), (left, "left")):
            await conn.execute(
                text(
                    "INSERT INTO bucket_memberships "
                    "(contact_id, user_id, bucket_id, status, left_at) VALUES (:c, :u, 'vips', "
                    "CAST(:s AS text), CASE WHEN :s = 'left' THEN now() END)"
                ),
                {"c": contact_id, "u": str(contact_id), "s": status},
            )
    campaign_id = await create(env, ingest_key, {"bucket": "vips", "template": "news"})
    body = await finished(env, ingest_key, campaign_id)
    assert recipients(env.sink) == ["anon@example.com", "known@example.com"]
    assert body["totalRecipients"] == 2


async def test_pause_resume_and_cancel(
    env: Env, worker: Worker, ingest_key: str, writer_key: str
) -> None:
    for n in range(12):
        await new_contact(env.engine, f"slow{n:02}@example.com")
    campaign_id = await create(
        env, ingest_key, {"list": "newsletter", "template": "news", "throttle": 4}
    )
    await until(lambda: len(env.sink.messages) >= 2)
    paused = await env.client.post(f"/v1/campaigns/{campaign_id}/pause", headers=bearer(writer_key))
    assert paused.status_code == 200, paused.text
    assert paused.json()["status"] == "paused"
    # The batch in flight (at most two seconds' worth) finishes, then nothing more.
    await asyncio.sleep(2.5)
    at_pause = len(env.sink.messages)
    await asyncio.sleep(1.5)
    assert len(env.sink.messages) == at_pause < 12
    again = await env.client.post(f"/v1/campaigns/{campaign_id}/pause", headers=bearer(writer_key))
    assert again.status_code == 409
    resumed = await env.client.post(
        f"/v1/campaigns/{campaign_id}/resume", headers=bearer(writer_key)
    )
    assert resumed.status_code == 200, resumed.text
    body = await finished(env, ingest_key, campaign_id)
    assert recipients(env.sink) == [f"slow{n:02}@example.com" for n in range(12)]
    assert body["sentCount"] == 12

    env.sink.messages.clear()
    second = await create(
        env, ingest_key, {"list": "newsletter", "template": "news", "throttle": 4}
    )
    await until(lambda: len(env.sink.messages) >= 1)
    cancelled = await env.client.post(f"/v1/campaigns/{second}/cancel", headers=bearer(writer_key))
    assert cancelled.status_code == 200
    await asyncio.sleep(2.5)
    at_cancel = len(env.sink.messages)
    await asyncio.sleep(1.5)
    assert len(env.sink.messages) == at_cancel < 12
    body = await fetch(env, ingest_key, second)
    assert body["status"] == "cancelled"
    assert body["sentCount"] == at_cancel
    refused = await env.client.post(f"/v1/campaigns/{second}/resume", headers=bearer(writer_key))
    assert refused.status_code == 409
    audit = await env.client.get(
        "/v1/admin/audit-logs?resource=campaigns", headers=bearer(writer_key)
    )
    actions = sorted(entry["action"] for entry in audit.json()["logs"])
    assert actions == sorted(
        ["campaigns.create"] * 2 + ["campaigns.pause", "campaigns.resume", "campaigns.cancel"]
    )


async def test_send_at_starts_the_campaign_on_time(
    env: Env, worker: Worker, ingest_key: str
) -> None:
    await new_contact(env.engine, "later@example.com")
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    campaign_id = await create(
        env,
        ingest_key,
        {"list": "newsletter", "template": "news", "sendAt": send_at.isoformat()},
    )
    assert (await fetch(env, ingest_key, campaign_id))["status"] == "scheduled"
    await until(lambda: len(env.sink.messages) >= 1)
    assert datetime.now(UTC) >= send_at
    body = await finished(env, ingest_key, campaign_id)
    assert body["sentCount"] == 1


async def test_idempotency_key_header_wins_and_creates_once(env: Env, ingest_key: str) -> None:
    body = {"list": "newsletter", "template": "news", "idempotencyKey": "body-key"}
    first = await create(env, ingest_key, body, **{"Idempotency-Key": "june-news"})
    second = await create(
        env, ingest_key, body | {"idempotencyKey": "other"}, **{"Idempotency-Key": "june-news"}
    )
    assert first == second
    third = await create(env, ingest_key, body)
    assert third != first
    async with env.engine.connect() as conn:
        keys = (await conn.execute(text("SELECT idempotency_key FROM campaigns"))).scalars()
        assert sorted(keys) == ["body-key", "june-news"]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"template": "news"}, 422, "body"),
        ({"list": "newsletter", "bucket": "vips", "template": "news"}, 422, "body"),
        ({"list": "nope", "template": "news"}, 404, None),
        ({"bucket": "nope", "template": "news"}, 404, None),
        ({"list": "newsletter", "template": "nope"}, 422, "body.template"),
        ({"criteria": {"type": "bogus"}, "template": "news"}, 422, "body.criteria"),
        ({"list": "newsletter", "template": "news", "localTime": "25:00"}, 422, "body.localTime"),
        ({"list": "newsletter", "template": "news", "throttle": 0}, 422, "body.throttle"),
    ],
)
async def test_bad_campaigns_are_refused_and_nothing_is_written(
    env: Env, ingest_key: str, body: dict[str, Any], status: int, field: str | None
) -> None:
    response = await env.client.post("/v1/campaigns", json=body, headers=bearer(ingest_key))
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    if field is not None:
        fields = [e["field"] for e in response.json()["errors"]]
        assert any(f.startswith(field) for f in fields), fields
    async with env.engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM campaigns"))).scalar() == 0


async def test_unknown_campaign_is_404(env: Env, ingest_key: str) -> None:
    response = await env.client.get(f"/v1/campaigns/{uuid.uuid4()}", headers=bearer(ingest_key))
    assert response.status_code == 404


async def test_a_stuck_campaign_is_reaped_once_by_one_reaper(env: Env) -> None:
    """Two reapers racing over a stalled campaign: one hands it back, once; one run starts."""
    await new_contact(env.engine, "stuck@example.com")
    sessions = make_sessionmaker(env.engine)
    long_ago = datetime.now(UTC) - timedelta(hours=1)
    async with sessions() as session, session.begin():
        campaign, _ = await repo.create_campaign(
            session,
            name="stuck",
            status="sending",
            audience_kind="list",
            audience={"id": "newsletter"},
            template_key="news",
            workflow_id="hogsend.campaign:dead-run",
            last_progress_at=long_ago,
        )
    stale = timedelta(minutes=15)

    async def reap() -> list[uuid.UUID]:
        async with sessions() as session, session.begin():
            found = await repo.reap_stale(session, datetime.now(UTC), stale)
            await asyncio.sleep(0.2)  # hold the reaper lock while the other one tries
            return found

    first, second = await asyncio.gather(reap(), reap())
    assert sorted([len(first), len(second)]) == [0, 1]
    async with sessions() as session, session.begin():
        assert await repo.reap_stale(session, datetime.now(UTC), stale) == []
        row = await repo.get_campaign(session, campaign.id)
        assert row is not None
        assert row.status == "queued"
        assert row.workflow_id is None
        claimed = await repo.claim_due(session, datetime.now(UTC), limit=10)
    assert [c for c, _ in claimed] == [campaign.id]
    async with sessions() as session, session.begin():
        assert await repo.claim_due(session, datetime.now(UTC), limit=10) == []
    # The dead run's id no longer owns the row: if it ever came back it would stop.
    async with sessions() as session, session.begin():
        assert await repo.owned(session, campaign.id, "hogsend.campaign:dead-run") is None


async def test_local_time_sets_each_recipients_send_time_in_their_zone(env: Env) -> None:
    """``localTime`` 09:00 from a start of 2026-06-01 12:00 UTC: each recipient's next 09:00."""
    zones = {
        "ny@example.com": "America/New_York",  # 09:00 EDT = 13:00 UTC, still ahead that day
        "tokyo@example.com": "Asia/Tokyo",  # 09:00 JST = 00:00 UTC: passed, so the next day
        "mars@example.com": "Mars/Olympus_Mons",  # unknown zone: UTC
        "none@example.com": None,  # no zone: UTC
    }
    for address, zone in zones.items():
        await new_contact(env.engine, address, timezone=zone)
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    sessions = make_sessionmaker(env.engine)
    async with sessions() as session, session.begin():
        campaign, _ = await repo.create_campaign(
            session,
            name="local",
            audience_kind="list",
            audience={"id": "newsletter"},
            template_key="news",
            local_time="09:00",
        )
        audience = repo.Audience(kind="list", list_id="newsletter", default_opt_in=True)
        copied = await repo.snapshot_page(
            session, campaign.id, audience, start=start, local_time="09:00", now=start
        )
        assert copied == 4
        rows = await session.execute(
            text("SELECT email, send_at FROM campaign_recipients WHERE campaign_id = :c"),
            {"c": campaign.id},
        )
        due = {r.email: r.send_at for r in rows}
        assert await repo.next_due_at(session, campaign.id) == datetime(
            2026, 6, 1, 13, 0, tzinfo=UTC
        )
    assert due == {
        "ny@example.com": datetime(2026, 6, 1, 13, 0, tzinfo=UTC),
        "tokyo@example.com": datetime(2026, 6, 2, 0, 0, tzinfo=UTC),
        "mars@example.com": datetime(2026, 6, 2, 9, 0, tzinfo=UTC),
        "none@example.com": datetime(2026, 6, 2, 9, 0, tzinfo=UTC),
    }


async def test_due_batch_after_a_recipient_reads_the_next_page_past_it(env: Env) -> None:
    """The read-ahead's keyset: the page after a batch in flight, in cursor order, due only."""
    for n in range(7):
        await new_contact(env.engine, f"page{n}@example.com")
    start = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    sessions = make_sessionmaker(env.engine)
    async with sessions() as session, session.begin():
        campaign, _ = await repo.create_campaign(
            session,
            name="pages",
            audience_kind="list",
            audience={"id": "newsletter"},
            template_key="news",
        )
        audience = repo.Audience(kind="list", list_id="newsletter", default_opt_in=True)
        await repo.snapshot_page(
            session, campaign.id, audience, start=start, local_time=None, now=start
        )
        # One recipient due a day later: never in a page read now, keyset or not.
        await session.execute(
            text(
                "UPDATE campaign_recipients SET send_at = send_at + interval '1 day'"
                " WHERE campaign_id = :c AND email = 'page3@example.com'"
            ),
            {"c": campaign.id},
        )
        everyone = await repo.due_batch(session, campaign.id, start, limit=10)
        first = await repo.due_batch(session, campaign.id, start, limit=2)
        second = await repo.due_batch(session, campaign.id, start, limit=2, after=first[-1])
        rest = await repo.due_batch(session, campaign.id, start, limit=10, after=second[-1])
        past_the_end = await repo.due_batch(session, campaign.id, start, limit=10, after=rest[-1])
    assert len(everyone) == 6
    assert "page3@example.com" not in {r.email for r in everyone}
    assert first + second + rest == everyone
    assert [len(first), len(second), len(rest), len(past_the_end)] == [2, 2, 2, 0]


async def test_pipelined_batches_send_each_recipient_once_and_record_every_batch(
    env: Env, ingest_key: str
) -> None:
    # Batches of at most 3: the record of each batch overlaps the next one's send.
    from hogsend.runtime.campaigns import stages

    for n in range(14):
        await new_contact(env.engine, f"piped{n:02}@example.com")
    quitter = await new_contact(env.engine, "piped-quit@example.com")
    async with env.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO email_preferences (contact_id, unsubscribed_all) VALUES (:c, true)"),
            {"c": quitter},
        )
    running = _small_batch_worker(env)
    await running.start()
    try:
        stages.reset()
        campaign_id = await create(env, ingest_key, {"list": "newsletter", "template": "news"})
        body = await finished(env, ingest_key, campaign_id)
        batches, prepared = stages.batches, stages.prepared
    finally:
        await running.stop()

    assert batches >= 5  # 15 recipients, at most 3 a batch
    # The batches after the first were prepared while the one before ended.
    assert prepared >= 3
    assert recipients(env.sink) == [f"piped{n:02}@example.com" for n in range(14)]
    assert (body["sentCount"], body["skippedCount"], body["pendingCount"]) == (14, 1, 0)
    assert body["skipReasons"] == {"unsubscribed": 1}
    async with make_sessionmaker(env.engine)() as session:
        statuses = await repo.recipient_statuses(session, uuid.UUID(campaign_id))
    assert statuses == {"sent": 14, "skipped": 1}
    async with env.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT decision, count(*) FROM email_sends WHERE campaign_id = :c"
                    " GROUP BY decision"
                ),
                {"c": campaign_id},
            )
        ).all()
    # One decision row per recipient: no batch was sent twice.
    assert dict(rows) == {"sent": 14, "unsubscribed": 1}


async def test_steps_carry_their_read_ahead_and_still_send_each_recipient_once(
    env: Env, ingest_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every batch a step of its own: each next step starts with the batch the last one
    # read ahead, and nobody is skipped, sent twice or left pending.
    from hogsend.runtime import campaigns

    monkeypatch.setattr(campaigns, "STEP_SECONDS", 0.0)
    for n in range(13):
        await new_contact(env.engine, f"stepped{n:02}@example.com")
    running = _small_batch_worker(env)
    await running.start()
    try:
        campaigns.stages.reset()
        campaign_id = await create(env, ingest_key, {"list": "newsletter", "template": "news"})
        body = await finished(env, ingest_key, campaign_id)
        carried, batches = campaigns.stages.carried, campaigns.stages.batches
    finally:
        await running.stop()

    assert batches >= 5  # 13 recipients, at most 3 a batch
    assert carried >= 3  # every step but the first and the one finding nobody left
    assert uuid.UUID(campaign_id) not in campaigns._carried
    assert recipients(env.sink) == [f"stepped{n:02}@example.com" for n in range(13)]
    assert (body["sentCount"], body["skippedCount"], body["pendingCount"]) == (13, 0, 0)
    async with env.engine.connect() as conn:
        decisions = (
            await conn.execute(
                text("SELECT count(*) FROM email_sends WHERE campaign_id = :c"),
                {"c": campaign_id},
            )
        ).scalar()
    assert decisions == 13  # one decision row per recipient


class _Calls:
    """Wraps a worker's SMTP provider: counts its calls in flight, and lets a test act
    when the ``nth`` call starts (before it goes to the server)."""

    def __init__(self, worker: Worker, on_start: Callable[[int], Any]) -> None:
        provider: Any = worker._email_provider
        self._send = provider._send
        provider._send = self.send
        self.on_start = on_start
        self.started = self.flying = self.most = self.accepted = 0

    async def send(self, message: Any, gate: Any) -> Any:
        self.started += 1
        self.flying += 1
        self.most = max(self.most, self.flying)
        try:
            await self.on_start(self.started)
            result = await self._send(message, gate)
            self.accepted += 1
            return result
        finally:
            self.flying -= 1


async def test_the_next_batch_takes_each_lane_over_as_the_batch_before_frees_it(
    env: Env, ingest_key: str
) -> None:
    # Batches of 3, 2 lanes. The third call is the first batch's last request: held, the
    # other lane goes on with the next batch's requests instead of waiting for it (and
    # the two batches never have more than 2 calls in flight together).
    for n in range(9):
        await new_contact(env.engine, f"lane{n}@example.com")
    running = _small_batch_worker(env)
    await running.start()
    next_batch_sent = asyncio.Event()
    sent_while_held: list[int] = []

    async def hold_the_third(nth: int) -> None:
        if nth == 3:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(next_batch_sent.wait(), 5)
            sent_while_held.append(calls.accepted - 2)
        elif nth >= 6 and not sent_while_held:
            next_batch_sent.set()  # calls 4 and 5 ended, and the 6th started

    calls = _Calls(running, hold_the_third)
    try:
        campaign_id = await create(env, ingest_key, {"list": "newsletter", "template": "news"})
        body = await finished(env, ingest_key, campaign_id)
    finally:
        await running.stop()

    assert sent_while_held[0] >= 2
    assert calls.most <= 2
    assert recipients(env.sink) == [f"lane{n}@example.com" for n in range(9)]
    assert (body["sentCount"], body["pendingCount"]) == (9, 0)


async def test_a_pause_after_a_batch_drained_lets_the_next_batch_go_and_no_more(
    env: Env, ingest_key: str, writer_key: str
) -> None:
    # The run checks it still owns the campaign when a batch's last request is handed to
    # its lanes, and lets the next batch go then. A pause requested after that check,
    # during the batch's last call (here: once the next batch's first call started),
    # stops the run after the next batch: 3 + 3 sent of 9, the third batch not. Resumed,
    # the rest go out, each once.
    for n in range(9):
        await new_contact(env.engine, f"paused{n}@example.com")
    running = _small_batch_worker(env)
    await running.start()
    ids: list[str] = []
    fourth, paused = asyncio.Event(), asyncio.Event()

    async def pause_during_the_third(nth: int) -> None:
        if nth == 3:  # the first batch's last request
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(fourth.wait(), 5)
            answer = await env.client.post(
                f"/v1/campaigns/{ids[0]}/pause", headers=bearer(writer_key)
            )
            assert answer.status_code == 200, answer.text
            paused.set()
        elif nth == 4:  # the second batch's first: it goes on once the pause is in
            fourth.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(paused.wait(), 5)

    _Calls(running, pause_during_the_third)
    try:
        ids.append(await create(env, ingest_key, {"list": "newsletter", "template": "news"}))
        await until(lambda: paused.is_set())
        await asyncio.sleep(2.0)
        body = await fetch(env, ingest_key, ids[0])
        assert len(env.sink.messages) == 6
        assert (body["status"], body["sentCount"], body["pendingCount"]) == ("paused", 6, 3)
        resumed = await env.client.post(
            f"/v1/campaigns/{ids[0]}/resume", headers=bearer(writer_key)
        )
        assert resumed.status_code == 200, resumed.text
        body = await finished(env, ingest_key, ids[0])
    finally:
        await running.stop()
    assert recipients(env.sink) == [f"paused{n}@example.com" for n in range(9)]
    assert (body["sentCount"], body["pendingCount"]) == (9, 0)


# ------------------------------------------------------------------ parked campaigns


def _hours_ahead(hours: int) -> str:
    """A ``localTime`` that falls this many hours from now for recipients in UTC."""
    return (datetime.now(UTC) + timedelta(hours=hours)).strftime("%H:%M")


async def _row(env: Env, campaign_id: str) -> Any:
    async with env.engine.connect() as conn:
        return (
            await conn.execute(
                text(
                    "SELECT c.status, c.workflow_id, c.resume_at, c.snapshot_at, c.send_at,"
                    " (SELECT min(send_at) FROM campaign_recipients r"
                    "  WHERE r.campaign_id = c.id AND r.status = 'pending') AS due"
                    " FROM campaigns c WHERE c.id = :c"
                ),
                {"c": campaign_id},
            )
        ).one()


async def _parked(env: Env, campaign_id: str) -> Any:
    """Wait until the campaign is parked: mid-send, no run owning it, a resume time."""
    seen: list[Any] = []

    async def parked() -> bool:
        seen[:] = [await _row(env, campaign_id)]
        row = seen[0]
        return bool(row.status == "sending" and row.workflow_id is None and row.resume_at)

    await until(parked)
    return seen[0]


async def _runs(campaign_id: str) -> list[Any]:
    """The DBOS runs of the campaign, oldest first."""
    from dbos import DBOS

    from hogsend.runtime.campaigns import WORKFLOW_NAME

    return await DBOS.list_workflows_async(
        name=WORKFLOW_NAME, workflow_id_prefix=f"hogsend.campaign:{campaign_id}:"
    )


async def _ended_runs(campaign_id: str) -> list[tuple[str, Any]]:
    """(status, output) of the campaign's DBOS runs once none is still going (a run
    commits its last campaign update a moment before DBOS records it ended)."""
    seen: list[Any] = []

    async def ended() -> bool:
        seen[:] = await _runs(campaign_id)
        return all(r.status not in ("PENDING", "ENQUEUED") for r in seen)

    await until(ended)
    return [(r.status, r.output) for r in seen]


async def _campaign_slots_held() -> list[Any]:
    """Campaign runs holding (or waiting for) a slot of the campaigns queue."""
    from dbos import DBOS

    from hogsend.runtime.queues import CAMPAIGNS

    return await DBOS.list_workflows_async(
        status=["PENDING", "ENQUEUED"], queue_name=CAMPAIGNS.name
    )


async def _due_now(env: Env, *campaign_ids: str, seconds: float = 1.0) -> None:
    """Bring the parked campaigns' time: their pending recipients are due in ``seconds``
    and their resume time has passed (what the clock would do by the next day)."""
    async with env.engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE campaign_recipients SET send_at = now() + make_interval(secs => :s)"
                " WHERE campaign_id = ANY(CAST(:ids AS uuid[])) AND status = 'pending'"
            ),
            {"ids": list(campaign_ids), "s": seconds},
        )
        await conn.execute(
            text(
                "UPDATE campaigns SET resume_at = now()"
                " WHERE id = ANY(CAST(:ids AS uuid[])) AND resume_at IS NOT NULL"
            ),
            {"ids": list(campaign_ids)},
        )


async def test_local_time_campaigns_due_later_park_and_free_the_queue_for_others(
    env: Env, worker: Worker, ingest_key: str
) -> None:
    # Two localTime campaigns whose recipients are due hours from now: as many as the
    # worker runs campaigns at once (2). Asleep in their runs, they would hold both
    # slots and the plain campaign would never run; parked, they hold none.
    from hogsend.runtime.campaigns import RESUME_LEAD_SECONDS

    for n in range(2):
        await new_contact(env.engine, f"early{n}@example.com", properties='{"plan": "a"}')
        await new_contact(
            env.engine, f"owl{n}@example.com", properties='{"plan": "b"}', timezone="UTC"
        )
    for n in range(3):
        await new_contact(env.engine, f"now{n}@example.com", properties='{"plan": "now"}')

    def plan(name: str) -> dict[str, Any]:
        return {"type": "property", "property": "plan", "op": "equals", "value": name}

    local = _hours_ahead(3)
    send_at = (datetime.now(UTC) + timedelta(seconds=1)).replace(microsecond=0)
    first = await create(
        env,
        ingest_key,
        {
            "criteria": plan("a"),
            "template": "news",
            "localTime": local,
            "sendAt": send_at.isoformat(),
        },
    )
    second = await create(
        env, ingest_key, {"criteria": plan("b"), "template": "news"} | {"localTime": local}
    )
    for campaign_id in (first, second):
        row = await _parked(env, campaign_id)
        assert row.snapshot_at is not None
        assert row.due > datetime.now(UTC) + timedelta(hours=2)
        assert row.resume_at == row.due - timedelta(seconds=RESUME_LEAD_SECONDS)
        body = await fetch(env, ingest_key, campaign_id)
        assert body["status"] == "sending"
        assert datetime.fromisoformat(body["resumeAt"]) == row.resume_at
        assert (body["totalRecipients"], body["pendingCount"], body["sentCount"]) == (2, 2, 0)
    # The campaign's own sendAt is what it was created with, not the resume time.
    assert datetime.fromisoformat((await fetch(env, ingest_key, first))["sendAt"]) == send_at
    assert (await fetch(env, ingest_key, second))["sendAt"] is None
    # Each ended its run: nothing holds or waits for a campaigns slot.
    for campaign_id in (first, second):
        assert await _ended_runs(campaign_id) == [("SUCCESS", "parked")]
    assert await _campaign_slots_held() == []

    plain = await create(env, ingest_key, {"criteria": plan("now"), "template": "news"})
    body = await finished(env, ingest_key, plain)
    assert body["sentCount"] == 3
    assert recipients(env.sink) == ["now0@example.com", "now1@example.com", "now2@example.com"]
    # Nobody claimed the parked campaigns before their resume time.
    for campaign_id in (first, second):
        row = await _row(env, campaign_id)
        assert (row.status, row.workflow_id) == ("sending", None)
        assert len(await _runs(campaign_id)) == 1

    await _due_now(env, first, second)
    for campaign_id in (first, second):
        body = await finished(env, ingest_key, campaign_id)
        assert (body["sentCount"], body["pendingCount"], body["resumeAt"]) == (2, 0, None)
        # One new run, from the pending recipients (the snapshot was not taken again).
        assert await _ended_runs(campaign_id) == [
            ("SUCCESS", "parked"),
            ("SUCCESS", "sent"),
        ]
    assert recipients(env.sink) == sorted(
        [f"now{n}@example.com" for n in range(3)]
        + [f"early{n}@example.com" for n in range(2)]
        + [f"owl{n}@example.com" for n in range(2)]
    )
    async with env.engine.connect() as conn:
        early = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM campaign_recipients"
                    " WHERE campaign_id = ANY(CAST(:ids AS uuid[])) AND sent_at < send_at"
                ),
                {"ids": [first, second]},
            )
        ).scalar()
        decisions = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM email_sends WHERE campaign_id = ANY(CAST(:ids AS uuid[]))"
                ),
                {"ids": [first, second]},
            )
        ).scalar()
    assert early == 0  # nobody went before their time
    assert decisions == 4  # one decision row per recipient


async def test_a_parked_campaign_pauses_resumes_and_cancels_and_is_never_reaped(
    env: Env, worker: Worker, ingest_key: str, writer_key: str
) -> None:
    for n in range(3):
        await new_contact(env.engine, f"parked{n}@example.com")
    body = {"list": "newsletter", "template": "news", "localTime": _hours_ahead(5)}
    campaign_id = await create(env, ingest_key, body)
    await _parked(env, campaign_id)

    # Parked for long with no progress is not stuck: the reaper leaves it alone.
    async with env.engine.begin() as conn:
        await conn.execute(
            text("UPDATE campaigns SET last_progress_at = now() - interval '1 day' WHERE id = :c"),
            {"c": campaign_id},
        )
    async with make_sessionmaker(env.engine)() as session, session.begin():
        assert await repo.reap_stale(session, datetime.now(UTC), timedelta(minutes=1)) == []

    paused = await env.client.post(f"/v1/campaigns/{campaign_id}/pause", headers=bearer(writer_key))
    assert paused.status_code == 200, paused.text
    assert (paused.json()["status"], paused.json()["resumeAt"]) == ("paused", None)
    resumed = await env.client.post(
        f"/v1/campaigns/{campaign_id}/resume", headers=bearer(writer_key)
    )
    assert resumed.status_code == 200, resumed.text
    # Resumed before its recipients are due: a new run parks it again, sending nothing.
    row = await _parked(env, campaign_id)
    assert row.resume_at > datetime.now(UTC) + timedelta(hours=4)
    assert await _ended_runs(campaign_id) == [("SUCCESS", "parked")] * 2
    body_now = await fetch(env, ingest_key, campaign_id)
    assert (body_now["status"], body_now["sentCount"], body_now["pendingCount"]) == (
        "sending",
        0,
        3,
    )
    assert env.sink.messages == []

    await _due_now(env, campaign_id)
    sent = await finished(env, ingest_key, campaign_id)
    assert sent["sentCount"] == 3
    assert recipients(env.sink) == [f"parked{n}@example.com" for n in range(3)]

    # Cancelled while parked: no run starts, not even once its time has come.
    env.sink.messages.clear()
    second = await create(env, ingest_key, body)
    await _parked(env, second)
    cancelled = await env.client.post(f"/v1/campaigns/{second}/cancel", headers=bearer(writer_key))
    assert cancelled.status_code == 200, cancelled.text
    assert (cancelled.json()["status"], cancelled.json()["resumeAt"]) == ("cancelled", None)
    await _due_now(env, second, seconds=0)
    await asyncio.sleep(1.5)  # fifteen scheduler rounds
    assert (await fetch(env, ingest_key, second))["status"] == "cancelled"
    assert len(await _runs(second)) == 1
    assert env.sink.messages == []


async def test_the_scheduler_reaps_a_dead_run_and_a_new_run_sends_every_pending_recipient_once(
    env: Env, worker: Worker, ingest_key: str
) -> None:
    # A campaign mid-send whose run is gone (its worker died for good): two recipients
    # recorded, four pending, no progress for an hour, owned by a run no worker has.
    for n in range(6):
        await new_contact(env.engine, f"orphan{n}@example.com")
    sessions = make_sessionmaker(env.engine)
    now = datetime.now(UTC)
    async with sessions() as session, session.begin():
        campaign, _ = await repo.create_campaign(
            session,
            name="orphaned",
            status="sending",
            audience_kind="list",
            audience={"id": "newsletter"},
            template_key="news",
            started_at=now - timedelta(hours=1),
        )
        audience = repo.Audience(kind="list", list_id="newsletter", default_opt_in=True)
        await repo.snapshot_page(
            session, campaign.id, audience, start=now, local_time=None, now=now
        )
        await repo.finish_snapshot(session, campaign.id, now)
        done = await repo.due_batch(session, campaign.id, now, limit=2)
        await repo.record_results(
            session,
            campaign.id,
            [repo.Result(contact_id=r.contact_id, status="sent") for r in done],
            now,
        )
        await session.execute(
            text(
                "UPDATE campaigns SET workflow_id = :w,"
                " last_progress_at = now() - interval '1 hour' WHERE id = :c"
            ),
            {"w": f"hogsend.campaign:{campaign.id}:dead", "c": campaign.id},
        )
    campaign_id = str(campaign.id)
    body = await finished(env, ingest_key, campaign_id)
    assert body["error"].startswith("resumed by the reaper")
    assert (body["sentCount"], body["pendingCount"], body["totalRecipients"]) == (6, 0, 6)
    expected = sorted({f"orphan{n}@example.com" for n in range(6)} - {r.email for r in done})
    assert len(expected) == 4
    assert recipients(env.sink) == expected  # each pending recipient once, nobody else
    assert await _ended_runs(campaign_id) == [("SUCCESS", "sent")]
    async with env.engine.connect() as conn:
        keys = (
            await conn.execute(
                text("SELECT idempotency_key FROM email_sends WHERE campaign_id = :c"),
                {"c": campaign_id},
            )
        ).scalars()
        assert sorted(keys) == sorted(
            f"campaign:{campaign_id}:{r}"
            for r in set(
                (
                    await conn.execute(
                        text(
                            "SELECT contact_id FROM campaign_recipients"
                            " WHERE campaign_id = :c AND email_send_id IS NOT NULL"
                        ),
                        {"c": campaign_id},
                    )
                ).scalars()
            )
        )
