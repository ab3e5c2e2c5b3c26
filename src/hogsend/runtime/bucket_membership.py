"""Real-time bucket membership: the dispatcher's first consumer.

For each dispatched event, the buckets whose criteria can change on it are evaluated
for the event's contact, and the contact joins or leaves them:

1. **Candidates.** A bucket is a candidate when the event's name is one its criteria
   count (:func:`hogsend.core.conditions.relevant_events`, which includes the email
   events of email legs and other buckets' transition events), or when its criteria
   test contact properties: ingest applies an event's property patch to the contact
   and keeps no record of which keys it changed, so any event of the contact may have
   changed them (transition events, which patch nothing, are the exception).
   Criteria reading neither events nor properties (``where.all()``) are treated the
   same way. Manual buckets are never candidates.
2. **The switch.** Buckets disabled (the admin override in ``bucket_configs``, else
   the code's ``enabled``) are dropped; the override is read on every event, so
   flipping it takes effect at once, on every worker.
3. **Evaluation.** One query reads, for every candidate, the enable switch, the
   criteria for the contact (by contact id, in SQL, with the semantics of
   docs/conditions.md; disabled buckets are not evaluated) and the contact's active
   membership. A deleted contact is left alone.
4. **Transitions.** Not a member and matching: join, emit ``bucket:entered:<id>``.
   A member no longer matching: leave with reason ``criteria`` (deferred inside
   ``min_dwell``), emit ``bucket:left:<id>``. Otherwise only ``last_evaluated_at`` moves.

Idempotent under redelivery: the membership writes and the transition events commit
with the consumer's progress (one transaction, see docs/dispatcher.md); a redelivery
after a crash starts from the same state and computes the same epochs, so the same
idempotency keys. Joins and leaves are guarded by the active-row unique index and a
compare-and-swap, so concurrent writers (reconcile, admin) cannot double a transition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import (
    ColumnElement,
    DateTime,
    Executable,
    bindparam,
    case,
    false,
    func,
    literal,
    select,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.buckets import Transition
from hogsend.core.clock import aware_now
from hogsend.core.conditions.analysis import dependencies
from hogsend.core.definitions import BucketDefinition
from hogsend.db.conditions import compile_sql, contacts
from hogsend.db.repos import buckets as repo
from hogsend.db.repos.bucket_sweeps import member_of
from hogsend.db.tables.buckets import BucketConfig
from hogsend.runtime.dispatcher import DispatchedEvent

log = structlog.get_logger(__name__)

CONSUMER_NAME = "bucket-membership"

configs = BucketConfig.__table__

_NOW = bindparam("now", type_=DateTime(timezone=True))
_CONTACT = bindparam("contact_id", type_=UUID(as_uuid=True))


class _Index:
    """Which criteria buckets an event can affect, computed once from the definitions."""

    def __init__(self, buckets: Sequence[BucketDefinition]) -> None:
        self.by_event: dict[str, list[BucketDefinition]] = {}
        self.always: list[BucketDefinition] = []
        for bucket in buckets:
            if bucket.kind != "criteria" or bucket.criteria is None:
                continue
            deps = dependencies(bucket.criteria)
            if deps.properties or not deps.events:
                self.always.append(bucket)
                continue
            for name in deps.events:
                self.by_event.setdefault(name, []).append(bucket)
        self.order = {b.id: index for index, b in enumerate(buckets)}

    def candidates(self, event_name: str, *, properties_changed: bool) -> list[BucketDefinition]:
        found = {b.id: b for b in self.always} if properties_changed else {}
        for bucket in self.by_event.get(event_name, ()):
            found[bucket.id] = bucket
        return sorted(found.values(), key=lambda b: self.order[b.id])


class BucketMembershipConsumer:
    """Joins and leaves buckets as events arrive (see the module docstring).

    Args:
        buckets: the app's bucket definitions.
        clock: the current time (tests pass a fixed one); windows are measured from it.
    """

    name = CONSUMER_NAME

    def __init__(
        self,
        buckets: Sequence[BucketDefinition],
        *,
        clock: Callable[[], datetime] = aware_now,
    ) -> None:
        self._index = _Index(buckets)
        self._clock = clock
        self._queries: dict[tuple[str, ...], Executable] = {}

    def candidates(self, event_name: str, *, source: str | None = None) -> list[BucketDefinition]:
        """The criteria buckets an event called ``event_name`` from ``source`` can
        change (before the enable switch is applied)."""
        # Transition events carry no property patch: only buckets counting them care.
        return self._index.candidates(
            event_name, properties_changed=source != repo.TRANSITION_SOURCE
        )

    def wants(self, event: DispatchedEvent) -> bool:
        """Whether some criteria bucket can change on the event (else no savepoint:
        the dispatcher finishes it without running the consumer)."""
        return bool(self.candidates(event.name, source=event.source))

    def _criteria_query(self, candidates: Sequence[BucketDefinition]) -> Executable:
        """One statement answering, for one contact and each candidate: is the bucket
        enabled (admin override, else the code's switch), do its criteria match (only
        asked of enabled buckets), and which active membership the contact has.

        Built once per candidate set with ``now`` and the contact as parameters:
        building and compiling the expression was most of the consumer's CPU per event,
        and one round trip instead of three (override, criteria, memberships) is most
        of the rest of an event's cost on the dispatcher path.
        """
        key = tuple(bucket.id for bucket in candidates)
        known = self._queries.get(key)
        if known is not None:
            return known
        columns: list[ColumnElement[Any]] = []
        for index, bucket in enumerate(candidates):
            assert bucket.criteria is not None
            override = (
                select(configs.c.enabled).where(configs.c.bucket_id == bucket.id).scalar_subquery()
            )
            enabled = func.coalesce(override, literal(bucket.enabled))
            member = member_of(bucket.id, contacts.c.id)
            columns += [
                enabled.label(f"e{index}"),
                case((enabled, compile_sql(bucket.criteria, _NOW)), else_=false()).label(
                    f"b{index}"
                ),
                member.label(f"m{index}"),
            ]
        query = select(*columns).where(contacts.c.id == _CONTACT, contacts.c.deleted_at.is_(None))
        self._queries[key] = query
        return query

    async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
        """Evaluate the candidate buckets for the event's contact; join / leave them."""
        candidates = self.candidates(event.name, source=event.source)
        if not candidates:
            return
        now = aware_now(self._clock())
        query = self._criteria_query(candidates)
        row = (
            await session.execute(query, {"now": now, "contact_id": event.contact_id})
        ).one_or_none()
        if row is None:
            return  # deleted (or erased) since the event was stored
        joins: list[BucketDefinition] = []
        leaves: list[tuple[BucketDefinition, Any]] = []
        still: list[str] = []
        for index, bucket in enumerate(candidates):
            if not row[3 * index]:
                continue  # disabled: inert
            matches = bool(row[3 * index + 1])
            membership = row[3 * index + 2]
            if matches and membership is None:
                joins.append(bucket)
            elif not matches and membership is not None:
                leaves.append((bucket, membership))
            elif membership is not None:
                still.append(bucket.id)
        if not joins and not leaves and not still:
            return
        # Joins, leaves and touches in one round trip, the transitions in a second one,
        # both in this transaction.
        applied = await repo.apply_evaluation(
            session, event.contact_id, joins=joins, leaves=leaves, still=still, now=now
        )
        transitions = [Transition.of("entered", m) for m in applied.joined]
        transitions += [Transition.of("left", m, reason="criteria") for m in applied.left]
        # In the buckets' order, as the events are stored in that order.
        transitions.sort(key=lambda t: self._index.order[t.bucket_id])
        if transitions:
            log.debug(
                "bucket transitions",
                contact=str(event.contact_id),
                transitions=[t.event for t in transitions],
            )
        await repo.emit_transitions(session, transitions, now=now)
