"""Typed access to what :func:`hogsend.api.app.create_api` stores on ``api.state``.

Nothing here is global: every value hangs off the FastAPI app of the request, so two
apps (two tests, two databases) never see each other's engine or settings.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any, cast

import psycopg
from fastapi import Depends, Request
from psycopg_pool import AsyncConnectionPool
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

    The pool opens lazily in the running event loop and holds at most ``max_size``
    connections; whoever owns the API closes it (the lifespan does). Connections are in
    autocommit mode with ``synchronous_commit = off``: a count or a last-used time does
    not wait for the WAL flush, and a crash can only lose the last fraction of a second
    of such bookkeeping (never a key, an event or anything else: those go through the
    engine).

    Args:
        url: a Postgres URL in any scheme SQLAlchemy or libpq accepts.
        max_size: the most connections it opens.
        timeout: seconds to wait for a free connection before failing the request.
    """

    def __init__(self, url: str, *, max_size: int, timeout: float = 5.0) -> None:
        self._conninfo = libpq_url(url)
        self._max_size = max_size
        self._timeout = timeout
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._opening = asyncio.Lock()

    @classmethod
    def for_engine(cls, engine: AsyncEngine, *, max_size: int) -> DriverPool:
        """A pool on the same database as ``engine``."""
        return cls(engine.url.render_as_string(hide_password=False), max_size=max_size)

    async def _opened(self) -> AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        if self._pool is None:
            async with self._opening:
                if self._pool is None:
                    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
                        self._conninfo,
                        min_size=1,
                        max_size=self._max_size,
                        kwargs={"autocommit": True},
                        timeout=self._timeout,
                        configure=_configure_hot_path,
                        name="hogsend-api-hot-path",
                        open=False,
                    )
                    await pool.open()
                    self._pool = pool
        return self._pool

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection, returned to the pool on exit."""
        pool = await self._opened()
        async with pool.connection() as conn:
            yield conn

    async def discard_broken(self) -> None:
        """Drop idle connections the server closed (after a Postgres restart or failover)."""
        if self._pool is not None:
            await self._pool.check()

    async def close(self) -> None:
        """Close every connection; the next :meth:`connect` opens the pool again."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()


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
