"""The worker against a real Postgres: DBOS runs queued workflows, heartbeats, SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest
from dbos import DBOS
from sqlalchemy import event, text

from hogsend import Hogsend
from hogsend.db.engine import make_sessionmaker, make_sync_engine
from hogsend.db.repos.workers import list_workers
from hogsend.runtime.queues import ALL_QUEUES, JOURNEYS
from hogsend.runtime.worker import Worker
from hogsend.settings import Settings

pytestmark = pytest.mark.timeout(120)


def _settings(database_url: str, worker_id: str) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        worker_id=worker_id,
        heartbeat_seconds=0.2,
        worker_stale_seconds=5,
        log_format="console",
    )


async def test_worker_runs_a_queued_workflow_and_heartbeats(database_url: str) -> None:
    registered: dict[str, Callable[[int], Coroutine[Any, Any, int]]] = {}

    def register_tiny_workflow() -> None:
        @DBOS.step(name="hogsend.test-step:double")
        async def double(x: int) -> int:
            return x * 2

        @DBOS.workflow(name="hogsend.test:double-then-add")
        async def double_then_add(x: int) -> int:
            return await double(x) + 1

        registered["workflow"] = double_then_add

    app = Hogsend()
    worker = Worker(
        app, _settings(database_url, "it-worker"), registrations=[register_tiny_workflow]
    )
    await worker.start()
    try:
        assert app.launched
        assert worker.queue_names == [q.name for q in ALL_QUEUES]
        assert JOURNEYS.name == "hogsend.queue:journeys"

        handle = await DBOS.enqueue_workflow_async(JOURNEYS.name, registered["workflow"], 20)
        assert await asyncio.wait_for(handle.get_result(), timeout=30) == 41
        status = await handle.get_status()
        assert status.queue_name == JOURNEYS.name
        assert status.executor_id == "it-worker"
        assert status.app_version == "hogsend-1"

        sessions = make_sessionmaker(worker.engine)
        async with sessions() as session:
            (first,) = await list_workers(session, stale_after=timedelta(seconds=5))
        assert first.worker_id == "it-worker"
        assert first.alive
        await asyncio.sleep(0.7)
        async with sessions() as session:
            (later,) = await list_workers(session, stale_after=timedelta(seconds=5))
        assert later.last_seen_at > first.last_seen_at

        # Connections past the pool's size are kept open when given back, as the API's
        # are: a fresh one is a new backend whose statements are prepared and planned
        # again (journey enrollments ran about a sixth slower with them closed). Which
        # idle connections a checkout gets depends on what the dispatcher and heartbeat
        # hold at that moment, so the test counts connections the pool closes.
        closed: list[object] = []

        def on_close(dbapi_connection: object, _record: object) -> None:
            closed.append(dbapi_connection)

        pool = worker.engine.sync_engine.pool
        event.listen(pool, "close", on_close)
        try:
            async with contextlib.AsyncExitStack() as stack:
                busy = worker.settings.db_pool_size + 2
                conns = [
                    await stack.enter_async_context(worker.engine.connect()) for _ in range(busy)
                ]
                pids = {
                    (await c.exec_driver_sql("SELECT pg_backend_pid()")).scalar_one() for c in conns
                }
                assert len(pids) == busy
            assert closed == []
            assert pool.checkedin() + pool.checkedout() >= busy
        finally:
            event.remove(pool, "close", on_close)
    finally:
        await worker.stop()

    engine = make_sync_engine(database_url)
    with engine.connect() as conn:
        stopped = conn.execute(
            text("SELECT stopped_at FROM worker_heartbeats WHERE worker_id = 'it-worker'")
        ).scalar_one()
        # DBOS kept its tables out of hogsend's schema.
        schemas = set(
            conn.execute(
                text(
                    "SELECT table_schema FROM information_schema.tables"
                    " WHERE table_name = 'workflow_status'"
                )
            ).scalars()
        )
    engine.dispose()
    assert stopped is not None
    assert schemas == {"dbos"}


_WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio
    from hogsend import Hogsend
    from hogsend.runtime.worker import Worker
    from hogsend.settings import load_settings

    asyncio.run(Worker(Hogsend(), load_settings()).run())
    """
)


def test_sigterm_stops_the_worker_gracefully(database_url: str) -> None:
    env = {
        **os.environ,
        "HOGSEND_ENV": "test",
        "HOGSEND_DATABASE_URL": database_url,
        "HOGSEND_WORKER_ID": "sigterm-worker",
        "HOGSEND_HEARTBEAT_SECONDS": "0.5",
        "HOGSEND_LOG_FORMAT": "json",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _WORKER_SCRIPT],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    engine = make_sync_engine(database_url)
    query = text(
        "SELECT stopped_at IS NOT NULL FROM worker_heartbeats WHERE worker_id = 'sigterm-worker'"
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            with engine.connect() as conn:
                if conn.execute(query).scalar() is False:
                    break
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the worker never wrote a heartbeat"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, output
        with engine.connect() as conn:
            assert conn.execute(query).scalar() is True
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        engine.dispose()
