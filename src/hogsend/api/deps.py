"""Typed access to what :func:`hogsend.api.app.create_api` stores on ``api.state``.

Nothing here is global: every value hangs off the FastAPI app of the request, so two
apps (two tests, two databases) never see each other's engine or settings.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, Any, cast

import psycopg
from fastapi import Depends, Request
from psycopg_pool import PoolTimeout
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hogsend.db.engine import libpq_url
from hogsend.settings import Settings

if TYPE_CHECKING:
    from hogsend.api.ratelimit import RateLimiter
    from hogsend.app import Hogsend
    from hogsend.channels.mailer import Mailer


async def _configure_hot_path(conn: psycopg.AsyncConnection[Any]) -> None:
    await conn.execute("SET synchronous_commit = off")


class DriverPool:
    """A small psycopg pool for the statements every request runs: key lookup, rate count.

    Why a second pool next to the engine's: checking a connection out of SQLAlchemy's
    async pool (greenlet hop, pre-ping round trip, autocommit toggling) cost ~0.5 ms per
    request here against ~0.15 ms from psycopg's pool, which made ``GET /v1/whoami``
    twice as fast end to end (bench/auth.py). Everything else uses the engine.

    Why not psycopg_pool itself: on ``POST /v1/events`` its checkout and return (a lock,
    a condition, a timeout task and a connection reset each way) were ~12% of the API's
    CPU per request (cProfile, bench/ingest.py); here a free connection is a list pop and
    a returned one a list append, or a hand-over to the oldest waiter.

    Connections open lazily in the running event loop, at most ``max_size`` of them;
    whoever owns the API closes the pool (the lifespan does). They are in autocommit
    mode with ``synchronous_commit = off``: a count or a last-used time does not wait for
    the WAL flush, and a crash can only lose the last fraction of a second of such
    bookkeeping (the single-event ingest, which also runs here, sets its own commit
    back to the server's durability). A connection given back broken, inside a
    transaction or in the middle of a query is closed, not reused.

    Args:
        url: a Postgres URL in any scheme SQLAlchemy or libpq accepts.
        max_size: the most connections it opens.
        timeout: seconds to wait for a free connection before failing the request.
    """

    def __init__(self, url: str, *, max_size: int, timeout: float = 5.0) -> None:
        self._conninfo = libpq_url(url)
        self._max_size = max_size
        self._timeout = timeout
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        # Futures of requests waiting for a connection: given one, or None when a slot
        # was freed (the waiter then opens a connection itself).
        self._waiters: deque[asyncio.Future[psycopg.AsyncConnection[Any] | None]] = deque()
        self._size = 0  # connections open or being opened, idle or not
        self._generation = 0  # bumped by close(): connections of an older one are dropped
        self._born: dict[int, int] = {}  # id(connection) -> its generation

    @classmethod
    def for_engine(cls, engine: AsyncEngine, *, max_size: int) -> DriverPool:
        """A pool on the same database as ``engine``."""
        return cls(engine.url.render_as_string(hide_password=False), max_size=max_size)

    def connect(self) -> _Lease:
        """A pooled connection (``async with``), given back to the pool on exit."""
        return _Lease(self)

    async def _acquire(self) -> psycopg.AsyncConnection[Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            if self._idle:
                return self._idle.pop()
            if self._size < self._max_size:
                self._size += 1
                try:
                    return await self._open()
                except BaseException:
                    self._size -= 1
                    self._wake_one()
                    raise
            waiter: asyncio.Future[psycopg.AsyncConnection[Any] | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    conn = await waiter
            except BaseException as exc:
                # Handed a connection just as the wait ended: give it to the next one.
                if waiter.done() and not waiter.cancelled():
                    handed = waiter.result()
                    if handed is not None:
                        self._release(handed)
                    else:
                        self._wake_one()
                else:
                    waiter.cancel()
                if isinstance(exc, TimeoutError):
                    raise PoolTimeout(
                        f"no free database connection within {self._timeout} s"
                    ) from None
                raise
            if conn is not None:
                return conn

    async def _open(self) -> psycopg.AsyncConnection[Any]:
        generation = self._generation  # a close() meanwhile makes this one stale
        conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            await _configure_hot_path(conn)
        except BaseException:
            await conn.close()
            raise
        self._born[id(conn)] = generation
        return conn

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _release(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Give ``conn`` to the oldest waiter, or keep it idle; never blocks."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    async def _give_back(self, conn: psycopg.AsyncConnection[Any]) -> None:
        reusable = (
            not conn.closed
            and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            and self._born.get(id(conn)) == self._generation
        )
        if reusable:
            self._release(conn)
            return
        await self._drop(conn)

    async def _drop(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self._born.pop(id(conn), None) == self._generation:
            self._size -= 1
            self._wake_one()
        with contextlib.suppress(Exception):
            await conn.close()

    async def discard_broken(self) -> None:
        """Drop idle connections the server closed (after a Postgres restart or failover)."""
        idle, self._idle = self._idle, []
        for conn in idle:
            try:
                await conn.execute("SELECT 1")
            except psycopg.Error:
                await self._drop(conn)
            else:
                self._release(conn)

    async def close(self) -> None:
        """Close every idle connection (busy ones close when given back).

        The next :meth:`connect` opens connections again.
        """
        idle, self._idle = self._idle, []
        self._generation += 1
        self._size = 0
        self._born.clear()
        for conn in idle:
            with contextlib.suppress(Exception):
                await conn.close()
        while self._waiters:
            self._wake_one()


class _Lease:
    """``async with pool.connect() as conn``: one connection, given back on exit.

    A class rather than an ``asynccontextmanager``: the generator machinery was a
    visible share of a request that does one round trip.
    """

    __slots__ = ("_conn", "_pool")

    def __init__(self, pool: DriverPool) -> None:
        self._pool = pool
        self._conn: psycopg.AsyncConnection[Any] | None = None

    async def __aenter__(self) -> psycopg.AsyncConnection[Any]:
        self._conn = await self._pool._acquire()
        return self._conn

    async def __aexit__(self, *exc_info: object) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool._give_back(conn)


def _ready(request: Request, name: str) -> object:
    value = getattr(request.app.state, name, None)
    if value is None:
        raise RuntimeError(
            f"api.state.{name} is not set: the API's lifespan has not run "
            "(serve it with uvicorn, or pass engine= to create_api)"
        )
    return value


def settings_of(request: Request) -> Settings:
    """The settings the API was created with."""
    return cast(Settings, request.app.state.settings)


def hogsend_of(request: Request) -> Hogsend:
    """The user's Hogsend app object."""
    return cast("Hogsend", request.app.state.app)


def engine_of(request: Request) -> AsyncEngine:
    """The API's async engine."""
    return cast(AsyncEngine, _ready(request, "engine"))


def sessionmaker_of(request: Request) -> async_sessionmaker[AsyncSession]:
    """Transactional sessions: the caller commits."""
    return cast(async_sessionmaker[AsyncSession], _ready(request, "sessionmaker"))


def driver_pool_of(request: Request) -> DriverPool:
    """Autocommit psycopg connections for the per-request hot path."""
    return cast(DriverPool, _ready(request, "driver_pool"))


def rate_limiter_of(request: Request) -> RateLimiter:
    """The rate limiter chosen by ``settings.rate_limit_backend``."""
    return cast("RateLimiter", _ready(request, "rate_limiter"))


def mailer_of(request: Request) -> Mailer:
    """The API's mailer, built on first use with the provider the settings name.

    The lifespan closes its provider at shutdown.

    Raises:
        ConfigurationError: the app has no templates.
    """
    mailer = getattr(request.app.state, "mailer", None)
    if mailer is None:
        from hogsend.channels.email import build_provider
        from hogsend.channels.mailer import Mailer

        engine = engine_of(request)
        settings = settings_of(request)
        # No await between the check and the assignment: one mailer per API.
        mailer = Mailer(hogsend_of(request), settings, engine, build_provider(settings, engine))
        request.app.state.mailer = mailer
    return cast("Mailer", mailer)


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with sessionmaker_of(request)() as session:
        yield session


DbSession = Annotated[AsyncSession, Depends(_session, scope="function")]
"""A transactional session for one request, closed (rolled back if uncommitted) when the
endpoint returns and before the response is sent."""
