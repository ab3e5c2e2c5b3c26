"""The outbox dispatcher on a real Postgres: order, sharing, retries, dead letters, leases."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hogsend.api import create_api
from hogsend.app import Hogsend
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import api_keys, outbox
from hogsend.db.tables.events import EventOutbox, UserEvent
from hogsend.runtime.dispatcher import DispatchedEvent, Dispatcher
from hogsend.settings import Settings

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url, pool_size=20)
    yield engine
    await engine.dispose()


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "env": "test",
        "database_url": database_url,
        "dispatcher_poll_seconds": 0.01,
        "dispatcher_listen": False,
        "dispatcher_backoff_base_seconds": 0.05,
        "dispatcher_backoff_max_seconds": 0.05,
        "log_format": "console",
    }
    values.update(overrides)
    return Settings(**values)


async def insert_events(
    engine: AsyncEngine, contacts: Sequence[uuid.UUID], *, name: str = "page_viewed"
) -> list[int]:
    """One event (user_events + event_outbox, one transaction) per entry; outbox ids."""
    events = [
        {
            "id": uuid.uuid4(),
            "contact_id": contact,
            "user_id": f"user-{contact}",
            "event": name,
            "properties": {"n": n},
        }
        for n, contact in enumerate(contacts)
    ]
    async with engine.begin() as conn:
        await conn.execute(UserEvent.__table__.insert(), events)
        ids = []
        # One statement per row keeps outbox ids in list order.
        for event in events:
            row_id = await conn.scalar(
                EventOutbox.__table__.insert()
                .values(
                    event_id=event["id"],
                    contact_id=event["contact_id"],
                    contact_key=event["user_id"],
                    event=event["event"],
                )
                .returning(EventOutbox.id)
            )
            ids.append(int(row_id))
    return ids


async def outbox_rows(engine: AsyncEngine) -> dict[int, dict[str, Any]]:
    async with engine.connect() as conn:
        result = await conn.execute(text("SELECT * FROM event_outbox ORDER BY id"))
        return {row["id"]: dict(row) for row in result.mappings()}


@dataclass
class Call:
    consumer: str
    outbox_id: int
    contact_id: uuid.UUID
    attempt: int


@dataclass
class Journal:
    """What consumers saw, in the order they saw it (one event loop: a total order)."""

    calls: list[Call] = field(default_factory=list)
    in_flight: dict[uuid.UUID, int] = field(default_factory=dict)
    overlaps: list[tuple[uuid.UUID, int, int]] = field(default_factory=list)

    def of(self, consumer: str) -> list[Call]:
        return [c for c in self.calls if c.consumer == consumer]


class Recorder:
    """A consumer that journals every call; ``fail`` decides whether a call raises."""

    def __init__(
        self,
        name: str,
        journal: Journal,
        *,
        fail: Callable[[DispatchedEvent], bool] | None = None,
        pause: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.journal = journal
        self.fail = fail
        self.pause = pause

    async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
        journal = self.journal
        other = journal.in_flight.get(event.contact_id)
        if other is not None and other != event.outbox_id:
            journal.overlaps.append((event.contact_id, other, event.outbox_id))
        journal.in_flight[event.contact_id] = event.outbox_id
        try:
            journal.calls.append(Call(self.name, event.outbox_id, event.contact_id, event.attempt))
            if self.pause is not None:
                await self.pause()
            # Consumers write through the session they are given: prove it works.
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
            if self.fail is not None and self.fail(event):
                raise RuntimeError(f"{self.name} refuses outbox row {event.outbox_id}")
        finally:
            journal.in_flight.pop(event.contact_id, None)


def assert_per_contact_order(calls: Sequence[Call], ids_by_contact: dict[uuid.UUID, list[int]]):
    seen: dict[uuid.UUID, list[int]] = defaultdict(list)
    for call in calls:
        if not seen[call.contact_id] or seen[call.contact_id][-1] != call.outbox_id:
            seen[call.contact_id].append(call.outbox_id)
    for contact, ids in ids_by_contact.items():
        assert seen[contact] == ids, f"contact {contact} saw its events out of order"


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def processed_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text("SELECT count(*) FROM event_outbox WHERE processed_at IS NOT NULL")
                )
            ).scalar_one()
        )


# -- order and delivery ----------------------------------------------------------------


async def test_consumers_see_each_event_once_in_order(
    engine: AsyncEngine, database_url: str
) -> None:
    contacts = [uuid.uuid4() for _ in range(3)]
    ids = await insert_events(engine, [contacts[n % 3] for n in range(15)])
    journal = Journal()
    dispatcher = Dispatcher(
        engine,
        make_settings(database_url, dispatcher_batch_size=4),
        [Recorder("first", journal), Recorder("second", journal)],
        worker_id="d-1",
    )
    assert await dispatcher.drain() == 15

    for name in ("first", "second"):
        assert sorted(c.outbox_id for c in journal.of(name)) == ids
    # per event, consumers run in registration order
    for outbox_id in ids:
        assert [c.consumer for c in journal.calls if c.outbox_id == outbox_id] == [
            "first",
            "second",
        ]
    assert_per_contact_order(
        journal.calls,
        {c: [i for n, i in enumerate(ids) if n % 3 == k] for k, c in enumerate(contacts)},
    )
    assert all(call.attempt == 1 for call in journal.calls)
    rows = await outbox_rows(engine)
    assert all(r["processed_at"] is not None for r in rows.values())
    assert all(r["consumers_done"] == ["first", "second"] for r in rows.values())
    assert all(r["attempts"] == 0 and r["locked_until"] is None for r in rows.values())
    assert await dispatcher.drain() == 0


async def test_the_event_reaches_consumers_whole(engine: AsyncEngine, database_url: str) -> None:
    contact = uuid.uuid4()
    [outbox_id] = await insert_events(engine, [contact], name="signed_up")
    seen: list[DispatchedEvent] = []

    class Keep:
        name = "keep"

        async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
            seen.append(event)

    await Dispatcher(engine, make_settings(database_url), [Keep()], worker_id="d-1").drain()
    [event] = seen
    assert event.outbox_id == outbox_id
    assert event.name == "signed_up"
    assert event.contact_id == contact
    assert event.contact_key == f"user-{contact}"
    assert event.properties == {"n": 0}
    assert event.occurred_at.tzinfo is not None
    assert event.attempt == 1


async def test_rows_without_consumers_or_event_are_just_processed(
    engine: AsyncEngine, database_url: str
) -> None:
    journal = Journal()
    await insert_events(engine, [uuid.uuid4() for _ in range(5)])
    # An erase deleted this event before the dispatcher got to it.
    [erased] = await insert_events(engine, [uuid.uuid4()])
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "DELETE FROM user_events WHERE id ="
                " (SELECT event_id FROM event_outbox WHERE id = :id)"
            ),
            {"id": erased},
        )
    assert await Dispatcher(engine, make_settings(database_url), [], worker_id="a").drain() == 6
    assert await processed_count(engine) == 6
    await insert_events(engine, [uuid.uuid4()])
    dispatcher = Dispatcher(engine, make_settings(database_url), [Recorder("r", journal)])
    assert await dispatcher.drain() == 1
    assert len(journal.calls) == 1


async def test_two_dispatchers_share_2000_events_and_keep_per_contact_order(
    engine: AsyncEngine, database_url: str
) -> None:
    rng = random.Random(7)
    contacts = [uuid.uuid4() for _ in range(50)]
    order = [rng.choice(contacts) for _ in range(2000)]
    ids = await insert_events(engine, order)
    ids_by_contact: dict[uuid.UUID, list[int]] = defaultdict(list)
    for contact, outbox_id in zip(order, ids, strict=True):
        ids_by_contact[contact].append(outbox_id)

    journal = Journal()

    async def jitter() -> None:
        await asyncio.sleep(rng.random() / 1000)

    settings = make_settings(database_url, dispatcher_batch_size=60, dispatcher_concurrency=6)
    dispatchers = [
        Dispatcher(
            engine,
            settings,
            [Recorder("buckets", journal, pause=jitter), Recorder("triggers", journal)],
            worker_id=f"d-{n}",
        )
        for n in (1, 2)
    ]
    for dispatcher in dispatchers:
        await dispatcher.start()
    try:
        await wait_until(lambda: _all_processed(engine, 2000), timeout=90)
    finally:
        for dispatcher in dispatchers:
            await dispatcher.stop()

    for name in ("buckets", "triggers"):
        counts = Counter(c.outbox_id for c in journal.of(name))
        assert set(counts) == set(ids)
        assert set(counts.values()) == {1}, "some event was consumed twice"
    assert journal.overlaps == []
    assert_per_contact_order(journal.calls, ids_by_contact)
    rows = await outbox_rows(engine)
    by_worker = Counter(r["claimed_by"] for r in rows.values())
    assert set(by_worker) == {"d-1", "d-2"}, f"one dispatcher did everything: {by_worker}"


async def _all_processed(engine: AsyncEngine, expected: int) -> bool:
    return await processed_count(engine) == expected


# -- failures ------------------------------------------------------------------------------


async def test_failure_backs_off_then_succeeds_without_rerunning_done_consumers(
    engine: AsyncEngine, database_url: str
) -> None:
    contact = uuid.uuid4()
    first_id, second_id = await insert_events(engine, [contact, contact])
    journal = Journal()
    failures = {"left": 2}

    def flaky(event: DispatchedEvent) -> bool:
        if event.outbox_id == first_id and failures["left"] > 0:
            failures["left"] -= 1
            return True
        return False

    dispatcher = Dispatcher(
        engine,
        make_settings(
            database_url,
            dispatcher_backoff_base_seconds=0.2,
            dispatcher_backoff_max_seconds=0.2,
        ),
        [
            Recorder("first", journal),
            Recorder("flaky", journal, fail=flaky),
            Recorder("third", journal),
        ],
        worker_id="d-1",
    )
    assert await dispatcher.run_once() == 2
    rows = await outbox_rows(engine)
    assert rows[first_id]["attempts"] == 1
    assert rows[first_id]["consumers_done"] == ["first"]
    assert "flaky: RuntimeError: flaky refuses" in rows[first_id]["last_error"]
    assert rows[first_id]["processed_at"] is None
    # the second event waits behind the first: released, not processed, not attempted
    assert rows[second_id]["processed_at"] is None
    assert rows[second_id]["attempts"] == 0
    assert rows[second_id]["locked_until"] is None
    assert [c.outbox_id for c in journal.calls] == [first_id, first_id]
    # backing off: nothing of this contact is claimable until the retry is due
    assert await dispatcher.run_once() == 0

    async def drained() -> bool:
        await dispatcher.drain()
        return await processed_count(engine) == 2

    await wait_until(drained, timeout=30)
    assert [c.outbox_id for c in journal.of("first")] == [first_id, second_id]
    assert [c.outbox_id for c in journal.of("flaky")] == [first_id] * 3 + [second_id]
    assert [c.attempt for c in journal.of("flaky")] == [1, 2, 3, 1]
    assert [c.outbox_id for c in journal.of("third")] == [first_id, second_id]
    # the second event was only touched after the first one succeeded
    last_of_first = max(n for n, c in enumerate(journal.calls) if c.outbox_id == first_id)
    first_of_second = min(n for n, c in enumerate(journal.calls) if c.outbox_id == second_id)
    assert last_of_first < first_of_second
    rows = await outbox_rows(engine)
    assert rows[first_id]["attempts"] == 2
    assert rows[first_id]["consumers_done"] == ["first", "flaky", "third"]
    assert rows[first_id]["dead_at"] is None


class Toggle:
    def __init__(self) -> None:
        self.failing = True

    def __call__(self, event: DispatchedEvent) -> bool:
        return self.failing


async def _die(dispatcher: Dispatcher, engine: AsyncEngine, outbox_id: int) -> None:
    async def dead() -> bool:
        await dispatcher.drain()
        rows = await outbox_rows(engine)
        return rows[outbox_id]["dead_at"] is not None

    await wait_until(dead, timeout=30)


@pytest.fixture
async def admin(engine: AsyncEngine, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    api = create_api(Hogsend(), make_settings(database_url), engine=engine)
    async with make_sessionmaker(engine)() as session:
        _, raw = await api_keys.create_key(session, name="ops", scopes=["admin:write"])
        await session.commit()
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {raw}"},
    ) as client:
        yield client


async def test_dead_event_goes_to_the_dlq_and_an_admin_retry_requeues_it(
    engine: AsyncEngine, database_url: str, admin: httpx.AsyncClient
) -> None:
    contact = uuid.uuid4()
    doomed, after = await insert_events(engine, [contact, contact])
    journal = Journal()
    toggle = Toggle()
    dispatcher = Dispatcher(
        engine,
        make_settings(database_url, dispatcher_max_attempts=3),
        [
            Recorder("first", journal),
            Recorder("picky", journal, fail=lambda e: e.outbox_id == doomed and toggle(e)),
        ],
        worker_id="d-1",
    )
    await _die(dispatcher, engine, doomed)
    await dispatcher.drain()
    rows = await outbox_rows(engine)
    assert rows[doomed]["attempts"] == 3
    assert rows[doomed]["processed_at"] is None
    # a dead event no longer holds back the contact's later events
    assert rows[after]["processed_at"] is not None
    assert [c.outbox_id for c in journal.of("picky")] == [doomed] * 3 + [after]

    listing = await admin.get("/v1/admin/dlq", params={"status": "pending", "source": "dispatcher"})
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["total"] == 1
    assert body["limit"] == 50
    assert body["offset"] == 0
    [entry] = body["entries"]
    event_id = str(rows[doomed]["event_id"])
    assert entry["source"] == "dispatcher"
    assert entry["sourceId"] == event_id
    assert entry["status"] == "pending"
    assert entry["attempts"] == 3
    assert entry["error"].startswith("picky: RuntimeError: picky refuses")
    assert entry["payload"]["eventId"] == event_id
    assert entry["payload"]["consumer"] == "picky"
    assert entry["payload"]["consumersDone"] == ["first"]
    assert entry["payload"]["properties"] == {"n": 0}
    assert "Traceback" in entry["payload"]["traceback"]
    one = await admin.get(f"/v1/admin/dlq/{entry['id']}")
    assert one.status_code == 200
    assert one.json() == entry
    empty = await admin.get("/v1/admin/dlq", params={"status": "retried"})
    assert empty.json()["entries"] == []

    health = (await admin.get("/v1/health")).json()
    assert health["dispatcher"] == {"pending": 0, "lagSeconds": 0, "dead": 1}
    metrics = (await admin.get("/v1/admin/metrics/dispatcher")).json()
    assert metrics["dead"] == 1
    assert metrics["pending"] == 0

    toggle.failing = False
    retried = await admin.post(f"/v1/admin/dlq/{entry['id']}/retry")
    assert retried.status_code == 200, retried.text
    assert retried.json() == {"retried": True}
    rows = await outbox_rows(engine)
    assert rows[doomed]["dead_at"] is None
    assert rows[doomed]["attempts"] == 0
    assert rows[doomed]["consumers_done"] == ["first"]
    assert (await admin.get(f"/v1/admin/dlq/{entry['id']}")).json()["status"] == "retried"

    assert await dispatcher.drain() == 1
    rows = await outbox_rows(engine)
    assert rows[doomed]["processed_at"] is not None
    assert rows[doomed]["consumers_done"] == ["first", "picky"]
    # the consumer that had succeeded before the event died did not run again
    assert [c.outbox_id for c in journal.of("first")] == [doomed, after]

    again = await admin.post(f"/v1/admin/dlq/{entry['id']}/retry")
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert (await admin.post(f"/v1/admin/dlq/{entry['id']}/discard")).status_code == 409
    assert (await admin.post(f"/v1/admin/dlq/{uuid.uuid4()}/retry")).status_code == 404
    assert (await admin.get(f"/v1/admin/dlq/{uuid.uuid4()}")).status_code == 404

    audit = (await admin.get("/v1/admin/audit-logs", params={"resource": "dlq"})).json()
    assert [(log["action"], log["resourceId"]) for log in audit["logs"]] == [
        ("dlq.retry", entry["id"])
    ]


async def test_discarding_a_dead_event_drops_its_outbox_row(
    engine: AsyncEngine, database_url: str, admin: httpx.AsyncClient
) -> None:
    [doomed] = await insert_events(engine, [uuid.uuid4()])
    dispatcher = Dispatcher(
        engine,
        make_settings(database_url, dispatcher_max_attempts=1),
        [Recorder("never", Journal(), fail=lambda e: True)],
        worker_id="d-1",
    )
    await _die(dispatcher, engine, doomed)
    [entry] = (await admin.get("/v1/admin/dlq")).json()["entries"]
    assert entry["attempts"] == 1
    discarded = await admin.post(f"/v1/admin/dlq/{entry['id']}/discard")
    assert discarded.status_code == 200, discarded.text
    assert discarded.json() == {"discarded": True}
    assert doomed not in await outbox_rows(engine)
    assert (await admin.get(f"/v1/admin/dlq/{entry['id']}")).json()["status"] == "discarded"
    assert (await admin.post(f"/v1/admin/dlq/{entry['id']}/retry")).status_code == 409
    assert (await admin.get("/v1/health")).json()["dispatcher"]["dead"] == 0
    audit = (await admin.get("/v1/admin/audit-logs", params={"action": "dlq.discard"})).json()
    assert audit["total"] == 1
    [discarded] = audit["logs"]
    assert discarded["detail"]["before"] == {"status": "pending"}
    assert discarded["detail"]["after"] == {"status": "discarded"}


async def test_dlq_listing_filters_and_pages(
    engine: AsyncEngine, database_url: str, admin: httpx.AsyncClient
) -> None:
    await insert_events(engine, [uuid.uuid4() for _ in range(3)])
    dispatcher = Dispatcher(
        engine,
        make_settings(database_url, dispatcher_max_attempts=1),
        [Recorder("never", Journal(), fail=lambda e: True)],
        worker_id="d-1",
    )
    await dispatcher.drain()
    first = (await admin.get("/v1/admin/dlq", params={"limit": 2})).json()
    second = (await admin.get("/v1/admin/dlq", params={"limit": 2, "offset": 2})).json()
    assert first["total"] == second["total"] == 3
    assert len(first["entries"]) == 2
    assert len(second["entries"]) == 1
    ids = [e["id"] for e in first["entries"] + second["entries"]]
    assert len(set(ids)) == 3
    assert (await admin.get("/v1/admin/dlq", params={"source": "campaigns"})).json()["total"] == 0
    bad = await admin.get("/v1/admin/dlq", params={"status": "lost"})
    assert bad.status_code == 422


# -- leases ----------------------------------------------------------------------------------


async def test_rows_of_a_dead_dispatcher_are_redelivered_after_the_lease(
    engine: AsyncEngine, database_url: str
) -> None:
    contacts = [uuid.uuid4() for _ in range(4)]
    ids = await insert_events(engine, [contacts[n % 4] for n in range(12)])
    # A dispatcher claims the first rows and dies without processing them.
    async with make_sessionmaker(engine)() as session, session.begin():
        ghost = await outbox.claim(session, worker_id="ghost", batch_size=5, lease_seconds=300)
    assert [r.id for r in ghost] == ids[:5]

    journal = Journal()
    live = Dispatcher(engine, make_settings(database_url), [Recorder("r", journal)], worker_id="l")
    # Leased rows are not taken, and neither are later events of the same contacts.
    assert await live.drain() == 0
    assert journal.calls == []

    async with engine.begin() as conn:  # the lease runs out
        await conn.execute(
            text("UPDATE event_outbox SET locked_until = now() - interval '1 second'")
        )
    assert await live.drain() == 12
    assert Counter(c.outbox_id for c in journal.calls) == Counter(ids)
    assert_per_contact_order(
        journal.calls,
        {c: [i for n, i in enumerate(ids) if n % 4 == k] for k, c in enumerate(contacts)},
    )
    # The ghost's late attempt to finish is refused: its claim is no longer valid.
    async with make_sessionmaker(engine)() as session, session.begin():
        assert not await outbox.complete(session, ghost[0].token, ghost[0].id, consumers_done=[])


async def test_a_restarted_worker_takes_back_its_own_leases_at_once(
    engine: AsyncEngine, database_url: str
) -> None:
    ids = await insert_events(engine, [uuid.uuid4() for _ in range(3)])
    async with make_sessionmaker(engine)() as session, session.begin():
        await outbox.claim(session, worker_id="w-1", batch_size=10, lease_seconds=300)
    journal = Journal()
    dispatcher = Dispatcher(
        engine, make_settings(database_url), [Recorder("r", journal)], worker_id="w-1"
    )
    await dispatcher.start()
    try:
        await wait_until(lambda: _all_processed(engine, 3), timeout=30)
    finally:
        await dispatcher.stop()
    assert sorted(c.outbox_id for c in journal.calls) == ids


async def test_a_stopping_dispatcher_releases_what_it_did_not_start(
    engine: AsyncEngine, database_url: str
) -> None:
    contact = uuid.uuid4()
    await insert_events(engine, [contact] * 5)
    started = asyncio.Event()
    gate = asyncio.Event()

    async def hold() -> None:
        started.set()
        await gate.wait()

    journal = Journal()
    dispatcher = Dispatcher(
        engine, make_settings(database_url), [Recorder("r", journal, pause=hold)], worker_id="w"
    )
    await dispatcher.start()
    await asyncio.wait_for(started.wait(), 30)
    stopping = asyncio.create_task(dispatcher.stop())
    await asyncio.sleep(0.05)
    gate.set()
    await stopping
    rows = await outbox_rows(engine)
    assert sum(r["processed_at"] is not None for r in rows.values()) == 1
    assert all(r["locked_until"] is None for r in rows.values())
    assert len(journal.calls) == 1


# -- wake-ups, lag, retention ----------------------------------------------------------------


async def test_notify_wakes_an_idle_dispatcher(engine: AsyncEngine, database_url: str) -> None:
    journal = Journal()
    dispatcher = Dispatcher(
        engine,
        make_settings(database_url, dispatcher_poll_seconds=60, dispatcher_listen=True),
        [Recorder("r", journal)],
        worker_id="w",
    )
    await dispatcher.start()
    try:
        await wait_until(lambda: _is_listening(dispatcher), timeout=30)
        await asyncio.sleep(0.3)  # the catch-up round after connecting is over
        contact = uuid.uuid4()
        await insert_events(engine, [contact])
        async with make_sessionmaker(engine)() as session, session.begin():
            await outbox.notify_outbox(session)
        await wait_until(lambda: _all_processed(engine, 1), timeout=5)
    finally:
        await dispatcher.stop()
    assert len(journal.calls) == 1


async def _is_listening(dispatcher: Dispatcher) -> bool:
    return dispatcher.listening


async def test_lag_counts_pending_rows_and_degrades_health(
    engine: AsyncEngine, database_url: str
) -> None:
    async with make_sessionmaker(engine)() as session:
        assert await outbox.outbox_lag(session) == (0, 0.0)
    await insert_events(engine, [uuid.uuid4() for _ in range(4)])
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE event_outbox SET created_at = now() - interval '10 minutes'")
        )
    async with make_sessionmaker(engine)() as session:
        pending, age = await outbox.outbox_lag(session)
    assert pending == 4
    assert 600 <= age < 660

    api = create_api(
        Hogsend(), make_settings(database_url, dispatcher_lag_threshold_seconds=120), engine=engine
    )
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/v1/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "degraded"
        assert body["dispatcher"]["pending"] == 4
        assert body["dispatcher"]["lagSeconds"] >= 600
        assert body["dispatcher"]["dead"] == 0
        # readiness is about this API process, not the dispatchers' backlog
        assert (await client.get("/v1/ready")).status_code == 200
        await Dispatcher(engine, make_settings(database_url), [], worker_id="w").drain()
        response = await client.get("/v1/health")
        assert response.status_code == 200
        assert response.json()["dispatcher"] == {"pending": 0, "lagSeconds": 0, "dead": 0}


async def test_metrics_report_the_outbox(
    engine: AsyncEngine, database_url: str, admin: httpx.AsyncClient
) -> None:
    await insert_events(engine, [uuid.uuid4() for _ in range(3)])
    await Dispatcher(
        engine, make_settings(database_url, dispatcher_batch_size=1), [], worker_id="w"
    ).run_once()
    async with make_sessionmaker(engine)() as session, session.begin():
        await outbox.claim(session, worker_id="other", batch_size=1, lease_seconds=60)
    response = await admin.get("/v1/admin/metrics/dispatcher")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["pending"] == 2
    assert body["leased"] == 1
    assert body["retrying"] == 0
    assert body["dead"] == 0
    assert body["processedLastMinute"] == 1
    assert body["processedLastHour"] == 1
    assert body["oldestPendingAt"] is not None
    assert body["lagSeconds"] >= 0
    assert body["lagThresholdSeconds"] == 300
    assert body["lagging"] is False


async def test_sweep_deletes_processed_rows_past_retention(
    engine: AsyncEngine, database_url: str
) -> None:
    await insert_events(engine, [uuid.uuid4() for _ in range(4)])
    keep = Dispatcher(engine, make_settings(database_url), [], worker_id="w")
    assert await keep.drain() == 4
    assert await keep.sweep() == 0  # a day of retention by default
    await insert_events(engine, [uuid.uuid4()])  # still pending: never swept
    sweeper = Dispatcher(
        engine, make_settings(database_url, dispatcher_retention_seconds=0), [], worker_id="w"
    )
    assert await sweeper.sweep() == 4
    assert len(await outbox_rows(engine)) == 1


async def test_an_event_committed_late_waits_for_its_contacts_event_in_flight(
    engine: AsyncEngine, database_url: str
) -> None:
    """Ids are taken at insert, rows appear at commit: a lower id can show up later."""
    contact = uuid.uuid4()
    late = await engine.connect()
    try:
        await late.begin()
        await late.execute(
            text(
                "INSERT INTO event_outbox (event_id, contact_id, contact_key, event)"
                " VALUES (:e, :c, 'k', 'late')"
            ),
            {"e": uuid.uuid4(), "c": contact},
        )
        [early] = await insert_events(engine, [contact])
        async with make_sessionmaker(engine)() as session, session.begin():
            [held] = await outbox.claim(session, worker_id="a", batch_size=10, lease_seconds=60)
        assert held.id == early
        await late.commit()
    finally:
        await late.close()
    other = Dispatcher(engine, make_settings(database_url), [], worker_id="b")
    # the contact has an event in flight at "a": its other event waits, whatever its id
    assert await other.drain() == 0
    async with make_sessionmaker(engine)() as session, session.begin():
        assert await outbox.complete(session, held.token, held.id, consumers_done=[])
    assert await other.drain() == 1


async def test_claims_take_turns(engine: AsyncEngine) -> None:
    await insert_events(engine, [uuid.uuid4()])
    async with engine.connect() as holder:
        await holder.begin()
        await holder.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": outbox.CLAIM_LOCK})

        async def claim() -> int:
            async with make_sessionmaker(engine)() as session, session.begin():
                rows = await outbox.claim(session, worker_id="w", batch_size=5, lease_seconds=5)
            return len(rows)

        waiting = asyncio.create_task(claim())
        done, _ = await asyncio.wait({waiting}, timeout=0.3)
        assert not done, "a claim ran while another held the claim lock"
        await holder.commit()
    assert await asyncio.wait_for(waiting, 10) == 1


async def test_a_consumer_that_breaks_the_connection_is_retried_like_any_failure(
    engine: AsyncEngine, database_url: str
) -> None:
    contacts = [uuid.uuid4(), uuid.uuid4()]
    broken, fine = await insert_events(engine, contacts)
    journal = Journal()
    killed: list[int] = []

    class Saboteur:
        name = "saboteur"

        async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
            if event.outbox_id == broken and not killed:
                killed.append(event.outbox_id)
                await session.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))

    dispatcher = Dispatcher(
        engine,
        make_settings(database_url, dispatcher_concurrency=1),
        [Saboteur(), Recorder("after", journal)],
        worker_id="w",
    )
    await dispatcher.run_once()
    rows = await outbox_rows(engine)
    assert rows[broken]["attempts"] == 1
    assert rows[broken]["last_error"].startswith("saboteur: ")
    assert rows[fine]["processed_at"] is not None  # same lane, after the broken connection

    async def drained() -> bool:
        await dispatcher.drain()
        return await processed_count(engine) == 2

    await wait_until(drained, timeout=30)
    assert sorted(c.outbox_id for c in journal.calls) == [broken, fine]


# -- several events per transaction ------------------------------------------------------


class TxRecorder:
    """Journals the transaction each event is consumed in, and writes an effect row."""

    def __init__(
        self,
        name: str,
        fail: Callable[[DispatchedEvent], bool] | None = None,
        calls: list[tuple[str, int]] | None = None,
    ) -> None:
        self.name = name
        self.fail = fail
        self.calls = calls if calls is not None else []
        self.txids: dict[int, list[int]] = defaultdict(list)

    async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
        txid = (await session.execute(text("SELECT txid_current()"))).scalar_one()
        self.txids[event.outbox_id].append(int(txid))
        self.calls.append((self.name, event.outbox_id))
        await session.execute(
            text(
                "INSERT INTO batch_effects (event_id, consumer) VALUES (:e, :c) "
                "ON CONFLICT DO NOTHING"
            ),
            {"e": event.event_id, "c": self.name},
        )
        if self.fail is not None and self.fail(event):
            raise RuntimeError(f"{self.name} refuses outbox row {event.outbox_id}")


@pytest.fixture
async def effects(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE TABLE batch_effects (event_id uuid, consumer text, "
                "PRIMARY KEY (event_id, consumer))"
            )
        )


async def effect_count(engine: AsyncEngine) -> Counter[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT consumer FROM batch_effects"))
        return Counter(row[0] for row in rows)


@pytest.mark.usefixtures("effects")
async def test_events_of_several_contacts_share_a_transaction(
    engine: AsyncEngine, database_url: str
) -> None:
    contacts = [uuid.uuid4() for _ in range(6)]
    ids = await insert_events(engine, [*contacts, *contacts])  # two events each
    recorder = TxRecorder("effect")
    dispatcher = Dispatcher(
        engine,
        make_settings(database_url, dispatcher_concurrency=2, dispatcher_events_per_transaction=4),
        [recorder],
        worker_id="w",
    )
    assert await dispatcher.run_once() == 12
    assert await processed_count(engine) == 12
    transactions = {txids[0] for txids in recorder.txids.values()}
    # 12 events on 2 lanes, at least 4 per transaction (whole contacts): 3 or 4 commits.
    assert 2 <= len(transactions) <= 4
    assert all(len(txids) == 1 for txids in recorder.txids.values())
    assert (await effect_count(engine))["effect"] == 12
    rows = await outbox_rows(engine)
    assert all(rows[i]["consumers_done"] == ["effect"] for i in ids)
    assert all(rows[i]["locked_until"] is None for i in ids)


@pytest.mark.usefixtures("effects")
async def test_a_failure_in_a_shared_transaction_holds_back_only_its_contact(
    engine: AsyncEngine, database_url: str
) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ids = await insert_events(engine, [a, b, a, c, a, b])
    failing = ids[2]  # a's second event
    calls: list[tuple[str, int]] = []
    first = TxRecorder("first", calls=calls)
    flaky = TxRecorder(
        "flaky", fail=lambda e: e.outbox_id == failing and e.attempt == 1, calls=calls
    )
    dispatcher = Dispatcher(
        engine,
        make_settings(
            database_url,
            dispatcher_concurrency=1,
            dispatcher_events_per_transaction=10,
            dispatcher_backoff_base_seconds=0.2,
            dispatcher_backoff_max_seconds=0.2,
        ),
        [first, flaky],
        worker_id="w",
    )
    assert await dispatcher.run_once() == 6
    rows = await outbox_rows(engine)
    # one transaction for the whole batch
    assert len({txids[0] for txids in first.txids.values()}) == 1
    # a: the first event is done, the failing one recorded its progress, the last waits
    assert rows[ids[0]]["processed_at"] is not None
    assert rows[failing]["processed_at"] is None
    assert rows[failing]["attempts"] == 1
    assert rows[failing]["consumers_done"] == ["first"]
    assert rows[failing]["last_error"].startswith("flaky: RuntimeError")
    assert rows[ids[4]]["processed_at"] is None
    assert rows[ids[4]]["attempts"] == 0
    assert rows[ids[4]]["locked_until"] is None
    assert ids[4] not in first.txids  # never reached
    # the other contacts' events were processed in the same transaction
    for i in (ids[1], ids[3], ids[5]):
        assert rows[i]["processed_at"] is not None
        assert rows[i]["consumers_done"] == ["first", "flaky"]
    # the failed consumer's savepoint rolled back its effect, the first consumer's stays
    assert await effect_count(engine) == Counter({"first": 5, "flaky": 4})

    async def drained() -> bool:
        await dispatcher.drain()
        return await processed_count(engine) == 6

    await wait_until(drained, timeout=30)
    assert len(first.txids[failing]) == 1  # "first" was not run again on the retry
    assert len(flaky.txids[failing]) == 2
    assert await effect_count(engine) == Counter({"first": 6, "flaky": 6})
    # a's last event ran after its failed one succeeded (maybe in the same transaction)
    assert calls.index(("first", ids[4])) > len(calls) - 1 - calls[::-1].index(("flaky", failing))


@pytest.mark.usefixtures("effects")
async def test_a_dead_event_in_a_shared_transaction_lets_its_contact_go_on(
    engine: AsyncEngine, database_url: str
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    ids = await insert_events(engine, [a, a, b])
    dispatcher = Dispatcher(
        engine,
        make_settings(
            database_url,
            dispatcher_concurrency=1,
            dispatcher_events_per_transaction=10,
            dispatcher_max_attempts=1,
        ),
        [TxRecorder("doomed", fail=lambda e: e.outbox_id == ids[0])],
        worker_id="w",
    )
    assert await dispatcher.run_once() == 3
    rows = await outbox_rows(engine)
    assert rows[ids[0]]["dead_at"] is not None
    assert rows[ids[1]]["processed_at"] is not None
    assert rows[ids[2]]["processed_at"] is not None
    async with engine.connect() as conn:
        dead = await conn.scalar(text("SELECT count(*) FROM dead_letter_queue"))
    assert dead == 1


@pytest.mark.usefixtures("effects")
async def test_a_lost_claim_in_a_shared_transaction_keeps_nothing_of_it(
    engine: AsyncEngine, database_url: str
) -> None:
    contacts = [uuid.uuid4() for _ in range(4)]
    ids = await insert_events(engine, contacts)
    stolen = ids[1]

    class Thief(TxRecorder):
        async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
            await super().consume(event, session)
            if event.outbox_id == stolen and len(self.txids[stolen]) == 1:
                # Another dispatcher claims the row meanwhile (our lease ran out).
                async with engine.begin() as conn:
                    await conn.execute(
                        text(
                            "UPDATE event_outbox SET claimed_by = 'other', claimed_at = now(), "
                            "locked_until = now() + interval '1 minute' WHERE id = :id"
                        ),
                        {"id": stolen},
                    )

    thief = Thief("effect")
    dispatcher = Dispatcher(
        engine,
        make_settings(database_url, dispatcher_concurrency=1, dispatcher_events_per_transaction=10),
        [thief],
        worker_id="w",
    )
    assert await dispatcher.run_once() == 4
    rows = await outbox_rows(engine)
    for i in ids:
        if i == stolen:
            assert rows[i]["processed_at"] is None
            assert rows[i]["claimed_by"] == "other"
        else:
            assert rows[i]["processed_at"] is not None
            # The shared transaction was rolled back; each event then ran on its own.
            assert len(thief.txids[i]) == 2
    # The thief's row's effect was rolled back both times; the others' stand once each.
    assert (await effect_count(engine))["effect"] == 3


class Uninterested:
    """A consumer that wants no event (so it never runs and writes nothing)."""

    name = "uninterested"

    def wants(self, event: DispatchedEvent) -> bool:
        return False

    async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
        raise AssertionError("not wanted, never called")


@pytest.mark.usefixtures("effects")
async def test_an_event_alone_with_one_interested_consumer_runs_it_without_a_savepoint(
    engine: AsyncEngine, database_url: str
) -> None:
    from sqlalchemy import event as sa_event

    a, b = uuid.uuid4(), uuid.uuid4()
    ids = await insert_events(engine, [a, b])
    failing = ids[0]
    flaky = TxRecorder("flaky", fail=lambda e: e.outbox_id == failing and e.attempt == 1)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa_event.listen(engine.sync_engine, "before_cursor_execute", record)
    dispatcher = Dispatcher(
        engine,
        make_settings(database_url, dispatcher_events_per_transaction=1),
        [Uninterested(), flaky],
        worker_id="w",
    )
    try:
        assert await dispatcher.run_once() == 2
    finally:
        sa_event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert not [s for s in statements if "SAVEPOINT" in s.upper()]
    rows = await outbox_rows(engine)
    # the failed attempt's write was rolled back with its transaction; the failure and
    # the progress of the consumer before it are recorded, as a savepoint would have
    assert rows[failing]["processed_at"] is None
    assert rows[failing]["attempts"] == 1
    assert rows[failing]["consumers_done"] == ["uninterested"]
    assert rows[failing]["last_error"].startswith("flaky: RuntimeError")
    assert rows[failing]["locked_until"] is None
    assert rows[ids[1]]["processed_at"] is not None
    assert rows[ids[1]]["consumers_done"] == ["uninterested", "flaky"]
    assert await effect_count(engine) == Counter({"flaky": 1})

    async def drained() -> bool:
        await dispatcher.drain()
        return await processed_count(engine) == 2

    await wait_until(drained, timeout=30)
    assert len(flaky.txids[failing]) == 2  # called once per attempt
    assert await effect_count(engine) == Counter({"flaky": 2})


class SavepointFree(TxRecorder):
    """A recorder that says it needs no savepoint (consumer_needs_savepoint)."""

    needs_savepoint = False


def _savepoints(engine: AsyncEngine) -> tuple[list[str], Callable[[], None]]:
    """Start journaling the SAVEPOINT statements sent on ``engine``; returns the journal
    and the function that stops it."""
    from sqlalchemy import event as sa_event

    found: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.upper().startswith("SAVEPOINT"):
            found.append(statement)

    sa_event.listen(engine.sync_engine, "before_cursor_execute", record)
    return found, lambda: sa_event.remove(engine.sync_engine, "before_cursor_execute", record)


@pytest.mark.usefixtures("effects")
async def test_consumers_that_need_no_savepoint_share_a_transaction_without_any(
    engine: AsyncEngine, database_url: str
) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ids = await insert_events(engine, [a, b, a, c, a, b])
    first, second = SavepointFree("first"), SavepointFree("second")
    dispatcher = Dispatcher(
        engine,
        make_settings(database_url, dispatcher_concurrency=1, dispatcher_events_per_transaction=10),
        [first, second],
        worker_id="w",
    )
    savepoints, stop = _savepoints(engine)
    try:
        assert await dispatcher.run_once() == 6
    finally:
        stop()
    assert savepoints == []
    assert len({txid for txids in first.txids.values() for txid in txids}) == 1
    rows = await outbox_rows(engine)
    assert all(rows[i]["consumers_done"] == ["first", "second"] for i in ids)
    assert all(rows[i]["processed_at"] is not None for i in ids)
    assert await effect_count(engine) == Counter({"first": 6, "second": 6})


@pytest.mark.usefixtures("effects")
async def test_a_failure_without_savepoints_redoes_the_transaction_with_them(
    engine: AsyncEngine, database_url: str
) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ids = await insert_events(engine, [a, b, a, c, a, b])
    failing = ids[2]  # a's second event
    first = SavepointFree("first")
    flaky = SavepointFree("flaky", fail=lambda e: e.outbox_id == failing and e.attempt == 1)
    dispatcher = Dispatcher(
        engine,
        make_settings(
            database_url,
            dispatcher_concurrency=1,
            dispatcher_events_per_transaction=10,
            dispatcher_backoff_base_seconds=0.2,
            dispatcher_backoff_max_seconds=0.2,
        ),
        [first, flaky],
        worker_id="w",
    )
    savepoints, stop = _savepoints(engine)
    try:
        assert await dispatcher.run_once() == 6
    finally:
        stop()
    # The first pass (no savepoint) was rolled back at the failure; the second ran each
    # consumer in its savepoint, in one transaction of its own.
    optimistic, careful = first.txids[ids[0]]
    assert optimistic != careful
    assert {txids[-1] for txids in first.txids.values()} == {careful}
    # A savepoint per consumer for each of the five events run (a's last one waits
    # behind the failed one).
    assert len(savepoints) == 2 * 5
    assert len(first.txids[failing]) == 2  # the price: run again in the same attempt
    rows = await outbox_rows(engine)
    # What the savepoints record: the same as a transaction that had them from the start.
    assert rows[failing]["processed_at"] is None
    assert rows[failing]["attempts"] == 1
    assert rows[failing]["consumers_done"] == ["first"]
    assert rows[failing]["last_error"].startswith("flaky: RuntimeError")
    assert rows[ids[4]]["processed_at"] is None
    assert rows[ids[4]]["attempts"] == 0
    assert rows[ids[4]]["locked_until"] is None
    for i in (ids[0], ids[1], ids[3], ids[5]):
        assert rows[i]["processed_at"] is not None
        assert rows[i]["consumers_done"] == ["first", "flaky"]
    # Nothing of the first pass stands: the effects are the careful pass's.
    assert await effect_count(engine) == Counter({"first": 5, "flaky": 4})

    async def drained() -> bool:
        await dispatcher.drain()
        return await processed_count(engine) == 6

    await wait_until(drained, timeout=30)
    assert len(first.txids[failing]) == 2  # "first" was not run again on the retry
    assert await effect_count(engine) == Counter({"first": 6, "flaky": 6})


@pytest.mark.usefixtures("effects")
async def test_an_event_alone_redoes_a_failed_savepoint_free_attempt_with_savepoints(
    engine: AsyncEngine, database_url: str
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    ids = await insert_events(engine, [a, b])
    failing = ids[0]
    first = SavepointFree("first")
    flaky = SavepointFree("flaky", fail=lambda e: e.outbox_id == failing and e.attempt == 1)
    dispatcher = Dispatcher(
        engine,
        make_settings(database_url, dispatcher_events_per_transaction=1),
        [first, flaky],
        worker_id="w",
    )
    savepoints, stop = _savepoints(engine)
    try:
        assert await dispatcher.run_once() == 2
    finally:
        stop()
    # Only the failed event's second pass had savepoints (one per consumer).
    assert len(savepoints) == 2
    assert len(first.txids[failing]) == 2
    assert len(first.txids[ids[1]]) == 1
    rows = await outbox_rows(engine)
    assert rows[failing]["attempts"] == 1
    assert rows[failing]["consumers_done"] == ["first"]
    assert rows[failing]["last_error"].startswith("flaky: RuntimeError")
    assert rows[ids[1]]["processed_at"] is not None
    assert rows[ids[1]]["consumers_done"] == ["first", "flaky"]
    assert await effect_count(engine) == Counter({"first": 2, "flaky": 1})
