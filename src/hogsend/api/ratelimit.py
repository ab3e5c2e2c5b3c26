"""Rate limits per API key and route group, in Postgres or in process memory.

Algorithm: a **fixed window** of ``rate_limit_window_seconds``, aligned to the epoch,
counting per ``<key id>:<group>``. Chosen over a sliding-window approximation because

* the count is one statement (``INSERT .. ON CONFLICT DO UPDATE .. WHERE hits < limit
  RETURNING hits``) touching one row, with no read of the previous window;
* ``RateLimit-Reset`` and ``Retry-After`` are then exact: the whole budget comes back
  when the window ends, and that instant is known;
* rejected requests are simply not counted (the ``WHERE`` fails), so a client that kept
  retrying while limited gets its full budget in the next window.

The price is the boundary burst: a client may spend a full budget at the end of one
window and another at the start of the next (at most twice the limit over any span of
one window length). For an abuse guard per key that is acceptable; it is not a meter.

Groups: ``admin`` for ``/v1/admin/*``, ``emails`` for ``/v1/emails*``, ``data`` for the
rest of the authenticated data plane. A limit of 0 disables a group (no headers either).

The Postgres backend does not write a counter per request: each API process takes hits
ahead in small blocks (:class:`PostgresRateLimiter`), so a busy key costs a round trip
per block, not per request, while the counter in the database still never passes the
limit.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

import psycopg
from fastapi import Request

from hogsend.api.deps import DriverPool
from hogsend.api.middleware import response_headers_of
from hogsend.db.repos import rate_limits
from hogsend.db.repos.api_keys import Principal
from hogsend.errors import RateLimited
from hogsend.settings import Settings

RouteGroup = Literal["data", "emails", "admin"]
Clock = Callable[[], float]


def route_group(path: str) -> RouteGroup:
    """The rate-limit group of a request path."""
    if path.startswith("/v1/admin/") or path == "/v1/admin":
        return "admin"
    if path == "/v1/emails" or path.startswith("/v1/emails/"):
        return "emails"
    return "data"


def group_limit(settings: Settings, group: RouteGroup) -> int:
    """Requests per window allowed in ``group`` (0 = unlimited)."""
    if group == "admin":
        return settings.rate_limit_admin
    if group == "emails":
        return settings.rate_limit_emails
    return settings.rate_limit_data_plane


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimitDecision:
    """The outcome of counting one request."""

    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int
    window_seconds: int

    def headers(self) -> dict[str, str]:
        """``RateLimit-*`` headers describing the bucket after this request."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_seconds),
            "RateLimit-Policy": f"{self.limit};w={self.window_seconds}",
        }


class RateLimiter(Protocol):
    """Counts requests in buckets; both backends share the fixed-window semantics."""

    window_seconds: int

    async def hit(
        self,
        bucket: str,
        *,
        limit: int,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> RateLimitDecision:
        """Count a request in ``bucket`` unless its window already holds ``limit``.

        ``conn`` is a connection the caller already holds, which a database backend
        reuses instead of checking out another.
        """
        ...

    async def prune(self) -> int:
        """Forget windows that ended; returns how many counters were dropped."""
        ...


def _window(now: float, window_seconds: int) -> tuple[float, int]:
    start = math.floor(now / window_seconds) * window_seconds
    # ceil keeps it >= 1 while the window is open: "come back in 0 s" would be a lie.
    reset = max(1, math.ceil(start + window_seconds - now))
    return start, reset


def _decision(hits: int | None, *, limit: int, reset: int, window: int) -> RateLimitDecision:
    if hits is None:
        return RateLimitDecision(
            allowed=False, limit=limit, remaining=0, reset_seconds=reset, window_seconds=window
        )
    return RateLimitDecision(
        allowed=True,
        limit=limit,
        remaining=max(0, limit - hits),
        reset_seconds=reset,
        window_seconds=window,
    )


@dataclass(slots=True, kw_only=True)
class _Lease:
    """One bucket's budget in this process for one window."""

    window_start: float
    counted: int = 0  # the bucket's hits in the database after our last take
    spare: int = 0  # hits taken from the database and not spent yet
    size: int = 1  # how many to take next time
    taken_at: float = -math.inf
    full: bool = False  # the database refused even one hit: full until the window ends
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class PostgresRateLimiter:
    """Counters in ``rate_limit_counters``, shared by every API process on the database.

    Hits are taken from the database in blocks and spent in this process. A block starts
    at one hit and doubles each time the previous one was spent within a second (halves
    otherwise), up to ``max_block`` (by default 1% of the limit, at most 1,000; so a
    limit under 200 is counted one request per round trip, exactly as it comes). A take
    is all or nothing and never lets the stored count pass the limit; near the limit it
    falls back to one hit. A window the database refused once is full for the rest of
    it, with no further round trip.

    What blocks change, and only with several API processes: a process may hold up to a
    block of hits it has not spent, so another process can be refused while the total
    actually used is that much under the limit, and ``RateLimit-Remaining`` counts the
    other processes' hits as of this process's last take. With one process the numbers
    are exact.

    Args:
        pool: **autocommit** connections, so each count is durable on its own and not
            tied to the fate of the request's transaction.
        window_seconds: the window length.
        clock: seconds since the epoch; injectable for tests.
        max_block: the most hits taken at once (default: see above).
    """

    def __init__(
        self,
        pool: DriverPool,
        *,
        window_seconds: int,
        clock: Clock = time.time,
        max_block: int | None = None,
    ) -> None:
        self.pool = pool
        self.window_seconds = window_seconds
        self.clock = clock
        self.max_block = max_block
        self._leases: dict[str, _Lease] = {}

    def _block_cap(self, limit: int) -> int:
        if self.max_block is not None:
            return max(1, min(self.max_block, limit))
        return max(1, min(1000, limit // 100))

    async def hit(
        self,
        bucket: str,
        *,
        limit: int,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> RateLimitDecision:
        now = self.clock()
        start, reset = _window(now, self.window_seconds)
        lease = self._leases.get(bucket)
        if lease is None or lease.window_start != start:
            lease = _Lease(window_start=start, size=1 if lease is None else lease.size)
            self._leases[bucket] = lease
        if lease.spare == 0 and not lease.full:
            # One take in flight per bucket: concurrent requests wait for its block.
            async with lease.lock:
                if lease.spare == 0 and not lease.full:
                    await self._take(bucket, lease, limit=limit, now=now, conn=conn)
        if lease.spare == 0:
            return _decision(None, limit=limit, reset=reset, window=self.window_seconds)
        lease.spare -= 1
        return _decision(
            lease.counted - lease.spare, limit=limit, reset=reset, window=self.window_seconds
        )

    async def _take(
        self,
        bucket: str,
        lease: _Lease,
        *,
        limit: int,
        now: float,
        conn: psycopg.AsyncConnection[Any] | None,
    ) -> None:
        cap = self._block_cap(limit)
        busy = now - lease.taken_at < 1.0
        size = min(cap, lease.size * 2) if busy else max(1, lease.size // 2)
        size = min(size, cap)
        window_start = datetime.fromtimestamp(lease.window_start, UTC)
        if conn is not None:
            hits, taken = await self._take_on(conn, bucket, window_start, size, limit)
        else:
            async with self.pool.connect() as own:
                hits, taken = await self._take_on(own, bucket, window_start, size, limit)
        lease.size = size
        lease.taken_at = now
        if hits is None:
            lease.full = True
            return
        lease.counted = hits
        lease.spare = taken

    @staticmethod
    async def _take_on(
        conn: psycopg.AsyncConnection[Any],
        bucket: str,
        window_start: datetime,
        size: int,
        limit: int,
    ) -> tuple[int | None, int]:
        hits = await rate_limits.take(
            conn, bucket=bucket, window_start=window_start, n=size, limit=limit
        )
        if hits is None and size > 1:
            # Fewer than a block left: spend what is left one hit at a time.
            size = 1
            hits = await rate_limits.take(
                conn, bucket=bucket, window_start=window_start, n=1, limit=limit
            )
        return hits, size

    async def prune(self) -> int:
        start, _ = _window(self.clock(), self.window_seconds)
        self._leases = {
            bucket: lease for bucket, lease in self._leases.items() if lease.window_start >= start
        }
        async with self.pool.connect() as conn:
            return await rate_limits.prune(conn, before=datetime.fromtimestamp(start, UTC))


class MemoryRateLimiter:
    """Counters in this process only: each API process enforces the limit on its own.

    Keeps one counter per bucket (the current window's); a bucket seen in a new window
    starts over, and :meth:`prune` drops buckets idle since an earlier window.
    """

    def __init__(self, *, window_seconds: int, clock: Clock = time.time) -> None:
        self.window_seconds = window_seconds
        self.clock = clock
        self._counters: dict[str, tuple[float, int]] = {}

    async def hit(
        self,
        bucket: str,
        *,
        limit: int,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> RateLimitDecision:
        start, reset = _window(self.clock(), self.window_seconds)
        window_start, hits = self._counters.get(bucket, (start, 0))
        if window_start != start:
            hits = 0
        if hits >= limit:
            return _decision(None, limit=limit, reset=reset, window=self.window_seconds)
        hits += 1
        self._counters[bucket] = (start, hits)
        return _decision(hits, limit=limit, reset=reset, window=self.window_seconds)

    def current_hits(self, bucket: str) -> int:
        """Requests counted in ``bucket``'s current window (for tests and debugging)."""
        start, _ = _window(self.clock(), self.window_seconds)
        window_start, hits = self._counters.get(bucket, (start, 0))
        return hits if window_start == start else 0

    async def prune(self) -> int:
        start, _ = _window(self.clock(), self.window_seconds)
        stale = [bucket for bucket, (began, _) in self._counters.items() if began < start]
        for bucket in stale:
            del self._counters[bucket]
        return len(stale)


def make_rate_limiter(settings: Settings, pool: DriverPool) -> RateLimiter:
    """The limiter ``settings.rate_limit_backend`` asks for."""
    window = settings.rate_limit_window_seconds
    if settings.rate_limit_backend == "memory":
        return MemoryRateLimiter(window_seconds=window)
    return PostgresRateLimiter(pool, window_seconds=window)


async def enforce_rate_limit(
    request: Request,
    principal: Principal,
    *,
    settings: Settings,
    limiter: RateLimiter,
    path: str,
    conn: psycopg.AsyncConnection[Any] | None = None,
) -> None:
    """Count this request against the key's budget for the route's group.

    Adds the ``RateLimit-*`` headers to the response whatever it ends up being.

    Raises:
        RateLimited: the window is full; carries ``Retry-After``.
    """
    group = route_group(path)
    limit = group_limit(settings, group)
    if limit <= 0:
        return
    decision = await limiter.hit(f"{principal.key_id}:{group}", limit=limit, conn=conn)
    response_headers_of(request.scope).update(decision.headers())
    if not decision.allowed:
        raise RateLimited(
            f"This key may make {limit} {group} requests per {decision.window_seconds} s; "
            f"retry in {decision.reset_seconds} s",
            headers={"Retry-After": str(decision.reset_seconds)},
        )
