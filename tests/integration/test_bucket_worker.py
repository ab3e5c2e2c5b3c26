"""Buckets in a real worker: the dispatcher it runs joins and leaves, chaining buckets."""

from __future__ import annotations

import asyncio
import time

import pytest
from sqlalchemy import text

from hogsend import Hogsend, define_bucket, where
from hogsend.core.identity import Identity
from hogsend.core.ingest import EventInput
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import bucket_sweeps as sweeps
from hogsend.db.repos.events import ingest_event
from hogsend.runtime.worker import Worker
from hogsend.settings import Settings

pytestmark = pytest.mark.timeout(120)


async def test_the_worker_moves_contacts_through_buckets(database_url: str) -> None:
    vip = define_bucket(id="vip", name="VIP", criteria=where.property("plan").equals("vip"))
    alumni = define_bucket(
        id="vip-alumni", name="Former VIPs", criteria=where.event("bucket:left:vip").exists()
    )
    settings = Settings(
        env="test",
        database_url=database_url,
        worker_id="bucket-worker",
        dispatcher_poll_seconds=0.05,
        log_format="console",
    )  # type: ignore[call-arg]
    worker = Worker(Hogsend(buckets=[vip, alumni]), settings)
    await worker.start()
    try:
        sessions = make_sessionmaker(worker.engine)

        async def send(plan: str) -> None:
            async with sessions() as session, session.begin():
                await ingest_event(
                    session,
                    EventInput(
                        name="plan.changed",
                        identity=Identity(email="w@x.test"),
                        contact_properties={"plan": plan},
                    ),
                )

        async def transitions() -> list[str]:
            async with sessions() as session:
                rows = await session.execute(
                    text(
                        "SELECT event FROM user_events WHERE event LIKE 'bucket:%'"
                        " ORDER BY received_at"
                    )
                )
                return list(rows.scalars())

        async def wait_for(count: int) -> list[str]:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if len(found := await transitions()) >= count:
                    return found
                await asyncio.sleep(0.05)
            return await transitions()

        # A new bucket's first backfill takes in silently whoever matches while it runs;
        # wait for it so that the joins below are real-time ones, with their events.
        deadline = time.monotonic() + 30
        while True:
            async with sessions() as session:
                states = await sweeps.bucket_states(session)
            if all(sweeps.settled(b, states.get(b.id)) for b in (vip, alumni)):
                break
            assert time.monotonic() < deadline, "the first backfill did not finish"
            await asyncio.sleep(0.05)

        await send("vip")
        assert await wait_for(1) == ["bucket:entered:vip"]
        await send("free")
        assert await wait_for(3) == [
            "bucket:entered:vip",
            "bucket:left:vip",
            "bucket:entered:vip-alumni",
        ]
    finally:
        await worker.stop()
