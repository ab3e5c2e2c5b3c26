"""Transactions kept open across other work hold no snapshot.

A backend that holds a snapshot keeps Postgres from pruning any row version newer than
it, in the whole database; then an update of an ``email_sends`` row cannot stay on its
page. Over the extended protocol a query's snapshot lives until the connection's next
statement, so a transaction left idle after a parameterised query holds one. DBOS's
background-job lock is such a transaction, open about a second at a time in every
worker.
"""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import create_engine, make_url, text

from hogsend.db.engine import libpq_url
from hogsend.runtime.dbos_setup import release_job_lock_snapshots

# DBOS 3.4's background-job lock statement, as it sends it.
_JOB_LOCK = text(
    "SELECT pg_try_advisory_xact_lock(:key) FROM set_config("
    "'idle_in_transaction_session_timeout', :timeout, true)"
)


def _backend(database_url: str, pid: int) -> tuple[str | None, str | None]:
    """(state, backend_xmin) of backend ``pid``, read from another connection."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT state, backend_xmin::text FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
    assert row is not None
    return row[0], row[1]


def _locks_held(database_url: str, pid: int) -> int:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE pid = %s AND locktype = 'advisory' AND granted",
            (pid,),
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.parametrize("released", [False, True])
def test_the_job_lock_keeps_its_lock_and_drops_its_snapshot(
    database_url: str, released: bool
) -> None:
    engine = create_engine(make_url(database_url).set(drivername="postgresql+psycopg"))
    if released:
        release_job_lock_snapshots(engine)
    try:
        with engine.connect() as conn:
            pid = conn.scalar(text("SELECT pg_backend_pid()"))
            conn.rollback()
            assert conn.scalar(_JOB_LOCK, {"key": 4242, "timeout": "5000"}) is True
            state, xmin = _backend(database_url, pid)
            held = _locks_held(database_url, pid)
            conn.rollback()
    finally:
        engine.dispose()
    assert state == "idle in transaction"
    assert held == 1
    # Without the release the idle transaction pins the horizon: the test can fail.
    assert (xmin is None) is released


@pytest.mark.timeout(120)
async def test_a_workers_job_lock_holds_no_snapshot(database_url: str) -> None:
    from hogsend import Hogsend
    from hogsend.runtime.worker import Worker
    from hogsend.settings import Settings

    settings = Settings(env="test", database_url=database_url, worker_id="xmin-worker")
    worker = Worker(Hogsend(), settings)
    await worker.start()
    seen: list[str | None] = []
    try:
        with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
            # The hook is attached once DBOS has launched: the job thread's first
            # transaction can begin a moment before it. Only later ones count.
            hooked = conn.execute("SELECT clock_timestamp()").fetchone()
            assert hooked is not None
            # The lock's transaction is idle for most of each one-second interval. Only
            # this test's database: other tests' servers share the Postgres cluster.
            for _ in range(200):
                # Its last query is the release's own; the lock is what marks it.
                rows = conn.execute(
                    "SELECT a.backend_xmin::text FROM pg_stat_activity a"
                    " JOIN pg_locks l ON l.pid = a.pid AND l.locktype = 'advisory' AND l.granted"
                    " WHERE a.datname = current_database()"
                    " AND a.state = 'idle in transaction'"
                    " AND a.xact_start > %s"
                    " AND a.application_name = 'dbos_transact'",
                    (hooked[0],),
                ).fetchall()
                seen.extend(row[0] for row in rows)
                if len(seen) >= 3:
                    break
                await asyncio.sleep(0.05)
    finally:
        await worker.stop()
    assert len(seen) >= 3
    assert seen == [None] * len(seen)
