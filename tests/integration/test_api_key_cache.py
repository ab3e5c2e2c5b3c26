"""The API key cache on real Postgres: TTL, revocation, expiry, unknown keys, last use.

The cache's clocks are fake ones handed to it, so the TTL passes without sleeping.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend.api import create_api
from hogsend.api.auth import KeyCache
from hogsend.app import Hogsend
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import api_keys
from hogsend.settings import Settings

TTL = 5.0


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


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def wall() -> FakeClock:
    return FakeClock(datetime.now(UTC).timestamp())


@pytest.fixture
async def api(
    engine: AsyncEngine, database_url: str, clock: FakeClock, wall: FakeClock
) -> AsyncIterator[FastAPI]:
    settings = Settings(env="test", database_url=database_url, api_key_cache_seconds=TTL)
    api = create_api(Hogsend(), settings, engine=engine)
    assert isinstance(api.state.key_cache, KeyCache)
    assert api.state.key_cache.ttl == TTL
    api.state.key_cache = KeyCache(TTL, clock=clock, wall_clock=wall)
    yield api
    await api.state.driver_pool.close()


@pytest.fixture
async def client(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def mint(engine: AsyncEngine, *scopes: str, name: str = "k") -> tuple[str, str]:
    async with make_sessionmaker(engine)() as session:
        info, raw = await api_keys.create_key(session, name=name, scopes=scopes)
        await session.commit()
    return str(info.id), raw


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


async def execute(engine: AsyncEngine, sql: str, **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def whoami(client: httpx.AsyncClient, raw: str) -> int:
    return (await client.get("/v1/whoami", headers=bearer(raw))).status_code


async def test_revocation_elsewhere_takes_effect_within_the_ttl(
    engine: AsyncEngine, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    key_id, raw = await mint(engine, "read")
    assert await whoami(client, raw) == 200
    # Revoked by another process (the CLI, another API): this one trusts its check a while.
    await execute(engine, "UPDATE api_keys SET revoked_at = now() WHERE id = :id", id=key_id)
    clock.now += TTL - 0.01
    assert await whoami(client, raw) == 200
    clock.now += 0.01
    assert await whoami(client, raw) == 401
    clock.now += 100
    assert await whoami(client, raw) == 401  # a refused key is never remembered


async def test_revocation_through_this_api_takes_effect_at_once(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    _, root = await mint(engine, "full-admin", name="root")
    key_id, raw = await mint(engine, "read")
    assert await whoami(client, raw) == 200
    revoked = await client.delete(f"/v1/admin/api-keys/{key_id}", headers=bearer(root))
    assert revoked.status_code == 200
    assert await whoami(client, raw) == 401


async def test_expiry_is_checked_on_every_hit(
    engine: AsyncEngine, client: httpx.AsyncClient, wall: FakeClock
) -> None:
    key_id, raw = await mint(engine, "read")
    expires = datetime.now(UTC) + timedelta(hours=1)
    await execute(
        engine, "UPDATE api_keys SET expires_at = :at WHERE id = :id", at=expires, id=key_id
    )
    assert await whoami(client, raw) == 200  # remembered, with its expiry
    await execute(
        engine,
        "UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = :id",
        id=key_id,
    )
    wall.now = expires.timestamp() - 0.5
    assert await whoami(client, raw) == 200  # still trusted: within the TTL, not expired
    wall.now = expires.timestamp()
    # Within the TTL but past the remembered expiry: the cache lets go, the database refuses.
    assert await whoami(client, raw) == 401


async def test_cached_key_skips_the_database_until_the_ttl_passes(
    engine: AsyncEngine, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    key_id, raw = await mint(engine, "read")
    assert await whoami(client, raw) == 200
    # Scopes changed behind the API's back are seen once the entry is stale.
    await execute(engine, "UPDATE api_keys SET scopes = '{ingest}' WHERE id = :id", id=key_id)
    assert (await client.get("/v1/whoami", headers=bearer(raw))).json()["scopes"] == ["read"]
    clock.now += TTL
    assert (await client.get("/v1/whoami", headers=bearer(raw))).json()["scopes"] == ["ingest"]


async def test_last_used_at_is_refreshed_when_the_entry_is_checked_again(
    engine: AsyncEngine, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    key_id, raw = await mint(engine, "read")
    assert await whoami(client, raw) == 200
    await execute(
        engine,
        "UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = :id",
        id=key_id,
    )
    assert await whoami(client, raw) == 200
    digest = hashlib.sha256(raw.encode()).hexdigest()
    stale_sql = (
        "SELECT last_used_at < now() - interval '1 minute' FROM api_keys WHERE key_hash = :h"
    )
    async with engine.connect() as conn:
        assert await conn.scalar(text(stale_sql), {"h": digest}) is True
    clock.now += TTL
    assert await whoami(client, raw) == 200
    async with engine.connect() as conn:
        assert await conn.scalar(text(stale_sql), {"h": digest}) is False


async def test_unknown_keys_are_not_remembered(
    engine: AsyncEngine, api: FastAPI, client: httpx.AsyncClient
) -> None:
    cache: KeyCache = api.state.key_cache
    for n in range(3):
        assert await whoami(client, f"hsk_{'x' * 40}{n}") == 401
    assert cache.get(f"hsk_{'x' * 40}0") is None
    assert len(cache._entries) == 0


def test_cache_is_bounded_and_can_be_turned_off() -> None:
    from hogsend.db.repos.api_keys import Principal

    def principal(n: int) -> Principal:
        import uuid

        return Principal(
            key_id=uuid.UUID(int=n),
            name="k",
            key_prefix="hsk_",
            scopes=frozenset(),
            expires_at=None,
        )

    cache = KeyCache(5.0, max_keys=2, clock=FakeClock(0.0))
    for n in range(3):
        cache.put(f"key-{n}", principal(n))
    assert cache.get("key-0") is None  # the oldest went first
    assert cache.get("key-1") == principal(1)
    assert cache.get("key-2") == principal(2)
    cache.forget(principal(2).key_id)
    assert cache.get("key-2") is None

    off = KeyCache(0.0)
    off.put("key", principal(1))
    assert off.get("key") is None
