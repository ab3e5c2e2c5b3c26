"""Transactions kept open across other work hold no snapshot.

A backend that holds a snapshot keeps Postgres from pruning any row version newer than
it, in the whole database; then an update of an ``email_sends`` row cannot stay on its
page. Over the extended protocol a query's snapshot lives until the connection's next
statement, so a transaction left idle after a parameterised query holds one. Two such
transactions were open most of the time while a worker sent: DBOS's background-job
lock (about a second at a time) and a send batch's decision transaction while it
renders the chunk.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import psycopg
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend.db.engine import libpq_url
from hogsend.db.repos import sends
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


async def test_a_batch_facts_read_leaves_no_snapshot(
    engine: AsyncEngine, database_url: str
) -> None:
    query = sends.FactsQuery(
        idempotency_key="facts:1",
        contact_id=uuid.uuid4(),
        email="f@example.com",
        list_id=None,
        journey_id=None,
    )
    async with engine.connect() as conn, conn.begin():
        pid = await conn.scalar(text("SELECT pg_backend_pid()"))
        # As a batch's decision transaction: a lock taken, then the facts read.
        await conn.execute(text("SELECT pg_advisory_xact_lock(77)"))
        [facts] = await sends.read_facts_batch(conn, [query], since=datetime.now(UTC))
        state, xmin = _backend(database_url, pid)
    assert facts.key_holder is None
    assert facts.recent_sends == 0
    assert state == "idle in transaction"
    assert xmin is None
