"""Retrying a journey run that failed into the dead-letter queue: a fresh run, current code.

A ``journey`` dead-letter entry is a run whose replay diverged from its code
(:mod:`hogsend.runtime.divergence`): its recorded steps describe code that no longer
exists, so it cannot be resumed. A retry therefore starts the contact's run of the
journey again, from the beginning, under the code deployed now:

1. the operator's retry (``POST /v1/admin/dlq/{id}/retry`` or Studio), in one
   transaction with its audit row, inserts the new run (status ``enrolled``, a new
   workflow id ``<enrollment id>:retry:<entry id>``, ``context.retry`` naming the failed
   run, its trigger event and the sends it made), points the failed run at it
   (``context.retriedBy`` and a ``retried`` step) and marks the entry ``retried``;
2. every worker's :class:`RetryStarter` finds such runs without a DBOS workflow and
   enqueues one on the journeys queue (the workflow id makes concurrent starts one);
3. the run goes through the body like any other. A ``send_email`` at an operation
   number where the failed run sent the *same template* reuses the failed run's
   idempotency key, so the mailer records a ``duplicate`` instead of mailing the contact
   a second time; a different template there, or an operation the failed run never
   reached, sends under the new run's own key.

The failed run stays ``failed`` (its history is what happened); the retry takes no entry
of its own (entry limits and ordinals ignore it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from hogsend.core.enrollment import run_input
from hogsend.db.repos import journeys as repo
from hogsend.runtime.dbos_setup import DBOS_SCHEMA
from hogsend.runtime.polling import Poller

if TYPE_CHECKING:
    from hogsend.runtime.journeys import JourneyRuntime

log = structlog.get_logger(__name__)

RETRY_POLL_SECONDS = 1.0
"""How often a worker looks for retries accepted by the API or Studio."""


def enrollment_of(run: repo.RetryToStart) -> dict[str, Any]:
    """The workflow input of a retry run (the shape enrollment gives a first run)."""
    retry = run.retry
    return run_input(
        workflow_id=run.workflow_id,
        contact_id=run.contact_id,
        user_id=run.user_id,
        email=run.user_email,
        ordinal=run.entry_count,
        trigger=retry["trigger"],
        retry={"of": retry["of"], "sends": retry.get("sends") or {}},
    )


class RetryStarter(Poller):
    """Enqueues the workflows of retry runs (see the module docstring); every worker
    with journeys runs one."""

    task_name = "hogsend-journey-retries"
    failure = "starting journey retries failed"

    def __init__(self, runtime: JourneyRuntime, *, every: float = RETRY_POLL_SECONDS) -> None:
        self.runtime = runtime
        self.every = every

    async def run_once(self) -> int:
        """Enqueue every retry run without a workflow; returns how many."""
        async with self.runtime.sessions() as session:
            found = await repo.retries_to_start(session, dbos_schema=DBOS_SCHEMA)
        started = 0
        for run in found:
            definition = self.runtime.definitions.get(run.journey_id)
            if definition is None:
                # The API accepted it, so some deployed code has the journey; a worker
                # running that code starts it.
                log.warning(
                    "retry of a journey this worker does not define", journey=run.journey_id
                )
                continue
            await self.runtime.start_run(definition, run.id, enrollment_of(run))
            started += 1
        if started:
            log.info("journey retries started", count=started)
        return started
