"""A journey run reads its recorded steps once, as it begins, not one step at a time.

DBOS replays a resumed workflow by calling its body again; before each step it asks its
system database whether that step was recorded (``check_operation_execution``): one
transaction with two queries per step, recorded or new. A run woken from parking
replays every step it took before parking and then runs new ones, so waking 10,000 due
runs cost tens of thousands of those transactions (bench/journeys.py).

:class:`RecordedSteps` answers that check for the journey workflows (each run calls
:meth:`RecordedSteps.prefetch` as it begins). The prefetch does what DBOS's check does
(the workflow's status, then its step records) in one transaction, for *every* step of
the run. Later checks are answered from memory: a recorded step with DBOS's own name
check (a replay of edited code still raises ``DBOSUnexpectedStepError`` at the first
operation that changed), a step with no record as new work, with no transaction.

Why a new step needs no check of its own: only the execution that owns the workflow can
record its steps (DBOS 3.4 checks the execution's ownership token, row-locked, in the
transaction that records a step), and an execution takes ownership before its body
runs, so the prefetch already saw every record another execution could have written,
and no other execution can add one afterwards. What the check also did, raising
``DBOSWorkflowCancelledError`` before a new step of a cancelled workflow, the record now
does after it (a cancel clears the owner, so the record raises
``DBOSWorkflowConflictIDError``): hogsend cancels a journey's workflow only as it parks
(and the body ends right there), exits are our own rows and messages, and every journey
step checks the run's row before acting, so no step's effect depends on that check.

Records are immutable once written, and the memory holds one running run's records at
most until its body returns (:meth:`RecordedSteps.forget`).

This wraps a method of DBOS's system database (3.4: ``dbos>=3.4,<3.5`` in
pyproject.toml): :func:`install` checks the parts it relies on and leaves DBOS alone,
with a warning, when they are not there.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
import structlog

from hogsend.runtime.dbos_setup import DBOS_SCHEMA

log = structlog.get_logger(__name__)

_REQUIRED = (
    "check_operation_execution",
    "tables",
    "engine",
    "_wf",
    "_own_key",
    "_key_column",
)


class RecordedSteps:
    """The recorded step outputs of the journey runs this process executes.

    Args:
        sys_db: DBOS's system database (``SystemDatabase`` of dbos 3.4).
        check: its original ``check_operation_execution``.
    """

    def __init__(self, sys_db: Any, check: Callable[..., Any]) -> None:
        self.sys_db = sys_db
        self.check = check
        self._records: dict[str, dict[int, dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.served = 0
        """Checks of recorded steps answered from memory (for tests and benchmarks)."""
        self.new = 0
        """Checks of new steps answered from memory (for tests and benchmarks)."""

    async def prefetch(self, workflow_id: str) -> bool:
        """The run ``workflow_id`` begins here: read its status and every record.

        Raises ``DBOSWorkflowCancelledError`` for a cancelled workflow, as DBOS's check
        of its first step would. Returns True when the run has recorded steps (a
        replay: a resumed, recovered or taken-over run).
        """
        found = await asyncio.to_thread(_read_records, self.sys_db, workflow_id)
        with self._lock:
            self._records[workflow_id] = found
        return bool(found)

    def preload(
        self, workflow_id: str, workflow_status: str | None, rows: Sequence[Sequence[Any]]
    ) -> bool:
        """The run ``workflow_id`` begins here with its status and records read by the
        caller (a journey run reads them in the transaction that begins it, on hogsend's
        connection: hogsend.db.repos.enrollments.recall_steps).

        ``rows`` are ``(function_id, output, error, function_name, child_workflow_id,
        serialization)`` of an unsharded system database. Raises and returns as
        :meth:`prefetch` does.
        """
        found = _records_of(workflow_id, workflow_status, rows)
        with self._lock:
            self._records[workflow_id] = found
        return bool(found)

    def forget(self, workflow_id: str) -> None:
        """The run's body returned (or raised): drop what is left of its records."""
        with self._lock:
            self._records.pop(workflow_id, None)

    def check_operation_execution(
        self,
        workflow_id: str,
        function_id: int,
        function_name: str,
        *,
        owner_key: str | None = None,
    ) -> Any:
        """DBOS's check, answered from the run's records once they were read."""
        with self._lock:
            records = self._records.get(workflow_id)
            if records is None:
                recorded = None
            elif (recorded := records.pop(function_id, None)) is None:
                self.new += 1
            else:
                self.served += 1
        if records is None:
            # Not a journey run, or one that began before this wrapper was installed.
            return self.check(workflow_id, function_id, function_name, owner_key=owner_key)
        if recorded is None:
            return None
        return _checked(workflow_id, function_id, function_name, recorded)

    def replayed(self, function_name: str) -> tuple[bool, Any]:
        """Answer the running workflow's next step from its records, without DBOS's step
        machinery: ``(True, output)`` when that step is recorded, ``(False, None)`` when
        it is new work (or the run's records were not read), for DBOS to run.

        Profiling the wake of due parked runs (bench/journeys.py) put DBOS's handling of
        a replayed step (its step context, the check's thread hop, the composed
        outcome around a function that does not run) at about a sixth of the worker's
        CPU per woken run, for a few recorded steps each. This takes the step's id as
        DBOS would (the workflow's next function id), checks the recorded name as
        :meth:`check_operation_execution` does (an edited journey still raises
        ``DBOSUnexpectedStepError``), and returns or raises the recorded outcome as
        DBOS's replay does.
        """
        from dbos._context import get_local_dbos_context

        ctx = get_local_dbos_context()
        if ctx is None or not ctx.is_workflow():
            return False, None
        workflow_id = ctx.workflow_id
        with self._lock:
            records = self._records.get(workflow_id)
            if records is None or ctx.function_id + 1 not in records:
                return False, None
        # The id DBOS's step would take (DBOSContext.snapshot_step_ctx).
        ctx.function_id += 1
        recorded = self.check_operation_execution(workflow_id, ctx.function_id, function_name)
        return True, _outcome(recorded)


def _outcome(recorded: dict[str, Any]) -> Any:
    """A recorded step's output, or its recorded error raised (DBOS's replay of a step)."""
    from dbos._dbos import _get_dbos_instance
    from dbos._serialization import deserialize_exception, deserialize_value

    serializer = _get_dbos_instance()._serializer
    if recorded["error"] is not None:
        raise deserialize_exception(recorded["error"], recorded["serialization"], serializer)
    if recorded["output"] is not None:
        return deserialize_value(recorded["output"], recorded["serialization"], serializer)
    raise Exception("Output and error are both None")


def _checked(
    workflow_id: str, function_id: int, function_name: str, recorded: dict[str, Any]
) -> Any:
    from dbos._error import DBOSUnexpectedStepError

    name = recorded.pop("function_name")
    if name != function_name:
        raise DBOSUnexpectedStepError(
            workflow_id=workflow_id,
            step_id=function_id,
            expected_name=function_name,
            recorded_name=name,
        )
    return recorded


def _read_records(sys_db: Any, workflow_id: str) -> dict[int, dict[str, Any]]:
    """The workflow's status check and all its records, in one transaction (DBOS's check
    reads the same two tables, for one step)."""
    from dbos._sys_db import db_retry

    tables = sys_db.tables
    outputs = tables.operation_outputs
    child_key = sys_db._key_column(outputs, "child_shard_key")
    if child_key is None:
        return _read_records_joined(sys_db, workflow_id)

    @db_retry(sys_db=sys_db)
    def read() -> tuple[list[Any], list[Any]]:
        with sys_db._own_key(workflow_id, key=None), sys_db.engine.begin() as conn:
            status = conn.execute(
                sa.select(tables.workflow_status.c.status).where(
                    *sys_db._wf(tables.workflow_status, workflow_id)
                )
            ).all()
            rows = conn.execute(
                sa.select(
                    outputs.c.function_id,
                    outputs.c.output,
                    outputs.c.error,
                    outputs.c.function_name,
                    outputs.c.child_workflow_id,
                    outputs.c.serialization,
                    child_key,
                ).where(*sys_db._wf(outputs, workflow_id))
            ).all()
        return status, rows

    status, rows = read()
    return _records_of(workflow_id, status[0][0] if status else None, rows)


# The status and every record in one statement, written once: building DBOS's two
# selects for every run was most of the prefetch's CPU (bench/journeys.py's wake).
# Unsharded system databases only (a sharded one keys rows by more than the id).
_STATUS_AND_RECORDS = sa.text(
    f"SELECT ws.status, o.function_id, o.output, o.error, o.function_name,"
    f" o.child_workflow_id, o.serialization FROM {DBOS_SCHEMA}.workflow_status ws"
    f" LEFT JOIN {DBOS_SCHEMA}.operation_outputs o ON o.workflow_uuid = ws.workflow_uuid"
    f" WHERE ws.workflow_uuid = :w"
)


def _read_records_joined(sys_db: Any, workflow_id: str) -> dict[int, dict[str, Any]]:
    from dbos._sys_db import db_retry

    @db_retry(sys_db=sys_db)
    def read() -> list[Any]:
        # One statement reads one snapshot: no transaction around it (as DBOS writes a
        # workflow's outcome), so no BEGIN and COMMIT round trips either.
        with sys_db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            return list(conn.execute(_STATUS_AND_RECORDS, {"w": workflow_id}).all())

    rows = read()
    return _records_of(
        workflow_id, rows[0][0] if rows else None, [row[1:] for row in rows if row[1] is not None]
    )


def _records_of(
    workflow_id: str, status: str | None, rows: Sequence[Sequence[Any]]
) -> dict[int, dict[str, Any]]:
    """A run's records by step id, after DBOS's status check of its first step.

    ``rows`` are ``(function_id, output, error, function_name, child_workflow_id,
    serialization[, child_shard_key])``; ``status`` is the workflow's (None: no row).
    Raises ``DBOSWorkflowCancelledError`` for a cancelled workflow.
    """
    from dbos._error import DBOSWorkflowCancelledError

    assert status is not None, f"Error: Workflow {workflow_id} does not exist"
    if status == "CANCELLED":
        raise DBOSWorkflowCancelledError(f"Workflow {workflow_id} is cancelled. Aborting function.")
    return {
        int(row[0]): {
            "output": row[1],
            "error": row[2],
            "function_name": row[3],
            "child_workflow_id": row[4],
            "serialization": row[5],
            "child_shard_key": row[6] if len(row) > 6 else None,
        }
        for row in rows
    }


_installed: RecordedSteps | None = None


def install() -> RecordedSteps | None:
    """Wrap the launched DBOS's step check (once per process; again after a relaunch).

    Returns the wrapper, or None when this DBOS lacks a part it relies on (replays then
    read their records one step at a time, as before).
    """
    global _installed
    from dbos._dbos import _get_dbos_instance

    sys_db = _get_dbos_instance()._sys_db
    if _installed is not None and _installed.sys_db is sys_db:
        return _installed
    missing = [name for name in _REQUIRED if not hasattr(sys_db, name)]
    if missing or not hasattr(sys_db.tables, "operation_outputs"):
        log.warning(
            "DBOS lacks what replay prefetch needs; replays read step by step", missing=missing
        )
        return None
    _installed = RecordedSteps(sys_db, sys_db.check_operation_execution)
    # An instance attribute shadows the class's method for this system database only.
    sys_db.check_operation_execution = _installed.check_operation_execution  # type: ignore[method-assign]
    return _installed


def installed() -> RecordedSteps | None:
    """The wrapper of this process's DBOS, if :func:`install` made one."""
    return _installed
