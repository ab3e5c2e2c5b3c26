"""Pooled connections are pinged on checkout only after sitting idle (hogsend.db.engine)."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from hogsend.db.engine import (
    PING_AFTER_IDLE_SECONDS,
    libpq_url,
    make_async_engine,
    normalize_url,
    ping_when_idle,
)


def _engine(database_url: str, after_seconds: float) -> AsyncEngine:
    engine = create_async_engine(normalize_url(database_url), pool_size=1, max_overflow=0)
    ping_when_idle(engine.sync_engine, after_seconds=after_seconds)
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
        # Idle long enough: the checkout pings, finds it dead and opens another.
        assert await _backend_pid(engine) != pid
    finally:
        await engine.dispose()


async def test_a_connection_returned_a_moment_ago_is_not_pinged(database_url: str) -> None:
    engine = _engine(database_url, after_seconds=3600.0)
    try:
        pid = await _backend_pid(engine)
        _terminate(database_url, pid)
        # Not pinged: the dead connection is handed out and its statement fails...
        with pytest.raises(DBAPIError) as failed:
            await _backend_pid(engine)
        assert failed.value.connection_invalidated
        # ...which invalidates it: the next checkout gets a new one.
        assert await _backend_pid(engine) != pid
    finally:
        await engine.dispose()


async def test_the_app_engine_pings_connections_idle_past_the_threshold(database_url: str) -> None:
    engine = make_async_engine(database_url, pool_size=1)
    try:
        pid = await _backend_pid(engine)
        _terminate(database_url, pid)
        await asyncio.sleep(PING_AFTER_IDLE_SECONDS + 0.1)
        assert await _backend_pid(engine) != pid
    finally:
        await engine.dispose()
