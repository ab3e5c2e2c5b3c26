"""/v1/admin/dlq: the dead-letter queue (list and read: admin:read; retry, discard: admin:write)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession
from hogsend.api.errors import problem_responses
from hogsend.api.schemas.dead_letters import (
    DeadLetterOut,
    DeadLetterPage,
    DeadLetterQuery,
    DiscardedDeadLetter,
    RetriedDeadLetter,
)
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
)
async def retry_dead_letter(
    id: UUID,
    change: AdminChange = audited("admin:write", resource="dlq", action="dlq.retry"),
) -> RetriedDeadLetter:
    """Put the failed work back in line and mark the entry ``retried``.

    For a ``dispatcher`` entry the event's outbox row is re-queued: attempts start from
    zero, and consumers that had handled it before it died are not run again. If it fails
    for good again, a new entry is written. 409 when the entry is not pending, when its
    source has no retry, or when the event is no longer dead (processed or pending).
    """
    retried = await dead_letter_decisions.retry(change.session, id)
    change.detail = {
        "source": retried.entry.source,
        "sourceId": retried.entry.source_id,
        "outboxId": retried.outbox_id,
    }
    return RetriedDeadLetter(retried=True)


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
    change.detail = {"source": entry.source, "sourceId": entry.source_id}
    return DiscardedDeadLetter(discarded=True)
