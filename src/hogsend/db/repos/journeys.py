"""Journey runs (``journey_states``), their step log (``journey_logs``) and the admin switch.

The runtime mirrors every DBOS journey workflow here: the row is the truth about a run's
status (DBOS shows an exited run and a finished one alike), and every update that moves
a run is guarded so a terminal status is never overwritten.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from hogsend.core.clock import aware_now
from hogsend.core.contact import Event
from hogsend.core.pagination import Page, decode_cursor, encode_cursor, page_of

RUNNING = ("enrolled", "active", "waiting")


@dataclass(frozen=True, slots=True, kw_only=True)
class JourneyRun:
    """One run (enrollment) of a journey, as the admin API shows it."""

    id: uuid.UUID
    journey_id: str
    workflow_id: str
    contact_id: uuid.UUID
    user_id: str
    status: str
    entry_count: int
    current_step: str | None
    next_wake_at: datetime | None
    waiting_for_event: str | None
    exit_reason: str | None
    error_message: str | None
    trigger_event_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    exited_at: datetime | None
    failed_at: datetime | None
    context: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class JourneyLogEntry:
    """One row of a run's step log (or a refused enrollment)."""

    id: int
    journey_id: str
    journey_state_id: uuid.UUID | None
    contact_id: uuid.UUID | None
    step: str | None
    action: str
    detail: Mapping[str, Any]
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Waiter:
    """A run waiting for an event: where to deliver it and what it must match."""

    state_id: uuid.UUID
    workflow_id: str
    wait: int
    match: Mapping[str, Any] | None


def _json(value: object) -> str:
    return json.dumps(value, default=str)


_RUN_COLUMNS = (
    "id, journey_id, workflow_id, contact_id, user_id, status, entry_count, current_step,"
    " next_wake_at, waiting_for_event, exit_reason, error_message, trigger_event_id,"
    " created_at, updated_at, completed_at, exited_at, failed_at, context"
)


def _run(row: Row[Any]) -> JourneyRun:
    m = row._mapping
    return JourneyRun(**{k: m[k] for k in m.keys()})  # noqa: SIM118 - RowMapping


# -- the admin switch --------------------------------------------------------------------


async def enabled_overrides(session: AsyncSession) -> dict[str, bool]:
    """Admin overrides of the code's ``enabled`` per journey (journeys without one absent)."""
    rows = await session.execute(
        text("SELECT journey_id, enabled FROM journey_configs WHERE enabled IS NOT NULL")
    )
    return {r.journey_id: r.enabled for r in rows}


async def is_enabled(session: AsyncSession, journey_id: str, *, default: bool) -> bool:
    """Whether a journey is enabled: the admin override if set, else the code's default."""
    value = (
        await session.execute(
            text("SELECT enabled FROM journey_configs WHERE journey_id = :j"), {"j": journey_id}
        )
    ).scalar_one_or_none()
    return default if value is None else bool(value)


async def set_enabled(
    session: AsyncSession, journey_id: str, enabled: bool | None, *, by: str | None
) -> None:
    """Store the admin override (None clears it: the code's default applies again)."""
    await session.execute(
        text(
            "INSERT INTO journey_configs (journey_id, enabled, updated_by) VALUES (:j, :e, :by)"
            " ON CONFLICT (journey_id) DO UPDATE SET enabled = EXCLUDED.enabled,"
            " updated_by = EXCLUDED.updated_by, updated_at = now()"
        ),
        {"j": journey_id, "e": enabled, "by": by},
    )


# -- enrollment ----------------------------------------------------------------------------


async def insert_run(
    session: AsyncSession,
    *,
    state_id: uuid.UUID,
    journey_id: str,
    workflow_id: str,
    contact_id: uuid.UUID,
    user_id: str,
    user_email: str | None,
    entry_count: int,
    trigger_event_id: uuid.UUID | None,
    context: Mapping[str, Any],
    now: datetime | None = None,
) -> bool:
    """Insert a run in status ``enrolled``; False when a unique key already holds it.

    The partial unique index (one running run per contact and journey) and the unique
    workflow id make this the race-safe step of enrollment.
    """
    row = (
        await session.execute(
            text(
                "INSERT INTO journey_states (id, journey_id, workflow_id, contact_id, user_id,"
                " user_email, entry_count, trigger_event_id, context, created_at, updated_at)"
                " VALUES (:id, :j, :w, :c, :u, :email, :n, :e, CAST(:ctx AS jsonb), :now, :now)"
                " ON CONFLICT DO NOTHING RETURNING id"
            ),
            {
                "id": state_id,
                "j": journey_id,
                "w": workflow_id,
                "c": contact_id,
                "u": user_id,
                "email": user_email,
                "n": entry_count,
                "e": trigger_event_id,
                "ctx": _json(dict(context)),
                "now": aware_now(now),
            },
        )
    ).first()
    return row is not None


async def add_log(
    session: AsyncSession | AsyncConnection,
    *,
    journey_id: str,
    action: str,
    state_id: uuid.UUID | None = None,
    contact_id: uuid.UUID | None = None,
    user_id: str | None = None,
    step: str | None = None,
    detail: Mapping[str, Any] | None = None,
    started_at: datetime | None = None,
    finished_at: datetime | None = None,
) -> None:
    """Append one row to the step log (a refusal has no ``state_id``)."""
    started = aware_now(started_at)
    duration = None if finished_at is None else int((finished_at - started).total_seconds() * 1000)
    await session.execute(
        text(
            "INSERT INTO journey_logs (journey_state_id, journey_id, contact_id, user_id, step,"
            " action, detail, started_at, finished_at, duration_ms)"
            " VALUES (:s, :j, :c, :u, :step, :a, CAST(:d AS jsonb), :t0, :t1, :ms)"
        ),
        {
            "s": state_id,
            "j": journey_id,
            "c": contact_id,
            "u": user_id,
            "step": step,
            "a": action,
            "d": _json(dict(detail or {})),
            "t0": started,
            "t1": finished_at,
            "ms": duration,
        },
    )


# -- a run's progress -----------------------------------------------------------------------


async def get_run(session: AsyncSession, state_id: uuid.UUID) -> JourneyRun | None:
    """One run by id."""
    row = (
        await session.execute(
            text(f"SELECT {_RUN_COLUMNS} FROM journey_states WHERE id = :id"), {"id": state_id}
        )
    ).first()
    return None if row is None else _run(row)


async def lock_status(session: AsyncSession, state_id: uuid.UUID) -> str | None:
    """The run's status, share-locked until commit so an exit waits for this transaction."""
    return (
        await session.execute(
            text("SELECT status FROM journey_states WHERE id = :id FOR SHARE"), {"id": state_id}
        )
    ).scalar_one_or_none()


async def move(
    session: AsyncSession,
    state_id: uuid.UUID,
    *,
    status: str,
    step: str | None,
    next_wake_at: datetime | None = None,
    waiting_for_event: str | None = None,
    context: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> str | None:
    """Move a running run to ``status`` at ``step``; returns the status it has afterwards.

    A run that already ended keeps its status (the returned value says which), so a
    late step can never revive an exited run.
    """
    row = (
        await session.execute(
            text(
                "UPDATE journey_states SET status = :st, current_step = :step,"
                " next_wake_at = :wake, waiting_for_event = :ev,"
                " context = context || CAST(:ctx AS jsonb), updated_at = :now"
                " WHERE id = :id AND status IN ('enrolled','active','waiting')"
                " RETURNING status"
            ),
            {
                "id": state_id,
                "st": status,
                "step": step,
                "wake": next_wake_at,
                "ev": waiting_for_event,
                "ctx": _json(dict(context or {})),
                "now": aware_now(now),
            },
        )
    ).first()
    if row is not None:
        return str(row.status)
    return (
        await session.execute(
            text("SELECT status FROM journey_states WHERE id = :id"), {"id": state_id}
        )
    ).scalar_one_or_none()


async def finish(
    session: AsyncSession,
    state_id: uuid.UUID,
    *,
    status: str,
    error: str | None = None,
    now: datetime | None = None,
) -> bool:
    """End a running run as ``completed`` or ``failed``; never overwrites ``exited``."""
    at = aware_now(now)
    column = "completed_at" if status == "completed" else "failed_at"
    row = (
        await session.execute(
            text(
                f"UPDATE journey_states SET status = :st, {column} = :now, error_message = :err,"
                " next_wake_at = NULL, waiting_for_event = NULL, updated_at = :now"
                " WHERE id = :id AND status IN ('enrolled','active','waiting') RETURNING id"
            ),
            {"id": state_id, "st": status, "err": error, "now": at},
        )
    ).first()
    return row is not None


_FINISH_LOGGED = (
    "WITH ended AS (UPDATE journey_states SET status = :st, {column} = :now,"
    " error_message = :err, next_wake_at = NULL, waiting_for_event = NULL, updated_at = :now"
    " WHERE id = :id AND status IN ('enrolled','active','waiting')"
    " RETURNING id, journey_id, contact_id, user_id),"
    " logged AS (INSERT INTO journey_logs (journey_state_id, journey_id, contact_id, user_id,"
    " action, detail, started_at, finished_at, duration_ms)"
    " SELECT id, journey_id, contact_id, user_id, :st, CAST(:d AS jsonb), :now, :now, 0"
    " FROM ended RETURNING journey_state_id)"
    " SELECT (SELECT count(*) FROM logged) AS ended, status FROM journey_states WHERE id = :id"
)


async def finish_logged(
    session: AsyncSession | AsyncConnection,
    state_id: uuid.UUID,
    *,
    status: str,
    error: str | None = None,
    now: datetime | None = None,
) -> tuple[bool, str | None]:
    """:func:`finish` and its log line in one statement: (ended now, status afterwards).

    Ends a running run as ``completed`` or ``failed`` and logs it; a run that already
    ended keeps its status and gets no line (so running it twice logs once).
    """
    column = "completed_at" if status == "completed" else "failed_at"
    row = (
        await session.execute(
            text(_FINISH_LOGGED.format(column=column)),
            {
                "id": state_id,
                "st": status,
                "err": error,
                "d": _json({"error": error} if error else {}),
                "now": aware_now(now),
            },
        )
    ).first()
    if row is None:
        return False, None
    ended = bool(row.ended)
    return ended, status if ended else str(row.status)


async def log_if_running(
    session: AsyncSession | AsyncConnection,
    state_id: uuid.UUID,
    *,
    journey_id: str,
    action: str,
    contact_id: uuid.UUID,
    user_id: str,
    step: str,
    detail: Mapping[str, Any],
    started_at: datetime,
    finished_at: datetime,
) -> bool:
    """Append a step-log line if the run still runs, share-locking it until commit (an
    exit then waits for this transaction); one statement. False when it ended."""
    duration = int((finished_at - started_at).total_seconds() * 1000)
    row = (
        await session.execute(
            text(
                "INSERT INTO journey_logs (journey_state_id, journey_id, contact_id, user_id,"
                " step, action, detail, started_at, finished_at, duration_ms)"
                " SELECT id, :j, :c, :u, :step, :a, CAST(:d AS jsonb), :t0, :t1, :ms"
                " FROM journey_states WHERE id = :s"
                " AND status IN ('enrolled','active','waiting') FOR SHARE RETURNING id"
            ),
            {
                "s": state_id,
                "j": journey_id,
                "c": contact_id,
                "u": user_id,
                "step": step,
                "a": action,
                "d": _json(dict(detail)),
                "t0": aware_now(started_at),
                "t1": finished_at,
                "ms": duration,
            },
        )
    ).first()
    return row is not None


async def exit_runs(
    session: AsyncSession | AsyncConnection,
    *,
    reason: str,
    state_ids: Sequence[uuid.UUID] | None = None,
    contact_id: uuid.UUID | None = None,
    journey_ids: Sequence[str] | None = None,
    now: datetime | None = None,
) -> list[tuple[uuid.UUID, str]]:
    """Exit running runs (by id, or a contact's runs of some journeys); (id, workflow id)."""
    at = aware_now(now)
    params: dict[str, Any]
    if state_ids is not None:
        where, params = "id = ANY(:ids)", {"ids": list(state_ids)}
    elif contact_id is not None and journey_ids is not None:
        where = "contact_id = :c AND journey_id = ANY(:js)"
        params = {"c": contact_id, "js": list(journey_ids)}
    else:
        raise ValueError("exit_runs needs state_ids, or contact_id and journey_ids")
    rows = await session.execute(
        text(
            "UPDATE journey_states SET status = 'exited', exit_reason = :r, exited_at = :now,"
            " next_wake_at = NULL, waiting_for_event = NULL, updated_at = :now"
            f" WHERE {where} AND status IN ('enrolled','active','waiting') AND deleted_at IS NULL"
            " RETURNING id, workflow_id, journey_id, contact_id, user_id"
        ),
        {**params, "r": reason, "now": at},
    )
    ended = rows.all()
    for row in ended:
        await add_log(
            session,
            journey_id=row.journey_id,
            action="exited",
            state_id=row.id,
            contact_id=row.contact_id,
            user_id=row.user_id,
            detail={"reason": reason},
            started_at=at,
            finished_at=at,
        )
    return [(row.id, row.workflow_id) for row in ended]


async def waiters(session: AsyncSession, contact_id: uuid.UUID, event: str) -> list[Waiter]:
    """The contact's runs waiting for ``event`` right now."""
    rows = await session.execute(
        text(
            "SELECT id, workflow_id, context FROM journey_states"
            " WHERE contact_id = :c AND status = 'waiting' AND waiting_for_event = :e"
            " AND deleted_at IS NULL"
        ),
        {"c": contact_id, "e": event},
    )
    found = []
    for row in rows:
        wait = row.context.get("wait") or {}
        found.append(
            Waiter(
                state_id=row.id,
                workflow_id=row.workflow_id,
                wait=int(wait.get("step", 0)),
                match=wait.get("match"),
            )
        )
    return found


async def running_journeys(session: AsyncSession, contact_id: uuid.UUID) -> dict[str, str]:
    """The contact's running runs: journey id → workflow id."""
    rows = await session.execute(
        text(
            "SELECT journey_id, workflow_id FROM journey_states WHERE contact_id = :c"
            " AND status IN ('enrolled','active','waiting') AND deleted_at IS NULL"
        ),
        {"c": contact_id},
    )
    return {r.journey_id: r.workflow_id for r in rows}


# -- history (ctx.history, wait_for_event's lookback) -------------------------------------------


async def contact_events(
    session: AsyncSession,
    contact_id: uuid.UUID,
    name: str,
    *,
    since: datetime | None = None,
    limit: int = 1_000,
) -> list[Event]:
    """The contact's ``name`` events (after ``since``), newest first."""
    rows = await session.execute(
        text(
            "SELECT id, event, user_id, occurred_at, properties, contact_id, source, received_at"
            " FROM user_events WHERE contact_id = :c AND event = :n"
            " AND (CAST(:since AS timestamptz) IS NULL OR occurred_at >= :since)"
            " ORDER BY occurred_at DESC, id DESC LIMIT :limit"
        ),
        {"c": contact_id, "n": name, "since": since, "limit": limit},
    )
    return [
        Event(
            id=r.id,
            name=r.event,
            contact_key=r.user_id,
            occurred_at=r.occurred_at,
            properties=r.properties or {},
            contact_id=r.contact_id,
            source=r.source,
            received_at=r.received_at,
        )
        for r in rows
    ]


async def count_events(
    session: AsyncSession, contact_id: uuid.UUID, name: str, *, since: datetime | None = None
) -> int:
    """How many ``name`` events the contact has (after ``since``)."""
    return int(
        (
            await session.execute(
                text(
                    "SELECT count(*) FROM user_events WHERE contact_id = :c AND event = :n"
                    " AND (CAST(:since AS timestamptz) IS NULL OR occurred_at >= :since)"
                ),
                {"c": contact_id, "n": name, "since": since},
            )
        ).scalar_one()
    )


# -- admin reads ---------------------------------------------------------------------------------


async def status_counts(session: AsyncSession) -> dict[str, dict[str, int]]:
    """Runs per status for every journey that has runs: journey id → status → count."""
    rows = await session.execute(
        text(
            "SELECT journey_id, status, count(*) AS n FROM journey_states"
            " WHERE deleted_at IS NULL GROUP BY journey_id, status"
        )
    )
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        counts.setdefault(row.journey_id, {})[row.status] = row.n
    return counts


async def page_runs(
    session: AsyncSession,
    *,
    journey_id: str | None = None,
    status: str | None = None,
    contact_id: uuid.UUID | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[JourneyRun]:
    """Runs newest first, filtered; ``cursor`` continues a previous page.

    Raises:
        InvalidCursor: ``cursor`` is not one this listing handed out.
    """
    after: tuple[datetime, uuid.UUID] | None = None
    if cursor is not None:
        at, ident = decode_cursor(cursor, 2)
        try:
            after = (datetime.fromisoformat(at), uuid.UUID(ident))
        except ValueError as exc:
            from hogsend.core.pagination import InvalidCursor

            raise InvalidCursor("cursor is not valid") from exc
    rows = await session.execute(
        text(
            f"SELECT {_RUN_COLUMNS} FROM journey_states WHERE deleted_at IS NULL"
            " AND (CAST(:j AS text) IS NULL OR journey_id = :j)"
            " AND (CAST(:st AS text) IS NULL OR status = :st)"
            " AND (CAST(:c AS uuid) IS NULL OR contact_id = :c)"
            " AND (CAST(:at AS timestamptz) IS NULL OR (created_at, id) < (:at, :aid))"
            " ORDER BY created_at DESC, id DESC LIMIT :lim"
        ),
        {
            "j": journey_id,
            "st": status,
            "c": contact_id,
            "at": after[0] if after else None,
            "aid": after[1] if after else None,
            "lim": limit + 1,
        },
    )
    return page_of(
        [_run(r) for r in rows],
        limit,
        lambda run: encode_cursor(run.created_at.isoformat(), str(run.id)),
    )


async def run_log(session: AsyncSession, state_id: uuid.UUID) -> list[JourneyLogEntry]:
    """A run's step log in the order it was written."""
    rows = await session.execute(
        text(
            "SELECT id, journey_id, journey_state_id, contact_id, step, action, detail,"
            " started_at, finished_at, duration_ms FROM journey_logs"
            " WHERE journey_state_id = :s ORDER BY id"
        ),
        {"s": state_id},
    )
    return [JourneyLogEntry(**dict(r._mapping)) for r in rows]


async def refusals(
    session: AsyncSession, journey_id: str, *, contact_id: uuid.UUID | None = None
) -> list[JourneyLogEntry]:
    """Refused enrollments of a journey (newest first)."""
    rows = await session.execute(
        text(
            "SELECT id, journey_id, journey_state_id, contact_id, step, action, detail,"
            " started_at, finished_at, duration_ms FROM journey_logs"
            " WHERE journey_id = :j AND action = 'refused'"
            " AND (CAST(:c AS uuid) IS NULL OR contact_id = :c) ORDER BY id DESC LIMIT 200"
        ),
        {"j": journey_id, "c": contact_id},
    )
    return [JourneyLogEntry(**dict(r._mapping)) for r in rows]


async def exited_still_running(
    session: AsyncSession, *, dbos_schema: str, limit: int = 500
) -> list[tuple[str, str]]:
    """Runs marked exited whose DBOS workflow has not ended yet: (workflow id, reason).

    Reads DBOS's ``workflow_status`` (same database, schema ``dbos_schema``): those
    workflows still need their exit message. Only the last day is looked at; an exit
    older than that has long been delivered.
    """
    rows = await session.execute(
        text(
            "SELECT j.workflow_id, coalesce(j.exit_reason, 'exited') AS reason"
            f" FROM journey_states j JOIN {dbos_schema}.workflow_status w"
            " ON w.workflow_uuid = j.workflow_id"
            " WHERE j.status = 'exited' AND j.exited_at > now() - interval '1 day'"
            " AND w.status IN ('PENDING', 'ENQUEUED') LIMIT :lim"
        ),
        {"lim": limit},
    )
    return [(r.workflow_id, r.reason) for r in rows]


# -- parking (docs/decisions/0003-parking.md) ------------------------------------------------------


async def park(
    session: AsyncSession, state_id: uuid.UUID, wake_end: Mapping[str, Any] | None = None
) -> bool:
    """Mark a waiting run parked, unless a message for it is pending; whether it parked.

    The row lock orders this against :func:`flag_pending`: a delivery that committed
    first keeps the run awake; one that comes later finds it parked and resumes it.
    ``wake_end`` (``context.wakeEnd``) is what closing the wait writes, for the waker to
    write it when the run falls due (hogsend.runtime.due_wake).
    """
    row = (
        await session.execute(
            text(
                "UPDATE journey_states SET context = context"
                " || jsonb_build_object('parked', true, 'wakeEnd', CAST(:end AS jsonb))"
                " WHERE id = :id AND status = 'waiting'"
                " AND NOT coalesce((context->>'pending')::boolean, false) RETURNING id"
            ),
            {"id": state_id, "end": None if wake_end is None else _json(dict(wake_end))},
        )
    ).first()
    return row is not None


async def flag_pending(session: AsyncSession, state_id: uuid.UUID) -> bool:
    """Note that a message is on its way to the run; whether the run was parked (and is
    now unparked: the caller resumes it)."""
    row = (
        await session.execute(
            text(
                "WITH old AS (SELECT id, coalesce((context->>'parked')::boolean, false) AS parked"
                " FROM journey_states WHERE id = :id FOR UPDATE)"
                " UPDATE journey_states j"
                " SET context = (j.context - 'parked' - 'wakeEnd') || '{\"pending\": true}'::jsonb"
                " FROM old WHERE j.id = old.id RETURNING old.parked"
            ),
            {"id": state_id},
        )
    ).first()
    return bool(row is not None and row.parked)


async def is_pending(session: AsyncSession, state_id: uuid.UUID) -> bool:
    """Whether a message was flagged on its way to the run (see :func:`flag_pending`)."""
    pending = (
        await session.execute(
            text(
                "SELECT coalesce((context->>'pending')::boolean, false)"
                " FROM journey_states WHERE id = :id"
            ),
            {"id": state_id},
        )
    ).scalar_one_or_none()
    return bool(pending)


@dataclass(frozen=True, slots=True, kw_only=True)
class DueRun:
    """A parked run the waker claimed (its row unparked, not yet committed).

    Attributes:
        state_id: the run.
        workflow_id: its DBOS workflow.
        wake_end: what closing its wait writes (``context.wakeEnd`` as it parked;
            hogsend.runtime.due_wake.WakeEnd), None for a run parked by older code.
    """

    state_id: uuid.UUID
    workflow_id: str
    wake_end: Mapping[str, Any] | None


async def claim_due_parked(
    session: AsyncSession, *, now: datetime, limit: int = 100
) -> list[DueRun]:
    """Unpark up to ``limit`` parked runs that are due, skipping rows others hold (resume
    them before committing, so a crash leaves them parked), with what closing each one's
    wait writes (``None`` for a run parked by older code)."""
    rows = await session.execute(
        text(
            "WITH due AS (SELECT id, context->'wakeEnd' AS wake_end FROM journey_states"
            " WHERE status = 'waiting' AND next_wake_at <= :now"
            " AND coalesce((context->>'parked')::boolean, false)"
            " ORDER BY next_wake_at LIMIT :lim FOR UPDATE SKIP LOCKED)"
            " UPDATE journey_states j SET context = j.context - 'parked' - 'wakeEnd'"
            " FROM due WHERE j.id = due.id RETURNING j.id, j.workflow_id, due.wake_end"
        ),
        {"now": now, "lim": limit},
    )
    return [
        DueRun(
            state_id=r.id,
            workflow_id=r.workflow_id,
            wake_end=r.wake_end if isinstance(r.wake_end, dict) else None,
        )
        for r in rows
    ]


# -- retrying a failed run (the dead-letter queue's journey entries) ------------------------------

DLQ_SOURCE = "journey"
"""The ``source`` of dead-letter entries for journey runs that failed (diverged)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryToStart:
    """A retry run whose workflow a worker still has to enqueue."""

    id: uuid.UUID
    journey_id: str
    workflow_id: str
    contact_id: uuid.UUID
    user_id: str
    user_email: str | None
    entry_count: int
    retry: Mapping[str, Any]


async def sent_keys(session: AsyncSession, state_id: uuid.UUID) -> dict[str, dict[str, str]]:
    """The idempotency key each ``send_email`` operation of a run used, by operation number.

    ``{"1": {"template": "welcome", "key": "journey:<state id>:1"}}``: what a retry of the
    run needs to reuse the keys of sends that already happened.
    """
    rows = await session.execute(
        text(
            "SELECT step, detail->>'template' AS template, detail->>'idempotencyKey' AS key"
            " FROM journey_logs WHERE journey_state_id = :s AND action = 'send_email'"
            " AND detail ? 'idempotencyKey' ORDER BY id"
        ),
        {"s": state_id},
    )
    found: dict[str, dict[str, str]] = {}
    for row in rows:
        number = str(row.step or "").split(":", 1)[0]
        if number.isdigit() and row.template and row.key:
            found.setdefault(number, {"template": row.template, "key": row.key})
    return found


async def start_retry(
    session: AsyncSession,
    failed: JourneyRun,
    *,
    state_id: uuid.UUID,
    workflow_id: str,
    user_email: str | None,
    retry: Mapping[str, Any],
    now: datetime | None = None,
) -> bool:
    """Insert the retry of ``failed`` (status ``enrolled``, ``context.retry`` set) and point
    the failed run at it; False when the contact already has a running run of the journey.

    A worker's :class:`~hogsend.runtime.journey_retries.RetryStarter` enqueues its workflow
    once this commits.
    """
    at = aware_now(now)
    inserted = await insert_run(
        session,
        state_id=state_id,
        journey_id=failed.journey_id,
        workflow_id=workflow_id,
        contact_id=failed.contact_id,
        user_id=failed.user_id,
        user_email=user_email,
        entry_count=failed.entry_count,
        trigger_event_id=failed.trigger_event_id,
        context={"retry": dict(retry)},
        now=at,
    )
    if not inserted:
        return False
    await session.execute(
        text(
            "UPDATE journey_states SET context = context || CAST(:ctx AS jsonb), updated_at = :now"
            " WHERE id = :id"
        ),
        {"id": failed.id, "ctx": _json({"retriedBy": str(state_id)}), "now": at},
    )
    for run_id, action, detail in (
        (failed.id, "retried", {"runId": str(state_id), **_dlq(retry)}),
        (state_id, "enrolled", {"retryOf": str(failed.id), **_dlq(retry)}),
    ):
        await add_log(
            session,
            journey_id=failed.journey_id,
            action=action,
            state_id=run_id,
            contact_id=failed.contact_id,
            user_id=failed.user_id,
            detail=detail,
            started_at=at,
            finished_at=at,
        )
    return True


def _dlq(retry: Mapping[str, Any]) -> dict[str, Any]:
    return {"deadLetterId": retry.get("deadLetterId")}


async def retries_to_start(
    session: AsyncSession, *, dbos_schema: str, limit: int = 100
) -> list[RetryToStart]:
    """Retry runs still ``enrolled`` whose DBOS workflow does not exist yet."""
    rows = await session.execute(
        text(
            "SELECT j.id, j.journey_id, j.workflow_id, j.contact_id, j.user_id, j.user_email,"
            " j.entry_count, j.context->'retry' AS retry FROM journey_states j"
            " WHERE j.status = 'enrolled' AND j.context ? 'retry' AND j.deleted_at IS NULL"
            f" AND NOT EXISTS (SELECT 1 FROM {dbos_schema}.workflow_status w"
            " WHERE w.workflow_uuid = j.workflow_id) LIMIT :lim"
        ),
        {"lim": limit},
    )
    return [RetryToStart(**dict(r._mapping)) for r in rows]
