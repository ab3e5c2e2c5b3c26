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
from hogsend.db.repos import dead_letters, outbox
from hogsend.db.repos.dead_letters import DeadLetterEntry
from hogsend.errors import Conflict, NotFound

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


async def _pending(change: AdminChange, id: UUID, verb: str) -> DeadLetterEntry:
    entry = await dead_letters.get(change.session, id, for_update=True)
    if entry is None:
        raise NotFound(f"dead-letter entry {id} does not exist")
    if entry.status != "pending":
        raise Conflict(
            f"dead-letter entry {id} is already {entry.status}; only pending entries can be {verb}"
        )
    change.detail = {"source": entry.source, "sourceId": entry.source_id}
    return entry


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
    entry = await _pending(change, id, "retried")
    if entry.source != outbox.DISPATCHER_SOURCE:
        raise Conflict(f"entries from {entry.source!r} cannot be retried; discard it instead")
    outbox_id = await outbox.requeue_dead(change.session, entry.payload)
    if outbox_id is None:
        raise Conflict(
            f"event {entry.source_id} is not dead any more (pending or processed); "
            "discard this entry instead"
        )
    await dead_letters.resolve(change.session, id, status="retried")
    await outbox.notify_outbox(change.session)
    change.detail = {**(change.detail or {}), "outboxId": outbox_id}
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
    entry = await _pending(change, id, "discarded")
    if entry.source == outbox.DISPATCHER_SOURCE and entry.source_id is not None:
        await outbox.delete_dead(change.session, UUID(entry.source_id))
    await dead_letters.resolve(change.session, id, status="discarded")
    return DiscardedDeadLetter(discarded=True)
