"""Engines: one async engine per process for our tables, sync ones for migrations."""

from __future__ import annotations

import time
from typing import Any

import psycopg
from sqlalchemy import Engine, create_engine
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.asyncio import AsyncSession as AsyncSession


def normalize_url(url: str) -> str:
    """The SQLAlchemy URL for psycopg 3, whatever Postgres scheme the user wrote."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def libpq_url(url: str) -> str:
    """The plain libpq URL (what psycopg.connect and DBOS accept)."""
    return "postgresql://" + normalize_url(url)[len("postgresql+psycopg://") :]


PING_AFTER_IDLE_SECONDS = 2.0
"""A pooled connection idle at least this long is pinged before it is handed out."""


def make_async_engine(url: str, *, pool_size: int = 10, keep_overflow: bool = False) -> AsyncEngine:
    """The async engine the API and worker use for hogsend's own tables.

    At most ``2 * pool_size`` connections. ``pool_size`` of them stay open when given
    back, the overflow ones are closed; with ``keep_overflow`` every connection opened
    stays open (until ``pool_recycle``). The API keeps them: under batch load it used
    about as many connections as the pool holds, so overflow connections were opened
    and closed two to four times a second (each a connect in the API, a new Postgres
    backend, and its statements prepared again: 2% of the API's samples under the
    Segment load were in connecting). Connections are pinged on checkout only when they
    sat in the pool for :data:`PING_AFTER_IDLE_SECONDS` or more (see
    :func:`ping_when_idle`).
    """
    engine = create_async_engine(
        normalize_url(url),
        pool_size=2 * pool_size if keep_overflow else pool_size,
        max_overflow=0 if keep_overflow else pool_size,
        pool_recycle=1800,
    )
    ping_when_idle(engine.sync_engine)
    return engine


def ping_when_idle(engine: Engine, *, after_seconds: float = PING_AFTER_IDLE_SECONDS) -> None:
    """Ping a pooled connection on checkout when it was idle ``after_seconds`` or more.

    What SQLAlchemy's ``pool_pre_ping`` does, but not for a connection returned a moment
    ago: under load every checkout found one, and its ping was a round trip of its own
    (three per journey run, bench/journeys.py). A connection dropped while idle (a
    restarted server, a proxy's idle timeout) has sat in the pool; one that fails
    anyway fails its statement, which invalidates the pool (SQLAlchemy's disconnect
    handling) like any error of a connection lost mid-use.
    """
    from sqlalchemy import event
    from sqlalchemy.exc import DisconnectionError

    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["hogsend_returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        returned = record.info.get("hogsend_returned_at")
        # A connection never returned was just opened: nothing to check.
        if returned is None or time.monotonic() - returned < after_seconds:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool drops this connection and checks out another.
            raise DisconnectionError(f"pooled connection failed its ping: {exc}") from exc


def make_sync_engine(url: str) -> Engine:
    """A small sync engine for migrations and CLI one-offs."""
    return create_engine(normalize_url(url), pool_size=2, max_overflow=2, pool_pre_ping=True)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded values after commit (we hand them to the API layer)."""
    return async_sessionmaker(engine, expire_on_commit=False)


async def driver_connection(conn: AsyncConnection) -> psycopg.AsyncConnection[Any]:
    """The psycopg connection under ``conn``, for what SQLAlchemy cannot send: COPY, and
    several statements in one simple-protocol round trip, the mailer's hot statements
    (``hogsend.db.prepared``)."""
    sync = conn.sync_connection
    if sync is not None and not sync.closed and not sync.invalidated:
        # Checked out and live: an attribute read, without get_raw_connection's greenlet
        # hop (about 10 µs, paid by every statement sent this way).
        live: psycopg.AsyncConnection[Any] = sync.connection.driver_connection  # type: ignore[assignment]
        return live
    raw = await conn.get_raw_connection()
    driver: psycopg.AsyncConnection[Any] = raw.driver_connection  # type: ignore[assignment]
    return driver
