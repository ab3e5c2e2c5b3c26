"""Deciding about a dead-letter entry: retry its work, or discard it for good.

Both the admin API (``/v1/admin/dlq/{id}/retry|discard``) and Studio call these, so an
operator gets the same outcome from either. The caller owns the transaction and commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.repos import dead_letters, outbox
from hogsend.db.repos.dead_letters import DeadLetterEntry
from hogsend.errors import Conflict, NotFound


@dataclass(frozen=True, slots=True, kw_only=True)
class Retried:
    """What :func:`retry` did: the entry as it was, and the outbox row back in line."""

    entry: DeadLetterEntry
    outbox_id: int


async def pending_entry(session: AsyncSession, entry_id: uuid.UUID, verb: str) -> DeadLetterEntry:
    """The entry, locked until the transaction ends, if it still waits for a decision.

    Raises:
        NotFound: no such entry.
        Conflict: the entry was already retried or discarded.
    """
    entry = await dead_letters.get(session, entry_id, for_update=True)
    if entry is None:
        raise NotFound(f"dead-letter entry {entry_id} does not exist")
    if entry.status != "pending":
        raise Conflict(
            f"dead-letter entry {entry_id} is already {entry.status}; "
            f"only pending entries can be {verb}"
        )
    return entry


async def retry(session: AsyncSession, entry_id: uuid.UUID) -> Retried:
    """Put the entry's failed work back in line and mark the entry ``retried``.

    For a ``dispatcher`` entry the event's outbox row is re-queued with its attempts
    reset; consumers that had handled it already are skipped. Idle dispatchers are
    woken (NOTIFY, delivered at commit).

    Raises:
        NotFound: no such entry.
        Conflict: the entry is not pending, its source has no retry, or the event is
            not dead any more.
    """
    entry = await pending_entry(session, entry_id, "retried")
    if entry.source != outbox.DISPATCHER_SOURCE:
        raise Conflict(f"entries from {entry.source!r} cannot be retried; discard it instead")
    outbox_id = await outbox.requeue_dead(session, entry.payload)
    if outbox_id is None:
        raise Conflict(
            f"event {entry.source_id} is not dead any more (pending or processed); "
            "discard this entry instead"
        )
    await dead_letters.resolve(session, entry_id, status="retried")
    await outbox.notify_outbox(session)
    return Retried(entry=entry, outbox_id=outbox_id)


async def discard(session: AsyncSession, entry_id: uuid.UUID) -> DeadLetterEntry:
    """Give up on the entry's work and mark it ``discarded``.

    For a ``dispatcher`` entry the event's dead outbox row is deleted (the event itself
    stays in the event log).

    Raises:
        NotFound: no such entry.
        Conflict: the entry is not pending.
    """
    entry = await pending_entry(session, entry_id, "discarded")
    if entry.source == outbox.DISPATCHER_SOURCE and entry.source_id is not None:
        await outbox.delete_dead(session, uuid.UUID(entry.source_id))
    await dead_letters.resolve(session, entry_id, status="discarded")
    return entry
