"""The retention sweep: every worker deletes, now and then, the rows nobody reads any more.

Two kinds of rows grow with traffic and are only useful for a while:

* **webhook receipts** (``webhook_receipts``): each provider delivery id seen, so that a
  retried webhook is recognised. Providers stop retrying within days, so receipts older
  than ``webhook_receipt_retention_days`` are deleted.
* **finished DBOS workflows**: every journey run, campaign run and queued send leaves its
  status, inputs and recorded steps in DBOS's tables. Once a workflow succeeded or failed
  nothing replays it, and what it did stays in hogsend's own tables (the run's state and
  log, the decision rows, the campaign counters). Those finished more than
  ``workflow_retention_days`` ago are deleted through DBOS's own ``delete_workflows``,
  which also removes their inputs, outputs and steps. Parked runs (``CANCELLED`` until
  they are woken) and running ones are never touched.

Each round deletes in batches, every batch in its own short transaction, and stops at
``max_rows_per_round`` so that a first round over a year of history does not hold the
database busy: the next round continues. Rounds are idempotent, so several workers
sweeping at once only repeat a little work; no lock is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from dbos import DBOS
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import retention as repo
from hogsend.runtime.dbos_setup import DBOS_SCHEMA
from hogsend.runtime.polling import Poller
from hogsend.settings import Settings

log = structlog.get_logger(__name__)

RECEIPT_BATCH = 5_000
"""Webhook receipts deleted per transaction."""

WORKFLOW_BATCH = 500
"""Finished workflows deleted per DBOS call (one transaction each)."""


@dataclass(frozen=True, slots=True)
class Swept:
    """What one round deleted."""

    receipts: int
    workflows: int


class RetentionSweep(Poller):
    """Deletes expired webhook receipts and finished workflows every ``every`` seconds."""

    task_name = "hogsend-retention"
    failure = "retention sweep failed"
    wait_first = False

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        every: float,
        receipt_retention: timedelta | None,
        workflow_retention: timedelta | None,
        max_rows_per_round: int = 100_000,
    ) -> None:
        self.engine = engine
        self.every = every
        self.receipt_retention = receipt_retention
        self.workflow_retention = workflow_retention
        self.max_rows_per_round = max_rows_per_round
        self._sessions = make_sessionmaker(engine)

    @classmethod
    def from_settings(cls, settings: Settings, engine: AsyncEngine) -> RetentionSweep:
        """The sweep as the settings describe it (a retention of 0 days keeps rows forever)."""

        def days(value: float) -> timedelta | None:
            return timedelta(days=value) if value > 0 else None

        return cls(
            engine,
            every=settings.retention_sweep_seconds,
            receipt_retention=days(settings.webhook_receipt_retention_days),
            workflow_retention=days(settings.workflow_retention_days),
        )

    async def run_once(self) -> Swept:
        """One round; returns how many rows of each kind it deleted."""
        now = datetime.now(UTC)
        receipts = workflows = 0
        if self.receipt_retention is not None:
            receipts = await self._prune_receipts(now - self.receipt_retention)
        if self.workflow_retention is not None:
            workflows = await self._prune_workflows(now - self.workflow_retention)
        if receipts or workflows:
            log.info("retention sweep", webhook_receipts=receipts, workflows=workflows)
        return Swept(receipts=receipts, workflows=workflows)

    async def _prune_receipts(self, before: datetime) -> int:
        deleted = 0
        while deleted < self.max_rows_per_round:
            async with self._sessions() as session, session.begin():
                n = await repo.prune_receipts(session, before=before, limit=RECEIPT_BATCH)
            deleted += n
            if n < RECEIPT_BATCH:
                break
        return deleted

    async def _prune_workflows(self, before: datetime) -> int:
        before_ms = int(before.timestamp() * 1000)
        deleted = 0
        while deleted < self.max_rows_per_round:
            async with self._sessions() as session:
                ids = await repo.finished_workflows(
                    session, dbos_schema=DBOS_SCHEMA, before_ms=before_ms, limit=WORKFLOW_BATCH
                )
            if not ids:
                break
            await DBOS.delete_workflows_async(ids)
            deleted += len(ids)
            if len(ids) < WORKFLOW_BATCH:
                break
        return deleted
