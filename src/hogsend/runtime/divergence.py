"""A journey run whose recorded steps no longer match the journey's code fails loudly.

DBOS replays a recovered or resumed run by calling the body again and returning each
recorded step's output; every step is checked against the name recorded at its
position. The runtime names steps after the operation they belong to
(``journey.send_email 3:send_email:nudge``), so when a journey was edited while runs
waited (an operation inserted, removed or reordered before where they wait), the replay
raises ``DBOSUnexpectedStepError`` at the first operation that changed.

Such a run must not go on: the code no longer describes what it did. This module
records the divergence where an operator looks: the run becomes ``failed`` with the
step that diverged, its step log says so, and a ``journey`` entry lands in the
dead-letter queue (``GET /v1/admin/dlq?source=journey``). DBOS marks the workflow
ERROR. docs/journeys.md has the rules for changing a live journey and the repairs.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog
from dbos._error import DBOSUnexpectedStepError
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hogsend.core.clock import aware_now
from hogsend.db.repos import dead_letters
from hogsend.db.repos import journeys as repo
from hogsend.db.tables.operations import DeadLetter

log = structlog.get_logger(__name__)

DLQ_SOURCE = repo.DLQ_SOURCE
"""The ``source`` of dead-letter entries written for diverged journey runs."""

Divergence = DBOSUnexpectedStepError
"""The exception DBOS raises when a replayed step's name differs from the recorded one."""


@dataclass(frozen=True, slots=True)
class DivergedStep:
    """Where a replay left the recorded path.

    Attributes:
        position: DBOS's step number within the workflow.
        recorded: the step recorded there by the code that ran before.
        expected: the step the current code asked for there.
    """

    position: int
    recorded: str
    expected: str

    @classmethod
    def of(cls, error: DBOSUnexpectedStepError) -> DivergedStep:
        """Read the positions and names out of DBOS's error."""
        _, position, expected, recorded = error.inputs
        return cls(position=int(position), recorded=str(recorded), expected=str(expected))

    def describe(self) -> str:
        """One line for the run's error and the dead-letter entry."""
        return (
            f"journey code changed under a waiting run: at step {self.position} the run "
            f"recorded {self.recorded!r} but the code now does {self.expected!r}"
        )


async def record_divergence(
    sessions: async_sessionmaker[AsyncSession],
    *,
    journey_id: str,
    state_id: uuid.UUID,
    workflow_id: str,
    application_version: str | None,
    error: DBOSUnexpectedStepError,
    trigger: Mapping[str, Any] | None = None,
) -> None:
    """Fail the run with the diverged step and park it in the dead-letter queue.

    Runs outside DBOS steps on purpose: any further step would itself be checked against
    the recording and diverge again. Idempotent per workflow: a second replay that
    diverges again (another worker, a retry) adds no second pending entry. ``trigger``
    (the run's trigger event as a DBOS message) goes into the entry, so a retry can start
    the run again even when that event was never stored (an enrollment by ``ctx.enroll``).
    """
    step = DivergedStep.of(error)
    message = step.describe()
    now = aware_now(None)
    async with sessions() as session, session.begin():
        run = await repo.get_run(session, state_id)
        ended = await repo.finish(session, state_id, status="failed", error=message, now=now)
        if ended and run is not None:
            await repo.add_log(
                session,
                journey_id=journey_id,
                action="failed",
                state_id=state_id,
                contact_id=run.contact_id,
                user_id=run.user_id,
                detail={"error": message, "diverged": _payload_step(step)},
                started_at=now,
                finished_at=now,
            )
        already = await session.scalar(
            select(DeadLetter.id).where(
                DeadLetter.source == DLQ_SOURCE,
                DeadLetter.source_id == workflow_id,
                DeadLetter.status == "pending",
            )
        )
        if already is None:
            await dead_letters.add(
                session,
                source=DLQ_SOURCE,
                source_id=workflow_id,
                payload={
                    "journeyId": journey_id,
                    "runId": str(state_id),
                    "workflowId": workflow_id,
                    "contactId": None if run is None else str(run.contact_id),
                    "userId": None if run is None else run.user_id,
                    "applicationVersion": application_version,
                    "divergedAt": _payload_step(step),
                    "trigger": None if trigger is None else dict(trigger),
                },
                error=message,
                attempts=1,
            )
    log.error(
        "journey run diverged from its code; failed into the dead-letter queue",
        journey=journey_id,
        workflow_id=workflow_id,
        step=step.position,
        recorded=step.recorded,
        expected=step.expected,
    )


def _payload_step(step: DivergedStep) -> dict[str, Any]:
    return {"position": step.position, "recorded": step.recorded, "expected": step.expected}
