"""Build the DBOS configuration from hogsend settings, and launch or destroy DBOS.

DBOS keeps its state in the ``dbos`` schema of the same Postgres as hogsend's own
tables, so one database (and one backup) holds everything. Its application version is
pinned from settings: DBOS only recovers workflows of the running version, so a version
that changed with every deploy would strand every waiting journey.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from dbos import DBOS, DBOSConfig
from sqlalchemy import Engine, event

from hogsend.db.engine import libpq_url
from hogsend.settings import Settings

DBOS_APP_NAME = "hogsend"
DBOS_SCHEMA = "dbos"
EPOCH_MS_NOW = "CAST(extract(epoch FROM now()) * 1000 AS bigint)"
"""SQL for the transaction's time in epoch milliseconds, as DBOS 3.4 stamps its rows."""
# Async workflows hop to threads for every database write; unbounded, the pool grew to
# thousands of threads under load (see DESIGN.md), so cap it.
MAX_EXECUTOR_THREADS = 32
# DBOS's system-database pool, on top of hogsend's own pool: small, so many workers fit
# in one Postgres, but every step of every running workflow takes a connection from it
# twice (check, record): with 5, a burst of resumed journeys queued on the pool
# (bench/journeys.py: waking parked runs went from 10 to 18 runs/s with 10).
SYSTEM_DB_POOL_SIZE = 10
# SQLAlchemy's pre-ping is one more round trip on every checkout, a quarter of the round
# trips of a step; DBOS retries its operations on connection errors instead.
SYSTEM_DB_ENGINE_KWARGS = {"pool_pre_ping": False}

Registration = Callable[[], None]
"""A hook that registers workflows (``DBOS.workflow(name=...)``) before launch."""


def dbos_config(settings: Settings, database_url: str) -> DBOSConfig:
    """The DBOS configuration of one hogsend process.

    Args:
        settings: the process settings (version, worker id, log level).
        database_url: hogsend's Postgres; DBOS uses its ``dbos`` schema.
    """
    return {
        "name": DBOS_APP_NAME,
        "system_database_url": libpq_url(database_url),
        "dbos_system_schema": DBOS_SCHEMA,
        "application_version": settings.application_version,
        "executor_id": settings.worker_id,
        "max_executor_threads": MAX_EXECUTOR_THREADS,
        "sys_db_pool_size": SYSTEM_DB_POOL_SIZE,
        "db_engine_kwargs": dict(SYSTEM_DB_ENGINE_KWARGS),
        "run_migrations": True,
        "enable_otlp": False,
        # DBOS logs its own lifecycle at INFO through stdlib logging; our structured
        # logs already say when the worker starts, so keep DBOS to warnings.
        "log_level": "DEBUG" if settings.log_level == "debug" else "WARNING",
    }


def launch_dbos(
    settings: Settings, database_url: str, *, registrations: Sequence[Registration] = ()
) -> None:
    """Create the process's DBOS instance, run every registration hook, and launch it.

    Called on the thread that runs the process's event loop, DBOS adopts that loop:
    async workflows then share it (and its database engine) with the rest of the worker.
    """
    DBOS(config=dbos_config(settings, database_url))
    for register in registrations:
        register()
    DBOS.launch()
    from dbos._dbos import _get_dbos_instance

    engine = getattr(_get_dbos_instance()._sys_db, "engine", None)
    if isinstance(engine, Engine):
        release_job_lock_snapshots(engine)


JOB_LOCK_SQL = "pg_try_advisory_xact_lock("
"""What DBOS's background-job lock statement calls (the lock lives as long as its transaction)."""


def release_job_lock_snapshots(engine: Engine) -> None:
    """Make the transaction holding DBOS's background-job lock stop holding a snapshot.

    DBOS takes that lock with a parameterised query and keeps the transaction open for
    the rest of its one-second interval. Over the extended protocol, the query's portal,
    and the snapshot it ran with, stay open until the connection's next statement, so
    the worker held the database's xmin horizon about a second back at all times:
    Postgres could then prune no row version newer than that, and outcome updates of
    ``email_sends`` almost never stayed on their page (docs/database.md). A statement
    without parameters right after the lock goes over the simple protocol, which
    replaces the portal; the lock stays, its snapshot goes. Attached once DBOS has
    launched, so the job thread's first transaction (begun at launch) may still hold
    one, for that one interval.
    """

    @event.listens_for(engine, "after_cursor_execute")
    def _drop_portal(
        conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool
    ) -> None:
        if JOB_LOCK_SQL in statement:
            cursor.connection.execute("SELECT 1")


def destroy_dbos(*, drain_seconds: int = 0) -> None:
    """Stop dequeuing, wait up to ``drain_seconds`` for running workflows, and tear down.

    Workflows still running afterwards stay PENDING in the database and are recovered
    by the next process with the same executor id and application version.
    """
    DBOS.destroy(workflow_completion_timeout_sec=drain_seconds)


# The coroutine DBOS runs each async workflow in. Recognised by name: DBOS keeps no
# public list of the workflow tasks it started on the caller's loop.
_WORKFLOW_COROUTINE = "_execute_workflow_async"


async def cancel_stranded_workflows(timeout: float = 5.0) -> int:
    """Cancel the workflow coroutines still running on this loop after :func:`destroy_dbos`.

    DBOS waits only ``drain_seconds`` for running workflows, and a workflow cancelled
    while it sleeps or waits for a message keeps its coroutine until the old wake time
    (see DESIGN.md). Left alone, such a coroutine would wake later and write through a
    destroyed DBOS, possibly to a database that is gone. Cancelling it writes nothing:
    the run stays PENDING (or CANCELLED) in the database, and a worker recovers it.

    Returns:
        How many workflow tasks were cancelled.
    """
    current = asyncio.current_task()
    stranded = [
        task
        for task in asyncio.all_tasks()
        if task is not current
        and not task.done()
        and getattr(task.get_coro(), "__qualname__", "") == _WORKFLOW_COROUTINE
    ]
    for task in stranded:
        task.cancel()
    if stranded:
        await asyncio.wait(stranded, timeout=timeout)
    return len(stranded)


def unsharded_postgres(sys_db: Any) -> bool:
    """Whether DBOS's system database is Postgres with rows keyed by the workflow id
    alone, the one hogsend's own statements on DBOS 3.4's tables are written for
    (replay, step_records, due_wake); a sharded one keys rows by more than the id."""
    return type(sys_db).__name__ == "PostgresSystemDatabase" and not getattr(
        sys_db, "sharded", False
    )
