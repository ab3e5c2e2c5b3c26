"""Fixtures of the data-plane API tests: an engine, an API on it, a client, keys, counts.

Older API test modules define their own ``engine``/``client`` fixtures; a module's own
fixture wins over these, so both styles coexist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend, define_list
from hogsend.api import create_api
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import api_keys
from hogsend.settings import Settings

ROW_TABLES = (
    "contacts",
    "contact_aliases",
    "user_events",
    "event_outbox",
    "list_subscriptions",
)


def data_plane_app() -> Hogsend:
    """The app the data-plane tests serve: two registered lists."""
    return Hogsend(
        lists=[
            define_list(id="newsletter", name="Newsletter"),
            define_list(id="product-updates", name="Product updates", default_opt_in=True),
        ]
    )


def api_settings(database_url: str, **overrides: object) -> Settings:
    """Test settings with rate limits that never trip."""
    values: dict[str, object] = {
        "env": "test",
        "database_url": database_url,
        "rate_limit_data_plane": 1_000_000,
        "rate_limit_admin": 1_000_000,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url, pool_size=25)
    yield engine
    await engine.dispose()


@pytest.fixture
def api_factory(engine: AsyncEngine, database_url: str) -> Callable[..., FastAPI]:
    """Build an API on the test database; keyword arguments override settings."""

    def build(**overrides: object) -> FastAPI:
        return create_api(data_plane_app(), api_settings(database_url, **overrides), engine=engine)

    return build


@pytest.fixture
async def api(api_factory: Callable[..., FastAPI]) -> AsyncIterator[FastAPI]:
    built = api_factory()
    yield built
    await built.state.driver_pool.close()


@pytest.fixture
async def client(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


MintKey = Callable[..., Awaitable[str]]
RowCounts = Callable[[], Awaitable[dict[str, int]]]
FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]


@pytest.fixture
def mint_key(engine: AsyncEngine) -> MintKey:
    """``await mint_key("ingest", "read")``: a new API key with those scopes (raw)."""

    async def mint(*scopes: str, name: str = "test") -> str:
        async with make_sessionmaker(engine)() as session:
            _, raw = await api_keys.create_key(session, name=name, scopes=list(scopes))
            await session.commit()
        return raw

    return mint


@pytest.fixture
async def ingest_key(mint_key: MintKey) -> str:
    return await mint_key("ingest", name="ingest")


@pytest.fixture
async def read_key(mint_key: MintKey) -> str:
    return await mint_key("read", name="read")


@pytest.fixture
async def admin_key(mint_key: MintKey) -> str:
    return await mint_key("admin:read", name="admin")


@pytest.fixture
def row_counts(engine: AsyncEngine) -> RowCounts:
    """Rows per data-plane table: compare before/after to prove nothing was written."""

    async def count() -> dict[str, int]:
        async with engine.connect() as conn:
            return {
                table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
                for table in ROW_TABLES
            }

    return count


@pytest.fixture
def fetch_all(engine: AsyncEngine) -> FetchAll:
    """``await fetch_all(sql, **params)``: rows as dicts."""

    async def fetch(sql: str, **params: object) -> list[dict[str, Any]]:
        async with engine.connect() as conn:
            rows = await conn.execute(text(sql), params)
            return [dict(row._mapping) for row in rows]

    return fetch
