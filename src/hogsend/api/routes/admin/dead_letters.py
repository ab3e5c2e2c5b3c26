"""/v1/admin/dlq: the dead-letter queue (list and read: admin:read; retry, discard: admin:write)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, hogsend_of
from hogsend.api.errors import problem_responses
from hogsend.api.schemas.dead_letters import (
    DeadLetterOut,
    DeadLetterPage,
    DeadLetterQuery,
    DiscardedDeadLetter,
    RetriedDeadLetter,
)
from hogsend.core.reactions import all_journeys
from hogsend.db.repos import dead_letter_decisions, dead_letters
from hogsend.db.repos.dead_letters import DeadLetterEntry
from hogsend.errors import NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: dead letters"])


def _out(entry: DeadLetterEntry) -> DeadLetterOut:
    return DeadLetterOut(
        id=entry.id,
        source=entry.source,
        source_id=entry.source_id,
        payload=entry.payload,
        error=entry.error,
        attempts=entry.attempts,
        status=entry.status,
        retried_at=entry.retried_at,
        resolved_at=entry.resolved_at,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
    )


@router.get(
    "/dlq",
    summary="List dead-letter entries",
    dependencies=[require_scope("admin:read")],
)
async def list_dead_letters(
    session: DbSession, query: Annotated[DeadLetterQuery, Query()]
) -> DeadLetterPage:
    """Entries newest first, filtered by ``source`` and ``status`` when given."""
    entries, total = await dead_letters.list_entries(
        session, source=query.source, status=query.status, limit=query.limit, offset=query.offset
    )
    return DeadLetterPage(
        entries=[_out(e) for e in entries], total=total, limit=query.limit, offset=query.offset
    )


@router.get(
    "/dlq/{id}",
    summary="Read a dead-letter entry",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def get_dead_letter(id: UUID, session: DbSession) -> DeadLetterOut:
    """One entry with its payload and error. 404 if unknown."""
    entry = await dead_letters.get(session, id)
    if entry is None:
        raise NotFound(f"dead-letter entry {id} does not exist")
    return _out(entry)


@router.post(
    "/dlq/{id}/retry",
    summary="Retry a dead-letter entry",
    responses=problem_responses(404, 409),
    # runId and workflowId only for a journey entry: a dispatcher retry stays {retried}.
    response_model_exclude_none=True,
)
async def retry_dead_letter(
    id: UUID,
    request: Request,
    change: AdminChange = audited("admin:write", resource="dlq", action="dlq.retry"),
) -> RetriedDeadLetter:
    """Put the failed work back in line and mark the entry ``retried``.

    For a ``dispatcher`` entry the event's outbox row is re-queued: attempts start from
    zero, and consumers that had handled it before it died are not run again. If it fails
    for good again, a new entry is written.

    For a ``journey`` entry (a run whose replay diverged from changed code) a new run of
    the journey starts for the contact from the beginning, under the current code; the
    failed run stays ``failed`` and points at it. A send at an operation where the failed
    run sent the same template reuses that send's idempotency key, so the contact is not
    mailed twice. The new run's id is in the reply.

    409 when the entry is not pending, when its source has no retry, when the event is no
    longer dead (processed or pending), or when the journey run cannot start again (the
    journey is no longer defined, the contact or the run is gone, its trigger event was
    erased, or the contact already has a running run of the journey).
    """
    app = hogsend_of(request)
    retried = await dead_letter_decisions.retry(
        change.session, id, journey_ids={j.id for j in all_journeys(app.journeys, app.buckets)}
    )
    change.detail = retried.detail()
    return RetriedDeadLetter(retried=True, run_id=retried.run_id, workflow_id=retried.workflow_id)


@router.post(
    "/dlq/{id}/discard",
    summary="Discard a dead-letter entry",
    responses=problem_responses(404, 409),
)
async def discard_dead_letter(
    id: UUID,
    change: AdminChange = audited("admin:write", resource="dlq", action="dlq.discard"),
) -> DiscardedDeadLetter:
    """Give up on the work for good and mark the entry ``discarded``.

    For a ``dispatcher`` entry the event's dead outbox row is deleted (the event stays in
    the event log). 409 when the entry is not pending.
    """
    entry = await dead_letter_decisions.discard(change.session, id)
    change.detail = {
        "source": entry.source,
        "sourceId": entry.source_id,
        "before": {"status": entry.status},
        "after": {"status": "discarded"},
    }
    return DiscardedDeadLetter(discarded=True)
