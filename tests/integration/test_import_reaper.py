"""The stale-import reaper on real Postgres: a run whose worker died is resumed once, by
one reaper, at its cursor, and the contacts are not duplicated."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import imports as repo
from hogsend.runtime import imports as runtime
from hogsend.runtime.worker import Worker
from hogsend.settings import Settings

pytestmark = pytest.mark.timeout(120)

ROWS = 7
STALE = timedelta(minutes=5)


async def new_job(engine: AsyncEngine) -> tuple[uuid.UUID, str]:
    """A CSV job of ROWS people, claimed by a first run (which is about to die)."""
    body = "email,plan\n" + "".join(f"r{n}@example.com,p{n}\n" for n in range(ROWS))
    async with make_sessionmaker(engine)() as session, session.begin():
        await repo.create_job(
            session,
            format="csv",
            content=body.encode(),
            mapping={
                "columns": ["email", "plan"],
                "targets": {"email": "email", "plan": "properties.plan"},
                "firstLine": 2,
                "dataOffset": len("email,plan\n"),
            },
        )
        [(job_id, owner)] = await repo.claim_pending(session, datetime.now(UTC), limit=1)
    return job_id, owner


async def age_heartbeat(engine: AsyncEngine, job_id: uuid.UUID, by: timedelta) -> None:
    """What a dead worker leaves behind: no chunk committed for ``by``."""
    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE import_jobs SET updated_at = now() - :by WHERE id = :id"),
            {"by": by, "id": job_id},
        )


async def reap(engine: AsyncEngine) -> list[uuid.UUID]:
    async with make_sessionmaker(engine)() as session, session.begin():
        return await repo.reap_stale(session, datetime.now(UTC), STALE)


async def people(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT email FROM contacts ORDER BY email"))
        return [r[0] for r in rows]


async def test_a_dead_run_is_reaped_once_by_one_of_two_reapers_and_resumed_without_duplicates(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "CHUNK_ROWS", 2)
    app = Hogsend()
    job_id, dead = await new_job(engine)
    first = await runtime.import_chunk(engine, app, job_id, dead)
    assert (first.state, first.processed) == ("more", 2)
    await age_heartbeat(engine, job_id, timedelta(minutes=10))

    # Two workers' reapers at once: one reaps, the other skips the round.
    rounds = await asyncio.gather(reap(engine), reap(engine))
    assert sorted(len(r) for r in rounds) == [0, 1]
    assert [job_id] in rounds
    assert await reap(engine) == []  # reaped once per stall
    async with make_sessionmaker(engine)() as session:
        reaped = await repo.get_job(session, job_id)
    assert reaped is not None
    assert (reaped.status, reaped.workflow_id) == ("pending", None)
    assert "reaper" in (reaped.error or "")

    async with make_sessionmaker(engine)() as session, session.begin():
        [(claimed, fresh)] = await repo.claim_pending(session, datetime.now(UTC), limit=1)
        assert await repo.claim_pending(session, datetime.now(UTC), limit=1) == []
    assert claimed == job_id
    assert fresh != dead
    # The old run, were it only slow, stops at its next chunk and writes nothing.
    assert (await runtime.import_chunk(engine, app, job_id, dead)).state == "stopped"
    states: list[str] = []
    while not states or states[-1] == "more":
        states.append((await runtime.import_chunk(engine, app, job_id, fresh)).state)
    assert states == ["more", "more", "more", "done"]  # lines 4-5, 6-7, 8, end

    async with make_sessionmaker(engine)() as session:
        job = await repo.get_job(session, job_id)
    assert job is not None
    assert (job.status, job.processed_rows, job.created_contacts) == ("completed", ROWS, ROWS)
    assert await people(engine) == sorted(f"r{n}@example.com" for n in range(ROWS))


async def test_a_live_run_is_not_reaped(engine: AsyncEngine) -> None:
    job_id, _ = await new_job(engine)
    assert await reap(engine) == []
    await age_heartbeat(engine, job_id, STALE - timedelta(seconds=30))
    assert await reap(engine) == []


async def test_a_chunk_in_flight_keeps_its_job(engine: AsyncEngine) -> None:
    """The reaper waits for the chunk's row lock, then sees the fresh heartbeat."""
    app = Hogsend()
    job_id, owner = await new_job(engine)
    await age_heartbeat(engine, job_id, timedelta(minutes=10))
    async with make_sessionmaker(engine)() as session, session.begin():
        assert await repo.owned(session, job_id, owner) is not None  # the chunk's lock
        reaper = asyncio.create_task(reap(engine))
        await asyncio.sleep(0.3)
        assert not reaper.done()
        await session.execute(
            text("UPDATE import_jobs SET updated_at = now() WHERE id = :id"), {"id": job_id}
        )
    assert await reaper == []
    assert (await runtime.import_chunk(engine, app, job_id, owner)).state in ("more", "done")


async def test_a_worker_resumes_an_import_whose_worker_died(
    engine: AsyncEngine, database_url: str
) -> None:
    """End to end with a real worker (DBOS): a job left ``processing`` by a run that no
    worker will ever recover is reaped by the worker's scheduler and completed."""
    app = Hogsend()
    job_id, dead = await new_job(engine)
    await runtime.import_chunk(engine, app, job_id, dead)
    await age_heartbeat(engine, job_id, timedelta(minutes=10))
    settings = Settings(
        env="test",
        database_url=database_url,
        campaign_poll_seconds=0.1,
        worker_id=f"reaper-{uuid.uuid4().hex[:6]}",
    )
    worker = Worker(app, settings)
    await worker.start()
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while True:
            async with make_sessionmaker(engine)() as session:
                job = await repo.get_job(session, job_id)
            assert job is not None
            if job.status in ("completed", "failed"):
                break
            assert asyncio.get_running_loop().time() < deadline, job.status
            await asyncio.sleep(0.1)
    finally:
        await worker.stop()
    assert (job.status, job.processed_rows, job.created_contacts) == ("completed", ROWS, ROWS)
    assert job.workflow_id != dead
    assert await people(engine) == sorted(f"r{n}@example.com" for n in range(ROWS))
