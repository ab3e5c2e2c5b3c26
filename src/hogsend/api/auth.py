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

A key found valid in the database is remembered by its digest for
``api_key_cache_seconds`` (at most 5 s, see :class:`KeyCache`): a busy key costs one
lookup per interval instead of one per request. Its expiry is still checked on every
request; a revocation reaches the revoking process at once and the others within the
interval.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from fastapi import Request, Security
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer

from hogsend.api.deps import DriverPool, driver_pool_of, rate_limiter_of, settings_of
from hogsend.api.ratelimit import enforce_rate_limit
from hogsend.db.repos.api_keys import Principal, authenticate, hash_key
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


def bearer_token(authorization: str | None) -> str | None:
    """The credentials of an ``Authorization: Bearer <token>`` header (as ``bearer_scheme``)."""
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def scopes_satisfying(required: str) -> frozenset[str]:
    """Every scope that grants ``required`` (``ANY_KEY``: every scope)."""
    if required == ANY_KEY:
        return frozenset(SCOPES)
    return _IMPLIED_BY[required]


def has_scope(held: Iterable[str], required: str) -> bool:
    """Whether a key holding ``held`` may call a route requiring ``required``."""
    return not scopes_satisfying(required).isdisjoint(held)


@dataclass(frozen=True, slots=True)
class _Cached:
    principal: Principal
    checked_at: float
    expires_at: float  # POSIX seconds; inf for a key that never expires


class KeyCache:
    """Principals of API keys checked against the database in the last ``ttl`` seconds.

    Keyed by the key's SHA-256 digest (the raw key is not kept). Only valid keys are
    remembered: an unknown key is looked up every time, so a flood of made-up keys
    cannot fill the cache. An entry is dropped when its ``ttl`` has passed (the next
    request checks the database again, which also refreshes ``last_used_at``), when the
    key's own expiry passes (checked on every hit), when :meth:`forget` is called (the
    revoke route does), and oldest first beyond ``max_keys`` entries.

    Args:
        ttl: seconds an entry is trusted; 0 disables the cache.
        max_keys: the most keys remembered.
        clock: monotonic seconds (injectable for tests).
        wall_clock: seconds since the epoch, for key expiry (injectable for tests).
    """

    def __init__(
        self,
        ttl: float,
        *,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self.max_keys = max_keys
        self.clock = clock
        self.wall_clock = wall_clock
        self._entries: dict[str, _Cached] = {}

    def get(self, raw: str) -> Principal | None:
        """The principal of ``raw`` if it was found valid less than ``ttl`` seconds ago."""
        if self.ttl <= 0:
            return None
        digest = hash_key(raw)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if self.clock() - entry.checked_at >= self.ttl or self.wall_clock() >= entry.expires_at:
            del self._entries[digest]
            return None
        return entry.principal

    def put(self, raw: str, principal: Principal) -> None:
        """Remember that ``raw`` is a valid key of ``principal``, as of now."""
        if self.ttl <= 0:
            return
        digest = hash_key(raw)
        self._entries.pop(digest, None)
        while len(self._entries) >= self.max_keys:
            del self._entries[next(iter(self._entries))]
        expires = principal.expires_at
        self._entries[digest] = _Cached(
            principal=principal,
            checked_at=self.clock(),
            expires_at=float("inf") if expires is None else expires.timestamp(),
        )

    def forget(self, key_id: uuid.UUID) -> None:
        """Drop the key ``key_id`` (revoked): its next request checks the database."""
        for digest, entry in list(self._entries.items()):
            if entry.principal.key_id == key_id:
                del self._entries[digest]

    def clear(self) -> None:
        """Drop every entry."""
        self._entries.clear()


def key_cache_of(request: Request) -> KeyCache | None:
    """The API's key cache (None when the API was built without one)."""
    cache = getattr(request.app.state, "key_cache", None)
    return cache if isinstance(cache, KeyCache) else None


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

    async def __call__(self, request: Request) -> Principal:
        # The header is read here rather than through a ``bearer_scheme`` sub-dependency:
        # FastAPI's resolution of one more dependency per request was ~7% of the API's
        # CPU on the hot path. build_openapi documents the scheme on guarded operations.
        raw = bearer_token(request.headers.get("authorization"))
        if raw is None:
            raise _unauthorized(
                "This route needs an API key: send `Authorization: Bearer <key>`",
                invalid_token=False,
            )
        pool = driver_pool_of(request)
        try:
            return await self._check(request, raw, pool)
        except psycopg.OperationalError:
            # Pooled connections die with a Postgres restart; drop them and try once more.
            await pool.discard_broken()
            return await self._check(request, raw, pool)

    async def _check(self, request: Request, raw: str, pool: DriverPool) -> Principal:
        cache = key_cache_of(request)
        principal = cache.get(raw) if cache is not None else None
        if principal is not None:
            self._authorize(request, principal)
            await self._count(request, principal)
            return principal
        async with pool.connect() as conn:
            principal = await authenticate(conn, raw)
        if principal is None:
            raise _unauthorized("The API key is unknown, expired or revoked", invalid_token=True)
        if cache is not None:
            cache.put(raw, principal)
        self._authorize(request, principal)
        # Counted with the connection given back: the limiter may wait for another
        # request's block of hits, and must never do so holding a pooled connection
        # (the request taking the block may need one).
        await self._count(request, principal)
        return principal

    def _authorize(self, request: Request, principal: Principal) -> None:
        request.state.principal = principal
        if not has_scope(principal.scopes, self.scope):
            raise Forbidden(
                f"This route needs the {self.scope!r} scope (or one implying it); "
                f"the key has {', '.join(sorted(principal.scopes))}",
                headers={
                    "WWW-Authenticate": (
                        f'Bearer realm="hogsend", error="insufficient_scope", scope="{self.scope}"'
                    )
                },
            )

    async def _count(self, request: Request, principal: Principal) -> None:
        await enforce_rate_limit(
            request,
            principal,
            settings=settings_of(request),
            limiter=rate_limiter_of(request),
            path=request.scope["path"],
        )


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
