"""Event ingest on real Postgres: one transaction, idempotency, batches, concurrency."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hogsend.core.identity import Identity, IdentityConflict
from hogsend.core.ingest import EventInput, IngestResult
from hogsend.db.engine import libpq_url, make_async_engine, make_sessionmaker
from hogsend.db.repos import contacts as contacts_repo
from hogsend.db.repos import events as events_repo
from hogsend.db.repos.events import (
    ingest_batch,
    ingest_event,
    ingest_event_fast,
    is_transient_error,
)

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url, pool_size=30)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


def event(name: str = "clicked", **kwargs: Any) -> EventInput:
    identity_keys = {k: kwargs.pop(k) for k in ("user_id", "email", "anonymous_id") if k in kwargs}
    identity = Identity(**identity_keys) if identity_keys else None
    return EventInput(name=name, identity=identity, **kwargs)


async def one(
    sessions: async_sessionmaker[AsyncSession], item: EventInput, now: datetime = T0
) -> IngestResult:
    async with sessions() as session, session.begin():
        return await ingest_event(session, item, now=now)


async def batch(
    sessions: async_sessionmaker[AsyncSession], items: Sequence[EventInput], now: datetime = T0
) -> list[IngestResult]:
    async with sessions() as session, session.begin():
        return await ingest_batch(session, items, now=now)


async def rows(engine: AsyncEngine, sql: str, **params: object) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(text(sql), params)]


async def wait_for_lock_waiter(engine: AsyncEngine) -> None:
    """Until some other backend of this database is blocked on a lock."""
    for _ in range(500):
        waiting = await rows(
            engine,
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock'",
        )
        if waiting:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("nobody ever waited for the lock")


# --------------------------------------------------------------------------- single


async def test_an_event_is_stored_with_its_contact_outbox_row_and_lists(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    occurred = datetime(2026, 2, 28, 23, 0, tzinfo=UTC)
    result = await one(
        sessions,
        event(
            "signed_up",
            user_id="u-1",
            email="Sam@Example.com",
            properties={"plan": "pro", "n": 2},
            contact_properties={"name": "Sam"},
            lists={"news": True, "offers": False},
            idempotency_key="k-1",
            occurred_at=occurred,
            source="api",
        ),
    )
    assert result.status == "stored"
    assert result.contact_key == "u-1"
    [stored] = await rows(engine, "SELECT * FROM user_events")
    assert stored["id"] == result.event_id
    assert stored["contact_id"] == result.contact_id
    assert stored["user_id"] == "u-1"
    assert stored["event"] == "signed_up"
    assert stored["properties"] == {"plan": "pro", "n": 2}
    assert stored["occurred_at"] == occurred
    assert stored["received_at"] == T0
    assert stored["source"] == "api"
    [outbox] = await rows(engine, "SELECT * FROM event_outbox")
    assert outbox["event_id"] == result.event_id
    assert outbox["contact_key"] == "u-1"
    assert outbox["processed_at"] is None
    [contact] = await rows(engine, "SELECT * FROM contacts")
    assert contact["email"] == "Sam@example.com"
    assert contact["properties"] == {"name": "Sam"}
    lists = await rows(engine, "SELECT list_id, subscribed, source FROM list_subscriptions")
    assert sorted((r["list_id"], r["subscribed"], r["source"]) for r in lists) == [
        ("news", True, "api"),
        ("offers", False, "api"),
    ]


async def test_occurred_at_defaults_to_the_ingest_time(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    await one(sessions, event(anonymous_id="a"))
    [stored] = await rows(engine, "SELECT occurred_at, received_at FROM user_events")
    assert stored == {"occurred_at": T0, "received_at": T0}


async def test_last_seen_moves_in_minute_steps_and_updated_at_only_on_change(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    await one(sessions, event(user_id="s"))
    [created] = await rows(engine, "SELECT last_seen_at, updated_at FROM contacts")
    assert created["last_seen_at"] == T0
    await one(sessions, event(user_id="s"), now=T0 + timedelta(seconds=30))
    [soon] = await rows(engine, "SELECT last_seen_at, updated_at FROM contacts")
    assert soon == created
    later = T0 + timedelta(minutes=5)
    await batch(sessions, [event(user_id="s")], now=later)
    [moved] = await rows(engine, "SELECT last_seen_at, updated_at FROM contacts")
    assert moved == {"last_seen_at": later, "updated_at": created["updated_at"]}
    await one(sessions, event(user_id="s", contact_properties={"a": 1}), now=later)
    [patched] = await rows(engine, "SELECT last_seen_at, updated_at FROM contacts")
    assert patched == {"last_seen_at": later, "updated_at": later}


async def test_a_duplicate_key_returns_the_original_and_changes_nothing(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    first = await one(
        sessions,
        event(user_id="u-1", contact_properties={"plan": "free"}, idempotency_key="dup"),
    )
    before = await rows(engine, "SELECT * FROM contacts")
    later = T0 + timedelta(hours=2)
    again = await one(
        sessions,
        event(
            "other",
            user_id="u-1",
            email="new@x.io",
            contact_properties={"plan": "pro"},
            lists={"news": True},
            idempotency_key="dup",
        ),
        now=later,
    )
    assert again.status == "duplicate"
    assert again.event_id == first.event_id
    assert again.contact_id == first.contact_id
    assert await rows(engine, "SELECT * FROM contacts") == before  # properties, keys, times
    assert len(await rows(engine, "SELECT id FROM user_events")) == 1
    assert len(await rows(engine, "SELECT id FROM event_outbox")) == 1
    assert await rows(engine, "SELECT 1 FROM list_subscriptions") == []
    # A duplicate of an event whose contact merged since reports the survivor.
    await contacts_repo_resolve(
        sessions, now=T0 - timedelta(days=1), user_id="u-0", email="zed@x.io"
    )
    await contacts_repo_resolve(sessions, user_id="u-1", email="zed@x.io")
    merged = await one(sessions, event(user_id="u-1", idempotency_key="dup"))
    assert merged.status == "duplicate"
    assert merged.event_id == first.event_id
    assert merged.contact_key == "u-0"


async def contacts_repo_resolve(
    sessions: async_sessionmaker[AsyncSession], now: datetime = T0, **keys: str
) -> None:
    async with sessions() as session, session.begin():
        await contacts_repo.resolve_contact(session, Identity(**keys), now=now)


async def test_conflicts_are_reported_on_the_ingest_result(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    await one(sessions, event(user_id="u-1", email="a@x.io"))
    result = await one(sessions, event(user_id="u-2", email="a@x.io"))
    assert result.status == "stored"
    assert result.contact_key == "u-1"
    assert result.conflicts == (IdentityConflict(kind="external", given="u-2", existing="u-1"),)


async def test_internal_events_by_contact_id_never_create_or_stamp_keys(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """The reference's resolved-key feedback loop: re-ingesting by key minted contacts."""
    email_only = await one(sessions, event(email="solo@x.io"))
    assert email_only.contact_id is not None
    [before] = await rows(engine, "SELECT * FROM contacts")
    internal = await one(
        sessions,
        EventInput(
            name="bucket:entered:trial",
            contact_id=email_only.contact_id,
            source="bucket",
        ),
        now=T0 + timedelta(days=1),
    )
    assert internal.status == "stored"
    assert internal.contact_id == email_only.contact_id
    assert internal.contact_key == str(email_only.contact_id)
    assert await rows(engine, "SELECT * FROM contacts") == [before]  # not even last_seen_at

    # After a merge, the loser's id leads to the survivor.
    await one(sessions, event(user_id="boss", email="boss@x.io"))
    await contacts_repo_resolve(sessions, user_id="boss", email="solo@x.io")
    followed = await one(sessions, EventInput(name="tick", contact_id=email_only.contact_id))
    assert followed.status == "stored"
    assert followed.contact_key == "boss"
    unknown = await one(sessions, EventInput(name="tick", contact_id=uuid.uuid4()))
    assert unknown.status == "rejected"
    assert unknown.reason is not None


async def test_parallel_duplicates_store_exactly_one_event(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    results = await asyncio.gather(
        *(
            one(
                sessions,
                event(user_id="racer", contact_properties={"i": i}, idempotency_key="same"),
            )
            for i in range(20)
        )
    )
    statuses = Counter(r.status for r in results)
    assert statuses == {"stored": 1, "duplicate": 19}
    assert len({r.event_id for r in results}) == 1
    assert len(await rows(engine, "SELECT id FROM user_events")) == 1
    assert len(await rows(engine, "SELECT id FROM event_outbox")) == 1
    [winner] = [r for r in results if r.status == "stored"]
    [contact] = await rows(engine, "SELECT properties FROM contacts")
    assert contact["properties"] == {"i": results.index(winner)}  # only the winner's patch


async def test_parallel_ingests_for_a_new_identity_create_one_contact(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    results = await asyncio.gather(
        *(one(sessions, event(f"e{i}", user_id="newbie", email="newbie@x.io")) for i in range(20))
    )
    assert all(r.status == "stored" for r in results)
    contacts = await rows(engine, "SELECT id FROM contacts")
    assert len(contacts) == 1
    assert {r.contact_id for r in results} == {contacts[0]["id"]}
    assert len(await rows(engine, "SELECT id FROM user_events")) == 20


# --------------------------------------------------------------------------- batch


async def test_batch_with_new_existing_duplicate_and_in_batch_duplicate_items(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    old = await one(sessions, event(user_id="old", idempotency_key="seen"))
    items = [
        event("a", user_id="old", contact_properties={"x": 1}),  # existing contact
        event("b", email="fresh@x.io", idempotency_key="k-b", lists={"news": True}),  # new
        event("c", user_id="old", idempotency_key="seen"),  # stored before
        event("d", email="FRESH@x.io", idempotency_key="k-b"),  # same key earlier in batch
        event("e", email="fresh@x.io", contact_properties={"y": 2}),  # same new contact
        event("f", anonymous_id="v", properties={"when": datetime(2026, 1, 1, tzinfo=UTC)}),
        EventInput(name="g", contact_id=uuid.uuid4()),  # unknown contact
        event("h", properties={"bad": object()}, user_id="old"),  # not JSON
    ]
    results = await batch(sessions, items)
    statuses = [r.status for r in results]
    assert statuses == [
        "stored",
        "stored",
        "duplicate",
        "duplicate",
        "stored",
        "stored",
        "rejected",
        "rejected",
    ]
    assert results[2].event_id == old.event_id
    assert results[3].event_id == results[1].event_id
    assert results[1].contact_id == results[4].contact_id
    assert results[0].contact_id == old.contact_id
    assert results[6].reason is not None
    assert results[7].reason is not None
    assert "JSON" in results[7].reason

    names = [r["event"] for r in await rows(engine, "SELECT event FROM user_events")]
    assert sorted(names) == ["a", "b", "clicked", "e", "f"]
    outbox = await rows(engine, "SELECT event FROM event_outbox ORDER BY id")
    assert [r["event"] for r in outbox] == ["clicked", "a", "b", "e", "f"]  # item order
    contacts = {
        r["id"]: r for r in await rows(engine, "SELECT id, email, properties FROM contacts")
    }
    assert len(contacts) == 3
    assert contacts[results[0].contact_id]["properties"] == {"x": 1}
    assert contacts[results[1].contact_id]["properties"] == {"y": 2}
    [when] = await rows(engine, "SELECT properties FROM user_events WHERE event = 'f'")
    assert when["properties"] == {"when": "2026-01-01T00:00:00+00:00"}
    assert await rows(engine, "SELECT list_id FROM list_subscriptions") == [{"list_id": "news"}]


async def test_batch_links_and_merges_through_the_slow_path(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    await one(sessions, event(anonymous_id="visitor"))
    await one(sessions, event(user_id="u-7", email="seven@x.io"))
    results = await batch(
        sessions,
        [
            event("link", anonymous_id="visitor", email="v@x.io"),  # fill-in link
            event("seen", anonymous_id="visitor"),
            event("merge", user_id="u-7", anonymous_id="visitor", idempotency_key="m"),
            event("after", email="v@x.io"),
        ],
    )
    assert [r.status for r in results] == ["stored"] * 4
    # The merge folded the visitor into u-7; the earlier link attached v@x.io to the visitor.
    assert results[2].contact_key == "u-7"
    live = await rows(
        engine, "SELECT id, external_id, email FROM contacts WHERE deleted_at IS NULL"
    )
    assert [(r["external_id"], r["email"]) for r in live] == [("u-7", "seven@x.io")]
    keys = await rows(engine, "SELECT DISTINCT contact_id, user_id FROM user_events")
    assert keys == [{"contact_id": live[0]["id"], "user_id": "u-7"}]
    found = await one(sessions, event(email="v@x.io"))
    assert found.contact_id == live[0]["id"]


async def test_a_rejected_owner_lets_the_next_item_with_its_key_through(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    results = await batch(
        sessions,
        [
            EventInput(name="x", contact_id=uuid.uuid4(), idempotency_key="shared"),
            event("y", user_id="u", idempotency_key="shared"),
            event("z", user_id="u", idempotency_key="shared"),
        ],
    )
    assert [r.status for r in results] == ["rejected", "stored", "duplicate"]
    assert results[2].event_id == results[1].event_id


async def test_empty_batch(sessions: async_sessionmaker[AsyncSession]) -> None:
    assert await batch(sessions, []) == []


async def test_parallel_batches_with_overlapping_keys_and_people(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    def make_batch(seed: int) -> list[EventInput]:
        items = []
        for i in range(60):
            person = (i * 7 + seed) % 12
            items.append(
                event(
                    f"e{i % 5}",
                    user_id=f"user-{person}",
                    email=f"user-{person}@x.io" if person % 3 == 0 else None,
                    contact_properties={"last": seed},
                    idempotency_key=f"key-{(i + seed * 5) % 40}",
                )
            )
        return items

    async def run(seed: int) -> list[IngestResult]:
        for _attempt in range(5):
            try:
                return await batch(sessions, make_batch(seed))
            except Exception as exc:  # a deadlock between batches is retried by callers
                if not is_transient_error(exc):
                    raise
        raise AssertionError("kept deadlocking")

    all_results = await asyncio.gather(*(run(seed) for seed in range(6)))
    flat = [r for results in all_results for r in results]
    assert {r.status for r in flat} <= {"stored", "duplicate"}
    stored_rows = await rows(engine, "SELECT idempotency_key, id FROM user_events")
    keys = [r["idempotency_key"] for r in stored_rows]
    assert len(keys) == len(set(keys)) == 40
    by_key = {r["idempotency_key"]: r["id"] for r in stored_rows}
    for seed, results in enumerate(all_results):
        for item, result in zip(make_batch(seed), results, strict=True):
            assert result.event_id == by_key[item.idempotency_key]
    contacts = await rows(engine, "SELECT external_id FROM contacts WHERE deleted_at IS NULL")
    assert sorted(r["external_id"] for r in contacts) == sorted(f"user-{p}" for p in range(12))
    assert len(await rows(engine, "SELECT id FROM contacts")) == 12  # no deleted spares either
    outbox = await rows(engine, "SELECT event_id FROM event_outbox")
    assert sorted(r["event_id"] for r in outbox) == sorted(by_key.values())


# --------------------------------------------------------------------------- lost claims


async def test_a_batch_losing_a_claim_undoes_the_contact_it_created(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """A concurrent transaction stores the key after our duplicate check: we write nothing."""
    async with sessions() as first:
        await first.begin()
        winner = await ingest_batch(first, [event(user_id="w", idempotency_key="race")], now=T0)
        loser_task = asyncio.create_task(
            batch(
                sessions,
                [
                    event(
                        user_id="l",
                        contact_properties={"p": 1},
                        lists={"news": True},
                        idempotency_key="race",
                    ),
                    event("kept", user_id="k", contact_properties={"q": 1}),
                    event("gone", user_id="k", contact_properties={"q": 2}, idempotency_key="r2"),
                ],
            )
        )
        await wait_for_lock_waiter(engine)
        await first.commit()
    # The loser's "r2" is not contested: it stays stored with its patch.
    results = await loser_task
    assert results[0].status == "duplicate"
    assert results[0].event_id == winner[0].event_id
    assert [r.status for r in results[1:]] == ["stored", "stored"]
    contacts = await rows(engine, "SELECT external_id, properties FROM contacts ORDER BY 1")
    assert contacts == [
        {"external_id": "k", "properties": {"q": 2}},
        {"external_id": "w", "properties": {}},
    ]
    assert await rows(engine, "SELECT 1 FROM list_subscriptions") == []


async def test_a_batch_losing_a_claim_keeps_only_stored_patches_on_a_new_contact(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    async with sessions() as first:
        await first.begin()
        await ingest_batch(first, [event(user_id="w", idempotency_key="race")], now=T0)
        loser_task = asyncio.create_task(
            batch(
                sessions,
                [
                    event(user_id="n", contact_properties={"a": 1}, idempotency_key="race"),
                    event(user_id="n", contact_properties={"b": 2}),
                ],
            )
        )
        await wait_for_lock_waiter(engine)
        await first.commit()
    results = await loser_task
    assert [r.status for r in results] == ["duplicate", "stored"]
    [contact] = await rows(engine, "SELECT properties FROM contacts WHERE external_id = 'n'")
    assert contact["properties"] == {"b": 2}


async def test_a_link_whose_claim_loses_is_rolled_back(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    await one(sessions, event(anonymous_id="anon"))
    async with sessions() as first:
        await first.begin()
        await ingest_batch(first, [event(user_id="w", idempotency_key="race")], now=T0)
        loser_task = asyncio.create_task(
            batch(
                sessions,
                [event(anonymous_id="anon", user_id="would-link", idempotency_key="race")],
            )
        )
        await wait_for_lock_waiter(engine)
        await first.commit()
    [result] = await loser_task
    assert result.status == "duplicate"
    [anon] = await rows(engine, "SELECT external_id FROM contacts WHERE anonymous_id = 'anon'")
    assert anon["external_id"] is None
    assert await rows(engine, "SELECT 1 FROM contact_aliases") == []


async def test_a_single_ingest_racing_a_batch_for_a_key_changes_nothing(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    await one(sessions, event(user_id="u", contact_properties={"v": 0}))
    [before] = await rows(engine, "SELECT * FROM contacts")
    async with sessions() as first:
        await first.begin()
        await ingest_batch(first, [event(anonymous_id="w", idempotency_key="race")], now=T0)
        single = asyncio.create_task(
            one(
                sessions,
                event(user_id="u", contact_properties={"v": 1}, idempotency_key="race"),
                now=T0 + timedelta(hours=1),
            )
        )
        await wait_for_lock_waiter(engine)
        await first.commit()
    result = await single
    assert result.status == "duplicate"
    assert await rows(engine, "SELECT * FROM contacts WHERE id = :id", id=before["id"]) == [before]


async def test_a_batch_waits_for_a_concurrent_new_contact_and_then_links_it(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    """Both think the person is new; the second waits on the first's insert and reuses it."""
    async with sessions() as first:
        await first.begin()
        created = await ingest_batch(first, [event(user_id="both")], now=T0)
        second = asyncio.create_task(
            batch(
                sessions,
                [
                    event("plain", user_id="both", contact_properties={"x": 1}),
                    event("link", user_id="both", email="both@x.io"),
                ],
            )
        )
        await wait_for_lock_waiter(engine)
        await first.commit()
    results = await second
    assert [r.status for r in results] == ["stored", "stored"]
    assert {r.contact_id for r in results} == {created[0].contact_id}
    [contact] = await rows(engine, "SELECT email, properties FROM contacts")
    assert contact == {"email": "both@x.io", "properties": {"x": 1}}


async def test_an_event_for_a_contact_being_merged_lands_on_the_survivor(
    sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    await one(sessions, event(user_id="keep", email="keep@x.io"))
    gone = await one(sessions, event(anonymous_id="drop"))
    async with sessions() as merging:
        await merging.begin()
        await contacts_repo.resolve_contact(
            merging, Identity(user_id="keep", anonymous_id="drop"), now=T0
        )
        late = asyncio.create_task(
            batch(
                sessions,
                [
                    event("late", anonymous_id="drop"),
                    EventInput(name="i", contact_id=gone.contact_id),
                ],
            )
        )
        await wait_for_lock_waiter(engine)
        await merging.commit()
    results = await late
    assert [r.contact_key for r in results] == ["keep", "keep"]
    keys = await rows(engine, "SELECT DISTINCT user_id FROM user_events")
    assert keys == [{"user_id": "keep"}]


async def test_slow_path_failures_reject_only_that_item(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    await one(sessions, event(anonymous_id="a1"))
    await one(sessions, event(anonymous_id="a2"))
    await one(sessions, event(anonymous_id="a3"))
    calls = iter(["race", "deadlock", "driver deadlock"])

    class Deadlock(Exception):
        sqlstate = "40P01"

    async def failing(*args: object, **kwargs: object) -> None:
        call = next(calls)
        if call == "race":
            raise events_repo.ResolutionRace("still moving")
        if call == "deadlock":
            raise DBAPIError("UPDATE ...", {}, Deadlock())
        # A statement on the driver connection raises psycopg's error itself.
        raise psycopg.errors.DeadlockDetected("deadlock detected")

    monkeypatch.setattr(events_repo, "resolve_contact", failing)
    results = await batch(
        sessions,
        [
            event("x", anonymous_id="a1", user_id="u1"),
            event("y", anonymous_id="a2", user_id="u2"),
            event("w", anonymous_id="a3", user_id="u3"),
            event("z", user_id="plain"),
        ],
    )
    assert [r.status for r in results] == ["rejected", "rejected", "rejected", "stored"]

    async def broken(*args: object, **kwargs: object) -> None:
        raise DBAPIError("UPDATE ...", {}, RuntimeError("disk on fire"))

    monkeypatch.setattr(events_repo, "resolve_contact", broken)
    with pytest.raises(DBAPIError):
        await batch(sessions, [event("x", anonymous_id="a1", user_id="u1")])


async def test_items_whose_contact_never_settles_are_rejected(
    sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    stored = await one(sessions, event(user_id="u"))

    async def never(*args: object) -> None:
        return None  # "a contact vanished while we waited": look again, forever

    monkeypatch.setattr(events_repo, "lock_matches", never)
    [result] = await batch(sessions, [EventInput(name="x", contact_id=stored.contact_id)])
    assert result.status == "rejected"
    assert result.reason is not None
    assert "concurrently" in result.reason


async def test_now_must_be_timezone_aware(sessions: async_sessionmaker[AsyncSession]) -> None:
    async with sessions() as session:
        with pytest.raises(ValueError, match="timezone"):
            await ingest_event(session, event(user_id="u"), now=datetime(2026, 1, 1))
        result = await ingest_event(session, event(user_id="u"))
        assert result.status == "stored"


def test_transient_errors_are_recognised() -> None:
    class Orig(Exception):
        sqlstate = "40P01"

    class Wrapped(Exception):
        orig = Orig()

    assert is_transient_error(Wrapped())
    chained = RuntimeError("outer")
    chained.__cause__ = Wrapped()
    assert is_transient_error(chained)
    assert not is_transient_error(ValueError("nope"))


# --------------------------------------------------------------------------- fast path


@pytest.fixture
async def raw_conn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(libpq_url(database_url), autocommit=True)
    yield conn
    await conn.close()


async def test_the_fast_path_prepares_its_statement_once_per_connection(
    raw_conn: psycopg.AsyncConnection[Any], engine: AsyncEngine
) -> None:
    first = await ingest_event_fast(raw_conn, event(user_id="u", idempotency_key="k1"), now=T0)
    assert first is not None
    assert first.status == "stored"
    prepared = await raw_conn.execute(
        "SELECT count(*) FROM pg_prepared_statements WHERE name = 'hogsend_ingest_event'"
    )
    assert await prepared.fetchone() == (1,)
    again = await ingest_event_fast(raw_conn, event(user_id="u", idempotency_key="k2"), now=T0)
    assert again is not None
    assert again.status == "stored"
    assert again.contact_id == first.contact_id
    duplicate = await ingest_event_fast(raw_conn, event(user_id="v", idempotency_key="k1"))
    assert duplicate is not None
    assert duplicate.status == "duplicate"
    assert duplicate.event_id == first.event_id
    # One transaction each, over and done with.
    assert raw_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    counts = await rows(
        engine,
        "SELECT (SELECT count(*) FROM user_events) AS events,"
        " (SELECT count(*) FROM event_outbox) AS outbox, (SELECT count(*) FROM contacts) AS c",
    )
    assert counts == [{"events": 2, "outbox": 2, "c": 1}]


@pytest.mark.parametrize(
    "standard_strings", ["on", "off"], ids=["standard-strings", "backslash-escapes"]
)
async def test_the_fast_path_quotes_every_value_exactly(
    raw_conn: psycopg.AsyncConnection[Any], engine: AsyncEngine, standard_strings: str
) -> None:
    # The query text carries the values as quoted literals: quotes, backslashes, escaped
    # JSON, statement separators and non-ASCII must arrive unchanged, whatever way the
    # server reads backslashes in string literals.
    await raw_conn.execute(f"SET standard_conforming_strings = {standard_strings}")
    awkward = "it's \\ a \"test\"; DROP TABLE contacts; -- \u00e9 é 😀 '');"
    item = event(
        awkward,
        user_id=f"u'{awkward}",
        properties={awkward: awkward, "n": [1, 2.5, None, True], "nested": {"q": "'"}},
        contact_properties={"bio": awkward},
        idempotency_key=f"k'{awkward}",
    )
    stored = await ingest_event_fast(raw_conn, item, now=T0)
    assert stored is not None
    assert stored.status == "stored"
    [row] = await rows(
        engine,
        "SELECT e.event, e.user_id, e.properties, e.idempotency_key, c.properties AS contact"
        " FROM user_events e JOIN contacts c ON c.id = e.contact_id",
    )
    assert row == {
        "event": awkward,
        "user_id": f"u'{awkward}",
        "properties": {awkward: awkward, "n": [1, 2.5, None, True], "nested": {"q": "'"}},
        "idempotency_key": f"k'{awkward}",
        "contact": {"bio": awkward},
    }
    again = await ingest_event_fast(raw_conn, item, now=T0)
    assert again is not None
    assert (again.status, again.event_id) == ("duplicate", stored.event_id)


async def test_the_fast_path_losing_a_key_to_a_batch_writes_nothing(
    raw_conn: psycopg.AsyncConnection[Any],
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> None:
    # A batch (which takes no advisory locks) holds the key, uncommitted, while the fast
    # path creates a contact for a new person and tries to claim the same key.
    async with sessions() as first:
        await first.begin()
        await ingest_batch(first, [event(anonymous_id="w", idempotency_key="race")], now=T0)
        fast = asyncio.create_task(
            ingest_event_fast(raw_conn, event(user_id="new", idempotency_key="race"), now=T0)
        )
        await wait_for_lock_waiter(engine)
        await first.commit()
    assert await fast is None  # rolled back: the general path will find the duplicate
    assert await rows(engine, "SELECT id FROM contacts WHERE external_id = 'new'") == []
    assert raw_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


@pytest.fixture
def fast_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The prepared ingest statement each fast-path call executed, in order."""
    used: list[str] = []
    general, one_key = events_repo.fast_ingest_query, events_repo.one_key_query

    def spy_general(conn: Any, names: list[str], bundle: str) -> bytes:
        used.append("hogsend_ingest_event")
        return general(conn, names, bundle)

    def spy_one_key(conn: Any, kind: str, bundle: str) -> bytes:
        used.append(f"hogsend_ingest_{kind}")
        return one_key(conn, kind, bundle)

    monkeypatch.setattr(events_repo, "fast_ingest_query", spy_general)
    monkeypatch.setattr(events_repo, "one_key_query", spy_one_key)
    return used


async def _contact(engine: AsyncEngine, contact_id: uuid.UUID | None) -> dict[str, Any]:
    [row] = await rows(
        engine,
        "SELECT external_id, email, anonymous_id, properties, first_seen_at, last_seen_at,"
        " updated_at, deleted_at FROM contacts WHERE id = :id",
        id=contact_id,
    )
    return row


async def test_one_key_events_follow_the_general_rules_in_their_own_statement(
    raw_conn: psycopg.AsyncConnection[Any],
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    fast_statements: list[str],
) -> None:
    # A new userId creates its contact, keyed by the userId; the outbox row goes with it.
    first = await ingest_event_fast(raw_conn, event(user_id=" u ", properties={"p": 1}), now=T0)
    assert first is not None
    assert (first.status, first.contact_key) == ("stored", "u")
    created = await _contact(engine, first.contact_id)
    assert created == {
        "external_id": "u",
        "email": None,
        "anonymous_id": None,
        "properties": {},
        "first_seen_at": T0,
        "last_seen_at": T0,
        "updated_at": T0,
        "deleted_at": None,
    }
    [stored] = await rows(
        engine,
        "SELECT e.id, e.contact_id, e.user_id, e.properties, e.source, o.contact_key, o.event"
        " FROM user_events e JOIN event_outbox o ON o.event_id = e.id",
    )
    assert stored == {
        "id": first.event_id,
        "contact_id": first.contact_id,
        "user_id": "u",
        "properties": {"p": 1},
        "source": "api",
        "contact_key": "u",
        "event": "clicked",
    }

    # The same userId matches: last seen moves in minute steps, updated_at does not.
    soon = await ingest_event_fast(raw_conn, event(user_id="u"), now=T0 + timedelta(seconds=30))
    later = await ingest_event_fast(raw_conn, event(user_id="u"), now=T0 + timedelta(minutes=2))
    assert soon is not None
    assert later is not None
    assert soon.contact_id == later.contact_id == first.contact_id
    after = await _contact(engine, first.contact_id)
    assert (after["last_seen_at"], after["updated_at"]) == (T0 + timedelta(minutes=2), T0)

    # An email alone: matched case-insensitively; such a contact is keyed by its id.
    by_email = await ingest_event_fast(raw_conn, event(email="Ann@X.io"), now=T0)
    again = await ingest_event_fast(raw_conn, event(email="ANN@x.io"), now=T0)
    assert by_email is not None
    assert again is not None
    assert again.contact_id == by_email.contact_id
    assert by_email.contact_key == again.contact_key == str(by_email.contact_id)
    assert (await _contact(engine, by_email.contact_id))["email"] == "Ann@x.io"

    # An anonymousId: keyed by it until the visitor is identified, then by the userId.
    visitor = await ingest_event_fast(raw_conn, event(anonymous_id="a1"), now=T0)
    assert visitor is not None
    assert visitor.contact_key == "a1"
    await one(sessions, event(user_id="known", anonymous_id="a1"))
    identified = await ingest_event_fast(raw_conn, event(anonymous_id="a1"), now=T0)
    assert identified is not None
    assert (identified.contact_id, identified.contact_key) == (visitor.contact_id, "known")

    # A repeated key: the original's ids, and nothing written or moved.
    keyed = await ingest_event_fast(raw_conn, event(user_id="k", idempotency_key="dup"), now=T0)
    before = await rows(engine, "SELECT count(*) AS n FROM user_events")
    repeat = await ingest_event_fast(
        raw_conn, event(anonymous_id="other", idempotency_key="dup"), now=T0 + timedelta(hours=1)
    )
    assert keyed is not None
    assert repeat is not None
    assert (repeat.status, repeat.event_id, repeat.contact_id, repeat.contact_key) == (
        "duplicate",
        keyed.event_id,
        keyed.contact_id,
        "k",
    )
    assert await rows(engine, "SELECT count(*) AS n FROM user_events") == before
    assert await rows(engine, "SELECT id FROM contacts WHERE anonymous_id = 'other'") == []
    assert (await _contact(engine, keyed.contact_id))["last_seen_at"] == T0

    # Every one of them took a one-key statement; a property patch takes the general one.
    assert set(fast_statements) == {
        "hogsend_ingest_external",
        "hogsend_ingest_email",
        "hogsend_ingest_anonymous",
    }
    patched = await ingest_event_fast(
        raw_conn, event(user_id="u", contact_properties={"tier": "gold"}), now=T0
    )
    assert patched is not None
    assert fast_statements[-1] == "hogsend_ingest_event"
    assert (await _contact(engine, first.contact_id))["properties"] == {"tier": "gold"}


async def test_one_key_events_leave_aliases_and_freed_keys_to_the_rules(
    raw_conn: psycopg.AsyncConnection[Any],
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
    fast_statements: list[str],
) -> None:
    older = await one(sessions, event(user_id="u-a", email="a@x.io"), now=T0 - timedelta(days=1))
    await one(sessions, event(user_id="u-b", email="b@x.io"))
    await one(sessions, event(user_id="u-a", email="b@x.io"))  # merges u-b into u-a
    count = "SELECT count(*) AS n FROM user_events"
    # A key known only as an alias: nothing written here, the general path resolves it.
    for item in (event(user_id="u-b"), event(email="B@x.io")):
        before = await rows(engine, count)
        assert await ingest_event_fast(raw_conn, item, now=T0) is None
        assert await rows(engine, count) == before
        assert (await one(sessions, item)).contact_id == older.contact_id
    # A soft-deleted contact's key is free: the next event creates a new contact.
    async with sessions() as session, session.begin():
        await contacts_repo.soft_delete_contacts(session, Identity(user_id="u-a"))
    fresh = await ingest_event_fast(raw_conn, event(user_id="u-a"), now=T0)
    assert fresh is not None
    assert fresh.status == "stored"
    assert fresh.contact_id != older.contact_id
    assert set(fast_statements) == {"hogsend_ingest_external", "hogsend_ingest_email"}


async def test_a_one_key_event_waiting_on_a_contact_deleted_meanwhile_writes_nothing(
    raw_conn: psycopg.AsyncConnection[Any],
    sessions: async_sessionmaker[AsyncSession],
    engine: AsyncEngine,
) -> None:
    # The contact is locked by a writer that takes no advisory lock and deletes it; the
    # event, waiting on the row lock, then sees the deleted row and leaves it to the
    # general path instead of creating a second contact for the key.
    first = await one(sessions, event(user_id="gone"))
    async with sessions() as deleting:
        await deleting.begin()
        await deleting.execute(
            text("UPDATE contacts SET deleted_at = now() WHERE id = :id"),
            {"id": first.contact_id},
        )
        fast = asyncio.create_task(ingest_event_fast(raw_conn, event(user_id="gone"), now=T0))
        await wait_for_lock_waiter(engine)
        await deleting.commit()
    assert await fast is None
    assert await rows(engine, "SELECT count(*) AS n FROM contacts") == [{"n": 1}]
    assert await rows(engine, "SELECT count(*) AS n FROM user_events") == [{"n": 1}]
    assert raw_conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_the_fast_path_prepares_what_a_connection_lacks(
    raw_conn: psycopg.AsyncConnection[Any],
) -> None:
    # A connection holding only some of the statements (say, a first use interrupted
    # half-way) gets the others, instead of failing on the ones it has.
    await raw_conn.execute(events_repo._PREPARE_LOCKS)
    stored = await ingest_event_fast(raw_conn, event(user_id="u"), now=T0)
    assert stored is not None
    assert stored.status == "stored"
    cursor = await raw_conn.execute(
        "SELECT name FROM pg_prepared_statements WHERE name LIKE 'hogsend_ingest%' ORDER BY 1"
    )
    assert [name for (name,) in await cursor.fetchall()] == [
        "hogsend_ingest_anonymous",
        "hogsend_ingest_email",
        "hogsend_ingest_event",
        "hogsend_ingest_external",
        "hogsend_ingest_locks",
    ]


async def test_parallel_one_key_events_of_a_new_person_create_one_contact(
    database_url: str, sessions: async_sessionmaker[AsyncSession], engine: AsyncEngine
) -> None:
    # The one-key statement takes no advisory locks: the contact's unique index decides
    # who creates it, and whoever lost stores nothing and takes the general path.
    conns = [
        await psycopg.AsyncConnection.connect(libpq_url(database_url), autocommit=True)
        for _ in range(8)
    ]
    try:
        items = [event(f"e{i}", user_id="racer", idempotency_key=f"r{i}") for i in range(8)]
        fast = await asyncio.gather(
            *(
                ingest_event_fast(conn, item, now=T0)
                for conn, item in zip(conns, items, strict=True)
            )
        )
        results = [
            r if r is not None else await one(sessions, i) for r, i in zip(fast, items, strict=True)
        ]
        # Same key again, all at once: one stored event, the rest its duplicates.
        again = await asyncio.gather(
            *(
                ingest_event_fast(conn, event(user_id="racer", idempotency_key="same"), now=T0)
                for conn in conns
            )
        )
    finally:
        for conn in conns:
            await conn.close()
    assert [r.status for r in results] == ["stored"] * 8
    assert len({r.contact_id for r in results}) == 1
    settled = [
        r if r is not None else await one(sessions, event(user_id="racer", idempotency_key="same"))
        for r in again
    ]
    assert Counter(r.status for r in settled) == {"stored": 1, "duplicate": 7}
    assert len({r.event_id for r in settled}) == 1
    counts = await rows(
        engine,
        "SELECT (SELECT count(*) FROM contacts) AS c, (SELECT count(*) FROM user_events) AS e,"
        " (SELECT count(*) FROM event_outbox) AS o",
    )
    assert counts == [{"c": 1, "e": 9, "o": 9}]


async def test_one_key_events_notify_the_outbox_only_when_stored_and_asked(
    raw_conn: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(
        libpq_url(database_url), autocommit=True
    ) as listener:
        await listener.execute("LISTEN hogsend_outbox")
        calls = [
            (event(user_id="u", idempotency_key="a"), True, "stored"),
            (event(user_id="u", idempotency_key="b"), False, "stored"),
            (event(user_id="u", idempotency_key="a"), True, "duplicate"),
            (event(email="new@example.com", idempotency_key="c"), True, "stored"),
        ]
        for item, notify, status in calls:
            result = await ingest_event_fast(raw_conn, item, notify=notify, now=T0)
            assert result is not None
            assert result.status == status
        # Notifications arrive in commit order: everything before the marker is ours.
        await raw_conn.execute("NOTIFY hogsend_outbox, 'marker'")
        payloads = []
        async for notification in listener.notifies(timeout=10):
            payloads.append(notification.payload)
            if notification.payload == "marker":
                break
    assert payloads == ["", "", "marker"]


@pytest.mark.parametrize("kind", ["external", "email", "anonymous"])
async def test_one_key_statements_look_up_every_table_by_the_key(
    raw_conn: psycopg.AsyncConnection[Any], kind: str
) -> None:
    # The plan a connection caches is built once, here on empty tables (a fresh
    # database, the worst case): every lookup must still go through an index by the
    # event's own key, never read a table or an index range it would then filter.
    await events_repo._prepare_fast_statements(raw_conn)
    await raw_conn.execute("SET plan_cache_mode = force_generic_plan")
    await raw_conn.execute("SET enable_seqscan = off")  # as the query sets it
    cursor = await raw_conn.execute(
        f"EXPLAIN (FORMAT JSON) EXECUTE hogsend_ingest_{kind}('{{}}')", prepare=False
    )
    row = await cursor.fetchone()
    assert row is not None
    scans: list[dict[str, Any]] = []

    def walk(node: dict[str, Any]) -> None:
        if "Relation Name" in node and node["Node Type"] != "ModifyTable":
            scans.append(node)
        for child in node.get("Plans", []):
            walk(child)

    walk(row[0][0]["Plan"])
    lookups = {(n["Relation Name"], n["Node Type"], n.get("Index Cond", "")) for n in scans}
    assert all("Index" in node_type for _, node_type, _ in lookups), lookups
    [alias] = [cond for relation, _, cond in lookups if relation == "contact_aliases"]
    assert "alias_kind" in alias
    assert "alias_value" in alias
