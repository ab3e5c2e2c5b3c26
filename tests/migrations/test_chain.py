"""The migration chain: one head, reversible, and in step with the table definitions."""

from __future__ import annotations

from alembic import command
from sqlalchemy import Connection, inspect, text

import hogsend.db.tables  # noqa: F401  (registers every table on the metadata)
from hogsend.db import migrate
from hogsend.db.engine import make_sync_engine
from hogsend.db.tables.base import metadata

TABLES = {
    # auth
    "api_keys",
    "studio_sessions",
    "studio_users",
    # contacts
    "contact_aliases",
    "contacts",
    "list_subscriptions",
    # events
    "event_outbox",
    "user_events",
    # buckets
    "bucket_configs",
    "bucket_memberships",
    # journeys
    "journey_configs",
    "journey_logs",
    "journey_states",
    # email
    "email_opens",
    "deferred_sends",
    "email_preferences",
    "email_send_marks",
    "email_send_messages",
    "email_sends",
    "email_suppressions",
    "link_clicks",
    "outbox_messages",
    "tracked_link_sets",
    "tracked_links",
    "webhook_receipts",
    # campaigns
    "campaign_recipients",
    "campaigns",
    # imports
    "import_errors",
    "import_jobs",
    # operations
    "alert_history",
    "alert_rules",
    "audit_logs",
    "dead_letter_queue",
    "rate_limit_counters",
    "worker_heartbeats",
}


def _leftovers(conn: Connection) -> list[tuple[str, str]]:
    """Every table, sequence, view, type and function left in the public schema."""
    relations = conn.execute(
        text(
            "SELECT c.relkind::text, c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relname NOT LIKE 'alembic_version%'"
        )
    ).all()
    types = conn.execute(
        text(
            "SELECT 'type', t.typname FROM pg_type t"
            " JOIN pg_namespace n ON n.oid = t.typnamespace"
            " WHERE n.nspname = 'public' AND t.typtype IN ('e', 'd', 'c')"
            " AND t.typname NOT LIKE 'alembic_version%'"
        )
    ).all()
    functions = conn.execute(
        text(
            "SELECT 'function', p.proname FROM pg_proc p"
            " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'"
        )
    ).all()
    return [(kind, name) for kind, name in [*relations, *types, *functions]]


def test_single_head() -> None:
    assert len(migrate.heads()) == 1


def test_table_list_is_complete() -> None:
    assert set(metadata.tables) == TABLES


def test_upgrade_downgrade_upgrade_and_no_drift(empty_database_url: str) -> None:
    url = empty_database_url
    migrate.upgrade(url)
    engine = make_sync_engine(url)
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) == TABLES | {"alembic_version"}
    migrate.downgrade(url, "base")
    with engine.connect() as conn:
        assert set(inspect(conn).get_table_names()) <= {"alembic_version"}
        assert _leftovers(conn) == []
    migrate.upgrade(url)
    assert migrate.status(url).in_sync
    # alembic check raises if autogenerate would produce any operation
    command.check(migrate.alembic_config(url))
    engine.dispose()
