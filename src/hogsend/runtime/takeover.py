"""Dead-worker takeover: a live worker resumes the workflows a crashed worker was running.

DBOS recovers a process's PENDING workflows only when a process with the *same*
executor id starts again. A worker killed for good (host lost, scaled away) would leave
its in-flight journeys PENDING forever, so every worker runs a :class:`Takeover` loop::

    every heartbeat   lock one worker row of our application version whose heartbeat
                      is older than ``worker_stale_seconds`` and not yet taken over
                      (FOR UPDATE SKIP LOCKED: of several survivors exactly one gets it)
                      → list its PENDING workflows → resume them on their queue
                      (status ENQUEUED: any worker dequeues them and replays the
                      recorded steps) → mark the row taken over → commit

A takeover repeated after a crash between the resume and the commit finds nothing
PENDING any more (resumed workflows are ENQUEUED or running elsewhere), so it is
harmless. A worker that comes back under the same id beats, which clears the mark.

The one hazard is a worker that is alive but silent for longer than the stale
threshold (its database unreachable for 30 s, say): its runs may then execute on two
workers at once until it notices. Keep ``worker_stale_seconds`` well above
``heartbeat_seconds`` (the settings refuse anything else).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import timedelta

import structlog
from dbos import DBOS
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import workers as worker_repo
from hogsend.runtime.polling import Poller

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class TakenOver:
    """One dead worker whose workflows this worker resumed."""

    worker_id: str
    workflow_ids: tuple[str, ...]


class Takeover(Poller):
    """Resumes the PENDING workflows of dead workers of the same application version.

    Args:
        engine: hogsend's database (the heartbeat rows).
        worker_id: this worker (never taken over by itself).
        application_version: only workers of this version are taken over (DBOS runs a
            workflow only on its own version).
        stale_after: a heartbeat older than this means dead.
        every: seconds between checks (the first one waits an interval).
    """

    task_name = "hogsend-takeover"
    failure = "dead-worker takeover failed"
    wait_first = True

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        worker_id: str,
        application_version: str,
        stale_after: timedelta,
        every: float,
    ) -> None:
        self.sessions = make_sessionmaker(engine)
        self.worker_id = worker_id
        self.application_version = application_version
        self.stale_after = stale_after
        self.every = every

    async def run_once(self) -> list[TakenOver]:
        """Take over every dead worker found now; returns what was taken over."""
        taken: list[TakenOver] = []
        while True:
            async with self.sessions() as session, session.begin():
                dead = await worker_repo.claim_dead_worker(
                    session,
                    me=self.worker_id,
                    application_version=self.application_version,
                    stale_after=self.stale_after,
                )
                if dead is None:
                    return taken
                # Resumed while the row is locked: a second survivor waits for the
                # commit, then finds the row marked.
                ids = await self._resume_pending_of(dead)
                await worker_repo.mark_taken_over(
                    session, dead, by=self.worker_id, workflows=len(ids)
                )
            taken.append(TakenOver(dead, tuple(ids)))
            log.warning(
                "took over a dead worker's workflows",
                dead_worker=dead,
                workflows=len(ids),
                worker_id=self.worker_id,
            )

    async def _resume_pending_of(self, executor_id: str) -> list[str]:
        pending = await DBOS.list_workflows_async(
            status="PENDING",
            executor_id=executor_id,
            app_version=self.application_version,
            load_input=False,
            load_output=False,
        )
        # Back on the queue each came from, so its concurrency limits still hold; a
        # workflow started directly goes on DBOS's internal queue.
        by_queue: dict[str | None, list[str]] = defaultdict(list)
        for status in pending:
            by_queue[status.queue_name].append(status.workflow_id)
        for queue_name, ids in by_queue.items():
            await DBOS.resume_workflows_async(ids, queue_name=queue_name)
        return [status.workflow_id for status in pending]
