"""POST /v1/admin/buckets/{id}/backfill: scope, audit, 202, and a worker sweep performing it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend, define_bucket, where
from hogsend.api import create_api
from hogsend.runtime.reconcile import BucketSweeper
from integration.conftest import MintKey, api_settings

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def bucket_app() -> Hogsend:
    return Hogsend(
        buckets=[
            define_bucket(id="vip", name="VIP", criteria=where.property("plan").equals("vip")),
            define_bucket(
                id="off", name="Off", criteria=where.property("x").is_set(), enabled=False
            ),
            define_bucket(id="picked", name="Picked", kind="manual"),
        ]
    )


@pytest.fixture
async def bucket_client(engine: AsyncEngine, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    api: FastAPI = create_api(bucket_app(), api_settings(database_url), engine=engine)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    await api.state.driver_pool.close()


async def test_backfill_request_is_audited_and_performed_by_the_next_sweep(
    bucket_client: httpx.AsyncClient, engine: AsyncEngine, mint_key: MintKey
) -> None:
    writer = await mint_key("admin:write", name="ops")
    reader = await mint_key("admin:read")
    async with engine.begin() as conn:
        await conn.execute(text("""INSERT INTO contacts (properties) VALUES ('{"plan": "vip"}')"""))
    sweeper = BucketSweeper(bucket_app(), engine)
    await sweeper.run_once(now=NOW)  # first deploy: backfilled

    refused = await bucket_client.post(
        "/v1/admin/buckets/vip/backfill", headers={"Authorization": f"Bearer {reader}"}
    )
    assert refused.status_code == 403
    auth = {"Authorization": f"Bearer {writer}"}
    response = await bucket_client.post("/v1/admin/buckets/vip/backfill", headers=auth)
    assert response.status_code == 202, response.text
    assert response.json() == {
        "bucketId": "vip",
        "status": "pending",
        "processed": 0,
        "total": None,
    }
    async with engine.connect() as conn:
        audit = (
            await conn.execute(text("SELECT actor, action, resource_id, detail FROM audit_logs"))
        ).one()
    assert (audit.actor, audit.action, audit.resource_id) == ("ops", "buckets.backfill", "vip")
    assert audit.detail == {
        "status": "pending",
        "before": {"backfill": "completed"},
        "after": {"backfill": "pending"},
    }

    [run] = (await sweeper.run_once(now=NOW)).backfills
    assert run.completed
    assert run.processed == 1
    async with engine.connect() as conn:
        status = await conn.scalar(
            text("SELECT backfill_status FROM bucket_configs WHERE bucket_id = 'vip'")
        )
    assert status == "completed"


async def test_unknown_manual_and_disabled_buckets_are_refused_and_nothing_is_written(
    bucket_client: httpx.AsyncClient, engine: AsyncEngine, mint_key: MintKey
) -> None:
    auth = {"Authorization": f"Bearer {await mint_key('admin:write')}"}
    for bucket_id, status in (("nope", 404), ("picked", 409), ("off", 409)):
        response = await bucket_client.post(f"/v1/admin/buckets/{bucket_id}/backfill", headers=auth)
        assert response.status_code == status, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert bucket_id in response.json()["detail"]
    async with engine.connect() as conn:
        assert await conn.scalar(text("SELECT count(*) FROM bucket_configs")) == 0
        assert await conn.scalar(text("SELECT count(*) FROM audit_logs")) == 0
