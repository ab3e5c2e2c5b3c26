"""Typed access to what :func:`hogsend.api.app.create_api` stores on ``api.state``.

Nothing here is global: every value hangs off the FastAPI app of the request, so two
apps (two tests, two databases) never see each other's engine or settings.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated, cast

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from hogsend.settings import Settings

if TYPE_CHECKING:
    from hogsend.api.ratelimit import RateLimiter
    from hogsend.app import Hogsend


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


def autocommit_sessionmaker_of(request: Request) -> async_sessionmaker[AsyncSession]:
    """Sessions whose every statement commits on its own (auth and rate-limit bookkeeping)."""
    return cast(async_sessionmaker[AsyncSession], _ready(request, "autocommit_sessionmaker"))


def rate_limiter_of(request: Request) -> RateLimiter:
    """The rate limiter chosen by ``settings.rate_limit_backend``."""
    return cast("RateLimiter", _ready(request, "rate_limiter"))


async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    async with sessionmaker_of(request)() as session:
        yield session


DbSession = Annotated[AsyncSession, Depends(_session, scope="function")]
"""A transactional session for one request, closed (rolled back if uncommitted) when the
endpoint returns and before the response is sent."""
