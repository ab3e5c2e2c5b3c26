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


REFRESH_AFTER_SECONDS = 2.0
"""A pooled connection last refreshed at least this long ago is refreshed as it is handed
out: its cached query plans dropped (``DISCARD PLANS``), which also checks it is alive."""


def make_async_engine(url: str, *, pool_size: int = 10, keep_overflow: bool = False) -> AsyncEngine:
    """The async engine the API and worker use for hogsend's own tables.

    At most ``2 * pool_size`` connections. ``pool_size`` of them stay open when given
    back, the overflow ones are closed; with ``keep_overflow`` every connection opened
    stays open (until ``pool_recycle``). The API and the worker keep them: under batch
    load the API used about as many connections as the pool holds, so overflow
    connections were opened and closed two to four times a second (each a connect in
    the API, a new Postgres backend, and its statements prepared again: 2% of the API's
    samples under the Segment load were in connecting); a worker enrolling journeys
    opened about 90 in 2,000 enrollments, each planning the run's statements afresh
    (enrollments 98 to 112 a second, 122 to 126 with them kept). One-off commands close
    them. A connection is refreshed on checkout once :data:`REFRESH_AFTER_SECONDS` passed
    since its last refresh (see :func:`refresh_on_checkout`).
    """
    engine = create_async_engine(
        normalize_url(url),
        pool_size=2 * pool_size if keep_overflow else pool_size,
        max_overflow=0 if keep_overflow else pool_size,
        pool_recycle=1800,
    )
    refresh_on_checkout(engine.sync_engine)
    return engine


def refresh_on_checkout(engine: Engine, *, after_seconds: float = REFRESH_AFTER_SECONDS) -> None:
    """Refresh a pooled connection on checkout once ``after_seconds`` passed since its
    last refresh (or its opening): ``DISCARD PLANS``, one round trip.

    Why the plans: psycopg prepares a statement run a few times on a connection (and
    ``hogsend.db.prepared`` at once), and after five runs Postgres keeps one generic plan
    for it, costed on the table sizes of that moment, until an ``ANALYZE`` of a table it
    reads (autovacuum's, a minute or more later). A plan made while a table was nearly
    empty scans the whole table, and keeps doing so as the table grows: on a fresh
    database, 15,000 batch sends through one pool tripled Postgres's statement time per
    send (docs/database.md, "Cached plans of a growing table"). Dropped every few
    seconds, each plan is made again for the tables as they are.

    Why it is also the ping: a connection dropped while idle (a restarted server, a
    proxy's idle timeout) has sat in the pool at least this long since its last
    refresh, so the refresh finds it dead and the pool opens another (what SQLAlchemy's
    ``pool_pre_ping`` does, without a round trip on every checkout: under load every
    checkout found one, three per journey run, bench/journeys.py). One that fails
    anyway fails its statement, which invalidates the pool (SQLAlchemy's disconnect
    handling) like any error of a connection lost mid-use.
    """
    from sqlalchemy import event
    from sqlalchemy.exc import DisconnectionError

    @event.listens_for(engine, "checkout")
    def _refresh(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        now = time.monotonic()
        last = record.info.get("hogsend_refreshed_at")
        # A connection never refreshed was just opened: no plans yet, and alive.
        if last is not None and now - last < after_seconds:
            return
        if last is not None:
            try:
                _discard_plans(dbapi_connection)
            except Exception as exc:
                # The pool drops this connection and checks out another.
                raise DisconnectionError(f"pooled connection failed its refresh: {exc}") from exc
        record.info["hogsend_refreshed_at"] = now


def _discard_plans(dbapi_connection: Any) -> None:
    # In autocommit, as SQLAlchemy's psycopg ping: no transaction left open on checkout.
    before = dbapi_connection.autocommit
    if not before:
        dbapi_connection.autocommit = True
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("DISCARD PLANS")
    finally:
        cursor.close()
        if not before and not dbapi_connection.closed:
            dbapi_connection.autocommit = before


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
