"""The migration chain: one head, reversible, and in step with the table definitions."""

from __future__ import annotations

from alembic import command
from sqlalchemy import inspect

from hogsend.db import migrate
from hogsend.db.engine import make_sync_engine


def test_single_head() -> None:
    assert len(migrate.heads()) == 1


def test_upgrade_downgrade_upgrade_and_no_drift(empty_database_url: str) -> None:
    url = empty_database_url
    migrate.upgrade(url)
    engine = make_sync_engine(url)
    with engine.connect() as conn:
        tables = set(inspect(conn).get_table_names())
    assert {"api_keys", "worker_heartbeats", "audit_logs"} <= tables
    migrate.downgrade(url, "base")
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(url)
    assert migrate.status(url).in_sync
    # alembic check raises if autogenerate would produce any operation
    command.check(migrate.alembic_config(url))
    engine.dispose()
