"""Deciding about a dead-letter entry: retry its work, or discard it for good.

Both the admin API (``/v1/admin/dlq/{id}/retry|discard``) and Studio call these, so an
operator gets the same outcome from either. The caller owns the transaction and commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.enrollment import event_message, retry_workflow_id
from hogsend.db.repos import contacts, dead_letters, events, journeys, outbox
from hogsend.db.repos.dead_letters import DeadLetterEntry
from hogsend.errors import Conflict, NotFound


@dataclass(frozen=True, slots=True, kw_only=True)
class Retried:
    """What :func:`retry` did: the entry as it was, and what is back in line (the outbox
    row of a ``dispatcher`` entry, the new run of a ``journey`` entry)."""

    entry: DeadLetterEntry
    outbox_id: int | None = None
    run_id: uuid.UUID | None = None
    workflow_id: str | None = None

    def detail(self) -> dict[str, Any]:
        """The audit row's detail: the entry's source and status before and after."""
        found: dict[str, Any] = {
            "source": self.entry.source,
            "sourceId": self.entry.source_id,
            "before": {"status": self.entry.status},
            "after": {"status": "retried"},
        }
        if self.outbox_id is not None:
            found["outboxId"] = self.outbox_id
        if self.run_id is not None:
            found["runId"] = str(self.run_id)
            found["workflowId"] = self.workflow_id
            found["retryOf"] = self.entry.payload.get("runId")
        return found


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


async def retry(
    session: AsyncSession, entry_id: uuid.UUID, *, journey_ids: Collection[str] = ()
) -> Retried:
    """Put the entry's failed work back in line and mark the entry ``retried``.

    For a ``dispatcher`` entry the event's outbox row is re-queued with its attempts
    reset; consumers that had handled it already are skipped. Idle dispatchers are
    woken (NOTIFY, delivered at commit).

    For a ``journey`` entry (a run that diverged from its code) a new run of the journey
    starts for the contact, from the beginning, under the code deployed now (see
    :mod:`hogsend.runtime.journey_retries`); the failed run stays ``failed`` and points
    at it. ``journey_ids`` are the journeys the app defines.

    Raises:
        NotFound: no such entry.
        Conflict: the entry is not pending, its source has no retry, the event is not
            dead any more, or the journey run cannot start again (see
            :func:`_retry_journey`).
    """
    entry = await pending_entry(session, entry_id, "retried")
    if entry.source == journeys.DLQ_SOURCE:
        retried = await _retry_journey(session, entry, journey_ids)
        await dead_letters.resolve(session, entry_id, status="retried")
        return retried
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


async def _retry_journey(
    session: AsyncSession, entry: DeadLetterEntry, journey_ids: Collection[str]
) -> Retried:
    """Insert the new run of a failed journey run; a worker starts its workflow.

    Raises:
        Conflict: the app no longer defines the journey, the run or the contact is gone,
            the run is not ``failed`` any more, its trigger event is not known, or the
            contact already has a running run of the journey.
    """
    payload = entry.payload
    journey_id = str(payload.get("journeyId"))
    if journey_id not in journey_ids:
        raise Conflict(
            f"journey {journey_id!r} is no longer defined by the app; discard this entry instead"
        )
    try:
        run_id = uuid.UUID(str(payload.get("runId")))
    except ValueError:
        raise Conflict(f"dead-letter entry {entry.id} names no journey run") from None
    failed = await journeys.get_run(session, run_id)
    if failed is None:
        raise Conflict(f"journey run {run_id} no longer exists; discard this entry instead")
    if failed.status != "failed":
        raise Conflict(f"journey run {run_id} is {failed.status}, not failed; nothing to retry")
    contact = await contacts.get_contact(session, failed.contact_id)
    if contact is None:
        raise Conflict(
            f"contact {failed.contact_id} was deleted or merged; discard this entry instead"
        )
    trigger = payload.get("trigger")
    if not trigger and failed.trigger_event_id is not None:
        stored = await events.get_event(session, failed.trigger_event_id)
        trigger = None if stored is None else event_message(stored)
    if not trigger:
        raise Conflict(
            f"the trigger event of journey run {run_id} is no longer stored (erased?); "
            "discard this entry instead"
        )
    state_id = uuid.uuid4()
    workflow_id = retry_workflow_id(failed.workflow_id, str(entry.id))
    started = await journeys.start_retry(
        session,
        failed,
        state_id=state_id,
        workflow_id=workflow_id,
        user_email=contact.email,
        retry={
            "of": str(failed.id),
            "deadLetterId": str(entry.id),
            "trigger": trigger,
            "sends": await journeys.sent_keys(session, failed.id),
        },
    )
    if not started:
        raise Conflict(
            f"contact {failed.contact_id} already has a running run of journey "
            f"{journey_id!r}; let it end (or cancel it) and retry again"
        )
    return Retried(entry=entry, run_id=state_id, workflow_id=workflow_id)


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
