"""DBOS's record of a step, written with two statements prepared once instead of built
anew for every step.

Every new step of a workflow ends in DBOS 3.4's ``_record_operation_result_txn``: the
workflow's owner checked (its status row locked), then the step's row inserted. DBOS
builds both statements with SQLAlchemy's expression language on every call, and for
the insert (``ON CONFLICT ... DO UPDATE ... RETURNING``) building it and computing its
cache key cost more worker CPU than the round trips (profiling the wake of due parked
runs, bench/journeys.py). :func:`install` replaces the method, for this process's
system database only, with one that runs the same two statements as fixed text, with
the same checks and errors:

* an execution that no longer owns the workflow (a cancel, a resume or a recovery
  handed it on) gets ``DBOSWorkflowConflictIDError`` and writes nothing;
* a row already there for the step with another completion time (or a unique
  violation) is ``DBOSStepNondeterminismError``; the same time is this execution's own
  retry and passes.

Only for an unsharded Postgres system database, whose rows are keyed by the workflow
id alone; anything else keeps DBOS's method (``dbos>=3.4,<3.5`` in pyproject.toml).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import DBAPIError

from hogsend.runtime.dbos_setup import DBOS_SCHEMA, EPOCH_MS_NOW, unsharded_postgres

log = structlog.get_logger(__name__)

_OWNER = sa.text(
    f"SELECT owner_xid FROM {DBOS_SCHEMA}.workflow_status WHERE workflow_uuid = :w"
    " FOR NO KEY UPDATE"
)
_INSERT = sa.text(
    f"INSERT INTO {DBOS_SCHEMA}.operation_outputs AS o (workflow_uuid, function_id,"
    " function_name, started_at_epoch_ms, completed_at_epoch_ms, output, error,"
    " child_workflow_id, serialization, application_name, retention_timestamp)"
    " VALUES (:w, :f, :name, :started, :completed, :output, :error, :child, :ser, :app,"
    f" {EPOCH_MS_NOW})"
    " ON CONFLICT (workflow_uuid, function_id)"
    " DO UPDATE SET completed_at_epoch_ms = o.completed_at_epoch_ms"
    " RETURNING completed_at_epoch_ms"
)


class StepRecords:
    """The replacement of one system database's step record.

    Args:
        sys_db: DBOS's system database (``PostgresSystemDatabase`` of dbos 3.4).
    """

    def __init__(self, sys_db: Any) -> None:
        self.sys_db = sys_db
        self.written = 0
        """Step records written this way (for tests and benchmarks)."""

    def record(
        self,
        result: Any,
        completed_at_epoch_ms: int,
        conn: Any,
        *,
        owner_xid: str | None = None,
        child_values: Any = None,
    ) -> None:
        """Insert the step's row after checking the owner, as DBOS's method does."""
        from dbos._context import current_owner_xid
        from dbos._error import DBOSStepNondeterminismError, DBOSWorkflowConflictIDError

        error = result["error"]
        output = result["output"]
        assert error is None or output is None, "Only one of error or output can be set"
        workflow_id = result["workflow_uuid"]
        if owner_xid is None:
            owner_xid = current_owner_xid(workflow_id)
        # Locked until commit: no hand-off lands between this check and the write.
        if owner_xid is not None and conn.execute(_OWNER, {"w": workflow_id}).scalar() != owner_xid:
            raise DBOSWorkflowConflictIDError(workflow_id)
        try:
            rows = conn.execute(
                _INSERT,
                {
                    "w": workflow_id,
                    "f": result["function_id"],
                    "name": result["function_name"],
                    "started": result["started_at_epoch_ms"],
                    "completed": completed_at_epoch_ms,
                    "output": output,
                    "error": error,
                    "child": result["child_workflow_id"],
                    "ser": result["serialization"],
                    "app": self.sys_db.app_name,
                },
            ).fetchall()
        except DBAPIError as exc:
            if self.sys_db._is_unique_constraint_violation(exc):
                raise DBOSStepNondeterminismError(workflow_id, result["function_id"]) from exc
            raise
        if rows and (rows[0][0] is None or int(rows[0][0]) != completed_at_epoch_ms):
            raise DBOSStepNondeterminismError(workflow_id, result["function_id"])
        self.written += 1


_installed: StepRecords | None = None


def install() -> StepRecords | None:
    """Replace the launched DBOS's step record (once per system database); None when
    the system database is not the one this was written for (DBOS's method stays)."""
    global _installed
    from dbos._dbos import _get_dbos_instance

    sys_db = _get_dbos_instance()._sys_db
    if _installed is not None and _installed.sys_db is sys_db:
        return _installed
    columns = {c.name for c in sys_db.tables.operation_outputs.c}
    plain = (
        unsharded_postgres(sys_db)
        and hasattr(sys_db, "_record_operation_result_txn")
        and hasattr(sys_db, "_is_unique_constraint_violation")
        and hasattr(sys_db, "app_name")
        # An unsharded database stores nothing else with a step's row.
        and sys_db._child_values("x") == {}
        and sys_db._wf_values("x") == {}
        and {"application_name", "retention_timestamp", "serialization"} <= columns
    )
    if not plain:
        log.warning(
            "DBOS is not the system database the step record was written for;"
            " steps are recorded by DBOS's own statements",
            system_database=type(sys_db).__name__,
        )
        return None
    _installed = StepRecords(sys_db)
    # An instance attribute shadows the class's method for this system database only.
    sys_db._record_operation_result_txn = _installed.record  # type: ignore[method-assign]
    return _installed
