"""Two reads of DBOS's queue polls, written once as text instead of built on every poll.

Every poll of a DBOS 3.4 queue (the journeys queue every 100 ms, the others every
second, in every worker) reloads the queue's row (``get_queue``: a transaction around
one select) and, in the claim's transaction, reads the application's latest version
(``_latest_application_version``: a union of two probes). DBOS builds both with
SQLAlchemy's expression language each time; measured on an idle worker and during the
wake of due parked runs (bench/journeys.py), building them and computing their cache
keys cost more worker CPU than the round trips, and the pollers ran whether or not
there was work. :func:`install` replaces the two methods, for this process's system
database only, with the same reads as fixed text: the same rows, the same queue built
from the row by DBOS's own ``queue_from_db_row``; the queue's row is read in autocommit
(one statement reads one snapshot, as in DBOS's transaction around it).

Only for an unsharded Postgres system database, whose global tables (queues,
application versions) have no per-shard predicate; anything else keeps DBOS's methods
(``dbos>=3.4,<3.5`` in pyproject.toml).
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
import structlog

from hogsend.runtime.dbos_setup import DBOS_SCHEMA, unsharded_postgres

log = structlog.get_logger(__name__)

_QUEUE = sa.text(f"SELECT * FROM {DBOS_SCHEMA}.queues WHERE name = :name")

_VERSION_COLUMNS = "version_id, version_name, version_timestamp, created_at, application_name"
# Each owner probed on its own (the composite index serves both), newest of the two.
_LATEST_OWN = sa.text(
    f"SELECT * FROM ((SELECT {_VERSION_COLUMNS} FROM {DBOS_SCHEMA}.application_versions"
    " WHERE application_name = :app ORDER BY application_name, version_timestamp DESC"
    f" LIMIT 1) UNION ALL (SELECT {_VERSION_COLUMNS} FROM {DBOS_SCHEMA}.application_versions"
    " WHERE application_name IS NULL ORDER BY application_name, version_timestamp DESC"
    " LIMIT 1)) probes ORDER BY version_timestamp DESC LIMIT 1"
)
_LATEST_ANY = sa.text(
    f"SELECT {_VERSION_COLUMNS} FROM {DBOS_SCHEMA}.application_versions"
    " ORDER BY version_timestamp DESC LIMIT 1"
)


class QueuePolls:
    """The replacement reads of one system database's queue polls.

    Args:
        sys_db: DBOS's system database (``PostgresSystemDatabase`` of dbos 3.4).
    """

    def __init__(self, sys_db: Any) -> None:
        self.sys_db = sys_db
        self.queue_reads = 0
        """Queue rows read this way (for tests)."""
        self.version_reads = 0
        """Latest versions read this way (for tests)."""

    def get_queue(self, name: str, *, client_system_database: Any = None) -> Any:
        """DBOS's ``get_queue``: the queue ``name`` from its row, or None."""
        from dbos._sys_db import queue_from_db_row

        with self.sys_db.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            row = conn.execute(_QUEUE, {"name": name}).fetchone()
        self.queue_reads += 1
        if row is None:
            return None
        return queue_from_db_row(row, client_system_database=client_system_database)

    def latest_application_version(self, c: sa.Connection, application_name: str | None) -> Any:
        """DBOS's ``_latest_application_version``: the newest version the application
        sees (its own and unclaimed ones; every one when it has no name), or None."""
        self.version_reads += 1
        if not application_name:
            return c.execute(_LATEST_ANY).fetchone()
        return c.execute(_LATEST_OWN, {"app": application_name}).fetchone()


_installed: QueuePolls | None = None


def install() -> QueuePolls | None:
    """Replace the launched DBOS's two poll reads (once per system database); None when
    the system database is not the one this was written for (DBOS's methods stay)."""
    global _installed
    from dbos._dbos import _get_dbos_instance

    sys_db = _get_dbos_instance()._sys_db
    if _installed is not None and _installed.sys_db is sys_db:
        return _installed
    tables = getattr(sys_db, "tables", None)
    versions = getattr(tables, "application_versions", None)
    queues = getattr(tables, "queues", None)
    plain = (
        unsharded_postgres(sys_db)
        and hasattr(sys_db, "get_queue")
        and hasattr(sys_db, "_latest_application_version")
        and versions is not None
        and queues is not None
        and {"version_id", "version_name", "version_timestamp", "created_at", "application_name"}
        <= {c.name for c in versions.c}
        and sys_db._global(queues) == []
        and sys_db._global(versions) == []
    )
    if not plain:
        log.warning(
            "DBOS is not the system database the queue poll reads were written for;"
            " DBOS builds them on every poll",
            system_database=type(sys_db).__name__,
        )
        return None
    _installed = QueuePolls(sys_db)
    # Instance attributes shadow the class's methods for this system database only.
    sys_db.get_queue = _installed.get_queue  # type: ignore[method-assign]
    sys_db._latest_application_version = _installed.latest_application_version  # type: ignore[method-assign]
    return _installed
