"""Bucket membership primitives on real Postgres: join, leave, epochs, limits, emission."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hogsend import days, define_bucket, hours, where
from hogsend.core.identity import Identity
from hogsend.core.ingest import EventInput
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import buckets as repo
from hogsend.db.repos.events import ingest_event

pytestmark = pytest.mark.timeout(120)

T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
VIP = define_bucket(id="vip", name="VIP", criteria=where.property("plan").equals("vip"))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url, pool_size=10)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


async def new_contact(
    sessions: async_sessionmaker[AsyncSession], *, email: str | None = None
) -> uuid.UUID:
    """A contact with no external id (found by contact id only)."""
    async with sessions() as session, session.begin():
        result = await ingest_event(
            session,
            EventInput(name="seen", identity=Identity(email=email or f"{uuid.uuid4()}@x.test")),
            now=T0,
        )
    assert result.contact_id is not None
    return result.contact_id


async def test_join_leave_rejoin_epochs(sessions: async_sessionmaker[AsyncSession]) -> None:
    contact = await new_contact(sessions, email="ann@x.test")
    async with sessions() as session, session.begin():
        first = await repo.join(session, VIP, contact, now=T0)
        again = await repo.join(session, VIP, contact, now=T0)
    assert first is not None
    assert first.entry_count == 1
    assert first.status == "active"
    assert first.email == "ann@x.test"
    assert first.contact_key == str(contact)
    assert again is None
    async with sessions() as session, session.begin():
        assert await repo.is_member(session, "vip", contact)
        left = await repo.leave(session, VIP, contact, reason="criteria", now=T0 + hours(1))
        gone = await repo.leave(session, VIP, contact, reason="criteria", now=T0 + hours(1))
    assert left is not None
    assert left.status == "left"
    assert left.left_reason == "criteria"
    assert left.entry_count == 1
    assert gone is None
    async with sessions() as session, session.begin():
        assert not await repo.is_member(session, "vip", contact)
        second = await repo.join(session, VIP, contact, now=T0 + hours(2))
    assert second is not None
    assert second.entry_count == 2
    async with sessions() as session:
        history = await repo.contact_memberships(session, contact)
    assert [(m.entry_count, m.status) for m in history] == [(2, "active"), (1, "left")]


async def test_entry_limit_stops_further_joins(sessions: async_sessionmaker[AsyncSession]) -> None:
    bucket = define_bucket(
        id="once", name="Once", criteria=where.event("x").exists(), entry_limit=1
    )
    contact = await new_contact(sessions)
    async with sessions() as session, session.begin():
        assert await repo.join(session, bucket, contact, now=T0) is not None
        assert await repo.leave(session, bucket, contact, reason="manual", now=T0) is not None
        assert await repo.join(session, bucket, contact, now=T0 + hours(1)) is None
    async with sessions() as session:
        assert len(await repo.contact_memberships(session, contact)) == 1


async def test_min_dwell_defers_criteria_leave(sessions: async_sessionmaker[AsyncSession]) -> None:
    bucket = define_bucket(
        id="sticky", name="Sticky", criteria=where.event("x").exists(), min_dwell=days(2)
    )
    contact = await new_contact(sessions)
    async with sessions() as session, session.begin():
        joined = await repo.join(session, bucket, contact, now=T0)
        early = await repo.leave(session, bucket, contact, reason="criteria", now=T0 + days(1))
    assert joined is not None
    assert early is None
    async with sessions() as session:
        [row] = await repo.contact_memberships(session, contact)
    assert row.status == "active"
    assert row.expires_at == T0 + days(2)
    async with sessions() as session, session.begin():
        # max_dwell / manual leaves are never deferred; a criteria leave after min_dwell isn't.
        late = await repo.leave(session, bucket, contact, reason="criteria", now=T0 + days(2))
    assert late is not None
    assert late.left_reason == "criteria"


async def test_manual_leave_ignores_min_dwell(sessions: async_sessionmaker[AsyncSession]) -> None:
    bucket = define_bucket(
        id="sticky", name="Sticky", criteria=where.event("x").exists(), min_dwell=days(2)
    )
    contact = await new_contact(sessions)
    async with sessions() as session, session.begin():
        assert await repo.join(session, bucket, contact, now=T0) is not None
        left = await repo.leave(session, bucket, contact, reason="manual", now=T0 + hours(1))
    assert left is not None


async def test_max_dwell_and_fast_expiry_deadlines(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    bucket = define_bucket(
        id="recent",
        name="Recent",
        criteria=where.event("x").within(days(3)).exists(),
        max_dwell=days(10),
        fast_expiry=True,
    )
    contact = await new_contact(sessions)
    async with sessions() as session, session.begin():
        row = await repo.join(session, bucket, contact, now=T0, source="backfill")
    assert row is not None
    assert row.source == "backfill"
    assert row.max_dwell_at == T0 + days(10)
    assert row.expires_at == T0 + days(3)


async def test_deleted_contact_cannot_join(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    contact = await new_contact(sessions)
    async with sessions() as session, session.begin():
        await session.execute(
            text("UPDATE contacts SET deleted_at = now() WHERE id = :id"), {"id": contact}
        )
        assert await repo.join(session, VIP, contact, now=T0) is None
        assert await repo.join(session, VIP, uuid.uuid4(), now=T0) is None


async def test_concurrent_joins_make_one_row(sessions: async_sessionmaker[AsyncSession]) -> None:
    contact = await new_contact(sessions)

    async def attempt() -> bool:
        async with sessions() as session, session.begin():
            return await repo.join(session, VIP, contact, now=T0) is not None

    results = await asyncio.gather(*(attempt() for _ in range(6)))
    assert sorted(results) == [False] * 5 + [True]


async def test_concurrent_leaves_flip_once(sessions: async_sessionmaker[AsyncSession]) -> None:
    contact = await new_contact(sessions)
    async with sessions() as session, session.begin():
        await repo.join(session, VIP, contact, now=T0)

    async def attempt() -> bool:
        async with sessions() as session, session.begin():
            left = await repo.leave(session, VIP, contact, reason="criteria", now=T0 + hours(1))
            return left is not None

    results = await asyncio.gather(*(attempt() for _ in range(6)))
    assert sorted(results) == [False] * 5 + [True]


async def test_emit_transition_is_stored_once_with_keys(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    contact = await new_contact(sessions)
    async with sessions() as session, session.begin():
        joined = await repo.join(session, VIP, contact, now=T0)
        assert joined is not None
        first = await repo.emit_transition(session, "entered", joined, now=T0)
        again = await repo.emit_transition(session, "entered", joined, now=T0 + hours(1))
        dwell = await repo.emit_transition(
            session, "dwell", joined, now=T0 + days(7), label="every-7d", interval=1
        )
        left = await repo.leave(session, VIP, contact, reason="manual", now=T0 + days(8))
        assert left is not None
        leave_event = await repo.emit_transition(
            session, "left", left, now=T0 + days(8), reason="manual"
        )
    assert first.status == "stored"
    assert again.status == "duplicate"
    assert again.event_id == first.event_id
    assert first.contact_id == contact
    assert dwell.status == "stored"
    assert leave_event.status == "stored"
    async with sessions() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT e.event, e.idempotency_key, e.properties, e.source,"
                    " (SELECT count(*) FROM event_outbox o WHERE o.event_id = e.id) AS outbox"
                    " FROM user_events e WHERE e.contact_id = :c AND e.event LIKE 'bucket:%'"
                    " ORDER BY e.occurred_at"
                ),
                {"c": contact},
            )
        ).all()
    assert [(r.event, r.idempotency_key, r.outbox, r.source) for r in rows] == [
        ("bucket:entered:vip", f"bucket:entered:vip:{contact}:1", 1, "bucket"),
        ("bucket:dwell:vip:every-7d", f"bucket:dwell:vip:every-7d:{contact}:1:1", 1, "bucket"),
        ("bucket:left:vip", f"bucket:left:vip:{contact}:1", 1, "bucket"),
    ]
    assert rows[0].properties == {"bucketId": "vip", "epoch": 1, "enteredAt": T0.isoformat()}
    assert rows[2].properties["reason"] == "manual"
    assert rows[1].properties["label"] == "every-7d"


async def test_counts_pages_and_switch(sessions: async_sessionmaker[AsyncSession]) -> None:
    contacts = [await new_contact(sessions) for _ in range(5)]
    async with sessions() as session, session.begin():
        for index, contact in enumerate(contacts):
            await repo.join(session, VIP, contact, now=T0 + timedelta(minutes=index))
        await repo.leave(session, VIP, contacts[0], reason="manual", now=T0 + hours(1))
    async with sessions() as session, session.begin():
        assert await repo.member_counts(session) == {"vip": 4}
        assert await repo.member_count(session, "vip") == 4
        first = await repo.list_members(session, "vip", limit=3)
        second = await repo.list_members(session, "vip", limit=3, cursor=first.next_cursor)
        left = await repo.list_members(session, "vip", status="left")
        assert await repo.is_enabled(session, VIP)
        await repo.set_enabled(session, "vip", False, now=T0)
        assert not await repo.is_enabled(session, VIP)
        assert await repo.enabled_overrides(session) == {"vip": False}
        await repo.set_enabled(session, "vip", None, now=T0)
        assert await repo.is_enabled(session, VIP)
    assert [m.contact_id for m in first.items] == contacts[4:1:-1]
    assert [m.contact_id for m in second.items] == [contacts[1]]
    assert second.next_cursor is None
    assert first.next_cursor is not None
    assert [m.contact_id for m in left.items] == [contacts[0]]
