"""The enrollment fast path on a real Postgres and real DBOS (a started worker).

An enrollment is three statements plus the workflow's enqueue, all in the enrolling
transaction: the run and its workflow commit together or not at all, the entry limits
hold when triggers of one contact race, and the dispatcher opens no savepoint for a
consumer that does not want an event.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hogsend import Contact, Hogsend, JourneyContext, define_journey
from hogsend.core.contact import Event
from hogsend.core.definitions import EntryLimit, JourneyDefinition
from hogsend.db.engine import make_sessionmaker
from hogsend.runtime.dispatcher import DispatchedEvent, Dispatcher
from hogsend.runtime.journeys import journey_workflow_name
from hogsend.runtime.worker import Worker
from hogsend.settings import Settings

pytestmark = pytest.mark.timeout(120)


@define_journey(id="fp-quick", name="Quick", trigger="fp.quick", entry_limit="unlimited")
async def quick(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.log("hello")


def _racer(limit: EntryLimit) -> JourneyDefinition:
    async def body(contact: Contact, ctx: JourneyContext) -> None:
        # Long enough that every racing trigger is decided while the run still runs.
        await ctx.sleep(timedelta(seconds=1))
        await ctx.log("done")

    return define_journey(
        id=f"fp-race-{limit.replace('_', '-')}",
        name=f"Race {limit}",
        trigger=f"fp.race.{limit}",
        entry_limit=limit,
        entry_period=timedelta(hours=1) if limit == "once_per_period" else None,
    )(body)


RACERS = {limit: _racer(limit) for limit in ("once", "once_per_period", "unlimited")}


def _settings(database_url: str, *, listen: bool = True) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        secret_key="f" * 40,
        public_url="https://mail.example.test",
        worker_id="enroll-fast-path",
        dispatcher_poll_seconds=0.05,
        dispatcher_listen=listen,
    )


@pytest.fixture
async def worker(engine: AsyncEngine, database_url: str) -> AsyncIterator[Worker]:
    app = Hogsend(journeys=[quick, *RACERS.values()])
    worker = Worker(app, _settings(database_url), engine=engine)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


async def _contact(engine: AsyncEngine) -> uuid.UUID:
    contact = uuid.uuid4()
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO contacts (id, external_id, email) VALUES (:id, :k, :e)"),
            {"id": contact, "k": f"user-{contact}", "e": f"{contact}@example.com"},
        )
    return contact


def _trigger(name: str, contact: uuid.UUID) -> Event:
    return Event(
        id=uuid.uuid4(),
        name=name,
        contact_key=f"user-{contact}",
        contact_id=contact,
        occurred_at=datetime.now(UTC),
        properties={},
        source="test",
    )


async def _rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return [dict(r._mapping) for r in await conn.execute(text(sql), params)]


async def _until(engine: AsyncEngine, sql: str, want: int, **params: Any) -> None:
    for _ in range(300):
        if len(await _rows(engine, sql, **params)) >= want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{sql!r} never returned {want} rows")


async def test_a_run_and_its_workflow_commit_together_or_not_at_all(
    worker: Worker, engine: AsyncEngine
) -> None:
    assert worker.journeys is not None
    runtime = worker.journeys
    contact = await _contact(engine)
    sessions = make_sessionmaker(engine)

    async with sessions() as session:
        await session.begin()
        rolled_back = await runtime.enroll(
            session,
            quick,
            contact_id=contact,
            contact_key=f"user-{contact}",
            trigger=_trigger("fp.quick", contact),
        )
        assert rolled_back is not None
        await session.rollback()
    # Long enough for the journeys queue (polled every 100 ms) to have taken it.
    await asyncio.sleep(1.0)
    assert await _rows(engine, "SELECT id FROM journey_states") == []
    workflows = await _rows(
        engine, "SELECT 1 FROM dbos.workflow_status WHERE workflow_uuid = :w", w=rolled_back
    )
    assert workflows == []

    async with sessions() as session, session.begin():
        workflow_id = await runtime.enroll(
            session,
            quick,
            contact_id=contact,
            contact_key=f"user-{contact}",
            trigger=_trigger("fp.quick", contact),
        )
    await _until(engine, "SELECT 1 FROM journey_states WHERE status = 'completed'", 1)
    logs = await _rows(
        engine, "SELECT action FROM journey_logs WHERE journey_id = 'fp-quick' ORDER BY id"
    )
    assert [r["action"] for r in logs] == ["enrolled", "log", "completed"]
    # DBOS records the workflow's outcome after the body's completion committed.
    await _until(
        engine,
        "SELECT 1 FROM dbos.workflow_status WHERE workflow_uuid = :w"
        " AND status NOT IN ('PENDING', 'ENQUEUED')",
        1,
        w=workflow_id,
    )
    status = await _rows(
        engine,
        "SELECT status, name, application_version FROM dbos.workflow_status"
        " WHERE workflow_uuid = :w",
        w=workflow_id,
    )
    assert status == [
        {
            "status": "SUCCESS",
            "name": journey_workflow_name("fp-quick"),
            "application_version": worker.settings.application_version,
        }
    ]


async def test_an_enrollment_takes_three_statements_and_the_enqueue(
    worker: Worker, engine: AsyncEngine
) -> None:
    assert worker.journeys is not None
    contact = await _contact(engine)
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    sessions = make_sessionmaker(engine)
    async with sessions() as session, session.begin():
        # This transaction's connection only: the worker's pollers share the engine.
        conn = (await session.connection()).sync_connection
        assert conn is not None
        event.listen(conn, "before_cursor_execute", record)
        try:
            await worker.journeys.enroll(
                session,
                quick,
                contact_id=contact,
                contact_key=f"user-{contact}",
                trigger=_trigger("fp.quick", contact),
            )
        finally:
            event.remove(conn, "before_cursor_execute", record)
    hogsend = [s for s in statements if "workflow_status" not in s and "workflow_input" not in s]
    assert len(hogsend) == 3, hogsend
    # DBOS writes the queued workflow's status and inputs: two statements.
    assert len(statements) - len(hogsend) == 2, statements
    await _until(engine, "SELECT 1 FROM journey_states WHERE status = 'completed'", 1)


@pytest.mark.parametrize("limit", ["once", "once_per_period", "unlimited"])
async def test_entry_limits_hold_when_one_contacts_triggers_race(
    limit: str, worker: Worker, engine: AsyncEngine
) -> None:
    assert worker.journeys is not None
    runtime = worker.journeys
    definition = RACERS[limit]
    contact = await _contact(engine)
    sessions = make_sessionmaker(engine)
    start = asyncio.Event()

    async def trigger() -> str | None:
        async with sessions() as session, session.begin():
            await start.wait()
            return await runtime.enroll(
                session,
                definition,
                contact_id=contact,
                contact_key=f"user-{contact}",
                trigger=_trigger(str(definition.trigger), contact),
            )

    racing = [asyncio.create_task(trigger()) for _ in range(8)]
    await asyncio.sleep(0.05)
    start.set()
    started = [w for w in await asyncio.gather(*racing) if w is not None]

    assert len(started) == 1
    runs = await _rows(
        engine, "SELECT workflow_id FROM journey_states WHERE journey_id = :j", j=definition.id
    )
    assert [r["workflow_id"] for r in runs] == started
    refused = await _rows(
        engine,
        "SELECT detail->>'reason' AS reason FROM journey_logs"
        " WHERE journey_id = :j AND action = 'refused'",
        j=definition.id,
    )
    expected = {
        "once": "already_entered_once",
        "once_per_period": "period_not_elapsed",
        "unlimited": "already_active",
    }[limit]
    assert [r["reason"] for r in refused] == [expected] * 7
    # Exactly one workflow, and it runs to its end once.
    await _until(
        engine,
        "SELECT 1 FROM journey_states WHERE journey_id = :j AND status = 'completed'",
        1,
        j=definition.id,
    )
    workflows = await _rows(
        engine,
        "SELECT workflow_uuid FROM dbos.workflow_status WHERE name = :n",
        n=journey_workflow_name(definition.id),
    )
    assert [w["workflow_uuid"] for w in workflows] == started
    done = await _rows(
        engine,
        "SELECT 1 FROM journey_logs WHERE journey_id = :j AND action = 'log'",
        j=definition.id,
    )
    assert len(done) == 1


class _Picky:
    """A consumer that wants only ``wanted`` events, and records what it is given."""

    name = "picky"

    def __init__(self) -> None:
        self.seen: list[str] = []

    def wants(self, event: DispatchedEvent) -> bool:
        return event.name == "wanted"

    async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))
        self.seen.append(event.name)


class _Plain:
    """A consumer without ``wants``: it is given every event."""

    name = "plain"

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))
        self.seen.append(event.name)


async def test_a_consumer_that_does_not_want_an_event_is_done_without_a_savepoint(
    engine: AsyncEngine, database_url: str
) -> None:
    picky, plain = _Picky(), _Plain()
    dispatcher = Dispatcher(
        engine, _settings(database_url, listen=False), [picky, plain], worker_id="fp-dispatcher"
    )
    contact = uuid.uuid4()
    async with engine.begin() as conn:
        for name in ("unwanted", "wanted"):
            await conn.execute(
                text(
                    "WITH e AS (INSERT INTO user_events (contact_id, user_id, event)"
                    " VALUES (:c, :k, :n) RETURNING id)"
                    " INSERT INTO event_outbox (event_id, contact_id, contact_key, event)"
                    " SELECT id, :c, :k, :n FROM e"
                ),
                {"c": contact, "k": f"user-{contact}", "n": name},
            )
    savepoints: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("SAVEPOINT"):
            savepoints.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        assert await dispatcher.drain() == 2
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    assert picky.seen == ["wanted"]
    assert plain.seen == ["unwanted", "wanted"]
    # plain on both events, picky on the one it wants.
    assert len(savepoints) == 3, savepoints
    rows = await _rows(engine, "SELECT consumers_done, processed_at FROM event_outbox ORDER BY id")
    assert [sorted(r["consumers_done"]) for r in rows] == [["picky", "plain"]] * 2
    assert all(r["processed_at"] is not None for r in rows)


async def _enroll_quick(worker: Worker, engine: AsyncEngine) -> str:
    assert worker.journeys is not None
    contact = await _contact(engine)
    async with make_sessionmaker(engine)() as session, session.begin():
        workflow_id = await worker.journeys.enroll(
            session,
            quick,
            contact_id=contact,
            contact_key=f"user-{contact}",
            trigger=_trigger("fp.quick", contact),
        )
    assert workflow_id is not None
    return workflow_id


async def test_a_first_run_reads_its_step_records_on_the_connection_that_begins_it(
    worker: Worker, engine: AsyncEngine
) -> None:
    from hogsend.runtime import replay

    await _enroll_quick(worker, engine)  # the first run installs the replay wrapper
    await _until(engine, "SELECT 1 FROM journey_states WHERE status = 'completed'", 1)
    recorded = replay.installed()
    assert recorded is not None
    prefetched: list[str] = []
    checked: list[str] = []
    prefetch, check = recorded.prefetch, recorded.check

    async def counting_prefetch(workflow_id: str) -> bool:
        prefetched.append(workflow_id)
        return await prefetch(workflow_id)

    def counting_check(workflow_id: str, *args: Any, **kwargs: Any) -> Any:
        checked.append(workflow_id)
        return check(workflow_id, *args, **kwargs)

    # (statement, its DBAPI connection) on hogsend's engine, in order; the connections
    # are kept so that no two of them share an id.
    statements: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        statements.append((statement, conn.connection.dbapi_connection))

    recorded.prefetch = counting_prefetch  # type: ignore[method-assign]
    recorded.check = counting_check
    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        workflow_id = await _enroll_quick(worker, engine)
        await _until(engine, "SELECT 1 FROM journey_states WHERE status = 'completed'", 2)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
        recorded.prefetch = prefetch  # type: ignore[method-assign]
        recorded.check = check
    # No prefetch transaction of DBOS's, and no step checked against its tables: the
    # records came with the begin, and the log step's check was answered from them.
    assert workflow_id not in prefetched
    assert workflow_id not in checked
    # The records are read (in autocommit: a replay only reads) right before the begin
    # statement, on the same connection, with nothing of that connection in between
    # (other work of the worker interleaves on other connections).
    at = [n for n, (sql, _) in enumerate(statements) if "json_agg" in sql]
    begin = [n for n, (sql, _) in enumerate(statements) if "current_step = 'start'" in sql]
    assert len(at) == 1
    assert len(begin) == 1
    assert at[0] < begin[0]
    connection = statements[at[0]][1]
    between = [sql for sql, conn in statements[at[0] + 1 : begin[0]] if conn is connection]
    assert between == []
    assert statements[begin[0]][1] is connection
    logs = await _rows(
        engine,
        "SELECT l.action FROM journey_logs l JOIN journey_states s ON s.id = l.journey_state_id"
        " WHERE s.workflow_id = :w ORDER BY l.id",
        w=workflow_id,
    )
    assert [r["action"] for r in logs] == ["enrolled", "log", "completed"]


async def test_the_journey_consumers_enroll_without_a_savepoint(
    worker: Worker, engine: AsyncEngine
) -> None:
    contact = await _contact(engine)
    savepoints: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if statement.upper().startswith("SAVEPOINT"):
            savepoints.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "WITH e AS (INSERT INTO user_events (contact_id, user_id, event)"
                    " VALUES (:c, :k, 'fp.quick') RETURNING id)"
                    " INSERT INTO event_outbox (event_id, contact_id, contact_key, event)"
                    " SELECT id, :c, :k, 'fp.quick' FROM e"
                ),
                {"c": contact, "k": f"user-{contact}"},
            )
        await _until(engine, "SELECT 1 FROM journey_states WHERE status = 'completed'", 1)
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    # Wake-ups and triggers both want the event; neither needs a savepoint.
    assert savepoints == []
    rows = await _rows(engine, "SELECT consumers_done FROM event_outbox")
    assert [sorted(r["consumers_done"]) for r in rows] == [
        ["journey-exits", "journey-triggers", "journey-wakeups"]
    ]
