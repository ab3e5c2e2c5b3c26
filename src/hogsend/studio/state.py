"""What every Studio view reaches through its request: the API it is mounted on, and more.

Studio is a Starlette app mounted inside the API app; it owns no engine, settings or
rate limiter of its own but uses the API's (``api.state``), which its lifespan fills.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import Request

from hogsend.settings import Settings

if TYPE_CHECKING:
    from hogsend.api.ratelimit import RateLimiter
    from hogsend.app import Hogsend


@dataclass(slots=True, kw_only=True)
class StudioState:
    """Studio's own state, kept on its Starlette app.

    Attributes:
        api: the API app Studio is mounted on.
        prefix: the path Studio lives under (``/studio``).
        form_key: signs the CSRF token of the sign-in and setup forms (which have no
            session yet); the API's secret key when set, else random per process.
    """

    api: FastAPI
    prefix: str
    form_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    @property
    def settings(self) -> Settings:
        """The API's settings."""
        return cast(Settings, self.api.state.settings)

    @property
    def app(self) -> Hogsend:
        """The user's Hogsend app (journeys, lists, templates)."""
        return cast("Hogsend", self.api.state.app)

    @property
    def rate_limiter(self) -> RateLimiter:
        """The API's rate limiter (sign-in attempts are counted there)."""
        return cast("RateLimiter", self._ready("rate_limiter"))

    def sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        """Transactional sessions on the API's engine."""
        return cast(async_sessionmaker[AsyncSession], self._ready("sessionmaker"))

    def url(self, path: str = "/") -> str:
        """The absolute path of a Studio page (``/contacts`` → ``/studio/contacts``)."""
        return self.prefix + path

    def _ready(self, name: str) -> object:
        value = getattr(self.api.state, name, None)
        if value is None:
            raise RuntimeError(f"api.state.{name} is not set: the API's lifespan has not run")
        return value


def studio_of(request: Request) -> StudioState:
    """The Studio state of the app serving ``request``."""
    return cast(StudioState, request.app.state.studio)


@contextlib.asynccontextmanager
async def database(request: Request) -> AsyncIterator[AsyncSession]:
    """A session for one view; rolled back unless the view commits."""
    async with studio_of(request).sessionmaker()() as session:
        yield session
