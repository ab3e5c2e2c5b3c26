"""Campaigns: the campaign row's life, its audience snapshot and the send loop's bookkeeping.

A campaign moves ``queued``/``scheduled`` → ``sending`` → ``sent``, with ``paused``,
``cancelled`` and ``failed`` on the side. The worker's scheduler claims a due campaign
and names the one run that owns it (``workflow_id``); every step of that run checks it
still owns the row, so a run that was superseded (reaped, paused and resumed) stops at
its next batch boundary instead of racing the new one. A run whose pending recipients
are all due later parks the campaign (:func:`park`): still ``sending``, owned by no
run, with a ``resume_at`` at which the claim starts the next run.

The snapshot (``campaign_recipients``) is written set-based, ``INSERT … SELECT`` in
keyset pages of contact ids, and the send loop's durable cursor is the recipients'
``status``: a recipient leaves ``pending`` exactly once, in the same statement that adds
it to the campaign's counters, so counts stay exact across crashes and re-runs.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from hogsend.core.conditions.model import Condition
from hogsend.db import prepared
from hogsend.db.conditions import matching_contacts
from hogsend.db.tables.campaigns import Campaign
from hogsend.db.tables.contacts import Contact as ContactRow

SNAPSHOT_PAGE = 5000
"""Contacts one snapshot statement copies into the recipients table."""

RUNNING = ("sending",)
WAITING = ("queued", "scheduled")
FINISHED = ("sent", "cancelled", "failed")

_REAPER_LOCK = 0x68_6F_67_63_61_6D_70  # "hogcamp": one reaper at a time, cluster-wide


@dataclass(frozen=True, slots=True, kw_only=True)
class Audience:
    """Who a campaign goes to.

    Attributes:
        kind: ``list``, ``bucket`` or ``criteria``.
        list_id: for ``list``: the list.
        default_opt_in: for ``list``: whether contacts are subscribed unless they opted out.
        bucket_id: for ``bucket``: the bucket (active memberships).
        criteria: for ``criteria``: the conditions contacts must match.
    """

    kind: str
    list_id: str | None = None
    default_opt_in: bool = False
    bucket_id: str | None = None
    criteria: Condition | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipient:
    """One pending recipient of a batch."""

    contact_id: uuid.UUID
    email: str
    send_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """What became of one recipient: ``sent``, ``skipped`` or ``failed`` and why."""

    contact_id: uuid.UUID
    status: str
    reason: str | None = None
    email_send_id: uuid.UUID | None = None


# ----------------------------------------------------------------------------- the row


async def create_campaign(session: AsyncSession, **values: Any) -> tuple[Campaign, bool]:
    """Insert a campaign; with an idempotency key already used, return that one instead.

    Returns:
        The campaign and whether this call created it.
    """
    key = values.get("idempotency_key")
    statement = insert(Campaign).values(**values)
    if key is not None:
        statement = statement.on_conflict_do_nothing(
            index_elements=["idempotency_key"],
            index_where=text("idempotency_key IS NOT NULL"),
        )
    new_id = await session.scalar(statement.returning(Campaign.id))
    if new_id is not None:
        created = await session.get(Campaign, new_id)
        assert created is not None
        return created, True
    existing = await session.scalar(select(Campaign).where(Campaign.idempotency_key == key))
    assert existing is not None, "the conflicting campaign vanished"
    return existing, False


async def get_campaign(session: AsyncSession, campaign_id: uuid.UUID) -> Campaign | None:
    """The campaign, or None."""
    return await session.get(Campaign, campaign_id, populate_existing=True)


async def list_campaigns(
    session: AsyncSession, *, status: str | None, limit: int, offset: int
) -> tuple[list[Campaign], int]:
    """Campaigns newest first, optionally of one status, and how many there are in all."""
    query = select(Campaign)
    counted = select(func.count()).select_from(Campaign)
    if status is not None:
        query = query.where(Campaign.status == status)
        counted = counted.where(Campaign.status == status)
    rows = await session.scalars(
        query.order_by(Campaign.created_at.desc(), Campaign.id).limit(limit).offset(offset)
    )
    return list(rows), int(await session.scalar(counted) or 0)


_CONTROL: dict[str, tuple[tuple[str, ...], str]] = {
    # action: (statuses it applies to, status it sets)
    "pause": (("queued", "scheduled", "sending"), "paused"),
    "resume": (("paused",), "queued"),
    "cancel": (("queued", "scheduled", "sending", "paused"), "cancelled"),
}


async def control(
    session: AsyncSession, campaign_id: uuid.UUID, action: str, now: datetime
) -> tuple[Campaign | None, bool]:
    """Pause, resume or cancel a campaign.

    Pausing and cancelling only flip the row: the running step sees it at its batch
    boundary (a parked campaign has no run to stop). Resuming clears the owning run, so
    the scheduler starts a new one that continues from the recipients still pending,
    each sent when due.

    Returns:
        The campaign (None if unknown) and whether the action applied to its status.
    """
    allowed, target = _CONTROL[action]
    stamps: dict[str, Any] = {"paused": {"paused_at": now}, "cancelled": {"cancelled_at": now}}.get(
        target, {"workflow_id": None, "paused_at": None}
    )
    result = await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id, Campaign.status.in_(allowed))
        # A parked campaign's resume time goes: paused or cancelled, no claim may start
        # it; resumed, it is claimed at once and its new run parks again if nobody is due.
        .values(status=target, updated_at=now, resume_at=None, **stamps)
        .returning(Campaign.id)
    )
    changed = result.scalar() is not None
    return await get_campaign(session, campaign_id), changed


async def status_of(session: AsyncSession, campaign_id: uuid.UUID) -> str | None:
    """The campaign's status, row-locked until the caller commits (None if unknown).

    An operator's control reads it first so its audit row names the status it changed,
    not one a sending run wrote meanwhile.
    """
    return await session.scalar(
        select(Campaign.status).where(Campaign.id == campaign_id).with_for_update()
    )


# ----------------------------------------------------------------------- scheduling


async def claim_due(
    session: AsyncSession, now: datetime, *, limit: int
) -> list[tuple[uuid.UUID, str]]:
    """Claim campaigns that are due, naming a new owning run for each: waiting ones
    whose ``sendAt`` passed, and parked ones (see :func:`park`) whose resume time did.

    The rows stay locked until the caller commits, so the run (enqueued before the
    commit) waits on :func:`owned` until the claim is visible.

    Returns:
        (campaign id, workflow id) for each claimed campaign.
    """
    waiting = Campaign.status.in_(WAITING) & (
        Campaign.send_at.is_(None) | (Campaign.send_at <= now)
    )
    # Only a parked campaign has a resume time (a check constraint), and only parked
    # campaigns are in the partial index on it.
    parked = Campaign.resume_at <= now
    ids = list(
        await session.scalars(
            select(Campaign.id)
            .where(waiting | parked)
            .order_by(Campaign.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    claimed = []
    for campaign_id in ids:
        workflow_id = f"hogsend.campaign:{campaign_id}:{uuid.uuid4().hex[:12]}"
        await session.execute(
            update(Campaign)
            .where(Campaign.id == campaign_id)
            .values(
                status="sending",
                workflow_id=workflow_id,
                started_at=func.coalesce(Campaign.started_at, now),
                last_progress_at=now,
                resume_at=None,
                updated_at=now,
            )
        )
        claimed.append((campaign_id, workflow_id))
    return claimed


async def park(
    session: AsyncSession,
    campaign_id: uuid.UUID,
    workflow_id: str,
    *,
    resume_at: datetime,
    now: datetime,
) -> bool:
    """Let go of a campaign whose pending recipients are all due later, if
    ``workflow_id`` still owns it; whether it did.

    The campaign stays ``sending`` (it is mid-send) with no owning run, so it holds no
    slot of the ``campaigns`` queue while it waits, and the reaper (which looks only at
    owned campaigns) leaves it alone; :func:`claim_due` starts its next run at
    ``resume_at``.
    """
    result = await session.execute(
        update(Campaign)
        .where(*_run_owns(campaign_id, workflow_id))
        .values(workflow_id=None, resume_at=resume_at, last_progress_at=now, updated_at=now)
        .returning(Campaign.id)
    )
    return result.scalar() is not None


async def owned(session: AsyncSession, campaign_id: uuid.UUID, workflow_id: str) -> Campaign | None:
    """The campaign if ``workflow_id`` still owns it and it is sending, else None.

    Takes the row lock, so it waits for a scheduler's claim still in flight.
    """
    campaign = await session.scalar(
        select(Campaign)
        .where(Campaign.id == campaign_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if campaign is None or campaign.status != "sending" or campaign.workflow_id != workflow_id:
        return None
    return campaign


async def still_owned(conn: AsyncConnection, campaign_id: uuid.UUID, workflow_id: str) -> bool:
    """Whether ``workflow_id`` still owns the campaign and it is sending (one statement).

    The batch boundary's check: no row lock and no transaction around it, since the
    claim it could wait for was made before the run started; a pause, cancel or
    takeover committed before it is seen.
    """
    found = await conn.scalar(
        text(
            """SELECT true FROM campaigns
            WHERE id = :id AND status = 'sending' AND workflow_id = :workflow"""
        ),
        {"id": campaign_id, "workflow": workflow_id},
    )
    return bool(found)


def _run_owns(campaign_id: uuid.UUID, workflow_id: str) -> tuple[ColumnElement[bool], ...]:
    """The campaign is sending and ``workflow_id`` is its run: what a run's own writes require."""
    return (
        Campaign.id == campaign_id,
        Campaign.status == "sending",
        Campaign.workflow_id == workflow_id,
    )


async def reap_stale(session: AsyncSession, now: datetime, stale: timedelta) -> list[uuid.UUID]:
    """Hand campaigns that stopped making progress back to the scheduler, once.

    Only one reaper runs at a time (a transaction-scoped advisory lock; others skip
    the round). The compare-and-set on ``status``/``last_progress_at`` means a campaign
    is reaped once per stall: it goes back to ``queued`` without an owner, the old run
    (if it is only slow, not dead) stops at its next batch boundary, and the scheduler
    starts exactly one new run. A parked campaign (no owning run) is never stuck: the
    claim starts its run when it is due.
    """
    if not await session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _REAPER_LOCK}):
        return []
    result = await session.execute(
        update(Campaign)
        .where(
            Campaign.status == "sending",
            Campaign.workflow_id.is_not(None),
            Campaign.last_progress_at < now - stale,
        )
        .values(
            status="queued",
            workflow_id=None,
            updated_at=now,
            error=f"resumed by the reaper at {now.isoformat()} (no progress for {stale})",
        )
        .returning(Campaign.id)
    )
    return list(result.scalars())


# ------------------------------------------------------------------------- snapshot


def _audience_select(audience: Audience, now: datetime) -> tuple[str, dict[str, Any]]:
    """SQL selecting ``(contact_id, email, timezone)`` of the audience, keyset-pageable."""
    live = "c.deleted_at IS NULL"
    if audience.kind == "list":
        if audience.default_opt_in:
            # Everyone with an address unless they unsubscribed from the list; global
            # unsubscribes and suppressions stay in so the mailer records the skip reason.
            sql = f"""SELECT c.id, c.email, c.timezone FROM contacts c
                WHERE {live} AND c.email IS NOT NULL AND c.id > :after"""
        else:
            sql = f"""SELECT c.id, c.email, c.timezone FROM contacts c
                JOIN list_subscriptions l ON l.contact_id = c.id
                WHERE {live} AND c.email IS NOT NULL AND c.id > :after
                  AND l.list_id = :list_id AND l.subscribed"""
        return sql, {"list_id": audience.list_id}
    if audience.kind == "bucket":
        # Joined on contact_id, not an external id: members known only by email count.
        sql = f"""SELECT c.id, coalesce(c.email, lower(trim(m.user_email))), c.timezone
            FROM bucket_memberships m JOIN contacts c ON c.id = m.contact_id
            WHERE {live} AND m.bucket_id = :bucket_id AND m.status = 'active'
              AND m.deleted_at IS NULL AND coalesce(c.email, m.user_email) IS NOT NULL
              AND c.id > :after"""
        return sql, {"bucket_id": audience.bucket_id}
    # Criteria: the page of matching ids is selected first (see snapshot_page).
    sql = f"""SELECT c.id, c.email, c.timezone FROM contacts c
        WHERE {live} AND c.email IS NOT NULL AND c.id > :after
          AND c.id = ANY(CAST(:ids AS uuid[]))"""
    return sql, {}


def _send_at_sql(local_time: str | None) -> str:
    if local_time is None:
        return "CAST(:start AS timestamptz)"
    # The next :local wall-clock time in the contact's zone (UTC when unset or unknown)
    # at or after the campaign's start.
    known = "a.timezone IN (SELECT name FROM pg_timezone_names)"
    zone = f"CASE WHEN {known} THEN a.timezone ELSE 'UTC' END"
    at = (
        f"((CAST(CAST(:start AS timestamptz) AT TIME ZONE {zone} AS date) "
        f"+ CAST(:local AS time)) AT TIME ZONE {zone})"
    )
    return (
        f"CASE WHEN {at} >= CAST(:start AS timestamptz) THEN {at} ELSE {at} + interval '1 day' END"
    )


async def snapshot_page(
    session: AsyncSession,
    campaign_id: uuid.UUID,
    audience: Audience,
    *,
    start: datetime,
    local_time: str | None,
    now: datetime,
    page: int = SNAPSHOT_PAGE,
) -> int:
    """Copy the next page of the audience into the recipients; returns rows copied.

    Resumable: the page starts after the highest contact id already copied, and a row
    copied twice is ignored.
    """
    after = await session.scalar(
        text(
            """SELECT contact_id FROM campaign_recipients WHERE campaign_id = :id
            ORDER BY contact_id DESC LIMIT 1"""
        ),
        {"id": campaign_id},
    )
    source, params = _audience_select(audience, now)
    if audience.kind == "criteria":
        assert audience.criteria is not None
        matching = (
            matching_contacts(audience.criteria, now)
            .where(ContactRow.__table__.c.email.is_not(None))
            .subquery()
        )
        ids = list(
            await session.scalars(
                select(matching.c.id)
                .where(matching.c.id > (after or uuid.UUID(int=0)))
                .order_by(matching.c.id)
                .limit(page)
            )
        )
        if not ids:
            return 0
        params["ids"] = [str(i) for i in ids]
    sql = f"""
        INSERT INTO campaign_recipients (campaign_id, contact_id, email, send_at)
        SELECT CAST(:id AS uuid), a.id, a.email, {_send_at_sql(local_time)}
        FROM ({source} ORDER BY c.id LIMIT :page) AS a(id, email, timezone)
        ON CONFLICT DO NOTHING
    """
    result = await session.execute(
        text(sql),
        {
            **params,
            "id": campaign_id,
            "after": after or uuid.UUID(int=0),
            "page": page,
            "start": start,
            "local": local_time,
        },
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def finish_snapshot(session: AsyncSession, campaign_id: uuid.UUID, now: datetime) -> int:
    """Stamp the snapshot done and set the audience size; returns it."""
    total = int(
        await session.scalar(
            text("SELECT count(*) FROM campaign_recipients WHERE campaign_id = :id"),
            {"id": campaign_id},
        )
        or 0
    )
    await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(total_recipients=total, snapshot_at=now, last_progress_at=now, updated_at=now)
    )
    return total


# ------------------------------------------------------------------------- send loop


async def due_batch(
    session: AsyncSession | AsyncConnection,
    campaign_id: uuid.UUID,
    now: datetime,
    *,
    limit: int,
    after: Recipient | None = None,
) -> list[Recipient]:
    """The next pending recipients that are due, in cursor order.

    With ``after`` (the last recipient of a batch still in flight, which must have a
    ``send_at``), the page starts past it: it leaves that batch out, and the index scan
    starts where the last one ended instead of walking the entries of every recipient
    already sent (dead until vacuumed).
    """
    keyset = ""
    params: dict[str, Any] = {"id": campaign_id, "now": now, "limit": limit}
    if after is not None:
        assert after.send_at is not None, "the keyset needs the recipient's send_at"
        keyset = "AND (send_at, contact_id) > (CAST(:at AS timestamptz), CAST(:cid AS uuid))"
        params.update(at=after.send_at, cid=after.contact_id)
    rows = await session.execute(
        text(
            f"""SELECT contact_id, email, send_at FROM campaign_recipients
            WHERE campaign_id = :id AND status = 'pending'
              AND (send_at IS NULL OR send_at <= :now) {keyset}
            ORDER BY send_at, contact_id LIMIT :limit"""
        ),
        params,
    )
    return [Recipient(contact_id=r.contact_id, email=r.email, send_at=r.send_at) for r in rows]


async def next_due_at(session: AsyncSession, campaign_id: uuid.UUID) -> datetime | None:
    """When the earliest still-pending recipient is due; None when none is pending.

    Every snapshot row has a ``send_at``, so a NULL minimum means nothing is pending.
    """
    found: datetime | None = await session.scalar(
        text(
            """SELECT min(send_at) FROM campaign_recipients
            WHERE campaign_id = :id AND status = 'pending'"""
        ),
        {"id": campaign_id},
    )
    return found


async def decisions_of(
    session: AsyncSession, send_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, str]:
    """The decision of each of ``send_ids`` (for duplicates: what the key holder did)."""
    if not send_ids:
        return {}
    rows = await session.execute(
        text("SELECT id, decision FROM email_sends WHERE id = ANY(CAST(:ids AS uuid[]))"),
        {"ids": [str(i) for i in send_ids]},
    )
    return {r.id: r.decision for r in rows}


# The batch's recipients are found by ``contact_id = ANY(ARRAY(SELECT ...))`` of its own
# contacts, a probe of the primary key per recipient: joined to the unnest alone, the
# planner hashed every recipient of the campaign (a sequential scan per batch, so a
# campaign's record cost grew with its audience: 30,000 rows read for a batch of 1,000).
# The ARRAY's estimate (10) does not depend on the batch, so the plan stays the same.
_RECORD = text(
    """
    WITH outcome AS (
        SELECT * FROM unnest(CAST(:contacts AS uuid[]), CAST(:statuses AS text[]),
                             CAST(:reasons AS text[]), CAST(:sends AS uuid[]))
                 AS o(contact_id, status, reason, send_id)
    ), moved AS (
        UPDATE campaign_recipients r
        SET status = o.status, reason = o.reason, email_send_id = o.send_id,
            sent_at = CASE WHEN o.status = 'sent' THEN CAST(:now AS timestamptz) END
        FROM outcome o
        WHERE r.campaign_id = :id AND r.contact_id = o.contact_id AND r.status = 'pending'
            AND r.contact_id = ANY(ARRAY(SELECT contact_id FROM outcome))
        RETURNING r.status, r.reason
    ), reasons AS (
        SELECT coalesce(jsonb_object_agg(reason, n), '{}'::jsonb) AS counts FROM (
            SELECT reason, count(*) AS n FROM moved WHERE status = 'skipped' GROUP BY reason
        ) s
    ), tally AS (
        SELECT count(*) FILTER (WHERE status = 'sent') AS sent,
               count(*) FILTER (WHERE status = 'skipped') AS skipped,
               count(*) FILTER (WHERE status = 'failed') AS failed
        FROM moved
    )
    UPDATE campaigns c
    SET sent_count = c.sent_count + t.sent,
        skipped_count = c.skipped_count + t.skipped,
        failed_count = c.failed_count + t.failed,
        skip_reasons = (
            SELECT coalesce(jsonb_object_agg(k, coalesce((c.skip_reasons->>k)::int, 0)
                                              + coalesce((r.counts->>k)::int, 0)), '{}'::jsonb)
            FROM (SELECT jsonb_object_keys(c.skip_reasons || r.counts) AS k) keys
        ),
        cursor = :cursor, last_progress_at = :now, updated_at = :now
    FROM tally t, reasons r
    WHERE c.id = :id
    """
)


async def record_results(
    session: AsyncSession, campaign_id: uuid.UUID, results: Sequence[Result], now: datetime
) -> None:
    """Move each recipient out of ``pending`` and add it to the counters, in one statement.

    A recipient already moved (a step re-run after a crash) is neither moved nor counted
    again.
    """
    if not results:
        return
    await session.execute(
        _RECORD,
        {
            "id": campaign_id,
            "now": now,
            # Array literals built by orjson (hogsend.db.prepared.text_array): psycopg
            # dumps a list element by element in Python, for every recipient of a batch.
            "contacts": prepared.text_array([r.contact_id for r in results]),
            "statuses": prepared.text_array([r.status for r in results]),
            "reasons": prepared.text_array([r.reason for r in results]),
            "sends": prepared.text_array([r.email_send_id for r in results]),
            "cursor": json.dumps({"lastContactId": str(results[-1].contact_id)}),
        },
    )


async def touch(session: AsyncSession, campaign_id: uuid.UUID, now: datetime) -> None:
    """Record progress without sends (a run waiting for recipients' local send times)."""
    await session.execute(
        update(Campaign)
        .where(Campaign.id == campaign_id)
        .values(last_progress_at=now, updated_at=now)
    )


async def finish(
    session: AsyncSession, campaign_id: uuid.UUID, workflow_id: str, now: datetime
) -> bool:
    """Mark the campaign ``sent`` if ``workflow_id`` still owns it; whether it did."""
    result = await session.execute(
        update(Campaign)
        .where(*_run_owns(campaign_id, workflow_id))
        .values(status="sent", completed_at=now, last_progress_at=now, updated_at=now)
        .returning(Campaign.id)
    )
    return result.scalar() is not None


async def recipient_statuses(session: AsyncSession, campaign_id: uuid.UUID) -> dict[str, int]:
    """Recipients per status (for reporting and tests)."""
    rows = await session.execute(
        text(
            """SELECT status, count(*) AS n FROM campaign_recipients
            WHERE campaign_id = :id GROUP BY status"""
        ),
        {"id": campaign_id},
    )
    return {r.status: int(r.n) for r in rows}


CONTROL_FROM: dict[str, tuple[str, ...]] = {action: f for action, (f, _) in _CONTROL.items()}
"""For each control action, the statuses it applies to."""
