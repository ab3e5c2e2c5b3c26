"""Real-time bucket membership through the real dispatcher, on real Postgres."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hogsend import Hogsend, days, define_bucket, where
from hogsend.core.buckets import Transition
from hogsend.core.definitions import BucketDefinition
from hogsend.core.identity import Identity
from hogsend.core.ingest import EventInput
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import buckets as repo
from hogsend.db.repos.events import ingest_event
from hogsend.runtime.bucket_membership import BucketMembershipConsumer
from hogsend.runtime.dispatcher import DispatchedEvent, Dispatcher, build_consumers
from hogsend.settings import Settings

pytestmark = pytest.mark.timeout(120)

VIP = define_bucket(id="vip", name="VIP", criteria=where.property("plan").equals("vip"))
BUYERS = define_bucket(
    id="buyers", name="Buyers", criteria=where.event("order.placed").within(days(30)).at_least(2)
)
# Reacts to another bucket's transition event.
VIP_ALUMNI = define_bucket(
    id="vip-alumni", name="Former VIPs", criteria=where.event("bucket:left:vip").exists()
)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url, pool_size=20)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


def settings(database_url: str) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        dispatcher_poll_seconds=0.01,
        dispatcher_listen=False,
        log_format="console",
    )  # type: ignore[call-arg]


async def send(
    sessions: async_sessionmaker[AsyncSession],
    email: str,
    name: str = "seen",
    props: Mapping[str, Any] | None = None,
) -> uuid.UUID:
    """Ingest one event for an email-only contact (no external id); its contact id."""
    async with sessions() as session, session.begin():
        result = await ingest_event(
            session,
            EventInput(name=name, identity=Identity(email=email), contact_properties=props),
        )
    assert result.contact_id is not None
    return result.contact_id


async def drain(engine: AsyncEngine, database_url: str, *buckets: BucketDefinition) -> None:
    dispatcher = Dispatcher(
        engine, settings(database_url), [BucketMembershipConsumer(buckets)], worker_id="t"
    )
    await dispatcher.drain()


async def transitions(sessions: async_sessionmaker[AsyncSession]) -> list[tuple[str, str, Any]]:
    async with sessions() as session:
        rows = await session.execute(
            text(
                "SELECT event, idempotency_key, properties FROM user_events"
                " WHERE event LIKE 'bucket:%' ORDER BY received_at, event"
            )
        )
        return [(r.event, r.idempotency_key, r.properties) for r in rows]


async def test_property_bucket_join_leave_rejoin(
    engine: AsyncEngine, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    ann = await send(sessions, "ann@x.test", props={"plan": "vip"})
    await drain(engine, database_url, VIP)
    await send(sessions, "ann@x.test", props={"plan": "free"})
    await drain(engine, database_url, VIP)
    await send(sessions, "ann@x.test", props={"plan": "vip"})
    await drain(engine, database_url, VIP)
    got = await transitions(sessions)
    assert [(e, k) for e, k, _ in got] == [
        ("bucket:entered:vip", f"bucket:entered:vip:{ann}:1"),
        ("bucket:left:vip", f"bucket:left:vip:{ann}:1"),
        ("bucket:entered:vip", f"bucket:entered:vip:{ann}:2"),
    ]
    assert got[1][2]["reason"] == "criteria"
    async with sessions() as session:
        assert await repo.is_member(session, "vip", ann)


async def test_event_bucket_joins_on_its_event_only(
    engine: AsyncEngine, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    bob = await send(sessions, "bob@x.test", "order.placed")
    await send(sessions, "bob@x.test", "page.viewed")
    await drain(engine, database_url, BUYERS)
    assert await transitions(sessions) == []
    await send(sessions, "bob@x.test", "order.placed")
    await drain(engine, database_url, BUYERS)
    assert [k for _, k, _ in await transitions(sessions)] == [f"bucket:entered:buyers:{bob}:1"]
    consumer = BucketMembershipConsumer([VIP, BUYERS, VIP_ALUMNI])
    # Property criteria are candidates for any event; event criteria only for their events.
    assert [b.id for b in consumer.candidates("page.viewed")] == ["vip"]
    assert [b.id for b in consumer.candidates("order.placed")] == ["vip", "buyers"]
    assert [b.id for b in consumer.candidates("bucket:left:vip")] == ["vip", "vip-alumni"]
    # Transition events patch no properties: only the buckets counting them are checked.
    assert [b.id for b in consumer.candidates("bucket:left:vip", source="bucket")] == ["vip-alumni"]


async def test_a_bucket_reacts_to_another_buckets_event(
    engine: AsyncEngine, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    cat = await send(sessions, "cat@x.test", props={"plan": "vip"})
    await drain(engine, database_url, VIP, VIP_ALUMNI)
    await send(sessions, "cat@x.test", props={"plan": "free"})
    await drain(engine, database_url, VIP, VIP_ALUMNI)
    assert [e for e, _, _ in await transitions(sessions)] == [
        "bucket:entered:vip",
        "bucket:left:vip",
        "bucket:entered:vip-alumni",
    ]
    async with sessions() as session:
        assert await repo.is_member(session, "vip-alumni", cat)
        assert not await repo.is_member(session, "vip", cat)


async def test_disabled_buckets_do_nothing(
    engine: AsyncEngine, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    off_in_code = define_bucket(
        id="off", name="Off", criteria=where.property("plan").equals("vip"), enabled=False
    )
    async with sessions() as session, session.begin():
        await repo.set_enabled(session, "vip", False, now=datetime.now(UTC))
    dan = await send(sessions, "dan@x.test", props={"plan": "vip"})
    await drain(engine, database_url, VIP, off_in_code)
    assert await transitions(sessions) == []
    async with sessions() as session, session.begin():
        assert await repo.contact_memberships(session, dan) == []
        # The override wins over the code's value, both ways.
        await repo.set_enabled(session, "vip", None, now=datetime.now(UTC))
        await repo.set_enabled(session, "off", True, now=datetime.now(UTC))
    await send(sessions, "dan@x.test")
    await drain(engine, database_url, VIP, off_in_code)
    assert sorted(e for e, _, _ in await transitions(sessions)) == [
        "bucket:entered:off",
        "bucket:entered:vip",
    ]


async def test_min_dwell_keeps_a_member_through_an_early_leave(
    engine: AsyncEngine, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    sticky = define_bucket(
        id="sticky", name="Sticky", criteria=where.property("plan").equals("vip"), min_dwell=days(1)
    )
    eve = await send(sessions, "eve@x.test", props={"plan": "vip"})
    await drain(engine, database_url, sticky)
    await send(sessions, "eve@x.test", props={"plan": "free"})
    await drain(engine, database_url, sticky)
    assert [e for e, _, _ in await transitions(sessions)] == ["bucket:entered:sticky"]
    async with sessions() as session:
        [row] = await repo.contact_memberships(session, eve)
    assert row.status == "active"
    assert row.expires_at == row.entered_at + days(1)


async def test_entry_limit_through_events(
    engine: AsyncEngine, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    once = define_bucket(
        id="once", name="Once", criteria=where.property("plan").equals("vip"), entry_limit=1
    )
    for plan in ("vip", "free", "vip"):
        await send(sessions, "fay@x.test", props={"plan": plan})
        await drain(engine, database_url, once)
    assert [e for e, _, _ in await transitions(sessions)] == [
        "bucket:entered:once",
        "bucket:left:once",
    ]


async def test_redelivery_and_concurrent_delivery_emit_once(
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    gus = await send(sessions, "gus@x.test", props={"plan": "vip"})
    async with sessions() as session:
        row = (
            await session.execute(
                text("SELECT id, user_id, occurred_at FROM user_events WHERE contact_id = :c"),
                {"c": gus},
            )
        ).one()
    event = DispatchedEvent(
        outbox_id=1,
        event_id=row.id,
        contact_id=gus,
        contact_key=row.user_id,
        name="seen",
        properties={},
        occurred_at=row.occurred_at,
        source="api",
        attempt=1,
    )
    consumer = BucketMembershipConsumer([VIP])

    async def deliver() -> None:
        async with sessions() as session, session.begin():
            await consumer.consume(event, session)

    # A lease that ran out: two workers handle the same event at once, then a third later.
    await asyncio.gather(deliver(), deliver())
    await deliver()
    assert [k for _, k, _ in await transitions(sessions)] == [f"bucket:entered:vip:{gus}:1"]
    async with sessions() as session:
        assert len(await repo.contact_memberships(session, gus)) == 1


async def test_two_dispatchers_share_the_work(
    engine: AsyncEngine, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # Membership follows the contact's state when the event is dispatched: the first
    # half ends as VIPs, the second half were VIPs for a while (events dispatched late
    # see the latest properties, so the event order does not matter here).
    people = [f"p{n}@x.test" for n in range(20)]
    for n, person in enumerate(people):
        await send(sessions, person, "order.placed", props={"plan": "vip"})
        if n >= 10:
            await send(sessions, person, "order.placed", props={"plan": "vip"})
    workers = [
        Dispatcher(
            engine,
            settings(database_url),
            [BucketMembershipConsumer([VIP, BUYERS])],
            worker_id=f"w{n}",
        )
        for n in range(2)
    ]
    await asyncio.gather(*(w.drain() for w in workers))
    got = await transitions(sessions)
    assert len(got) == 30
    assert len({k for _, k, _ in got}) == 30
    assert {e for e, _, _ in got} == {"bucket:entered:vip", "bucket:entered:buyers"}
    async with sessions() as session:
        assert await repo.member_counts(session) == {"vip": 20, "buyers": 10}


def test_the_worker_runs_the_consumer_only_with_criteria_buckets() -> None:
    assert [c.name for c in build_consumers(Hogsend(buckets=[VIP]))] == ["bucket-membership"]
    manual = define_bucket(id="hand", name="By hand")
    assert build_consumers(Hogsend(buckets=[manual])) == ()


async def test_a_failure_mid_transition_rolls_back_and_the_retry_emits_once(
    engine: AsyncEngine,
    database_url: str,
    sessions: async_sessionmaker[AsyncSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_emit = repo.emit_transitions
    calls = 0

    async def flaky_emit(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        result = await real_emit(*args, **kwargs)
        if calls == 1:
            raise RuntimeError("worker died after the join")
        return result

    monkeypatch.setattr(repo, "emit_transitions", flaky_emit)
    hal = await send(sessions, "hal@x.test", props={"plan": "vip"})
    dispatcher = Dispatcher(
        engine,
        settings(database_url).model_copy(
            update={"dispatcher_backoff_base_seconds": 0.01, "dispatcher_backoff_max_seconds": 0.01}
        ),
        [BucketMembershipConsumer([VIP])],
        worker_id="t",
    )
    await dispatcher.drain()
    await asyncio.sleep(0.05)
    await dispatcher.drain()
    assert calls == 2
    assert [k for _, k, _ in await transitions(sessions)] == [f"bucket:entered:vip:{hal}:1"]
    async with sessions() as session:
        [row] = await repo.contact_memberships(session, hal)
    assert row.entry_count == 1


async def test_one_evaluation_joins_leaves_and_touches_with_the_buckets_rules(
    engine: AsyncEngine, database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    pro = define_bucket(
        id="pro", name="Pro", criteria=where.property("plan").equals("pro"), max_dwell=days(10)
    )
    recent = define_bucket(
        id="recent",
        name="Seen this week",
        criteria=where.event("seen").within(days(7)).exists(),
        fast_expiry=True,
    )
    gus = await send(sessions, "gus@x.test", props={"plan": "pro"})
    await drain(engine, database_url, recent, pro)
    async with sessions() as session:
        joined = {m.bucket_id: m for m in await repo.contact_memberships(session, gus)}
    assert joined["pro"].max_dwell_at == joined["pro"].entered_at + days(10)
    assert joined["pro"].expires_at is None
    assert joined["recent"].expires_at == joined["recent"].entered_at + days(7)
    assert joined["recent"].max_dwell_at is None
    first_check = joined["recent"].last_evaluated_at

    await send(sessions, "gus@x.test", props={"plan": "free"})
    await drain(engine, database_url, recent, pro)
    async with sessions() as session:
        after = {m.bucket_id: m for m in await repo.contact_memberships(session, gus)}
        stored = (
            await session.execute(
                text(
                    "SELECT e.event, e.user_id, e.idempotency_key, e.properties, o.id AS outbox"
                    " FROM user_events e JOIN event_outbox o ON o.event_id = e.id"
                    " WHERE e.source = 'bucket' ORDER BY o.id"
                )
            )
        ).all()
    assert after["pro"].status == "left"
    assert after["pro"].left_reason == "criteria"
    assert after["recent"].status == "active"
    assert first_check is not None
    assert after["recent"].last_evaluated_at is not None
    assert after["recent"].last_evaluated_at > first_check  # touched, not left
    # Outbox order: the buckets' order within one evaluation, evaluations in turn.
    assert [r.event for r in stored] == [
        "bucket:entered:recent",
        "bucket:entered:pro",
        "bucket:left:pro",
    ]
    expected = [
        Transition.of("entered", joined["recent"]),
        Transition.of("entered", joined["pro"]),
        Transition.of("left", after["pro"], reason="criteria"),
    ]
    assert [r.idempotency_key for r in stored] == [t.idempotency_key for t in expected]
    assert [r.properties for r in stored] == [t.properties() for t in expected]
    assert {r.user_id for r in stored} == {str(gus)}  # email-only: the contact id is its key
