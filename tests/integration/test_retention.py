"""The retention sweep on a real worker: old receipts and finished workflows go, the rest stay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import timedelta
from typing import Any

import pytest
from dbos import DBOS
from sqlalchemy import text

from hogsend import Hogsend
from hogsend.db.engine import make_sessionmaker
from hogsend.runtime.dbos_setup import DBOS_SCHEMA
from hogsend.runtime.queues import JOURNEYS
from hogsend.runtime.retention import RetentionSweep
from hogsend.runtime.worker import Worker
from hogsend.settings import Settings

pytestmark = pytest.mark.timeout(120)

Workflow = Callable[..., Coroutine[Any, Any, Any]]


def _settings(database_url: str) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        worker_id="it-retention",
        heartbeat_seconds=0.2,
        worker_stale_seconds=5,
        log_format="console",
    )


def _register(into: dict[str, Workflow]) -> Callable[[], None]:
    def register() -> None:
        @DBOS.step(name="hogsend.test-step:retention-add")
        async def add_one(x: int) -> int:
            return x + 1

        @DBOS.workflow(name="hogsend.test:retention-ok")
        async def ok(x: int) -> int:
            return await add_one(x)

        @DBOS.workflow(name="hogsend.test:retention-fails")
        async def fails(x: int) -> int:
            await add_one(x)
            raise ValueError("this workflow fails on purpose")

        @DBOS.workflow(name="hogsend.test:retention-waits")
        async def waits(x: int) -> int:
            await add_one(x)
            got = await DBOS.recv_async("never", timeout_seconds=60)
            return 0 if got is None else int(got)

        into.update(ok=ok, fails=fails, waits=waits)

    return register


async def _rows(session: Any, table: str, ids: list[str]) -> set[str]:
    column = "workflow_uuid"
    rows = await session.execute(
        text(f"SELECT DISTINCT {column} FROM {DBOS_SCHEMA}.{table} WHERE {column} = ANY(:ids)"),
        {"ids": ids},
    )
    return {r[0] for r in rows}


async def test_sweep_deletes_only_expired_receipts_and_finished_workflows(
    database_url: str,
) -> None:
    flows: dict[str, Workflow] = {}
    worker = Worker(Hogsend(), _settings(database_url), registrations=[_register(flows)])
    await worker.start()
    try:
        handles = {
            "old-ok": await DBOS.enqueue_workflow_async(JOURNEYS.name, flows["ok"], 1),
            "old-failed": await DBOS.enqueue_workflow_async(JOURNEYS.name, flows["fails"], 2),
            "recent-ok": await DBOS.enqueue_workflow_async(JOURNEYS.name, flows["ok"], 3),
            "old-cancelled": await DBOS.enqueue_workflow_async(JOURNEYS.name, flows["waits"], 4),
        }
        assert await asyncio.wait_for(handles["old-ok"].get_result(), 30) == 2
        assert await asyncio.wait_for(handles["recent-ok"].get_result(), 30) == 4
        with pytest.raises(ValueError, match="on purpose"):
            await asyncio.wait_for(handles["old-failed"].get_result(), 30)
        # A parked journey run looks like this: cancelled while it waits.
        for _ in range(100):
            status = await handles["old-cancelled"].get_status()
            if status.status == "PENDING":
                break
            await asyncio.sleep(0.05)
        await DBOS.cancel_workflow_async(handles["old-cancelled"].workflow_id)
        ids = {name: h.workflow_id for name, h in handles.items()}
        every_id = list(ids.values())

        sessions = make_sessionmaker(worker.engine)
        async with sessions() as session, session.begin():
            # Age everything but the recent run past a 30-day retention.
            await session.execute(
                text(
                    f"UPDATE {DBOS_SCHEMA}.workflow_status"
                    " SET completed_at = coalesce(completed_at, updated_at) - :forty_days,"
                    " created_at = created_at - :forty_days"
                    " WHERE workflow_uuid = ANY(:ids)"
                ),
                {
                    "ids": [i for n, i in ids.items() if n != "recent-ok"],
                    "forty_days": 40 * 86_400_000,
                },
            )
            await session.execute(
                text(
                    "INSERT INTO webhook_receipts (source, delivery_id, event_type, received_at)"
                    " VALUES ('resend', 'old-1', 'email.delivered', now() - interval '31 days'),"
                    " ('resend', 'old-2', 'email.bounced', now() - interval '45 days'),"
                    " ('resend', 'new-1', 'email.delivered', now() - interval '29 days')"
                ),
            )
            before = await _rows(session, "operation_outputs", every_id)
        assert {ids["old-ok"], ids["old-failed"], ids["recent-ok"]} <= before

        sweep = RetentionSweep(
            worker.engine,
            every=3600,
            receipt_retention=timedelta(days=30),
            workflow_retention=timedelta(days=30),
        )
        swept = await sweep.run_once()
        assert swept.receipts == 2
        assert swept.workflows == 2

        async with sessions() as session:
            kept = await _rows(session, "workflow_status", every_id)
            steps = await _rows(session, "operation_outputs", every_id)
            inputs = await _rows(session, "workflow_input", every_id)
            receipts = (
                await session.execute(text("SELECT delivery_id FROM webhook_receipts"))
            ).scalars()
            left = set(receipts)
        assert kept == {ids["recent-ok"], ids["old-cancelled"]}
        # DBOS's delete also removes what hangs off the status row.
        for name in ("old-ok", "old-failed"):
            assert ids[name] not in steps
            assert ids[name] not in inputs
        assert left == {"new-1"}

        # Nothing left to do: a second round deletes nothing.
        assert await sweep.run_once() == type(swept)(receipts=0, workflows=0)
    finally:
        await worker.stop()


def test_zero_days_keeps_rows_forever(database_url: str) -> None:
    settings = Settings(
        env="test",
        database_url=database_url,
        webhook_receipt_retention_days=0,
        workflow_retention_days=0,
    )
    sweep = RetentionSweep.from_settings(settings, engine=None)  # type: ignore[arg-type]
    assert sweep.receipt_retention is None
    assert sweep.workflow_retention is None
    assert sweep.every == 3600.0
