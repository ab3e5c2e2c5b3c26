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

A journey step whose work is one transaction of hogsend's (a log line, the writes of
the waits) can go further: :func:`in_transaction` runs it and writes the step's record
in that same transaction (the same two statements, the same output through DBOS's
serializer), and DBOS's own record of the step, which follows when the step returns, is
skipped. Profiling the wake of 2,000 due parked runs (bench/journeys.py) put the
record's transaction at one of the five of a woken run: its BEGIN, owner check, insert
and COMMIT, a pooled checkout and a thread hop. The step's effect and its record now
commit together: a crash between them can no longer leave the effect without its
record (the replay then ran the step again, which the step's own guard made harmless).

Only for an unsharded Postgres system database, whose rows are keyed by the workflow
id alone, in the database of hogsend's own tables (the replay prefetch and the
set-based wake read and write it there too); anything else keeps DBOS's method
(``dbos>=3.4,<3.5`` in pyproject.toml).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import sqlalchemy as sa
import structlog
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from hogsend.runtime.dbos_setup import DBOS_SCHEMA, EPOCH_MS_NOW, unsharded_postgres

log = structlog.get_logger(__name__)

T = TypeVar("T")

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

    def __init__(self, sys_db: Any, serializer: Any = None) -> None:
        self.sys_db = sys_db
        self.serializer = serializer
        self.written = 0
        """Step records written this way (for tests and benchmarks)."""
        self.joined = 0
        """Of those, records written in the step's own transaction (:func:`in_transaction`)."""
        # Steps recorded in their own transaction, whose record by DBOS is to be skipped.
        self._done: set[tuple[str, int]] = set()
        self._done_lock = threading.Lock()
        self._record_operation_result: Callable[..., Any] | None = None

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

    async def record_in(
        self, conn: AsyncConnection, name: str, output: Any
    ) -> tuple[str, int] | None:
        """Record the running step ``name``'s ``output`` in ``conn``'s transaction, with
        DBOS's checks (:meth:`record`); the step's key, or None outside a workflow's step."""
        from dbos._context import current_owner_xid, get_local_dbos_context

        ctx = get_local_dbos_context()
        if self.serializer is None or ctx is None or not ctx.is_step():
            return None
        workflow_id, function_id = ctx.workflow_id, ctx.function_id
        owner_xid = current_owner_xid(workflow_id, ctx)
        await self.insert_in(conn, workflow_id, function_id, name, output, owner_xid=owner_xid)
        return workflow_id, function_id

    async def insert_in(
        self,
        conn: AsyncConnection,
        workflow_id: str,
        function_id: int,
        name: str,
        output: Any,
        *,
        owner_xid: str | None,
    ) -> None:
        """:meth:`record`'s two statements for one step's output, in ``conn``'s transaction."""
        from dbos._error import DBOSStepNondeterminismError, DBOSWorkflowConflictIDError
        from dbos._serialization import serialize_value

        # Locked until commit: no hand-off lands between this check and the write.
        if owner_xid is not None:
            owner = (await conn.execute(_OWNER, {"w": workflow_id})).scalar()
            if owner != owner_xid:
                raise DBOSWorkflowConflictIDError(workflow_id)
        serialized, serialization = serialize_value(output, None, self.serializer)
        millis = int(time.time() * 1000)
        try:
            rows = (
                await conn.execute(
                    _INSERT,
                    {
                        "w": workflow_id,
                        "f": function_id,
                        "name": name,
                        "started": millis,
                        "completed": millis,
                        "output": serialized,
                        "error": None,
                        "child": None,
                        "ser": serialization,
                        "app": self.sys_db.app_name,
                    },
                )
            ).fetchall()
        except DBAPIError as exc:
            if self.sys_db._is_unique_constraint_violation(exc):
                raise DBOSStepNondeterminismError(workflow_id, function_id) from exc
            raise
        # A row already there is another execution's (this one records each step once).
        if rows and (rows[0][0] is None or int(rows[0][0]) != millis):
            raise DBOSStepNondeterminismError(workflow_id, function_id)

    def recorded(self, key: tuple[str, int]) -> None:
        """The step ``key`` committed its record: DBOS's record of it is skipped."""
        with self._done_lock:
            self._done.add(key)
        self.written += 1
        self.joined += 1

    def forget(self, workflow_id: str) -> None:
        """The run ended: drop any skip left for it (a step cancelled after it committed)."""
        with self._done_lock:
            if self._done:
                self._done = {key for key in self._done if key[0] != workflow_id}

    def record_operation_result(self, result: Any, **kwargs: Any) -> None:
        """DBOS's record of a step, skipped for a step that recorded itself."""
        key = (result["workflow_uuid"], result["function_id"])
        if result["error"] is None:
            with self._done_lock:
                done = key in self._done
                self._done.discard(key)
            if done:
                return
        assert self._record_operation_result is not None
        self._record_operation_result(result, **kwargs)


async def in_transaction(
    engine: AsyncEngine, name: str, work: Callable[[AsyncConnection], Awaitable[T]]
) -> T:
    """Run the step ``name``'s ``work`` in one transaction of ``engine`` that also records
    the step.

    Called inside the DBOS step ``name`` (the name it runs under), whose function returns
    ``work``'s result: the step's record
    (what DBOS would write when the step returns) commits with the work, and DBOS's own
    record is skipped. Outside a step, or without the replacement installed, it is
    ``work`` in a plain transaction and DBOS records the step as usual.
    """
    records = _installed
    async with engine.begin() as conn:
        output = await work(conn)
        key = None if records is None else await records.record_in(conn, name, output)
    if key is not None:
        assert records is not None
        records.recorded(key)
    return output


_installed: StepRecords | None = None


def install() -> StepRecords | None:
    """Replace the launched DBOS's step record (once per system database); None when
    the system database is not the one this was written for (DBOS's method stays)."""
    global _installed
    from dbos._dbos import _get_dbos_instance

    dbos = _get_dbos_instance()
    sys_db = dbos._sys_db
    if _installed is not None and _installed.sys_db is sys_db:
        return _installed
    columns = {c.name for c in sys_db.tables.operation_outputs.c}
    plain = (
        unsharded_postgres(sys_db)
        and hasattr(sys_db, "_record_operation_result_txn")
        and hasattr(sys_db, "_is_unique_constraint_violation")
        and hasattr(sys_db, "app_name")
        and hasattr(sys_db, "record_operation_result")
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
    _installed = StepRecords(sys_db, getattr(dbos, "_serializer", None))
    # Instance attributes shadow the class's methods for this system database only.
    sys_db._record_operation_result_txn = _installed.record  # type: ignore[method-assign]
    _installed._record_operation_result = sys_db.record_operation_result
    sys_db.record_operation_result = _installed.record_operation_result  # type: ignore[method-assign]
    return _installed
