"""Bucket memberships: join, leave, transition events, reads and the admin switch.

The primitives every producer shares (the per-event consumer, backfill, reconcile, the
admin API), so the rules hold whoever writes:

- **join** inserts an active row under the partial unique index "one active stay per
  contact and bucket" (``ON CONFLICT DO NOTHING``): of two concurrent joins one gets
  the row, the other gets None and emits nothing. The epoch (``entry_count``) is 1 +
  every earlier row of the contact in the bucket, whatever its status; ``entry_limit``
  is checked against the same count.
- **leave** is a compare-and-swap ``UPDATE`` of the active row: the loser of a race
  gets None. A ``criteria`` leave inside ``min_dwell`` is deferred, not dropped: the row
  stays active with ``expires_at`` at the end of the minimum stay, for reconcile.
- **emit_transition** stores the transition as an event through ingest (so journeys,
  exits and other buckets see it) under the deterministic key of
  :class:`hogsend.core.buckets.Transition`: a transition emitted twice is stored once.

Every query finds contacts and memberships by contact id, never by external id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.buckets import (
    LeaveReasonCode,
    Membership,
    MembershipSource,
    Transition,
    TransitionKind,
)
from hogsend.core.conditions import Condition
from hogsend.core.conditions.analysis import dependencies
from hogsend.core.definitions import BucketDefinition
from hogsend.core.ingest import EventInput, IngestResult
from hogsend.core.pagination import InvalidCursor, decode_cursor, encode_cursor
from hogsend.db.conditions import contacts, matching_contacts
from hogsend.db.repos.events import ingest_event

TRANSITION_SOURCE = "bucket"
"""``user_events.source`` of transition events."""

MAX_MEMBER_PAGE = 200

_COLUMNS = (
    "id, bucket_id, contact_id, user_id, user_email, status, entered_at, left_at,"
    " left_reason, entry_count, source, expires_at, max_dwell_at, dwell_anchor_at,"
    " dwell_state, last_evaluated_at"
)


def _membership(row: Any) -> Membership:
    return Membership(
        id=row.id,
        bucket_id=row.bucket_id,
        contact_id=row.contact_id,
        contact_key=row.user_id,
        email=row.user_email,
        status=row.status,
        entered_at=row.entered_at,
        left_at=row.left_at,
        left_reason=row.left_reason,
        entry_count=row.entry_count,
        source=row.source,
        expires_at=row.expires_at,
        max_dwell_at=row.max_dwell_at,
        dwell_anchor_at=row.dwell_anchor_at,
        dwell_state=row.dwell_state or {},
        last_evaluated_at=row.last_evaluated_at,
    )


def expires_at_for(bucket: BucketDefinition, now: datetime) -> datetime | None:
    """When a new member's criteria window can first close, for fast expiry: ``now`` +
    the first ``within`` window of the criteria, only if ``fast_expiry`` is on."""
    if not bucket.fast_expiry or bucket.criteria is None:
        return None
    windows = dependencies(bucket.criteria).windows
    return now + windows[0] if windows else None


# --------------------------------------------------------------------------- writes

_JOIN = text(
    f"""
    WITH prior AS (
        SELECT count(*) AS n FROM bucket_memberships
        WHERE contact_id = :contact_id AND bucket_id = :bucket_id
    )
    INSERT INTO bucket_memberships (
        contact_id, user_id, user_email, bucket_id, status, entered_at, expires_at,
        max_dwell_at, last_evaluated_at, entry_count, source, dwell_anchor_at,
        created_at, updated_at
    )
    SELECT c.id, coalesce(c.external_id, c.anonymous_id, c.id::text), c.email, :bucket_id,
        'active', :now, CAST(:expires_at AS timestamptz), CAST(:max_dwell_at AS timestamptz),
        :now, prior.n + 1, :source, CAST(:anchor AS timestamptz), :now, :now
    FROM contacts c, prior
    WHERE c.id = :contact_id AND c.deleted_at IS NULL
      AND (CAST(:entry_limit AS integer) IS NULL OR prior.n < CAST(:entry_limit AS integer))
    ON CONFLICT DO NOTHING
    RETURNING {_COLUMNS}
    """
)


async def join(
    session: AsyncSession,
    bucket: BucketDefinition,
    contact_id: uuid.UUID,
    *,
    now: datetime,
    source: MembershipSource = "event",
    dwell_anchor_at: datetime | None = None,
) -> Membership | None:
    """Make ``contact_id`` an active member of ``bucket``, if it is not one already.

    Emits nothing (see :func:`emit_transition`).

    Args:
        session: the caller's transaction.
        bucket: the bucket (its ``entry_limit``, ``max_dwell`` and ``fast_expiry`` apply).
        contact_id: the resolved contact.
        now: the join time.
        source: who joins it (``event``, ``reconcile``, ``backfill``, ``manual``).
        dwell_anchor_at: when the dwell clock starts, if not now (backfill).

    Returns:
        The new membership; None when the contact is already a member (possibly by a
        concurrent writer), is deleted or unknown, or has used up ``entry_limit``.
    """
    row = (
        await session.execute(
            _JOIN,
            {
                "contact_id": contact_id,
                "bucket_id": bucket.id,
                "now": now,
                "expires_at": expires_at_for(bucket, now),
                "max_dwell_at": None if bucket.max_dwell is None else now + bucket.max_dwell,
                "source": source,
                "anchor": dwell_anchor_at,
                "entry_limit": bucket.entry_limit,
            },
        )
    ).one_or_none()
    return None if row is None else _membership(row)


_LEAVE = text(
    f"""
    UPDATE bucket_memberships SET status = 'left', left_at = :now, left_reason = :reason,
        last_evaluated_at = :now, updated_at = :now
    WHERE contact_id = :contact_id AND bucket_id = :bucket_id
      AND status = 'active' AND deleted_at IS NULL
      AND (CAST(:membership_id AS uuid) IS NULL OR id = CAST(:membership_id AS uuid))
      AND (CAST(:stay_until AS timestamptz) IS NULL
           OR entered_at <= CAST(:stay_until AS timestamptz))
    RETURNING {_COLUMNS}
    """
)

_DEFER = text(
    """
    UPDATE bucket_memberships SET expires_at = entered_at + CAST(:min_dwell AS interval),
        last_evaluated_at = :now, updated_at = :now
    WHERE contact_id = :contact_id AND bucket_id = :bucket_id
      AND status = 'active' AND deleted_at IS NULL
      AND (CAST(:membership_id AS uuid) IS NULL OR id = CAST(:membership_id AS uuid))
    """
)


async def leave(
    session: AsyncSession,
    bucket: BucketDefinition,
    contact_id: uuid.UUID,
    *,
    reason: LeaveReasonCode,
    now: datetime,
    membership_id: uuid.UUID | None = None,
) -> Membership | None:
    """End ``contact_id``'s active stay in ``bucket`` (compare-and-swap).

    A ``criteria`` leave of a member who joined less than ``min_dwell`` ago is deferred:
    the row stays active and its ``expires_at`` becomes ``entered_at + min_dwell``, the
    moment reconcile tries again. ``maxDwell`` and ``manual`` leaves are never deferred.
    Emits nothing (see :func:`emit_transition`).

    Args:
        session: the caller's transaction.
        bucket: the bucket.
        contact_id: the contact.
        reason: ``criteria``, ``maxDwell`` or ``manual`` (stored as ``left_reason``).
        now: the leave time.
        membership_id: only leave if the active row is this one (a sweep that read it).

    Returns:
        The membership as it left; None when there was no active row (or a concurrent
        writer ended it first) or the leave was deferred.
    """
    stay_until = None
    if reason == "criteria" and bucket.min_dwell is not None:
        stay_until = now - bucket.min_dwell
    params = {
        "contact_id": contact_id,
        "bucket_id": bucket.id,
        "now": now,
        "reason": reason,
        "membership_id": membership_id,
        "stay_until": stay_until,
    }
    row = (await session.execute(_LEAVE, params)).one_or_none()
    if row is not None:
        return _membership(row)
    if stay_until is not None and bucket.min_dwell is not None:
        await session.execute(
            _DEFER,
            {
                "contact_id": contact_id,
                "bucket_id": bucket.id,
                "now": now,
                "membership_id": membership_id,
                "min_dwell": bucket.min_dwell,
            },
        )
    return None


_TOUCH = text(
    "UPDATE bucket_memberships SET last_evaluated_at = :now"
    " WHERE contact_id = :contact_id AND bucket_id = ANY(CAST(:bucket_ids AS text[]))"
    " AND status = 'active' AND deleted_at IS NULL"
)


async def touch(
    session: AsyncSession, contact_id: uuid.UUID, bucket_ids: Sequence[str], *, now: datetime
) -> None:
    """Record that the contact's active memberships of ``bucket_ids`` were re-checked."""
    if bucket_ids:
        await session.execute(
            _TOUCH, {"contact_id": contact_id, "bucket_ids": list(bucket_ids), "now": now}
        )


# One contact's membership changes after one evaluation, in one statement: joins (as
# _JOIN: one active stay per contact and bucket, epoch = 1 + earlier stays, entry
# limit), criteria leaves (as _LEAVE; inside min_dwell deferred as _DEFER) and the
# touch of the memberships that stay. Each CTE writes other rows (joins are of buckets
# the contact is not in, leaves of memberships no longer matching, touches of those
# still matching), so none sees another's write.
_GO = "(l.stay_until IS NULL OR m.entered_at <= l.stay_until)"
_APPLY = text(
    f"""
    WITH j AS (
        SELECT r.* FROM jsonb_to_recordset(CAST(:joins AS jsonb)) AS r(
            bucket_id text, expires_at timestamptz, max_dwell_at timestamptz,
            entry_limit integer)
    ), l AS (
        SELECT r.* FROM jsonb_to_recordset(CAST(:leaves AS jsonb)) AS r(
            bucket_id text, membership_id uuid, stay_until timestamptz, min_dwell float8)
    ), prior AS (
        SELECT j.*, (SELECT count(*) FROM bucket_memberships m
                     WHERE m.contact_id = :contact_id AND m.bucket_id = j.bucket_id) AS n
        FROM j
    ), joined AS (
        INSERT INTO bucket_memberships (
            contact_id, user_id, user_email, bucket_id, status, entered_at, expires_at,
            max_dwell_at, last_evaluated_at, entry_count, source, created_at, updated_at
        )
        SELECT c.id, coalesce(c.external_id, c.anonymous_id, c.id::text), c.email,
            p.bucket_id, 'active', :now, p.expires_at, p.max_dwell_at, :now, p.n + 1,
            'event', :now, :now
        FROM prior p, contacts c
        WHERE c.id = :contact_id AND c.deleted_at IS NULL
          AND (p.entry_limit IS NULL OR p.n < p.entry_limit)
        ON CONFLICT DO NOTHING
        RETURNING {_COLUMNS}
    ), changed AS (
        -- The SET expressions read the row as it was (entered_at is never changed).
        UPDATE bucket_memberships m SET
            status = CASE WHEN {_GO} THEN 'left' ELSE m.status END,
            left_at = CASE WHEN {_GO} THEN CAST(:now AS timestamptz) ELSE m.left_at END,
            left_reason = CASE WHEN {_GO} THEN 'criteria' ELSE m.left_reason END,
            expires_at = CASE WHEN {_GO} THEN m.expires_at
                              ELSE m.entered_at + make_interval(secs => l.min_dwell) END,
            last_evaluated_at = :now, updated_at = :now
        FROM l
        WHERE m.id = l.membership_id AND m.contact_id = :contact_id
          AND m.bucket_id = l.bucket_id AND m.status = 'active' AND m.deleted_at IS NULL
        RETURNING {", ".join("m." + c.strip() for c in _COLUMNS.split(","))}
    ), touched AS (
        UPDATE bucket_memberships SET last_evaluated_at = :now
        WHERE contact_id = :contact_id AND bucket_id = ANY(CAST(:still AS text[]))
          AND status = 'active' AND deleted_at IS NULL
    )
    SELECT * FROM joined
    UNION ALL
    SELECT * FROM changed WHERE status = 'left'
    """
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Applied:
    """What :func:`apply_evaluation` changed: the stays begun and the stays ended."""

    joined: list[Membership]
    left: list[Membership]


async def apply_evaluation(
    session: AsyncSession,
    contact_id: uuid.UUID,
    *,
    joins: Sequence[BucketDefinition],
    leaves: Sequence[tuple[BucketDefinition, uuid.UUID]],
    still: Sequence[str],
    now: datetime,
) -> Applied:
    """Carry out one evaluation of a contact's buckets in one round trip.

    The same rules as :func:`join` (source ``event``), :func:`leave` (reason
    ``criteria``, compare-and-swap on the membership id, deferred inside ``min_dwell``)
    and :func:`touch`; emits nothing (see :func:`emit_transitions`).

    Args:
        session: the caller's transaction.
        contact_id: the contact.
        joins: buckets it matches and is not a member of.
        leaves: buckets it no longer matches, with the active membership id read.
        still: ids of buckets it matches and stays in.
        now: the time of the evaluation.

    Returns:
        The memberships that began and the ones that ended (a join lost to a concurrent
        writer, or a leave deferred or lost, is in neither).
    """
    join_rows = [
        {
            "bucket_id": b.id,
            "expires_at": _iso(expires_at_for(b, now)),
            "max_dwell_at": _iso(None if b.max_dwell is None else now + b.max_dwell),
            "entry_limit": b.entry_limit,
        }
        for b in joins
    ]
    leave_rows = [
        {
            "bucket_id": b.id,
            "membership_id": str(membership_id),
            "stay_until": _iso(None if b.min_dwell is None else now - b.min_dwell),
            "min_dwell": None if b.min_dwell is None else b.min_dwell.total_seconds(),
        }
        for b, membership_id in leaves
    ]
    rows = await session.execute(
        _APPLY,
        {
            "contact_id": contact_id,
            "joins": json.dumps(join_rows),
            "leaves": json.dumps(leave_rows),
            "still": list(still),
            "now": now,
        },
    )
    joined: list[Membership] = []
    left: list[Membership] = []
    for row in rows:
        membership = _membership(row)
        (left if membership.status == "left" else joined).append(membership)
    return Applied(joined=joined, left=left)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


async def emit_transition(
    session: AsyncSession,
    kind: TransitionKind,
    membership: Membership,
    *,
    now: datetime,
    reason: LeaveReasonCode | None = None,
    label: str | None = None,
    interval: int | None = None,
) -> IngestResult:
    """Store the transition as an event (``bucket:entered:<id>`` ...), exactly once.

    The event goes through ingest like any other (it gets an outbox row, so the
    dispatcher hands it to journeys and to buckets whose criteria read it), keyed by
    :attr:`Transition.idempotency_key`: emitting the same transition again, from any
    producer, returns ``duplicate`` and writes nothing.

    Args:
        session: the caller's transaction (the event commits with the membership change).
        kind: ``entered``, ``left`` or ``dwell``.
        membership: the membership the transition belongs to.
        now: the event's ``occurred_at``.
        reason: for ``left``.
        label: for ``dwell``.
        interval: for an ``every`` dwell: the 1-based interval number.
    """
    transition = Transition.of(kind, membership, reason=reason, label=label, interval=interval)
    return await ingest_event(
        session,
        EventInput(
            name=transition.event,
            contact_id=transition.contact_id,
            properties=transition.properties(),
            idempotency_key=transition.idempotency_key,
            occurred_at=now,
            source=TRANSITION_SOURCE,
        ),
        now=now,
    )


# The ingest of a transition, in one statement: its contact is known by id and it patches
# nothing, so the identity resolution, the idempotency read and the contact update of
# the general ingest (a savepoint and four round trips per event) have nothing to do.
# The contact row is locked as ingest locks it (a merge in flight is waited for, and a
# contact merged away or deleted meanwhile gets nothing); a key stored before is a
# duplicate and writes nothing; outbox rows keep the order of the transitions.
# The contacts are looked up as an array (``= ANY``, an index probe per contact): as
# ``IN (SELECT ... FROM v)`` the planner, guessing 100 rows from the JSON, hashed them
# against a sequential scan of every contact (milliseconds per emit at 20,000 contacts,
# growing with the table).
_EMIT = text(
    """
    WITH v AS (
        SELECT r.* FROM jsonb_to_recordset(CAST(:events AS jsonb)) AS r(
            ord int, contact_id uuid, event text, idempotency_key text, properties jsonb)
    ), c AS MATERIALIZED (
        SELECT id, coalesce(external_id, anonymous_id, id::text) AS key FROM contacts
        WHERE id = ANY(ARRAY(SELECT contact_id FROM v)) AND deleted_at IS NULL
        ORDER BY id
        FOR NO KEY UPDATE
    ), ins AS (
        INSERT INTO user_events (id, contact_id, user_id, event, properties, idempotency_key,
                                 source, occurred_at, received_at)
        SELECT gen_random_uuid(), c.id, c.key, v.event, v.properties, v.idempotency_key,
               :source, :now, :now
        FROM v JOIN c ON c.id = v.contact_id
        ORDER BY v.ord
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id, contact_id, user_id, event, idempotency_key
    )
    INSERT INTO event_outbox (event_id, contact_id, contact_key, event, created_at,
                              next_attempt_at)
    SELECT ins.id, ins.contact_id, ins.user_id, ins.event, :now, :now
    FROM ins JOIN v USING (idempotency_key)
    ORDER BY v.ord
    """
)


async def emit_transitions(
    session: AsyncSession, transitions: Sequence[Transition], *, now: datetime
) -> None:
    """Store several transitions as events in one statement, with the rules of
    :func:`emit_transition` (the same keys, so repeats are duplicates and write nothing;
    nothing for a contact deleted or merged away)."""
    if not transitions:
        return
    # One row per key (a repeat within the call is a duplicate, as in ingest).
    unique = {t.idempotency_key: t for t in reversed(transitions)}
    events = [
        {
            "ord": ord_,
            "contact_id": str(t.contact_id),
            "event": t.event,
            "idempotency_key": t.idempotency_key,
            "properties": t.properties(),
        }
        for ord_, t in enumerate(transitions)
        if unique[t.idempotency_key] is t
    ]
    await session.execute(
        _EMIT, {"events": json.dumps(events), "source": TRANSITION_SOURCE, "now": now}
    )


# --------------------------------------------------------------------------- reads

_ACTIVE_OF_CONTACT = text(
    f"SELECT {_COLUMNS} FROM bucket_memberships"
    " WHERE contact_id = :contact_id AND status = 'active' AND deleted_at IS NULL"
)


async def add_by_hand(
    session: AsyncSession, bucket: BucketDefinition, contact_id: uuid.UUID, *, now: datetime
) -> tuple[Membership | None, bool]:
    """Put a contact in a manual bucket, as an operator does (API or Studio).

    Returns:
        ``(membership, True)`` when it joined now (``bucket:entered:<id>`` is emitted),
        ``(membership, False)`` when it already was a member, and ``(None, False)`` when
        the bucket's ``entry_limit`` is used up for it.
    """
    joined = await join(session, bucket, contact_id, now=now, source="manual")
    if joined is None:
        return (await active_memberships(session, contact_id)).get(bucket.id), False
    await emit_transition(session, "entered", joined, now=now)
    return joined, True


async def remove_by_hand(
    session: AsyncSession, bucket: BucketDefinition, contact_id: uuid.UUID, *, now: datetime
) -> Membership | None:
    """End a contact's stay in a manual bucket (reason ``manual``, ``bucket:left:<id>``
    emitted); None when it was not a member."""
    left = await leave(session, bucket, contact_id, reason="manual", now=now)
    if left is not None:
        await emit_transition(session, "left", left, now=now, reason="manual")
    return left


async def active_memberships(session: AsyncSession, contact_id: uuid.UUID) -> dict[str, Membership]:
    """The contact's active memberships, by bucket id."""
    rows = await session.execute(_ACTIVE_OF_CONTACT, {"contact_id": contact_id})
    return {row.bucket_id: _membership(row) for row in rows}


_IS_MEMBER = text(
    "SELECT EXISTS (SELECT 1 FROM bucket_memberships m JOIN contacts c ON c.id = m.contact_id"
    " WHERE m.contact_id = :contact_id AND m.bucket_id = :bucket_id AND m.status = 'active'"
    " AND m.deleted_at IS NULL AND c.deleted_at IS NULL)"
)


async def is_member(session: AsyncSession, bucket_id: str, contact_id: uuid.UUID) -> bool:
    """Whether the (live) contact is an active member of the bucket now."""
    return bool(
        (
            await session.execute(_IS_MEMBER, {"bucket_id": bucket_id, "contact_id": contact_id})
        ).scalar()
    )


_COUNTS = text(
    """
    SELECT m.bucket_id, count(*) AS n FROM bucket_memberships m
    JOIN contacts c ON c.id = m.contact_id AND c.deleted_at IS NULL
    WHERE m.status = 'active' AND m.deleted_at IS NULL
      AND (CAST(:bucket_ids AS text[]) IS NULL OR m.bucket_id = ANY(CAST(:bucket_ids AS text[])))
    GROUP BY m.bucket_id
    """
)


async def member_counts(
    session: AsyncSession, bucket_ids: Iterable[str] | None = None
) -> dict[str, int]:
    """Active members of live contacts per bucket (buckets with none are left out)."""
    ids = None if bucket_ids is None else list(bucket_ids)
    rows = await session.execute(_COUNTS, {"bucket_ids": ids})
    return {row.bucket_id: int(row.n) for row in rows}


async def member_count(session: AsyncSession, bucket_id: str) -> int:
    """Active members of live contacts of one bucket."""
    return (await member_counts(session, [bucket_id])).get(bucket_id, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class MemberPage:
    """One page of a bucket's members; ``next_cursor`` is None on the last page."""

    items: tuple[Membership, ...]
    next_cursor: str | None


_MEMBERS = text(
    f"""
    SELECT {", ".join("m." + c.strip() for c in _COLUMNS.split(","))}
    FROM bucket_memberships m
    JOIN contacts c ON c.id = m.contact_id AND c.deleted_at IS NULL
    WHERE m.bucket_id = :bucket_id AND m.deleted_at IS NULL AND m.status = :status
      AND (CAST(:contact_id AS uuid) IS NULL OR m.contact_id = CAST(:contact_id AS uuid))
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (m.entered_at, m.id) < (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY m.entered_at DESC, m.id DESC
    LIMIT :limit
    """
)


async def list_members(
    session: AsyncSession,
    bucket_id: str,
    *,
    status: Literal["active", "left"] = "active",
    contact_id: uuid.UUID | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> MemberPage:
    """A bucket's memberships with ``status``, newest stay first, keyset-paginated.

    Args:
        session: any session.
        bucket_id: the bucket.
        status: ``active`` (current members) or ``left`` (past stays).
        contact_id: only this contact's rows.
        cursor: from the previous page (raises ``InvalidCursor`` if it is not one).
        limit: 1 to :data:`MAX_MEMBER_PAGE`.
    """
    after_at: datetime | None = None
    after_id: uuid.UUID | None = None
    if cursor is not None:
        at, ident = decode_cursor(cursor, 2)
        try:
            after_at, after_id = datetime.fromisoformat(at), uuid.UUID(ident)
        except ValueError as exc:
            raise InvalidCursor("the cursor is not one this listing handed out") from exc
    limit = max(1, min(limit, MAX_MEMBER_PAGE))
    rows = (
        await session.execute(
            _MEMBERS,
            {
                "bucket_id": bucket_id,
                "status": status,
                "contact_id": contact_id,
                "after_at": after_at,
                "after_id": after_id,
                "limit": limit + 1,
            },
        )
    ).all()
    items = tuple(_membership(row) for row in rows[:limit])
    next_cursor = None
    if len(rows) > limit:
        last = items[-1]
        next_cursor = encode_cursor(last.entered_at.isoformat(), str(last.id))
    return MemberPage(items=items, next_cursor=next_cursor)


_OF_CONTACT = text(
    f"SELECT {_COLUMNS} FROM bucket_memberships"
    " WHERE contact_id = :contact_id AND deleted_at IS NULL"
    " ORDER BY entered_at DESC, id DESC LIMIT :limit"
)


async def contact_memberships(
    session: AsyncSession, contact_id: uuid.UUID, *, limit: int = 500
) -> list[Membership]:
    """Every stay (active and past) of one contact, newest first."""
    rows = await session.execute(_OF_CONTACT, {"contact_id": contact_id, "limit": limit})
    return [_membership(row) for row in rows]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecentTransition:
    """A transition event as stored: what happened, to whom, when."""

    event_id: uuid.UUID
    bucket_id: str
    kind: str
    contact_id: uuid.UUID
    contact_key: str
    occurred_at: datetime
    properties: Mapping[str, Any]


_RECENT = text(
    """
    SELECT id, event, contact_id, user_id, occurred_at, properties FROM user_events
    WHERE event = ANY(CAST(:names AS text[]))
    ORDER BY occurred_at DESC, id DESC LIMIT :limit
    """
)


async def recent_transitions(
    session: AsyncSession, bucket_id: str, *, limit: int = 10
) -> list[RecentTransition]:
    """The latest ``bucket:entered`` / ``bucket:left`` events of a bucket, newest first."""
    names = [f"bucket:entered:{bucket_id}", f"bucket:left:{bucket_id}"]
    rows = await session.execute(_RECENT, {"names": names, "limit": limit})
    return [
        RecentTransition(
            event_id=row.id,
            bucket_id=bucket_id,
            kind=row.event.split(":")[1],
            contact_id=row.contact_id,
            contact_key=row.user_id,
            occurred_at=row.occurred_at,
            properties=row.properties or {},
        )
        for row in rows
    ]


# --------------------------------------------------------------------------- admin switch

_OVERRIDES = text("SELECT bucket_id, enabled FROM bucket_configs WHERE enabled IS NOT NULL")


async def enabled_overrides(session: AsyncSession) -> dict[str, bool]:
    """The admin enable/disable overrides (bucket id → enabled); absent = the code's value."""
    rows = await session.execute(_OVERRIDES)
    return {row.bucket_id: bool(row.enabled) for row in rows}


async def enabled_buckets(
    session: AsyncSession, buckets: Iterable[BucketDefinition]
) -> list[BucketDefinition]:
    """``buckets`` that are enabled now: the admin override if set, else the code's."""
    overrides = await enabled_overrides(session)
    return [b for b in buckets if overrides.get(b.id, b.enabled)]


async def is_enabled(session: AsyncSession, bucket: BucketDefinition) -> bool:
    """Whether one bucket is enabled now (admin override, else the code's ``enabled``)."""
    return bool(await enabled_buckets(session, [bucket]))


async def set_enabled(
    session: AsyncSession, bucket_id: str, enabled: bool | None, *, now: datetime
) -> None:
    """Set (or with None, clear) the admin override of a bucket's enable switch."""
    await session.execute(
        text(
            "INSERT INTO bucket_configs (bucket_id, enabled, created_at, updated_at)"
            " VALUES (:bucket_id, :enabled, :now, :now)"
            " ON CONFLICT (bucket_id) DO UPDATE"
            " SET enabled = excluded.enabled, updated_at = excluded.updated_at"
        ),
        {"bucket_id": bucket_id, "enabled": enabled, "now": now},
    )


# --------------------------------------------------------------------------- preview


@dataclass(frozen=True, slots=True, kw_only=True)
class PreviewMatch:
    """A live contact matching a previewed criteria."""

    contact_id: uuid.UUID
    external_id: str | None
    email: str | None


async def preview(
    session: AsyncSession, condition: Condition, *, now: datetime, sample: int = 10
) -> tuple[int, list[PreviewMatch]]:
    """How many live contacts match ``condition`` at ``now``, and up to ``sample`` of them
    (newest first). Reads only."""
    matching = matching_contacts(condition, now).subquery()
    count = int((await session.execute(select(func.count()).select_from(matching))).scalar_one())
    rows = []
    if sample > 0 and count:
        rows = list(
            (
                await session.execute(
                    select(contacts.c.id, contacts.c.external_id, contacts.c.email)
                    .where(contacts.c.id.in_(select(matching.c.id)))
                    .order_by(contacts.c.first_seen_at.desc(), contacts.c.id.desc())
                    .limit(sample)
                )
            ).all()
        )
    return count, [
        PreviewMatch(contact_id=r.id, external_id=r.external_id, email=r.email) for r in rows
    ]
