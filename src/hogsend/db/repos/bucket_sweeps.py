"""Bucket backfill and reconcile: the set-based passes over contacts and memberships.

Every statement here is keyed on ``contact_id`` (the resolved contact), never on an
external id, so email-only and anonymous contacts are members like any other. The
criteria are compiled to SQL (:func:`hogsend.db.conditions.compile_sql`) and evaluated
for a whole batch in the statement that selects it.

Backfill (:func:`claim_backfill`, :func:`backfill_chunk`) walks ``contacts`` by id in
chunks, each one transaction: join the matching contacts that are not members, leave
the members that no longer match, move the cursor. It is silent (no transition
events). The run is a lease in ``bucket_configs``: the heartbeat is the lease token,
every chunk compares-and-sets it, so a runner that died or stalled past the lease is
taken over by the next claimer, which resumes from the stored cursor.

Reconcile (:func:`criteria_leaves`, :func:`absence_joins`, :func:`max_dwell_leaves`,
:func:`dwell_fires`) are the passes of one sweep, each a batch in the caller's
transaction: state change and transition events commit together, and the events carry
deterministic idempotency keys, so a re-run or a second sweeper emits nothing twice.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Integer,
    Table,
    Text,
    and_,
    any_,
    cast,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    text,
    true,
    tuple_,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.buckets import LeaveReasonCode, Transition
from hogsend.core.conditions import (
    AllCondition,
    Condition,
    EmailCondition,
    EventCondition,
    fingerprint,
    leaves,
)
from hogsend.core.definitions import BucketDefinition
from hogsend.core.ingest import EventInput
from hogsend.db.conditions import compile_sql, contacts, email_sends, user_events
from hogsend.db.repos.buckets import TRANSITION_SOURCE, expires_at_for
from hogsend.db.repos.events import ingest_batch
from hogsend.db.tables.buckets import BucketConfig, BucketMembership

# Typed as tables (the ORM types them as any FromClause) so Core update/insert accept them.
memberships: Table = BucketMembership.__table__  # type: ignore[assignment]
configs: Table = BucketConfig.__table__  # type: ignore[assignment]

BackfillMode = Literal["initial", "reeval"]

RECONCILE_LOCK = text(
    "SELECT pg_try_advisory_lock(hashtextextended('hogsend.bucket-reconcile', 0))"
)
RECONCILE_UNLOCK = text(
    "SELECT pg_advisory_unlock(hashtextextended('hogsend.bucket-reconcile', 0))"
)


class LeaseLost(Exception):
    """Another runner took the backfill over (this one stalled past its lease)."""


# --------------------------------------------------------------------------- shapes


@dataclass(frozen=True, slots=True, kw_only=True)
class DwellSchedule:
    """When a member's dwell event fires: once ``after`` a duration, or ``every`` one.

    Attributes:
        label: part of the event name ``bucket:dwell:<bucket>:<label>``.
        after: fire once per membership this long after the dwell anchor.
        every: fire once per interval of this length since the anchor (coalescing).
    """

    label: str
    after: timedelta | None = None
    every: timedelta | None = None

    @property
    def offset(self) -> timedelta:
        """The first fire's distance from the anchor."""
        value = self.after if self.after is not None else self.every
        assert value is not None
        return value


@dataclass(frozen=True, slots=True, kw_only=True)
class BackfillClaim:
    """A held backfill lease.

    Attributes:
        bucket_id: the bucket.
        token: the heartbeat written by the last claim or chunk (the lease token).
        fingerprint: the criteria fingerprint the run works towards.
        mode: ``initial`` (no membership computed yet) or ``reeval`` (criteria changed).
        cursor: the last contact id done, None before the first chunk.
        processed: contacts looked at so far.
        total: contacts to look at (counted when the run started).
        resumed: whether the claim continued an earlier run's cursor.
    """

    bucket_id: str
    token: datetime
    fingerprint: str
    mode: BackfillMode
    cursor: uuid.UUID | None
    processed: int
    total: int
    resumed: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkResult:
    """What one backfill chunk did."""

    claim: BackfillClaim
    joined: int
    left: int
    done: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketState:
    """``bucket_configs`` as the sweeps read it."""

    bucket_id: str
    enabled_override: bool | None
    criteria_hash: str | None
    backfill_status: str | None
    backfill_heartbeat_at: datetime | None
    backfill_processed: int
    backfill_total: int | None
    reconciled_at: datetime | None = None


# --------------------------------------------------------------------------- helpers


def criteria_fingerprint(bucket: BucketDefinition) -> str | None:
    """The fingerprint of the bucket's criteria (None for a manual bucket)."""
    return None if bucket.criteria is None else fingerprint(bucket.criteria)


def is_time_based(bucket: BucketDefinition) -> bool:
    """Explicit ``time_based`` wins; otherwise inferred from a ``within`` window."""
    return bucket.is_time_based


def is_enabled(bucket: BucketDefinition, state: BucketState | None) -> bool:
    """The admin override when set, the code's ``enabled`` otherwise."""
    if state is not None and state.enabled_override is not None:
        return state.enabled_override
    return bucket.enabled


def _contact_key(c: Any) -> ColumnElement[str]:
    return func.coalesce(c.external_id, c.anonymous_id, cast(c.id, Text))


def _ts(value: datetime) -> ColumnElement[datetime]:
    return literal(value, DateTime(timezone=True))


def _epoch(value: timedelta) -> float:
    return value.total_seconds()


def _max_dwell_at(bucket: BucketDefinition, now: datetime) -> datetime | None:
    return None if bucket.max_dwell is None else now + bucket.max_dwell


def _anchor_expr(bucket: BucketDefinition, now: datetime, c: Any) -> ColumnElement[Any]:
    """When a backfilled contact would have entered, where the shape tells it cheaply.

    - dormancy (``X not_exists within W``, alone or after ``X exists``): the last X + W,
      the instant the window emptied;
    - ``X exists / at_least(n) within W``: the n-th oldest X inside the window — from
      then on the window has held n events continuously;
    - anything else: NULL, and the dwell clock starts at ``entered_at``.
    """
    leg = _anchor_leg(bucket.criteria)
    if leg is None or leg.within is None or leg.where is not None:
        return literal(None, DateTime(timezone=True))
    e = user_events.alias("anchor_events")
    if leg.check == "not_exists":
        last = (
            select(func.max(e.c.occurred_at))
            .where(e.c.contact_id == c.id, e.c.event == leg.event)
            .scalar_subquery()
        )
        return last + literal(leg.within)
    nth = 1 if leg.check == "exists" else (leg.count or 1)
    return (
        select(e.c.occurred_at)
        .where(
            e.c.contact_id == c.id,
            e.c.event == leg.event,
            e.c.occurred_at > _ts(now - leg.within),
        )
        .order_by(e.c.occurred_at)
        .offset(nth - 1)
        .limit(1)
        .scalar_subquery()
    )


def _anchor_leg(criteria: Condition | None) -> EventCondition | None:
    if isinstance(criteria, EventCondition):
        return criteria if criteria.check in ("exists", "at_least", "not_exists") else None
    if isinstance(criteria, AllCondition) and len(criteria.conditions) == 2:
        legs = [c for c in criteria.conditions if isinstance(c, EventCondition)]
        ever = [c for c in legs if c.check == "exists" and c.within is None]
        gone = [c for c in legs if c.check == "not_exists" and c.within is not None]
        if len(ever) == 1 and len(gone) == 1 and ever[0].event == gone[0].event:
            return gone[0]
    return None


def _transition_input(t: Transition, now: datetime) -> EventInput:
    return EventInput(
        name=t.event,
        contact_id=t.contact_id,
        properties=t.properties(),
        idempotency_key=t.idempotency_key,
        occurred_at=now,
        source=TRANSITION_SOURCE,
    )


async def emit(
    session: AsyncSession, bucket: BucketDefinition, items: Sequence[Transition], now: datetime
) -> None:
    """Ingest the transitions as events (set-based; the keys make repeats duplicates)."""
    if items:
        await ingest_batch(session, [_transition_input(t, now) for t in items], now=now)


async def _custom_plans(session: AsyncSession) -> None:
    """Plan this transaction's statements for their actual values.

    The driver prepares a statement run often enough, and Postgres may then switch to a
    generic plan, which cannot tell a window edge of one minute (a handful of events)
    from one of months (all of them): a sweep batch planned that way scanned every
    member for minutes. Planning each batch costs well under a millisecond.
    """
    await session.execute(text("SET LOCAL plan_cache_mode = force_custom_plan"))


def member_of(bucket_id: str, contact_id: ColumnElement[Any]) -> ColumnElement[Any]:
    """The id of the contact's active membership of the bucket (NULL: not a member), as
    a correlated scalar subquery for a set-based statement.

    All the contact's rows (a handful: one per stay) are read first, behind an
    ``OFFSET 0`` fence, with no other condition, so the only index that can serve the
    read is a contact-leading one, whatever the statistics say. Left to choose, the
    planner took ``(bucket_id, ...)`` when the statistics predated the bucket's rows,
    and, with the status inside the fence, a partial index on active rows that does not
    lead with the contact (a freshly created table looks empty): either way a scan of
    every member per contact looked up, which made the first backfill of a new install
    quadratic (82 s for 100k contacts, against 5 s once the table was analysed).
    """
    m = memberships.alias("mine")
    rows = (
        select(m.c.id, m.c.bucket_id, m.c.status, m.c.deleted_at)
        .where(m.c.contact_id == contact_id)
        .offset(literal_column("0", Integer))
        .correlate_except(m)
        .subquery("contact_rows")
    )
    return (
        select(rows.c.id)
        .where(
            rows.c.bucket_id == bucket_id,
            rows.c.status == literal_column("'active'", Text),
            rows.c.deleted_at.is_(None),
        )
        .limit(1)
        .scalar_subquery()
    )


def _active(m: Any, bucket_id: str) -> list[ColumnElement[bool]]:
    # 'active' inline, not a parameter: a generic (prepared) plan can then still prove
    # the partial indexes on active rows usable.
    return [
        m.c.bucket_id == bucket_id,
        m.c.status == literal_column("'active'", Text),
        m.c.deleted_at.is_(None),
    ]


# --------------------------------------------------------------------------- config


async def bucket_states(session: AsyncSession) -> dict[str, BucketState]:
    """Every ``bucket_configs`` row, by bucket id."""
    rows = await session.execute(
        select(
            configs.c.bucket_id,
            configs.c.enabled,
            configs.c.criteria_hash,
            configs.c.backfill_status,
            configs.c.backfill_heartbeat_at,
            configs.c.backfill_processed,
            configs.c.backfill_total,
            configs.c.reconciled_at,
        )
    )
    return {
        r.bucket_id: BucketState(
            bucket_id=r.bucket_id,
            enabled_override=r.enabled,
            criteria_hash=r.criteria_hash,
            backfill_status=r.backfill_status,
            backfill_heartbeat_at=r.backfill_heartbeat_at,
            backfill_processed=r.backfill_processed,
            backfill_total=r.backfill_total,
            reconciled_at=r.reconciled_at,
        )
        for r in rows
    }


def backfill_needed(bucket: BucketDefinition, state: BucketState | None) -> bool:
    """A criteria bucket whose membership was never computed, was computed for other
    criteria, or for which a backfill was requested (status ``pending``)."""
    fp = criteria_fingerprint(bucket)
    if fp is None:
        return False
    if state is None:
        return True
    return state.criteria_hash != fp or state.backfill_status in ("pending", "running", "failed")


def settled(bucket: BucketDefinition, state: BucketState | None) -> bool:
    """Whether the current criteria's backfill finished (the first-deploy quiet window
    is over): absence joins and dwell fires wait for it."""
    return state is not None and state.criteria_hash == criteria_fingerprint(bucket)


def reconciled_since(bucket: BucketDefinition, state: BucketState | None) -> datetime | None:
    """Up to when every member and candidate of the current criteria was evaluated (the
    previous sweep or the backfill), or None: the next sweep looks at everyone."""
    return state.reconciled_at if state is not None and settled(bucket, state) else None


async def mark_reconciled(session: AsyncSession, bucket: BucketDefinition, at: datetime) -> None:
    """Record that a sweep evaluated every member and candidate of ``bucket`` as of ``at``
    (only for the criteria the membership was computed with)."""
    await session.execute(
        update(configs)
        .where(
            configs.c.bucket_id == bucket.id,
            configs.c.criteria_hash == criteria_fingerprint(bucket),
        )
        .values(reconciled_at=at)
    )


async def request_backfill(session: AsyncSession, bucket_id: str) -> None:
    """Ask for a (re-)backfill: the next worker sweep (or a CLI run) performs it.

    A running backfill is left alone: it already works towards the current criteria.
    """
    await session.execute(
        text(
            "INSERT INTO bucket_configs (bucket_id, backfill_status) VALUES (:b, 'pending')"
            " ON CONFLICT (bucket_id) DO UPDATE SET backfill_status = 'pending',"
            " updated_at = now()"
            " WHERE bucket_configs.backfill_status IS DISTINCT FROM 'running'"
        ),
        {"b": bucket_id},
    )


# --------------------------------------------------------------------------- backfill


async def claim_backfill(
    session: AsyncSession,
    bucket: BucketDefinition,
    now: datetime,
    *,
    lease: timedelta,
    force: bool = False,
) -> BackfillClaim | None:
    """Take the bucket's backfill lease, starting or resuming a run.

    Returns None when nothing is to do (criteria unchanged, nothing requested, and not
    ``force``) or when a live runner holds the lease (heartbeat younger than ``lease``).
    A run for the same fingerprint left behind by a dead runner resumes from its cursor.
    """
    fp = criteria_fingerprint(bucket)
    if fp is None:
        return None
    await session.execute(
        text("INSERT INTO bucket_configs (bucket_id) VALUES (:b) ON CONFLICT DO NOTHING"),
        {"b": bucket.id},
    )
    row = (
        await session.execute(
            select(configs).where(configs.c.bucket_id == bucket.id).with_for_update()
        )
    ).one()
    running = row.backfill_status == "running"
    if (
        running
        and row.backfill_heartbeat_at is not None
        and row.backfill_heartbeat_at > now - lease
    ):
        return None
    wanted = row.criteria_hash != fp or row.backfill_status in ("pending", "running", "failed")
    if not (wanted or force):
        return None
    resume = (
        row.backfill_criteria_hash == fp
        and row.backfill_status in ("running", "failed")
        and row.backfill_cursor is not None
    )
    if resume:
        cursor: uuid.UUID | None = uuid.UUID(row.backfill_cursor)
        processed = int(row.backfill_processed)
        total = int(row.backfill_total or 0)
        mode: BackfillMode = row.backfill_mode or "initial"
        started = row.backfill_started_at
    else:
        cursor = None
        processed = 0
        total = int(
            await session.scalar(
                select(func.count()).select_from(contacts).where(contacts.c.deleted_at.is_(None))
            )
            or 0
        )
        mode = "initial" if row.criteria_hash is None else "reeval"
        started = now
    await session.execute(
        update(configs)
        .where(configs.c.bucket_id == bucket.id)
        .values(
            backfill_status="running",
            backfill_mode=mode,
            backfill_criteria_hash=fp,
            backfill_started_at=started,
            backfill_finished_at=None,
            backfill_heartbeat_at=now,
            backfill_cursor=None if cursor is None else str(cursor),
            backfill_total=total,
            backfill_processed=processed,
            backfill_error=None,
            updated_at=func.now(),
        )
    )
    return BackfillClaim(
        bucket_id=bucket.id,
        token=now,
        fingerprint=fp,
        mode=mode,
        cursor=cursor,
        processed=processed,
        total=total,
        resumed=resume,
    )


async def backfill_chunk(
    session: AsyncSession,
    bucket: BucketDefinition,
    claim: BackfillClaim,
    now: datetime,
    *,
    chunk_size: int,
) -> ChunkResult:
    """Backfill the next ``chunk_size`` contacts (by id) in the caller's transaction.

    Joins matching live contacts that are not active members (``source='backfill'``,
    epoch = 1 + their earlier rows, dwell anchor derived from history), leaves active
    members of the chunk that no longer match (``left_reason='criteria'``), emits
    nothing, and advances the cursor; the last chunk records the fingerprint.

    Raises:
        LeaseLost: the lease moved to another runner; nothing was written.
    """
    assert bucket.criteria is not None
    owned = (
        await session.execute(
            update(configs)
            .where(
                configs.c.bucket_id == bucket.id,
                configs.c.backfill_status == "running",
                configs.c.backfill_heartbeat_at == claim.token,
                configs.c.backfill_criteria_hash == claim.fingerprint,
            )
            .values(backfill_heartbeat_at=now, updated_at=func.now())
            .returning(configs.c.backfill_cursor)
        )
    ).first()
    if owned is None:
        raise LeaseLost(bucket.id)
    c, m = contacts, memberships
    await _custom_plans(session)
    # One statement reads, evaluates and writes the whole chunk, so no contact id makes
    # a round trip through Python (that was a third of a backfill's CPU).
    # The chunk is chosen first (a materialised CTE of ``chunk_size`` rows): planned
    # against the whole table, a criteria leg would be hashed over every contact with a
    # recent event (~200k rows at 1M contacts) for each chunk of 2,000. Then the
    # criteria and the active membership of each contact are evaluated, both as
    # correlated lookups through the (contact, ...) indexes, into a second materialised
    # CTE. The writes take their rows from it as ``= ANY(ARRAY(...))`` (primary-key
    # probes): no plan depends on statistics of a memberships table the backfill itself
    # is growing (a join planned while it looked empty walked every member of the
    # bucket once per contact of the chunk).
    ids = select(c.c.id, c.c.deleted_at, c.c.properties).order_by(c.c.id).limit(chunk_size)
    if claim.cursor is not None:
        ids = ids.where(c.c.id > claim.cursor)
    chunk = ids.cte("chunk").prefix_with("MATERIALIZED")
    matches = and_(
        chunk.c.deleted_at.is_(None),
        compile_sql(bucket.criteria, now, contact_id=chunk.c.id, properties=chunk.c.properties),
    )
    page = (
        select(
            chunk.c.id,
            matches.label("matches"),
            member_of(bucket.id, chunk.c.id).label("member"),
        )
        .cte("page")
        .prefix_with("MATERIALIZED")
    )

    def picked(column: ColumnElement[Any], *where: ColumnElement[bool]) -> ColumnElement[Any]:
        rows = select(column).where(*where).scalar_subquery()
        return any_(func.array(rows, type_=ARRAY(memberships.c.id.type)))

    # Silent leaves of the members whose contact no longer matches (or was deleted).
    gone = (
        update(m)
        .where(
            m.c.id == picked(page.c.member, page.c.member.is_not(None), ~page.c.matches),
            m.c.status == "active",
        )
        .values(
            status="left",
            left_at=now,
            left_reason="criteria",
            last_evaluated_at=now,
            updated_at=func.now(),
        )
        .returning(m.c.id)
        .cte("gone")
    )
    joined = _members_insert(
        bucket,
        now,
        where=[c.c.id == picked(page.c.id, page.c.member.is_(None), page.c.matches)],
        source="backfill",
        evaluated=True,
    ).cte("joined")
    counts = (
        await session.execute(
            select(
                select(func.count()).select_from(page).scalar_subquery().label("seen"),
                select(page.c.id).order_by(page.c.id.desc()).limit(1).scalar_subquery().label("hi"),
                select(func.count()).select_from(gone).scalar_subquery().label("left"),
                select(func.count()).select_from(joined).scalar_subquery().label("joined"),
            )
        )
    ).one()
    if not counts.seen:
        await session.execute(
            update(configs)
            .where(configs.c.bucket_id == bucket.id)
            .values(
                backfill_status="completed",
                criteria_hash=claim.fingerprint,
                # Every contact was evaluated at or after the run's start.
                reconciled_at=configs.c.backfill_started_at,
                backfill_finished_at=now,
                backfill_cursor=None,
                updated_at=func.now(),
            )
        )
        return ChunkResult(claim=_advanced(claim, now, None, 0), joined=0, left=0, done=True)
    await session.execute(
        update(configs)
        .where(configs.c.bucket_id == bucket.id)
        .values(
            backfill_cursor=str(counts.hi),
            backfill_processed=configs.c.backfill_processed + counts.seen,
        )
    )
    return ChunkResult(
        claim=_advanced(claim, now, counts.hi, counts.seen),
        joined=counts.joined,
        left=counts.left,
        done=False,
    )


def _advanced(
    claim: BackfillClaim, now: datetime, cursor: uuid.UUID | None, n: int
) -> BackfillClaim:
    return BackfillClaim(
        bucket_id=claim.bucket_id,
        token=now,
        fingerprint=claim.fingerprint,
        mode=claim.mode,
        cursor=cursor,
        processed=claim.processed + n,
        total=claim.total,
        resumed=claim.resumed,
    )


async def fail_backfill(session: AsyncSession, claim: BackfillClaim, error: str) -> None:
    """Mark the run failed (still resumable from its cursor by the next claim)."""
    await session.execute(
        update(configs)
        .where(
            configs.c.bucket_id == claim.bucket_id,
            configs.c.backfill_criteria_hash == claim.fingerprint,
        )
        .values(backfill_status="failed", backfill_error=error[:2000], updated_at=func.now())
    )


async def _insert_members(
    session: AsyncSession,
    bucket: BucketDefinition,
    now: datetime,
    *,
    where: Sequence[ColumnElement[bool]],
    source: str,
    limit: int | None = None,
) -> list[Transition]:
    """Join the live contacts matching the criteria (and ``where``) that are not members.

    One ``INSERT ... SELECT`` (:func:`_members_insert`); a concurrent join of the same
    contact loses quietly on the active-membership unique index.
    """
    stmt = _members_insert(bucket, now, where=where, source=source, limit=limit)
    rows = (await session.execute(stmt)).all()
    return [
        Transition(
            kind="entered", bucket_id=bucket.id, contact_id=r[0], epoch=r[1], entered_at=r[2]
        )
        for r in rows
    ]


def _members_insert(
    bucket: BucketDefinition,
    now: datetime,
    *,
    where: Sequence[ColumnElement[bool]],
    source: str,
    limit: int | None = None,
    evaluated: bool = False,
) -> Any:
    """The ``INSERT ... SELECT ... ON CONFLICT DO NOTHING RETURNING contact_id,
    entry_count, entered_at`` joining the live contacts matching the criteria (and
    ``where``) that are not members.

    ``evaluated``: ``where`` names contacts the same statement or transaction already
    found matching and not members at ``now``, so neither is tested again (the unique
    index still settles a race with the real-time path).
    """
    assert bucket.criteria is not None
    c, m = contacts, memberships
    prior = m.alias("prior")
    active = m.alias("active")
    mine = (
        select(prior.c.bucket_id)
        .where(prior.c.contact_id == c.c.id)
        .offset(literal_column("0", Integer))
        .correlate_except(prior)
        .subquery("mine")
    )
    # Through the contact's own rows (fenced, see member_of), whatever the statistics.
    prior_count = (
        select(func.count())
        .select_from(mine)
        .where(mine.c.bucket_id == bucket.id)
        .scalar_subquery()
    )
    conds: list[ColumnElement[bool]] = [c.c.deleted_at.is_(None), *where]
    if not evaluated:
        conds += [
            ~exists().where(*_active(active, bucket.id), active.c.contact_id == c.c.id),
            compile_sql(bucket.criteria, now),
        ]
    if bucket.entry_limit is not None:
        conds.append(prior_count < bucket.entry_limit)
    chosen = (
        select(
            c.c.id,
            _contact_key(c.c),
            c.c.email,
            literal(bucket.id, Text),
            literal("active", Text),
            _ts(now),
            literal(expires_at_for(bucket, now), DateTime(timezone=True)),
            literal(_max_dwell_at(bucket, now), DateTime(timezone=True)),
            _ts(now),
            (prior_count + 1).cast(Integer),
            literal(source, Text),
            _anchor_expr(bucket, now, c.c)
            if source == "backfill"
            else literal(None, DateTime(timezone=True)),
        )
        .where(*conds)
        .order_by(c.c.id)
    )
    if limit is not None:
        chosen = chosen.limit(limit)
    return (
        pg_insert(memberships)
        .from_select(
            [
                "contact_id",
                "user_id",
                "user_email",
                "bucket_id",
                "status",
                "entered_at",
                "expires_at",
                "max_dwell_at",
                "last_evaluated_at",
                "entry_count",
                "source",
                "dwell_anchor_at",
            ],
            chosen,
        )
        .on_conflict_do_nothing()
        .returning(m.c.contact_id, m.c.entry_count, m.c.entered_at)
    )


# --------------------------------------------------------------------------- reconcile


SweepCursor = tuple[datetime | None, uuid.UUID]
"""Where a criteria-leave pass is in its walk: the last ``(last_evaluated_at, id)`` seen."""


_NEVER = literal_column("'-infinity'::timestamptz", DateTime(timezone=True))


def sweep_key(m: Any) -> ColumnElement[datetime]:
    """The members' sweep order key (never-evaluated first), as the partial index
    ``ix_bucket_memberships_sweep_order`` spells it, so the index serves both the order
    and the keyset comparison."""
    return func.coalesce(m.c.last_evaluated_at, _NEVER)


def _after(m: Any, cursor: SweepCursor | None) -> list[ColumnElement[bool]]:
    """Rows strictly after ``cursor`` in ``(last_evaluated_at NULLS FIRST, id)`` order."""
    if cursor is None:
        return []
    at, last_id = cursor
    bound = _NEVER if at is None else _ts(at)
    return [tuple_(sweep_key(m), m.c.id) > tuple_(bound, literal(last_id, m.c.id.type))]


async def _flip_left(
    session: AsyncSession,
    bucket: BucketDefinition,
    which: ColumnElement[bool],
    reason: LeaveReasonCode,
    now: datetime,
) -> list[Transition]:
    """End the still-active stays ``which`` selects with ``reason``; their transitions
    (not emitted yet)."""
    m = memberships
    flipped = await session.execute(
        update(m)
        .where(which, m.c.status == "active")
        .values(
            status="left",
            left_at=now,
            left_reason=reason,
            last_evaluated_at=now,
            updated_at=func.now(),
        )
        .returning(m.c.contact_id, m.c.entry_count, m.c.entered_at)
    )
    return [
        Transition(
            kind="left",
            bucket_id=bucket.id,
            contact_id=r[0],
            epoch=r[1],
            entered_at=r[2],
            reason=reason,
        )
        for r in flipped
    ]


async def criteria_leaves(
    session: AsyncSession,
    bucket: BucketDefinition,
    now: datetime,
    *,
    since: datetime | None = None,
    batch_size: int,
    after: SweepCursor | None = None,
    only: Sequence[uuid.UUID] | None = None,
) -> tuple[list[Transition], int, SweepCursor | None]:
    """Re-evaluate one batch of members, oldest-evaluated first; leave those that stopped
    matching (outside ``min_dwell``) and emit ``bucket:left`` (reason ``criteria``).

    Candidates: members whose ``expires_at`` deadline passed (a deferred min-dwell
    leave, a fast-expiry deadline) and, for a time-based bucket, the members whose
    windowed legs time may have changed since the previous sweep at ``since`` (an event
    left its window), or every member when there is no ``since``. A member evaluated at
    or after ``now`` (by the real-time path) is not taken again.

    The pass walks the members in ``(last_evaluated_at NULLS FIRST, id)`` order with a
    keyset cursor (an index serves it, so a batch costs the same anywhere in the walk),
    and members that still match are not written (a sweep over millions of members
    would otherwise rewrite every row): only leaves, spent deadlines and deferred
    leaves are. The criteria are evaluated after the batch is chosen, member by member
    through the indexes, never by hashing a whole event table per batch.

    ``only``: look at these memberships instead (the candidates a full pass found with
    :func:`leave_candidates`); each is still evaluated here, under its row lock.

    Returns:
        The leaves, how many members the batch looked at (0: the pass is done) and the
        cursor for the next batch.
    """
    assert bucket.criteria is not None
    await _custom_plans(session)
    c, m = contacts, memberships
    conds = [*_active(m, bucket.id), c.c.deleted_at.is_(None), *_after(m, after)]
    conds.append(sweep_key(m) < _ts(now))
    legs = _windowed_legs(bucket)
    due = m.c.expires_at <= _ts(now)
    if only is not None:
        conds.append(m.c.id.in_(only))
    elif not is_time_based(bucket) or (since is not None and not legs):
        conds.append(due)
    elif since is not None:
        # Driven by the few contacts time touched and the few deadlines due, each found
        # through its own index, rather than by testing every member.
        crossed = select(m.c.id).where(
            *_active(m, bucket.id), m.c.contact_id.in_(_crossed(legs, since, now))
        )
        deadlines = select(m.c.id).where(*_active(m, bucket.id), due)
        conds.append(m.c.id.in_(union_all(crossed, deadlines)))
    batch = (
        select(
            m.c.id,
            m.c.contact_id,
            m.c.entered_at,
            m.c.expires_at,
            m.c.last_evaluated_at,
            c.c.properties,
        )
        .select_from(m.join(c, c.c.id == m.c.contact_id))
        .where(*conds)
        .order_by(sweep_key(m), m.c.id)
        .limit(batch_size)
        .with_for_update(of=m, skip_locked=True)
        .cte("batch")
        .prefix_with("MATERIALIZED")
    )
    matches = compile_sql(
        bucket.criteria, now, contact_id=batch.c.contact_id, properties=batch.c.properties
    )
    may_leave: ColumnElement[bool] = true()
    if bucket.min_dwell is not None:
        may_leave = batch.c.entered_at <= _ts(now - bucket.min_dwell)
    rows = (
        await session.execute(
            select(
                batch.c.id,
                matches.label("matches"),
                may_leave.label("may_leave"),
                (batch.c.expires_at <= _ts(now)).label("due"),
                batch.c.last_evaluated_at,
            ).order_by(batch.c.last_evaluated_at.asc().nulls_first(), batch.c.id)
        )
    ).all()
    if not rows:
        return [], 0, None
    cursor: SweepCursor = (rows[-1].last_evaluated_at, rows[-1].id)
    leaving = [r.id for r in rows if not r.matches and r.may_leave]
    # A passed deadline of a member that still matches is spent; the rest stay untouched.
    staying = [r.id for r in rows if r.matches and r.due]
    deferred = [r.id for r in rows if not r.matches and not r.may_leave]
    out: list[Transition] = []
    if leaving:
        out = await _flip_left(session, bucket, m.c.id.in_(leaving), "criteria", now)
    if staying:
        await session.execute(
            update(m)
            .where(m.c.id.in_(staying))
            .values(
                last_evaluated_at=now,
                expires_at=func.nullif(func.greatest(m.c.expires_at, _ts(now)), _ts(now)),
            )
        )
    if deferred and bucket.min_dwell is not None:
        # Come back when min_dwell is over (and not before, for event-only buckets).
        await session.execute(
            update(m)
            .where(m.c.id.in_(deferred))
            .values(last_evaluated_at=now, expires_at=m.c.entered_at + literal(bucket.min_dwell))
        )
    await emit(session, bucket, out, now)
    return out, len(rows), cursor


# Memory for the hash joins of a full pass's candidate read (one statement per bucket).
_FULL_PASS_WORK_MEM = "64MB"


async def _full_pass_settings(session: AsyncSession) -> None:
    await session.execute(text(f"SET LOCAL work_mem = '{_FULL_PASS_WORK_MEM}'"))
    # A candidate read joins whole sets; the planner, underestimating them (260k rows
    # taken for 56k), probed two indexes per contact instead: 22% of a 1M full pass's
    # Postgres CPU went away with hash joins only.
    await session.execute(text("SET LOCAL enable_nestloop = off"))


async def leave_candidates(
    session: AsyncSession, bucket: BucketDefinition, now: datetime
) -> list[uuid.UUID]:
    """The memberships a full criteria pass must look at: active members (of live
    contacts) that do not match at ``now``, or whose deadline passed.

    One read-only statement over the whole bucket, free of the batch order: the planner
    evaluates the criteria with hash joins over the events of the legs' names instead
    of probing the event indexes member by member (a full pass over 700k members of one
    bucket went from minutes to seconds). Members that match and have no deadline are
    never written by a pass, so they are the ones left out; the candidates are then
    evaluated again, batch by batch, by :func:`criteria_leaves` (``only=``).
    """
    assert bucket.criteria is not None
    await _full_pass_settings(session)
    c, m = contacts, memberships
    matches = compile_sql(
        bucket.criteria, now, contact_id=m.c.contact_id, properties=c.c.properties, set_based=True
    )
    rows = await session.execute(
        select(m.c.id)
        .select_from(m.join(c, c.c.id == m.c.contact_id))
        .where(
            *_active(m, bucket.id),
            c.c.deleted_at.is_(None),
            sweep_key(m) < _ts(now),
            or_(~matches, m.c.expires_at <= _ts(now)),
        )
    )
    return list(rows.scalars())


async def join_candidates(
    session: AsyncSession, bucket: BucketDefinition, now: datetime
) -> list[uuid.UUID]:
    """The contacts a full absence-join pass must look at, in id order: live contacts
    that ever had an event of a windowed leg, are not members and match at ``now``.

    Read-only and set-based like :func:`leave_candidates` (rather than one ordered walk
    of the contacts' primary key, a random heap read per contact); each candidate is
    checked again when :func:`absence_joins` inserts it (``only=``).
    """
    legs = _windowed_legs(bucket)
    if not legs:
        return []
    assert bucket.criteria is not None
    await _full_pass_settings(session)
    c, m = contacts, memberships
    active = m.alias("active")
    rows = await session.execute(
        select(c.c.id)
        .where(
            c.c.deleted_at.is_(None),
            c.c.id.in_(_crossed(legs, None, now)),
            ~exists().where(*_active(active, bucket.id), active.c.contact_id == c.c.id),
            compile_sql(bucket.criteria, now, set_based=True),
        )
        .order_by(c.c.id)
    )
    return list(rows.scalars())


def _windowed_legs(bucket: BucketDefinition) -> list[EventCondition | EmailCondition]:
    assert bucket.criteria is not None
    return [
        leaf
        for leaf in leaves(bucket.criteria)
        if isinstance(leaf, EventCondition | EmailCondition) and leaf.within is not None
    ]


def _crossed(
    legs: Sequence[EventCondition | EmailCondition], since: datetime | None, now: datetime
) -> Any:
    """Contact ids whose value of a windowed leg time alone may have changed since ``since``:
    an event (or email open/click/send) of the leg left its window between the two sweeps
    (``since`` None: any contact that ever had one)."""
    e, s = user_events, email_sends
    event_parts: list[ColumnElement[bool]] = []
    email_parts: list[ColumnElement[bool]] = []
    for leg in legs:
        assert leg.within is not None
        if isinstance(leg, EventCondition):
            at = e.c.occurred_at
            parts, base = event_parts, e.c.event == leg.event
        else:
            at = s.c[f"{leg.action}_at"]
            parts, base = email_parts, at.is_not(None)
        if since is None:
            parts.append(base)
        else:
            parts.append(and_(base, at > _ts(since - leg.within), at <= _ts(now - leg.within)))
    queries: list[Any] = []
    if event_parts:
        queries.append(select(e.c.contact_id).where(or_(*event_parts)))
    if email_parts:
        queries.append(select(s.c.contact_id).where(or_(*email_parts)))
    return queries[0] if len(queries) == 1 else union_all(*queries)


async def absence_joins(
    session: AsyncSession,
    bucket: BucketDefinition,
    now: datetime,
    *,
    since: datetime | None,
    after: uuid.UUID | None,
    batch_size: int,
    only: Sequence[uuid.UUID] | None = None,
) -> tuple[list[Transition], uuid.UUID | None]:
    """Join, in contact-id order, one batch of contacts that time alone made match.

    A windowed leg can only turn true with no event arriving when an event of its name
    leaves the window. The candidates are therefore the contacts with such an event
    that crossed ``now - within`` since the previous sweep at ``since`` (or, without
    ``since``, every contact that ever had an event of a windowed leg: lapsed people
    only, never someone who never did X). Each candidate is confirmed by the compiled
    criteria, so every shape is exact. Emits ``bucket:entered`` (source ``reconcile``).

    ``only``: these contacts instead (candidates of :func:`join_candidates`), each
    checked again here; the pass is then done after this batch.

    Returns:
        The joins and the keyset cursor for the next batch (None: the pass is done).
    """
    legs = _windowed_legs(bucket)
    if not legs:
        return [], None
    await _custom_plans(session)
    c = contacts
    if only is not None:
        joined = await _insert_members(
            session, bucket, now, where=[c.c.id.in_(only)], source="reconcile"
        )
        await emit(session, bucket, joined, now)
        return joined, None
    where: list[ColumnElement[bool]] = [c.c.id.in_(_crossed(legs, since, now))]
    if after is not None:
        where.append(c.c.id > after)
    joined = await _insert_members(
        session, bucket, now, where=where, source="reconcile", limit=batch_size
    )
    await emit(session, bucket, joined, now)
    if len(joined) < batch_size:
        return joined, None
    return joined, max(t.contact_id for t in joined)


async def max_dwell_leaves(
    session: AsyncSession, bucket: BucketDefinition, now: datetime, *, batch_size: int
) -> list[Transition]:
    """Leave one batch of members past ``max_dwell_at`` (criteria not consulted) and emit
    ``bucket:left`` with reason ``maxDwell``. Returns the leaves (empty: done)."""
    m, c = memberships, contacts
    due = (
        select(m.c.id)
        .select_from(m.join(c, c.c.id == m.c.contact_id))
        .where(*_active(m, bucket.id), c.c.deleted_at.is_(None), m.c.max_dwell_at <= _ts(now))
        .order_by(m.c.max_dwell_at, m.c.id)
        .limit(batch_size)
        .with_for_update(of=m, skip_locked=True)
    )
    out = await _flip_left(session, bucket, m.c.id.in_(due.scalar_subquery()), "maxDwell", now)
    await emit(session, bucket, out, now)
    return out


_DWELL = text(
    """
    WITH due AS (
        SELECT m.id,
               CASE WHEN CAST(:every AS double precision) IS NULL THEN 1
                    ELSE floor(extract(epoch FROM (CAST(:now AS timestamptz)
                         - coalesce(m.dwell_anchor_at, m.entered_at)))
                         / CAST(:every AS double precision))::int
               END AS n
        FROM bucket_memberships m
        JOIN contacts c ON c.id = m.contact_id AND c.deleted_at IS NULL
        WHERE m.bucket_id = :bucket AND m.status = 'active' AND m.deleted_at IS NULL
          AND coalesce(m.dwell_anchor_at, m.entered_at) <= CAST(:cutoff AS timestamptz)
        ORDER BY m.last_evaluated_at ASC NULLS FIRST, m.id
    ), todo AS (
        SELECT m.id, due.n
        FROM due JOIN bucket_memberships m ON m.id = due.id
        WHERE CASE WHEN m.dwell_state -> :label IS NULL THEN 0
                   WHEN jsonb_typeof(m.dwell_state -> :label) = 'number'
                   THEN (m.dwell_state ->> :label)::int
                   ELSE 1  -- a fire stamped as a timestamp: interval 1 is done
              END < due.n
        ORDER BY m.last_evaluated_at ASC NULLS FIRST, m.id
        LIMIT :limit
        FOR UPDATE OF m SKIP LOCKED
    )
    UPDATE bucket_memberships m
    SET dwell_state = jsonb_set(
            coalesce(m.dwell_state, '{}'::jsonb), ARRAY[:label], to_jsonb(todo.n)),
        last_evaluated_at = CAST(:now AS timestamptz),
        updated_at = now()
    FROM todo
    WHERE m.id = todo.id AND m.status = 'active'
    RETURNING m.contact_id, m.entry_count, m.entered_at, todo.n
    """
)


async def dwell_fires(
    session: AsyncSession,
    bucket: BucketDefinition,
    schedule: DwellSchedule,
    now: datetime,
    *,
    batch_size: int,
) -> list[Transition]:
    """Fire one batch of the schedule's due dwell events, oldest-evaluated first.

    The clock starts at ``coalesce(dwell_anchor_at, entered_at)`` of the current
    membership row, so a re-join (a new row) resets it. ``after`` fires once per
    membership; ``every`` fires interval ``n = floor((now - anchor) / every)`` once,
    and after an outage only the latest due interval fires (coalescing). The interval
    is stamped in ``dwell_state`` in the same transaction as the event, whose key
    carries the membership epoch (and ``n``). Returns the fires (empty: done).
    """
    every = None if schedule.every is None else _epoch(schedule.every)
    rows = await session.execute(
        _DWELL,
        {
            "bucket": bucket.id,
            "label": schedule.label,
            "now": now,
            "cutoff": now - schedule.offset,
            "every": every,
            "limit": batch_size,
        },
    )
    out = [
        Transition(
            kind="dwell",
            bucket_id=bucket.id,
            contact_id=r[0],
            epoch=r[1],
            entered_at=r[2],
            label=schedule.label,
            interval=r[3] if schedule.every is not None else None,
        )
        for r in rows
    ]
    await emit(session, bucket, out, now)
    return out


async def member_counts(session: AsyncSession) -> dict[str, tuple[int, int]]:
    """Per bucket id: (active members, left rows), live contacts and rows only."""
    rows = await session.execute(
        text(
            "SELECT m.bucket_id,"
            " count(*) FILTER (WHERE m.status = 'active'),"
            " count(*) FILTER (WHERE m.status = 'left')"
            " FROM bucket_memberships m JOIN contacts c ON c.id = m.contact_id"
            " WHERE m.deleted_at IS NULL AND c.deleted_at IS NULL"
            " GROUP BY m.bucket_id"
        )
    )
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}
