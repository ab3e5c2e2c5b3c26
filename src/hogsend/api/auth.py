"""Bearer API keys and scopes, enforced by a dependency every route declares.

Scopes::

    ingest        data-plane writes (events, contacts, emails, ...)
    read          data-plane reads
    admin:read    every GET under /v1/admin
    admin:write   admin mutations; implies admin:read
    full-admin    everything, and the only scope that may mint or revoke keys

A route states what it needs with ``require_scope("admin:read")`` (or ``require_key()``
when any valid key will do), either in ``dependencies=[...]`` or as the default of a
parameter that receives the :class:`~hogsend.db.repos.api_keys.Principal`. The guard
answers 401 (with ``WWW-Authenticate: Bearer``) for a missing, unknown, expired or
revoked key and 403 for a key without the scope, then counts the request against the
key's rate limit. :func:`route_scope` reads the declaration back from a route, which is
how the tests prove that no route was left unguarded.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final

import psycopg
from fastapi import Depends, Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hogsend.api.deps import DriverPool, driver_pool_of, rate_limiter_of, settings_of
from hogsend.api.ratelimit import enforce_rate_limit
from hogsend.db.repos.api_keys import Principal, authenticate
from hogsend.db.tables.auth import API_SCOPES
from hogsend.errors import Forbidden, Unauthorized

ANY_KEY: Final = "any-key"
"""Pseudo-scope of routes any valid key may call, whatever its scopes."""

SCOPES: Final[tuple[str, ...]] = API_SCOPES

_IMPLIED_BY: Final[dict[str, frozenset[str]]] = {
    "ingest": frozenset({"ingest", "full-admin"}),
    "read": frozenset({"read", "full-admin"}),
    "admin:read": frozenset({"admin:read", "admin:write", "full-admin"}),
    "admin:write": frozenset({"admin:write", "full-admin"}),
    "full-admin": frozenset({"full-admin"}),
}

bearer_scheme: Final = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    bearerFormat="hsk_...",
    description="An API key: `Authorization: Bearer hsk_...`. Mint one with "
    "`hogsend keys create --scope <scope>`.",
)


def scopes_satisfying(required: str) -> frozenset[str]:
    """Every scope that grants ``required`` (``ANY_KEY``: every scope)."""
    if required == ANY_KEY:
        return frozenset(SCOPES)
    return _IMPLIED_BY[required]


def has_scope(held: Iterable[str], required: str) -> bool:
    """Whether a key holding ``held`` may call a route requiring ``required``."""
    return not scopes_satisfying(required).isdisjoint(held)


def _unauthorized(detail: str, *, invalid_token: bool) -> Unauthorized:
    challenge = 'Bearer realm="hogsend"'
    if invalid_token:
        challenge += ', error="invalid_token"'
    return Unauthorized(detail, headers={"WWW-Authenticate": challenge})


class ScopeGuard:
    """The dependency behind :func:`require_scope`; ``scope`` is what the route needs."""

    def __init__(self, scope: str) -> None:
        if scope != ANY_KEY and scope not in SCOPES:
            raise ValueError(f"unknown scope {scope!r}; known: {', '.join(SCOPES)}")
        self.scope = scope

    def __repr__(self) -> str:
        return f"ScopeGuard({self.scope!r})"

    async def __call__(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
    ) -> Principal:
        if credentials is None:
            raise _unauthorized(
                "This route needs an API key: send `Authorization: Bearer <key>`",
                invalid_token=False,
            )
        pool = driver_pool_of(request)
        try:
            return await self._check(request, credentials.credentials, pool)
        except psycopg.OperationalError:
            # Pooled connections die with a Postgres restart; drop them and try once more.
            await pool.discard_broken()
            return await self._check(request, credentials.credentials, pool)

    async def _check(self, request: Request, raw: str, pool: DriverPool) -> Principal:
        # One pooled connection serves the key lookup and the rate-limit count.
        async with pool.connect() as conn:
            principal = await authenticate(conn, raw)
            if principal is None:
                raise _unauthorized(
                    "The API key is unknown, expired or revoked", invalid_token=True
                )
            request.state.principal = principal
            if not has_scope(principal.scopes, self.scope):
                raise Forbidden(
                    f"This route needs the {self.scope!r} scope (or one implying it); "
                    f"the key has {', '.join(sorted(principal.scopes))}",
                    headers={
                        "WWW-Authenticate": (
                            f'Bearer realm="hogsend", error="insufficient_scope", '
                            f'scope="{self.scope}"'
                        )
                    },
                )
            await enforce_rate_limit(
                request,
                principal,
                settings=settings_of(request),
                limiter=rate_limiter_of(request),
                path=request.scope["path"],
                conn=conn,
            )
        return principal


def require_scope(scope: str) -> Any:
    """Dependency: a valid key holding ``scope`` (or a scope implying it); yields the Principal."""
    return Security(ScopeGuard(scope))


def require_key() -> Any:
    """Dependency: any valid key, whatever its scopes; yields the Principal."""
    return Security(ScopeGuard(ANY_KEY))


def route_guard(route: APIRoute) -> ScopeGuard | None:
    """The scope guard a route declares, searching its whole dependency tree."""
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        if isinstance(dependant.call, ScopeGuard):
            return dependant.call
        pending.extend(dependant.dependencies)
    return None


def route_scope(route: APIRoute) -> str | None:
    """The scope a route requires (:data:`ANY_KEY` for any key), or None when it is open."""
    guard = route_guard(route)
    return None if guard is None else guard.scope
