"""Alembic environment: runs against the URL handed over by hogsend.db.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

import hogsend.db.tables  # noqa: F401  (registers every table on the metadata)
from hogsend.db.engine import make_sync_engine
from hogsend.db.tables.base import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
        include_schemas=False,
        version_table="alembic_version",
        transaction_per_migration=True,
    )


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    assert url, "hogsend.db.migrate sets sqlalchemy.url"
    engine = make_sync_engine(url)
    with engine.connect() as conn:
        _configure(conn)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
