"""Pooled connections are refreshed on checkout every few seconds (hogsend.db.engine):
their cached plans dropped, which also finds a connection that died while idle."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hogsend.db import prepared
from hogsend.db.engine import (
    REFRESH_AFTER_SECONDS,
    driver_connection,
    libpq_url,
    make_async_engine,
    normalize_url,
    refresh_on_checkout,
)


def _engine(database_url: str, after_seconds: float) -> AsyncEngine:
    engine = create_async_engine(normalize_url(database_url), pool_size=1, max_overflow=0)
    refresh_on_checkout(engine.sync_engine, after_seconds=after_seconds)
    return engine


async def _backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        pid = await conn.scalar(text("SELECT pg_backend_pid()"))
    assert isinstance(pid, int)
    return pid


def _terminate(database_url: str, pid: int) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))


async def test_an_idle_connection_that_died_is_replaced_on_checkout(database_url: str) -> None:
    engine = _engine(database_url, after_seconds=0.0)
    try:
        pid = await _backend_pid(engine)
        _terminate(database_url, pid)
        # Refreshed long enough ago: the checkout's refresh finds it dead and opens another.
        assert await _backend_pid(engine) != pid
    finally:
        await engine.dispose()


async def test_a_connection_refreshed_a_moment_ago_is_not_checked(database_url: str) -> None:
    engine = _engine(database_url, after_seconds=3600.0)
    try:
        pid = await _backend_pid(engine)
        _terminate(database_url, pid)
        # Not refreshed: the dead connection is handed out and its statement fails...
        with pytest.raises(DBAPIError) as failed:
            await _backend_pid(engine)
        assert failed.value.connection_invalidated
        # ...which invalidates it: the next checkout gets a new one.
        assert await _backend_pid(engine) != pid
    finally:
        await engine.dispose()


async def test_the_app_engine_checks_connections_idle_past_the_threshold(database_url: str) -> None:
    engine = make_async_engine(database_url, pool_size=1)
    try:
        pid = await _backend_pid(engine)
        _terminate(database_url, pid)
        await asyncio.sleep(REFRESH_AFTER_SECONDS + 0.1)
        assert await _backend_pid(engine) != pid
    finally:
        await engine.dispose()


# A statement of the mailer's shape: rows probed by primary key, ids given as an array.
_UPDATE = b"""
    UPDATE plan_probe SET v = v + 1
    WHERE id = ANY(ARRAY(SELECT unnest(CAST(%(ids)s AS uuid[]))))
"""


async def _seq_tuples_read(driver: psycopg.AsyncConnection[Any]) -> int:
    """``plan_probe``'s rows read by sequential scans so far, this backend's included."""
    await driver.execute("SELECT pg_stat_force_next_flush()")
    await driver.commit()  # the backend's counts reach the shared ones as it goes idle
    cursor = await driver.execute(
        "SELECT seq_tup_read FROM pg_stat_user_tables WHERE relname = 'plan_probe'"
    )
    row = await cursor.fetchone()
    await driver.commit()
    assert row is not None
    return int(row[0])


async def _rows_scanned(engine: AsyncEngine, ids: list[uuid.UUID]) -> int:
    """Rows of ``plan_probe`` the UPDATE read by sequential scan (committed, as the
    mailer's statements are)."""
    async with engine.connect() as conn:
        driver = await driver_connection(conn)
        before = await _seq_tuples_read(driver)
        await prepared.execute(conn, _UPDATE, {"ids": prepared.text_array(ids)})
        await driver.commit()
        return await _seq_tuples_read(driver) - before


@pytest.mark.parametrize("refresh_after", [0.2, 3600.0])
async def test_a_plan_made_on_a_nearly_empty_table_is_made_again_once_it_grew(
    database_url: str, refresh_after: float
) -> None:
    # Autovacuum's ANALYZE would also have Postgres plan again: kept out of this test.
    with psycopg.connect(libpq_url(database_url), autocommit=True) as setup:
        setup.execute(
            "CREATE TABLE plan_probe (id uuid PRIMARY KEY, v int NOT NULL DEFAULT 0)"
            " WITH (autovacuum_enabled = false)"
        )
        setup.execute(
            "INSERT INTO plan_probe (id) SELECT gen_random_uuid() FROM generate_series(1, 5)"
        )
        # Statistics of the nearly empty table, as after a migration or autovacuum.
        setup.execute("ANALYZE plan_probe")
        few = [row[0] for row in setup.execute("SELECT id FROM plan_probe LIMIT 3")]
    engine = _engine(database_url, after_seconds=refresh_after)
    try:
        # Run often enough for Postgres to keep a generic plan: on five rows, a scan.
        for _ in range(8):
            await _rows_scanned(engine, few)
        with psycopg.connect(libpq_url(database_url), autocommit=True) as setup:
            setup.execute(
                "INSERT INTO plan_probe (id) SELECT gen_random_uuid()"
                " FROM generate_series(1, 20000)"
            )
        await asyncio.sleep(0.3)
        scanned = await _rows_scanned(engine, few)
    finally:
        await engine.dispose()
    if refresh_after < 0.3:
        # Planned again for 20,005 rows: three primary-key probes, no scan.
        assert scanned == 0
    else:
        # The plan made for five rows, kept: every row read to update three.
        assert scanned >= 20_000
