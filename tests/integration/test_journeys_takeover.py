"""Dead-worker takeover: runs in flight on a SIGKILLed worker that never comes back are
resumed by a live worker within 60 s, by exactly one of the survivors, and no step's
side effect repeats."""

from __future__ import annotations

import asyncio
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from journey_processes import (
    HoldingSink,
    holding_sink,
    kill_worker,
    post_event,
    rows,
    start_worker,
    stop_worker,
    subjects,
    templates,
    until,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_emails_api import settings_for

from hogsend import Hogsend
from hogsend.api.app import create_api
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import workers as worker_repo

pytestmark = pytest.mark.timeout(600)

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import timedelta

    from hogsend import Hogsend, define_journey
    from hogsend.runtime.worker import Worker
    from hogsend.settings import load_settings


    @define_journey(id="takeover", name="Takeover", trigger="takeover.start")
    async def takeover(contact, ctx):
        await ctx.send_email(template="welcome")
        await ctx.sleep(timedelta(seconds=float(sys.argv[2])))
        await ctx.send_email(template="nudge")


    app = Hogsend(journeys=[takeover], templates=sys.argv[1])
    asyncio.run(Worker(app, load_settings()).run())
    """
)

USERS = ["ada", "bea", "cal", "dee", "eli"]
FAST_BEATS = {"HOGSEND_HEARTBEAT_SECONDS": "1", "HOGSEND_WORKER_STALE_SECONDS": "4"}


@pytest.fixture
def sink() -> Iterator[tuple[HoldingSink, int]]:
    yield from holding_sink()


async def test_a_live_worker_takes_over_a_killed_workers_runs_exactly_once(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[HoldingSink, int],
    mint_key: Callable[..., Any],
) -> None:
    handler, port = sink
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    # Long enough that runs are still asleep on worker-a when the survivors are up (two
    # worker starts can take most of a minute on a loaded machine).
    args = [str(templates(tmp_path / "templates")), "45"]
    api = create_api(Hogsend(), settings_for(database_url, port), engine=engine)
    key = await mint_key("ingest")

    async def workflows() -> list[dict[str, Any]]:
        [schema] = await rows(
            engine, "SELECT to_regclass('dbos.workflow_status') IS NOT NULL AS ok"
        )
        if not schema["ok"]:
            return []  # no worker has created DBOS's tables yet
        return await rows(
            engine,
            "SELECT w.workflow_uuid, w.status, w.executor_id, s.status AS run"
            " FROM journey_states s"
            " JOIN dbos.workflow_status w ON w.workflow_uuid = s.workflow_id",
        )

    async def start(worker_id: str) -> asyncio.subprocess.Process:
        return await start_worker(
            script,
            args,
            database_url,
            port,
            worker_id=worker_id,
            log=tmp_path / f"{worker_id}.log",
            **FAST_BEATS,
        )

    async def beating(*worker_ids: str) -> bool:
        found = await rows(
            engine,
            "SELECT worker_id FROM worker_heartbeats"
            " WHERE worker_id = ANY(:ids) AND stopped_at IS NULL",
            ids=list(worker_ids),
        )
        return len(found) == len(worker_ids)

    dead = await start("worker-a")
    survivors: list[asyncio.subprocess.Process] = []
    try:
        await until(lambda: beating("worker-a"))
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for user in USERS:
                await post_event(client, key, "takeover.start", user)

        async def all_sleeping_on_a() -> bool:
            found = await workflows()
            return len(found) == len(USERS) and all(
                w["status"] == "PENDING"
                and w["executor_id"] == "worker-a"
                and w["run"] == "waiting"
                for w in found
            )

        await until(all_sleeping_on_a)
        assert sorted(subjects(handler)) == ["Welcome"] * len(USERS)

        survivors = [await start("worker-b"), await start("worker-c")]

        await until(lambda: beating("worker-b", "worker-c"))
        await kill_worker(dead)
        killed_at = datetime.now(UTC)
        in_flight = [
            w["workflow_uuid"]
            for w in await workflows()
            if w["status"] == "PENDING" and w["executor_id"] == "worker-a"
        ]
        assert in_flight, "every run ended before the kill: nothing to take over"

        async def all_taken_over() -> bool:
            found = await workflows()
            return not any(
                w["status"] == "PENDING" and w["executor_id"] == "worker-a" for w in found
            )

        await until(all_taken_over, seconds=60)
        took = datetime.now(UTC) - killed_at
        assert took < timedelta(seconds=60)

        async def all_completed() -> bool:
            found = await rows(engine, "SELECT status FROM journey_states")
            return [r["status"] for r in found] == ["completed"] * len(USERS)

        await until(all_completed)
    finally:
        await kill_worker(dead)
        for process in survivors:
            await stop_worker(process)
        await api.state.driver_pool.close()

    # Each run's two sends happened once: the welcome before the kill was not repeated.
    for user in USERS:
        assert subjects(handler, to=f"{user}@example.com") == ["Welcome", "Try it"]
    decisions = await rows(engine, "SELECT decision FROM email_sends")
    assert [d["decision"] for d in decisions] == ["sent"] * 2 * len(USERS)
    # Exactly one survivor took the dead worker over; it ran every run to the end.
    [row] = await rows(engine, "SELECT info FROM worker_heartbeats WHERE worker_id = 'worker-a'")
    taker = row["info"]["takenOverBy"]
    assert taker in ("worker-b", "worker-c")
    assert row["info"]["workflowsTakenOver"] >= len(in_flight)
    finished_by = {
        w["workflow_uuid"]: w["executor_id"] for w in await workflows() if w["status"] == "SUCCESS"
    }
    assert {finished_by[w] for w in in_flight} <= {"worker-b", "worker-c"}
    print(
        f"takeover: {len(in_flight)} runs, {took.total_seconds():.1f} s after SIGKILL"
        " (stale after 4 s)"
    )


async def test_only_one_survivor_claims_a_dead_worker(engine: AsyncEngine) -> None:
    now = datetime.now(UTC)
    async with engine.begin() as conn:
        for worker_id, seen, version in [
            ("dead", now - timedelta(minutes=5), "hogsend-1"),
            ("alive", now, "hogsend-1"),
            ("other-version", now - timedelta(minutes=5), "hogsend-2"),
            ("me", now - timedelta(minutes=5), "hogsend-1"),
        ]:
            await conn.execute(
                text(
                    "INSERT INTO worker_heartbeats (worker_id, hostname, pid,"
                    " application_version, started_at, last_seen_at)"
                    " VALUES (:w, 'h', 1, :v, :s, :s)"
                ),
                {"w": worker_id, "v": version, "s": seen},
            )
    sessions = make_sessionmaker(engine)
    stale = timedelta(seconds=30)
    async with sessions() as first, first.begin():
        claimed = await worker_repo.claim_dead_worker(
            first, me="me", application_version="hogsend-1", stale_after=stale
        )
        assert claimed == "dead"
        # A second survivor at the same moment skips the locked row: nothing else is dead.
        async with sessions() as second, second.begin():
            assert (
                await worker_repo.claim_dead_worker(
                    second, me="other", application_version="hogsend-1", stale_after=stale
                )
                == "me"
            )
            assert (
                await worker_repo.claim_dead_worker(
                    second, me="me", application_version="hogsend-1", stale_after=stale
                )
                is None
            )
        await worker_repo.mark_taken_over(first, "dead", by="me", workflows=3)
    async with sessions() as third, third.begin():
        assert (
            await worker_repo.claim_dead_worker(
                third, me="me", application_version="hogsend-1", stale_after=stale
            )
            is None
        )
    # A worker that beats again is a live worker again (the mark is cleared).
    async with sessions() as session, session.begin():
        await worker_repo.beat(
            session,
            worker_id="dead",
            hostname="h",
            pid=2,
            application_version="hogsend-1",
            started_at=now,
        )
    [row] = await rows(engine, "SELECT info FROM worker_heartbeats WHERE worker_id = 'dead'")
    assert row["info"] == {}
