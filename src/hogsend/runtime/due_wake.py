"""Waking a group of due parked runs in one transaction (docs/decisions/0003-parking.md).

A parked run that falls due with no message pending has nothing to do for its wait but
close it: move its row to ``active``, log the wait, and record the ``journey.woke`` step
that says so (the clock, "nothing pending", the status after). Done by the resumed run
itself, that was two transactions per run (ours, then DBOS's record of the step), a
quarter of the database work and of the worker's CPU of waking 10,000 due runs
(bench/journeys.py). :class:`DueWake` does it for the waker's whole claimed group, in the
waker's own transaction, set-based: one statement closes every wait and logs it, one
inserts every ``journey.woke`` record, one resumes every workflow onto the journeys
queue. The resumed runs replay that step from its record like any other.

Nothing about a replay changes: the record is the one the run would have written (same
step name, the next step id after its park step, the same output through DBOS's
serializer), so a run woken this way and one woken the old way replay alike, whatever
code replays them later. Runs parked by older code (no ``wakeEnd`` in their row), with a
pending message, or whose DBOS state is not "cancelled at its park step" are left to
DBOS's resume and close their wait in the body, as before.

Exactly once: the claim (rows locked, ``SKIP LOCKED``), the closing writes, the step
records and the resume commit together or not at all. The workflow rows are locked
while the records are written; a cancelled workflow has no owner, so no execution can
record a step of it until the resume hands it to the queue.

This writes DBOS's system tables (``workflow_status``, ``operation_outputs``) the way
DBOS 3.4 writes them (``dbos>=3.4,<3.5`` in pyproject.toml): :func:`install` checks the
columns it relies on and otherwise leaves the whole group to DBOS, with a warning.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.repos.journeys import DueRun
from hogsend.runtime.dbos_setup import DBOS_SCHEMA, EPOCH_MS_NOW, unsharded_postgres

log = structlog.get_logger(__name__)

PARK_STEP = "journey.park"
WOKE_STEP = "journey.woke"

_OUTPUT_COLUMNS = {
    "workflow_uuid",
    "function_id",
    "function_name",
    "output",
    "error",
    "child_workflow_id",
    "started_at_epoch_ms",
    "completed_at_epoch_ms",
    "serialization",
    "application_name",
    "retention_timestamp",
}
_STATUS_COLUMNS = {
    "workflow_uuid",
    "status",
    "owner_xid",
    "queue_name",
    "recovery_attempts",
    "workflow_deadline_epoch_ms",
    "deduplication_id",
    "started_at_epoch_ms",
    "updated_at",
    "completed_at",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class WakeEnd:
    """What closing a parked wait writes, kept in the parked row (``context.wakeEnd``).

    Attributes:
        step: the wait's step label (``<n>:sleep``...).
        action: the log line's action (``sleep``, ``wait_for_event``, ``send_window``).
        started: when the wait began (the log line's start).
        detail: the log line's detail.
        context: merged into the row's context as the wait closes (None: nothing).
    """

    step: str
    action: str
    started: datetime
    detail: Mapping[str, Any]
    context: Mapping[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        """The form stored in the row."""
        return {
            "step": self.step,
            "action": self.action,
            "started": self.started.isoformat(),
            "detail": dict(self.detail),
            "context": None if self.context is None else dict(self.context),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WakeEnd:
        """Read back :meth:`to_json`'s form."""
        return cls(
            step=str(data["step"]),
            action=str(data["action"]),
            started=datetime.fromisoformat(data["started"]),
            detail=dict(data.get("detail") or {}),
            context=data.get("context"),
        )


_LAST_STEPS = text(
    f"SELECT ws.workflow_uuid, ws.status, last.function_id, last.function_name"
    f" FROM {DBOS_SCHEMA}.workflow_status ws LEFT JOIN LATERAL ("
    f" SELECT o.function_id, o.function_name FROM {DBOS_SCHEMA}.operation_outputs o"
    f" WHERE o.workflow_uuid = ws.workflow_uuid ORDER BY o.function_id DESC LIMIT 1) last"
    f" ON true WHERE ws.workflow_uuid = ANY(:ids) FOR UPDATE OF ws"
)

# The closing move and log line of each wait (JourneyRuntime's ``journey.woke`` step
# writes the same for one run); a run that ended meanwhile keeps its status, unlogged.
_CLOSE_WAITS = text(
    "WITH ends AS (SELECT * FROM jsonb_to_recordset(CAST(:ends AS jsonb)) AS e(id uuid,"
    " step text, action text, detail jsonb, started timestamptz, ms int, context jsonb)),"
    " moved AS (UPDATE journey_states j SET status = 'active', current_step = ends.step,"
    " next_wake_at = NULL, waiting_for_event = NULL,"
    " context = j.context || coalesce(ends.context, '{}'::jsonb), updated_at = :now"
    " FROM ends WHERE j.id = ends.id AND j.status IN ('enrolled','active','waiting')"
    " RETURNING j.id, j.journey_id, j.contact_id, j.user_id)"
    " INSERT INTO journey_logs (journey_state_id, journey_id, contact_id, user_id, step,"
    " action, detail, started_at, finished_at, duration_ms)"
    " SELECT moved.id, moved.journey_id, moved.contact_id, moved.user_id, ends.step,"
    " ends.action, ends.detail, ends.started, :now, ends.ms"
    " FROM moved JOIN ends ON ends.id = moved.id RETURNING journey_state_id"
)

_RECORD_WOKE = text(
    f"INSERT INTO {DBOS_SCHEMA}.operation_outputs (workflow_uuid, function_id, function_name,"
    " output, error, child_workflow_id, started_at_epoch_ms, completed_at_epoch_ms,"
    " serialization, application_name, retention_timestamp)"
    f" SELECT t.w, t.f, :name, :output, NULL, NULL, :ms, :ms, :ser, :app, {EPOCH_MS_NOW}"
    " FROM unnest(CAST(:ws AS text[]), CAST(:fs AS integer[])) AS t(w, f)"
)

# What DBOS's resume_workflows writes (3.4), for the workflows of this group only.
_RESUME = text(
    f"UPDATE {DBOS_SCHEMA}.workflow_status SET status = 'ENQUEUED', owner_xid = NULL,"
    " queue_name = :queue, recovery_attempts = 0, workflow_deadline_epoch_ms = NULL,"
    f" deduplication_id = NULL, started_at_epoch_ms = NULL, updated_at = {EPOCH_MS_NOW},"
    " completed_at = NULL WHERE workflow_uuid = ANY(:ids) AND status = 'CANCELLED'"
)


class DueWake:
    """Closes the waits of a claimed group of due parked runs and resumes them.

    Args:
        sys_db: DBOS's system database (to tell a relaunched DBOS from this one).
        serializer: DBOS's serializer (the step record's output goes through it).
        app_name: DBOS's application name (stamped on step records, as DBOS does).
        queue: the queue the resumed workflows go to.
    """

    def __init__(self, sys_db: Any, serializer: Any, app_name: str | None, queue: str) -> None:
        self.sys_db = sys_db
        self.serializer = serializer
        self.app_name = app_name
        self.queue = queue
        self.woken = 0
        """Runs woken set-based so far (for tests and benchmarks)."""

    async def wake(self, session: AsyncSession, due: Sequence[DueRun], now: datetime) -> list[str]:
        """Wake the runs of ``due`` that can be, in ``session``'s transaction.

        Returns the workflow ids left for DBOS's own resume (their body closes the wait).
        """
        ends = {d.workflow_id: d for d in due if d.wake_end is not None}
        if not ends:
            return [d.workflow_id for d in due]
        rows = (await session.execute(_LAST_STEPS, {"ids": list(ends)})).all()
        # Cancelled at its park step: the run parked there and nothing ran since.
        ready = {
            row.workflow_uuid: int(row.function_id) + 1
            for row in rows
            if row.status == "CANCELLED" and row.function_name == PARK_STEP
        }
        woken = await self._close(session, [ends[w] for w in ready], ready, now) if ready else set()
        return [d.workflow_id for d in due if d.workflow_id not in woken]

    async def _close(
        self,
        session: AsyncSession,
        runs: Sequence[DueRun],
        function_ids: Mapping[str, int],
        now: datetime,
    ) -> set[str]:
        """Close the runs' waits, record their woke steps, resume them; which it woke."""
        from dbos._serialization import serialize_value

        closing = []
        for run in runs:
            assert run.wake_end is not None
            end = WakeEnd.from_json(run.wake_end)
            closing.append(
                {
                    "id": str(run.state_id),
                    "step": end.step,
                    "action": end.action,
                    "detail": dict(end.detail),
                    "started": end.started.isoformat(),
                    "ms": int((now - end.started).total_seconds() * 1000),
                    "context": None if end.context is None else dict(end.context),
                }
            )
        closed = await session.execute(_CLOSE_WAITS, {"ends": json.dumps(closing), "now": now})
        moved = {str(r.journey_state_id) for r in closed}
        # The woke step's output: the clock, nothing pending, the status after the move.
        # (The claim locked the rows while they were waiting, so every one moved; one
        # that did not would be left to DBOS's resume and close its wait in the body.)
        workflows = [r.workflow_id for r in runs if str(r.state_id) in moved]
        if not workflows:
            return set()
        output, serialization = serialize_value((now, False, "active"), None, self.serializer)
        millis = int(time.time() * 1000)
        await session.execute(
            _RECORD_WOKE,
            {
                "name": WOKE_STEP,
                "output": output,
                "ms": millis,
                "ser": serialization,
                "app": self.app_name,
                "ws": workflows,
                "fs": [function_ids[w] for w in workflows],
            },
        )
        await session.execute(_RESUME, {"queue": self.queue, "ids": workflows})
        self.woken += len(workflows)
        return set(workflows)


_installed: DueWake | None = None


def _missing_columns(sys_db: Any) -> list[str]:
    tables = getattr(sys_db, "tables", None)
    missing = []
    for table, columns in (
        ("operation_outputs", _OUTPUT_COLUMNS),
        ("workflow_status", _STATUS_COLUMNS),
    ):
        found = getattr(tables, table, None)
        names = set() if found is None else {c.name for c in found.c}
        missing += [f"{table}.{c}" for c in sorted(columns - names)]
    return missing


def install(queue: str) -> DueWake | None:
    """The set-based wake for the launched DBOS (made once per DBOS instance), or None
    when its system database is not the one this was written for: the waker then
    resumes every due run through DBOS, and each closes its wait in its body."""
    global _installed
    from dbos._dbos import _get_dbos_instance

    dbos = _get_dbos_instance()
    sys_db = dbos._sys_db
    if _installed is not None and _installed.sys_db is sys_db:
        return _installed
    missing = _missing_columns(sys_db)
    plain = unsharded_postgres(sys_db)
    serializer = getattr(dbos, "_serializer", None)
    if missing or not plain or serializer is None:
        log.warning(
            "DBOS is not the system database the set-based wake was written for;"
            " due runs wake one by one",
            missing=missing,
            system_database=type(sys_db).__name__,
        )
        return None
    _installed = DueWake(sys_db, serializer, getattr(sys_db, "app_name", None), queue)
    return _installed
