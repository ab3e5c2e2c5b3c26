"""Enrollment in few round trips: the statements the journey-triggers consumer runs per run.

An enrollment reads the admin switch, serialises on the (contact, journey) lock, reads
the contact's earlier runs, the run its trigger may already have started and the
contact, then inserts the run with its ``enrolled`` log line. Done one query each, that
was eight round trips; here it is three:

1. :func:`lock_and_read_switch`: the advisory lock and the admin switch;
2. :func:`read_facts`: everything the guards read, in a statement that starts after the
   lock is held (its snapshot sees any enrollment committed before us);
3. :func:`insert_enrolled`: the run and its log line in one statement.

A run enrolled that way carries its contact and start time in its workflow input and
begins without a DBOS step, in one statement (:func:`begin_run`); a run enqueued without
them (recorded before they were carried, a retry) has a start step that reads and moves
its row in one statement (:func:`start_run`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from hogsend.core.contact import Contact
from hogsend.core.entry_rules import PriorEntries
from hogsend.db.repos.contacts import CONTACT_COLUMNS, contact_from_row

_CONTACT = ", ".join(f"c.{column.strip()}" for column in CONTACT_COLUMNS.split(","))


@dataclass(frozen=True, slots=True, kw_only=True)
class ExistingRun:
    """The run a trigger event already started (what re-enqueueing it needs)."""

    id: uuid.UUID
    workflow_id: str
    contact_id: uuid.UUID
    user_id: str
    entry_count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EnrollmentFacts:
    """What the entry guards read, all in one snapshot taken under the enrollment lock.

    Attributes:
        prior: the contact's earlier runs of the journey (for the entry limit).
        existing: the run this trigger event already started, if any.
        contact: the contact (None when it is gone or soft-deleted).
    """

    prior: PriorEntries
    existing: ExistingRun | None
    contact: Contact | None


async def lock_and_read_switch(
    session: AsyncSession, contact_id: uuid.UUID, journey_id: str
) -> bool | None:
    """Take the (contact, journey) enrollment lock until commit; returns the admin switch.

    Keyed ``journey-enroll:<journey>:<contact>``. Returns the
    admin override of the journey's ``enabled`` (None: none set, the code decides).
    """
    row = (
        await session.execute(
            text(
                "SELECT pg_advisory_xact_lock(hashtextextended(:k, 0)),"
                " (SELECT enabled FROM journey_configs WHERE journey_id = :j) AS enabled"
            ),
            {"k": f"journey-enroll:{journey_id}:{contact_id}", "j": journey_id},
        )
    ).one()
    return None if row.enabled is None else bool(row.enabled)


_FACTS = text(
    "SELECT h.runs, h.last, h.running, t.id AS run_id, t.workflow_id AS run_workflow_id,"
    " t.contact_id AS run_contact_id, t.user_id AS run_user_id,"
    f" t.entry_count AS run_entry_count, {_CONTACT}"
    # A retry of a failed run (hogsend.runtime.journey_retries) takes no entry of its own,
    # so the entry limit and the ordinals (hence workflow ids) do not count it...
    " FROM (SELECT count(*) FILTER (WHERE NOT context ? 'retry') AS runs,"
    " max(created_at) FILTER (WHERE NOT context ? 'retry') AS last,"
    " coalesce(bool_or(status IN ('enrolled','active','waiting')), false) AS running"
    " FROM journey_states WHERE contact_id = :c AND journey_id = :j AND deleted_at IS NULL) h"
    # ...and it shares its trigger event: a redelivered trigger means the original run.
    " LEFT JOIN LATERAL (SELECT id, workflow_id, contact_id, user_id, entry_count"
    " FROM journey_states WHERE journey_id = :j AND trigger_event_id = :e"
    " AND NOT context ? 'retry' LIMIT 1) t ON true"
    " LEFT JOIN contacts c ON c.id = :c"
)


async def read_facts(
    session: AsyncSession, contact_id: uuid.UUID, journey_id: str, trigger_event_id: uuid.UUID
) -> EnrollmentFacts:
    """The entry guards' reads in one statement (call it after :func:`lock_and_read_switch`)."""
    row = (
        await session.execute(_FACTS, {"c": contact_id, "j": journey_id, "e": trigger_event_id})
    ).one()
    m = row._mapping
    existing = None
    if m["run_id"] is not None:
        existing = ExistingRun(
            id=m["run_id"],
            workflow_id=m["run_workflow_id"],
            contact_id=m["run_contact_id"],
            user_id=m["run_user_id"],
            entry_count=m["run_entry_count"],
        )
    contact = None if m["id"] is None else contact_from_row(row)
    if contact is not None and contact.deleted_at is not None:
        contact = None
    return EnrollmentFacts(
        prior=PriorEntries(count=m["runs"], last_entered_at=m["last"], live=m["running"]),
        existing=existing,
        contact=contact,
    )


_INSERT_ENROLLED = text(
    "WITH run AS (INSERT INTO journey_states (id, journey_id, workflow_id, contact_id,"
    " user_id, user_email, entry_count, trigger_event_id, context, created_at, updated_at)"
    " VALUES (:id, :j, :w, :c, :u, :email, :n, :e, '{}'::jsonb, :now, :now)"
    " ON CONFLICT DO NOTHING RETURNING id, journey_id, contact_id, user_id)"
    " INSERT INTO journey_logs (journey_state_id, journey_id, contact_id, user_id, action,"
    " detail, started_at, finished_at, duration_ms)"
    " SELECT id, journey_id, contact_id, user_id, 'enrolled', CAST(:d AS jsonb), :now, :now, 0"
    " FROM run RETURNING journey_state_id"
)


async def insert_enrolled(
    session: AsyncSession,
    *,
    state_id: uuid.UUID,
    journey_id: str,
    workflow_id: str,
    contact_id: uuid.UUID,
    user_id: str,
    user_email: str | None,
    entry_count: int,
    trigger_event_id: uuid.UUID,
    detail: Mapping[str, Any],
    now: datetime,
) -> bool:
    """Insert the run (status ``enrolled``) and its ``enrolled`` log line in one statement.

    False when a unique key already holds the run (one running run per contact and
    journey; the workflow id): nothing is written then.
    """
    row = (
        await session.execute(
            _INSERT_ENROLLED,
            {
                "id": state_id,
                "j": journey_id,
                "w": workflow_id,
                "c": contact_id,
                "u": user_id,
                "email": user_email,
                "n": entry_count,
                "e": trigger_event_id,
                "d": json.dumps(dict(detail), default=str),
                "now": now,
            },
        )
    ).first()
    return row is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class StartedRun:
    """A run as its start step found it.

    Attributes:
        status: its status after the step (``active`` when it started; an ended run's
            own status otherwise).
        contact_id: whose run it is.
        contact: the contact (None when it is gone or soft-deleted).
    """

    status: str
    contact_id: uuid.UUID
    contact: Contact | None


_START = text(
    "WITH moved AS (UPDATE journey_states SET status = 'active', current_step = 'start',"
    " next_wake_at = NULL, waiting_for_event = NULL, updated_at = :now"
    " WHERE id = :id AND status IN ('enrolled','active','waiting') RETURNING status)"
    " SELECT coalesce((SELECT status FROM moved), s.status) AS run_status,"
    f" s.contact_id AS run_contact_id, {_CONTACT}"
    " FROM journey_states s LEFT JOIN contacts c ON c.id = s.contact_id WHERE s.id = :id"
)


async def start_run(
    session: AsyncSession, state_id: uuid.UUID, *, now: datetime
) -> StartedRun | None:
    """Move a committed run to ``active`` at step ``start`` and read its contact, in one
    statement; None when no committed row has that id (yet)."""
    row = (await session.execute(_START, {"id": state_id, "now": now})).first()
    if row is None:
        return None
    m = row._mapping
    contact = None if m["id"] is None else contact_from_row(row)
    if contact is not None and contact.deleted_at is not None:
        contact = None
    return StartedRun(status=m["run_status"], contact_id=m["run_contact_id"], contact=contact)


@dataclass(frozen=True, slots=True, kw_only=True)
class BegunRun:
    """A run as it began from its input (no start step).

    Attributes:
        status: its status after the statement.
        moved: it was ``enrolled`` and this statement moved it to ``active`` (its first
            execution).
        begun_before: it had begun earlier (it has a current step): this execution is a
            replay or a recovery, which goes on as a recorded start step would.
        contact_gone: its contact is deleted (soft or hard) since the enrollment.
    """

    status: str
    moved: bool
    begun_before: bool
    contact_gone: bool


_BEGIN = text(
    "WITH moved AS (UPDATE journey_states SET status = 'active', current_step = 'start',"
    " updated_at = :now WHERE id = :id AND status = 'enrolled' RETURNING status)"
    " SELECT coalesce((SELECT status FROM moved), s.status) AS run_status,"
    " EXISTS (SELECT 1 FROM moved) AS moved,"
    # The statement's snapshot: the row as it was before the update above.
    " s.current_step IS NOT NULL AS begun_before,"
    " (c.id IS NULL OR c.deleted_at IS NOT NULL) AS contact_gone"
    " FROM journey_states s LEFT JOIN contacts c ON c.id = s.contact_id WHERE s.id = :id"
)


async def begin_run(
    session: AsyncSession | AsyncConnection, state_id: uuid.UUID, *, now: datetime
) -> BegunRun | None:
    """Move an ``enrolled`` run to ``active`` at step ``start`` and read what deciding
    its start needs, in one statement; None when no run has that id.

    Only ``enrolled`` moves, so running it again (a replay, a recovered run) changes
    nothing: a parked run stays ``waiting``, an ended one keeps its status.
    """
    row = (await session.execute(_BEGIN, {"id": state_id, "now": now})).first()
    if row is None:
        return None
    return BegunRun(
        status=row.run_status,
        moved=bool(row.moved),
        begun_before=bool(row.begun_before),
        contact_gone=bool(row.contact_gone),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedSteps:
    """A workflow's DBOS status and step records, as a run reads them when it begins.

    Attributes:
        workflow_status: the DBOS status of the workflow (None when it has no row).
        records: its recorded steps, each ``(function_id, output, error,
            function_name, child_workflow_id, serialization)`` as DBOS stored them; empty
            for a first execution.
    """

    workflow_status: str | None
    records: list[tuple[int, str | None, str | None, str, str | None, str | None]]


def _recall_sql(dbos_schema: str) -> str:
    return (
        f"SELECT (SELECT status FROM {dbos_schema}.workflow_status WHERE workflow_uuid = :w)"
        " AS workflow_status,"
        " (SELECT json_agg(json_build_array(function_id, output, error, function_name,"
        " child_workflow_id, serialization))"
        f" FROM {dbos_schema}.operation_outputs WHERE workflow_uuid = :w) AS records"
    )


async def recall_steps(
    session: AsyncSession | AsyncConnection, workflow_id: str, *, dbos_schema: str
) -> RecordedSteps:
    """The workflow's status and every step record (what DBOS's check of one step
    reads), in one statement of hogsend's transaction.

    DBOS's system database is the ``dbos_schema`` of the same database (unsharded), so a
    run reads them in the transaction that begins it (:func:`begin_run`).
    """
    row = (await session.execute(text(_recall_sql(dbos_schema)), {"w": workflow_id})).one()
    records = [(int(r[0]), r[1], r[2], str(r[3]), r[4], r[5]) for r in (row.records or ())]
    return RecordedSteps(workflow_status=row.workflow_status, records=records)
