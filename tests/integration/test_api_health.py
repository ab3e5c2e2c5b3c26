"""GET /v1/health and /v1/ready: database, migrations, workers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import httpx
from sqlalchemy import text

from hogsend.api import create_api
from hogsend.app import Hogsend
from hogsend.db import migrate
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import workers
from hogsend.settings import Settings


@asynccontextmanager
async def serve(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    engine = make_async_engine(database_url)
    api = create_api(Hogsend(), Settings(env="test", database_url=database_url), engine=engine)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client
    finally:
        await api.state.driver_pool.close()
        await engine.dispose()


async def test_healthy(database_url: str) -> None:
    async with serve(database_url) as client:
        response = await client.get("/v1/health")
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "healthy"
        assert body["database"]["status"] == "up"
        assert body["database"]["latencyMs"] >= 0
        head = migrate.heads()[0]
        assert body["migrations"] == {
            "applied": head,
            "required": head,
            "pending": [],
            "inSync": True,
        }
        assert body["workers"] == []
        assert body["workersAlive"] == 0
        ready = await client.get("/v1/ready")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "database": "up", "migrationsInSync": True}


async def test_workers_come_from_heartbeats(database_url: str) -> None:
    engine = make_async_engine(database_url)
    try:
        async with make_sessionmaker(engine)() as session:
            for worker_id in ("w-alive", "w-stale", "w-stopped"):
                await workers.beat(
                    session,
                    worker_id=worker_id,
                    hostname="host-a",
                    pid=os.getpid(),
                    application_version="hogsend-1",
                    started_at=datetime.now(UTC),
                )
            await session.execute(
                text(
                    "UPDATE worker_heartbeats SET last_seen_at = now() - interval '1 hour' "
                    "WHERE worker_id = 'w-stale'"
                )
            )
            await workers.mark_stopped(session, "w-stopped")
            await session.commit()
    finally:
        await engine.dispose()

    async with serve(database_url) as client:
        response = await client.get("/v1/health")
        body = response.json()
        # workers inform, they never degrade the API's own status
        assert response.status_code == 200
        assert body["status"] == "healthy"
        seen = {w["workerId"]: w for w in body["workers"]}
        assert set(seen) == {"w-alive", "w-stale", "w-stopped"}
        assert seen["w-alive"]["alive"] is True
        assert seen["w-stale"]["alive"] is False
        assert seen["w-stopped"]["alive"] is False
        assert seen["w-stopped"]["stoppedAt"] is not None
        assert seen["w-alive"]["hostname"] == "host-a"
        assert seen["w-alive"]["lastSeenAt"]
        assert body["workersAlive"] == 1


async def test_one_migration_behind_is_migration_pending(database_url: str) -> None:
    head = migrate.heads()[0]
    await asyncio.to_thread(migrate.downgrade, database_url, "-1")
    async with serve(database_url) as client:
        response = await client.get("/v1/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "migration_pending"
        assert body["database"]["status"] == "up"
        assert body["migrations"]["inSync"] is False
        assert body["migrations"]["required"] == head
        assert body["migrations"]["pending"] == [head]
        assert body["migrations"]["applied"] != head
        ready = await client.get("/v1/ready")
        assert ready.status_code == 503
        assert ready.json()["migrationsInSync"] is False


async def test_empty_database_is_migration_pending(empty_database_url: str) -> None:
    async with serve(empty_database_url) as client:
        response = await client.get("/v1/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "migration_pending"
        assert body["migrations"]["applied"] is None
        assert body["migrations"]["pending"][-1] == migrate.heads()[0]
        assert body["workers"] == []


async def test_unreachable_database_is_degraded() -> None:
    async with serve("postgresql://nobody@127.0.0.1:1/nothing") as client:
        response = await client.get("/v1/health")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "degraded"
        assert body["database"]["status"] == "down"
        assert body["database"]["latencyMs"] is None
        assert body["migrations"] is None
        ready = await client.get("/v1/ready")
        assert ready.status_code == 503
        assert ready.json() == {"ready": False, "database": "down", "migrationsInSync": False}
