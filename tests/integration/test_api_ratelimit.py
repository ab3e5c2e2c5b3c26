"""Rate limits: headers from the real window, 429 + Retry-After, rejected requests not counted.

Both backends run the same tests; the clock is a fake one handed to the limiter, so
windows turn without sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Literal

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend.api import create_api
from hogsend.api.deps import DriverPool
from hogsend.api.ratelimit import (
    MemoryRateLimiter,
    PostgresRateLimiter,
    RateLimiter,
    route_group,
)
from hogsend.app import Hogsend
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import api_keys
from hogsend.settings import Settings

WINDOW = 60
T0 = 1_000_000 * WINDOW + 15.0  # 15 s into a window: 45 s left


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture(params=["postgres", "memory"])
def backend(request: pytest.FixtureRequest) -> Literal["postgres", "memory"]:
    value: Literal["postgres", "memory"] = request.param
    return value


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def api(
    engine: AsyncEngine, database_url: str, backend: Literal["postgres", "memory"], clock: FakeClock
) -> FastAPI:
    settings = Settings(
        env="test",
        database_url=database_url,
        rate_limit_backend=backend,
        rate_limit_admin=3,
        rate_limit_data_plane=5,
        rate_limit_window_seconds=WINDOW,
    )
    api = create_api(Hogsend(), settings, engine=engine)
    chosen = api.state.rate_limiter
    limiter: RateLimiter
    if backend == "postgres":
        assert isinstance(chosen, PostgresRateLimiter)
        limiter = PostgresRateLimiter(api.state.driver_pool, window_seconds=WINDOW, clock=clock)
    else:
        assert isinstance(chosen, MemoryRateLimiter)
        limiter = MemoryRateLimiter(window_seconds=WINDOW, clock=clock)
    api.state.rate_limiter = limiter
    return api


@pytest.fixture
async def client(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    await api.state.driver_pool.close()


async def mint(engine: AsyncEngine, name: str = "k") -> tuple[str, dict[str, str]]:
    async with make_sessionmaker(engine)() as session:
        info, raw = await api_keys.create_key(session, name=name, scopes=["full-admin"])
        await session.commit()
    return str(info.id), {"Authorization": f"Bearer {raw}"}


async def counted(api: FastAPI, engine: AsyncEngine, bucket: str) -> int:
    limiter = api.state.rate_limiter
    if isinstance(limiter, MemoryRateLimiter):
        return limiter.current_hits(bucket)
    async with engine.connect() as conn:
        hits = await conn.scalar(
            text("SELECT coalesce(sum(hits), 0) FROM rate_limit_counters WHERE bucket = :b"),
            {"b": bucket},
        )
    return int(hits or 0)


def test_route_groups() -> None:
    assert route_group("/v1/admin/api-keys") == "admin"
    assert route_group("/v1/emails") == "emails"
    assert route_group("/v1/emails/abc") == "emails"
    assert route_group("/v1/emailsx") == "data"
    assert route_group("/v1/events") == "data"
    assert route_group("/v1/whoami") == "data"


async def test_headers_429_and_window_reset(
    api: FastAPI, engine: AsyncEngine, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    key_id, headers = await mint(engine)
    for remaining in (2, 1, 0):
        response = await client.get("/v1/admin/api-keys", headers=headers)
        assert response.status_code == 200
        assert response.headers["ratelimit-limit"] == "3"
        assert response.headers["ratelimit-remaining"] == str(remaining)
        assert response.headers["ratelimit-reset"] == "45"
        assert response.headers["ratelimit-policy"] == "3;w=60"

    for _ in range(4):
        limited = await client.get("/v1/admin/api-keys", headers=headers)
        assert limited.status_code == 429
        assert limited.headers["content-type"] == "application/problem+json"
        assert limited.json()["type"] == "urn:hogsend:problem:rate-limited"
        assert limited.headers["retry-after"] == "45"
        assert limited.headers["ratelimit-remaining"] == "0"
        assert limited.headers["ratelimit-reset"] == "45"
    # the rejected requests were not counted
    assert await counted(api, engine, f"{key_id}:admin") == 3

    clock.now += 10.4
    late = await client.get("/v1/admin/api-keys", headers=headers)
    assert late.status_code == 429
    assert late.headers["retry-after"] == "35"

    clock.now = T0 + 45  # the next window begins: exactly the limit passes again
    statuses = [
        (await client.get("/v1/admin/api-keys", headers=headers)).status_code for _ in range(4)
    ]
    assert statuses == [200, 200, 200, 429]


async def test_budgets_are_per_key_and_per_group(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    _, first = await mint(engine, "first")
    _, second = await mint(engine, "second")
    for _ in range(3):
        await client.get("/v1/admin/api-keys", headers=first)
    assert (await client.get("/v1/admin/api-keys", headers=first)).status_code == 429
    # the data plane has its own budget, and so does every other key
    whoami = await client.get("/v1/whoami", headers=first)
    assert whoami.status_code == 200
    assert whoami.headers["ratelimit-limit"] == "5"
    assert whoami.headers["ratelimit-remaining"] == "4"
    assert (await client.get("/v1/admin/api-keys", headers=second)).status_code == 200


async def test_unauthenticated_and_open_requests_are_not_limited(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    for _ in range(5):
        assert (await client.get("/v1/admin/api-keys")).status_code == 401
    health = await client.get("/v1/health")
    assert "ratelimit-limit" not in health.headers
    _, headers = await mint(engine)
    response = await client.get("/v1/admin/api-keys", headers=headers)
    assert response.headers["ratelimit-remaining"] == "2"


async def test_zero_turns_a_group_off(engine: AsyncEngine, database_url: str) -> None:
    settings = Settings(env="test", database_url=database_url, rate_limit_data_plane=0)
    api = create_api(Hogsend(), settings, engine=engine)
    _, headers = await mint(engine)
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for _ in range(3):
            response = await client.get("/v1/whoami", headers=headers)
            assert response.status_code == 200
            assert "ratelimit-limit" not in response.headers
    await api.state.driver_pool.close()


async def test_concurrent_requests_never_exceed_the_limit(
    api: FastAPI, engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    key_id, headers = await mint(engine)
    responses = await asyncio.gather(
        *(client.get("/v1/whoami", headers=headers) for _ in range(15))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [429] * 10
    assert await counted(api, engine, f"{key_id}:data") == 5


async def test_old_windows_are_pruned(
    api: FastAPI, engine: AsyncEngine, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    key_id, headers = await mint(engine)
    await client.get("/v1/whoami", headers=headers)
    clock.now += WINDOW
    await client.get("/v1/whoami", headers=headers)
    limiter: RateLimiter = api.state.rate_limiter
    await limiter.prune()
    assert await counted(api, engine, f"{key_id}:data") == 1
    async with engine.connect() as conn:
        rows = await conn.scalar(text("SELECT count(*) FROM rate_limit_counters"))
    assert rows == (1 if isinstance(limiter, PostgresRateLimiter) else 0)
    clock.now += WINDOW
    assert await limiter.prune() == 1
    assert await counted(api, engine, f"{key_id}:data") == 0


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[DriverPool]:
    pool = DriverPool(database_url, max_size=2)
    yield pool
    await pool.close()


async def test_busy_keys_take_hits_in_blocks_with_exact_headers(
    pool: DriverPool, engine: AsyncEngine, clock: FakeClock
) -> None:
    limiter = PostgresRateLimiter(pool, window_seconds=WINDOW, clock=clock)
    limit = 10_000  # blocks of up to 100
    for n in range(1, 1001):
        decision = await limiter.hit("k:data", limit=limit)
        assert decision.allowed
        assert decision.remaining == limit - n  # exact with one process
    stored = await counted_bucket(engine, "k:data")
    assert 1000 <= stored <= 1100  # taken ahead by at most one block
    assert limiter._leases["k:data"].size == 100


async def test_blocks_never_let_processes_pass_the_limit_together(
    pool: DriverPool, engine: AsyncEngine, clock: FakeClock
) -> None:
    first = PostgresRateLimiter(pool, window_seconds=WINDOW, clock=clock, max_block=8)
    second = PostgresRateLimiter(pool, window_seconds=WINDOW, clock=clock, max_block=8)
    limit = 300

    async def burst(limiter: PostgresRateLimiter) -> int:
        allowed = 0
        for _ in range(200):
            allowed += (await limiter.hit("k:data", limit=limit)).allowed
        return allowed

    allowed = await asyncio.gather(burst(first), burst(second), burst(first))
    assert await counted_bucket(engine, "k:data") == limit  # stored: exactly the limit
    # Used: the limit minus at most the block each process still holds unspent.
    assert limit - 2 * 8 <= sum(allowed) <= limit
    # A process whose burst ended before the limit still holds its block: it spends
    # that, then is refused. Together the processes allowed exactly the limit.
    drained = 0
    for limiter in (first, second):
        while (await limiter.hit("k:data", limit=limit)).allowed:
            drained += 1
            assert drained <= 2 * 8
    assert sum(allowed) + drained == limit
    # Refused once: full until the window turns, with no more round trips.
    assert first._leases["k:data"].full
    assert second._leases["k:data"].full
    assert await counted_bucket(engine, "k:data") == limit
    clock.now += WINDOW
    assert (await first.hit("k:data", limit=limit)).allowed


async def counted_bucket(engine: AsyncEngine, bucket: str) -> int:
    async with engine.connect() as conn:
        hits = await conn.scalar(
            text("SELECT coalesce(sum(hits), 0) FROM rate_limit_counters WHERE bucket = :b"),
            {"b": bucket},
        )
    return int(hits or 0)


@pytest.mark.timeout(60)
async def test_many_requests_on_a_small_pool_never_wait_on_each_other(
    engine: AsyncEngine, database_url: str
) -> None:
    # A request waiting for its key's next block of hits must not hold a pooled
    # connection: the request taking the block may need one. With 2 connections and a
    # mix of key-cache misses and hits, a hold-and-wait would time out (5 s) as 500s.
    settings = Settings(
        env="test", database_url=database_url, rate_limit_data_plane=1_000_000, db_pool_size=4
    )
    api = create_api(Hogsend(), settings, engine=engine)
    assert api.state.driver_pool._max_size == 2
    _, headers = await mint(engine)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

        async def worker() -> list[int]:
            return [(await client.get("/v1/whoami", headers=headers)).status_code for _ in range(6)]

        started = time.monotonic()
        statuses = await asyncio.gather(*(worker() for _ in range(40)))
    await api.state.driver_pool.close()
    assert {s for run in statuses for s in run} == {200}
    assert time.monotonic() - started < 4.5
