"""The schema's rules, checked on a real migrated database.

These are the rules the reference schema got wrong (see docs/decisions/0001-schema.md),
plus a parity check that catches what ``alembic check`` cannot see: it compares neither
the predicates of partial indexes nor CHECK constraints.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import IntegrityError

import hogsend.db.tables  # noqa: F401  (registers every table on the metadata)
from hogsend.db.engine import make_sync_engine
from hogsend.db.tables.base import metadata


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    engine = make_sync_engine(database_url)
    yield engine
    engine.dispose()


def _insert(conn: Connection, table: str, **values: Any) -> None:
    columns = ", ".join(values)
    params = ", ".join(f":{name}" for name in values)
    conn.execute(text(f"INSERT INTO {table} ({columns}) VALUES ({params})"), values)


def _refused(engine: Engine, table: str, **values: Any) -> bool:
    """True if the insert violates a constraint (the failed transaction is rolled back)."""
    try:
        with engine.begin() as conn:
            _insert(conn, table, **values)
    except IntegrityError:
        return True
    return False


def test_every_timestamp_is_timezone_aware(engine: Engine) -> None:
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT table_name, column_name, data_type FROM information_schema.columns"
                " WHERE table_schema = 'public' AND (data_type LIKE 'timestamp%'"
                " OR data_type LIKE 'time %' OR data_type = 'date')"
            )
        ).all()
    naive = [(t, c, d) for t, c, d in rows if d != "timestamp with time zone"]
    assert naive == []
    # the query did look at the tables (every table has at least one timestamp)
    assert {t for t, _, _ in rows} >= set(metadata.tables)


def _journey_state(user: str, status: str, **extra: Any) -> dict[str, Any]:
    stamps = {"completed": "completed_at", "exited": "exited_at", "failed": "failed_at"}
    row: dict[str, Any] = {
        "contact_id": uuid.UUID(int=1),
        "user_id": user,
        "journey_id": "welcome",
        "workflow_id": f"hogsend.journey:welcome:{uuid.uuid4()}",
        "status": status,
    }
    if status in stamps:
        row[stamps[status]] = "2026-01-01T00:00:00Z"
    return row | extra


def test_journey_states_allow_repeated_terminal_runs(engine: Engine) -> None:
    for status in ("completed", "completed", "exited", "exited", "failed", "failed"):
        assert not _refused(engine, "journey_states", **_journey_state("u1", status))


@pytest.mark.parametrize("first", ["enrolled", "active", "waiting"])
@pytest.mark.parametrize("second", ["enrolled", "active", "waiting"])
def test_journey_states_refuse_two_running_runs(engine: Engine, first: str, second: str) -> None:
    assert not _refused(engine, "journey_states", **_journey_state("u1", first))
    assert _refused(engine, "journey_states", **_journey_state("u1", second))
    # another user, or a soft-deleted run, does not count
    assert not _refused(engine, "journey_states", **_journey_state("u2", second))
    assert not _refused(
        engine,
        "journey_states",
        **_journey_state("u1", second, deleted_at="2026-01-01T00:00:00Z"),
    )


def test_journey_state_terminal_status_needs_its_timestamp(engine: Engine) -> None:
    row = _journey_state("u1", "completed")
    del row["completed_at"]
    assert _refused(engine, "journey_states", **row)


def _membership(user: str, status: str, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "contact_id": uuid.uuid5(uuid.NAMESPACE_URL, user),
        "user_id": user,
        "bucket_id": "power-users",
        "status": status,
    }
    if status == "left":
        row["left_at"] = "2026-01-01T00:00:00Z"
    return row | extra


def test_bucket_memberships_one_active_many_left(engine: Engine) -> None:
    for _ in range(3):
        assert not _refused(engine, "bucket_memberships", **_membership("u1", "left"))
    assert not _refused(engine, "bucket_memberships", **_membership("u1", "active"))
    assert _refused(engine, "bucket_memberships", **_membership("u1", "active"))
    assert not _refused(engine, "bucket_memberships", **_membership("u2", "active"))
    # One active stay per contact too, even under another key (the contact's key changed).
    same_contact = _membership(
        "u1-renamed", "active", contact_id=uuid.uuid5(uuid.NAMESPACE_URL, "u1")
    )
    assert _refused(engine, "bucket_memberships", **same_contact)
    assert not _refused(
        engine,
        "bucket_memberships",
        **_membership("u1", "active", deleted_at="2026-01-01T00:00:00Z"),
    )


def test_deleting_a_journey_state_keeps_its_sends(engine: Engine) -> None:
    state = _journey_state("u1", "exited")
    state_id = uuid.uuid4()
    send_id = uuid.uuid4()
    with engine.begin() as conn:
        _insert(conn, "journey_states", id=state_id, **state)
        _insert(
            conn,
            "email_sends",
            id=send_id,
            journey_state_id=state_id,
            from_email="team@example.com",
            to_email="a@example.com",
            decision="sent",
            status="sent",
            idempotency_key="k1",
        )
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM journey_states WHERE id = :id"), {"id": state_id})
    with engine.connect() as conn:
        kept = conn.execute(
            text("SELECT journey_state_id FROM email_sends WHERE id = :id"), {"id": send_id}
        ).one()
    assert kept.journey_state_id is None


def test_email_send_decision_rules(engine: Engine) -> None:
    base = {"from_email": "team@example.com", "to_email": "a@example.com"}
    # a gate decision is a skipped attempt that holds no idempotency key
    assert not _refused(engine, "email_sends", decision="suppressed", status="skipped", **base)
    assert _refused(engine, "email_sends", decision="suppressed", status="queued", **base)
    assert _refused(engine, "email_sends", decision="sent", status="skipped", **base)
    assert _refused(
        engine, "email_sends", decision="capped", status="skipped", idempotency_key="k", **base
    )
    assert not _refused(engine, "email_sends", decision="queued", idempotency_key="k", **base)
    assert _refused(engine, "email_sends", decision="queued", idempotency_key="k", **base)
    assert _refused(engine, "email_sends", decision="bogus", **base)


def test_live_contact_email_is_unique_case_insensitively(engine: Engine) -> None:
    assert not _refused(engine, "contacts", email="ada@example.com")
    assert _refused(engine, "contacts", email="Ada@Example.COM")
    with engine.begin() as conn:
        conn.execute(text("UPDATE contacts SET deleted_at = now()"))
    # the soft-deleted row keeps its email but no longer blocks it
    assert not _refused(engine, "contacts", email="Ada@Example.COM")
    assert not _refused(engine, "contacts", email=None)
    assert not _refused(engine, "contacts", email=None)


def test_live_contact_external_and_anonymous_ids_are_unique(engine: Engine) -> None:
    assert not _refused(engine, "contacts", external_id="u1", anonymous_id="anon-1")
    assert _refused(engine, "contacts", external_id="u1")
    assert _refused(engine, "contacts", anonymous_id="anon-1")
    with engine.begin() as conn:
        conn.execute(text("UPDATE contacts SET deleted_at = now()"))
    assert not _refused(engine, "contacts", external_id="u1", anonymous_id="anon-1")


def test_suppression_is_unique_per_address_case_insensitively(engine: Engine) -> None:
    assert not _refused(engine, "email_suppressions", email="ada@example.com")
    assert _refused(engine, "email_suppressions", email="ADA@example.com")
    assert _refused(engine, "email_suppressions", email="bob@example.com", suppressed=True)


def _catalog(conn: Connection) -> dict[str, set[tuple[str, str]]]:
    indexes = conn.execute(
        text(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid) FROM pg_index i"
            " JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relname <> 'alembic_version_pkc'"
        )
    ).all()
    constraints = conn.execute(
        text(
            "SELECT t.relname || '.' || c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
            " JOIN pg_class t ON t.oid = c.conrelid"
            " JOIN pg_namespace n ON n.oid = t.relnamespace"
            " WHERE n.nspname = 'public' AND t.relname <> 'alembic_version'"
        )
    ).all()
    # Storage options (email_sends' fillfactor): the migration must set what the table says.
    options = conn.execute(
        text(
            "SELECT c.relname, array_to_string(c.reloptions, ',') FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r' AND c.reloptions IS NOT NULL"
        )
    ).all()
    return {
        "indexes": {(name, ddl) for name, ddl in indexes},
        "constraints": {(name, ddl) for name, ddl in constraints},
        "options": {(name, value) for name, value in options},
    }


def test_migration_matches_the_tables_exactly(database_url: str, empty_database_url: str) -> None:
    migrated = make_sync_engine(database_url)
    declared = make_sync_engine(empty_database_url)
    try:
        metadata.create_all(declared)
        with migrated.connect() as a, declared.connect() as b:
            from_migration, from_tables = _catalog(a), _catalog(b)
    finally:
        migrated.dispose()
        declared.dispose()
    assert from_migration["indexes"] == from_tables["indexes"]
    assert from_migration["constraints"] == from_tables["constraints"]
    assert from_migration["options"] == from_tables["options"]
    assert ("email_sends", "fillfactor=50") in from_migration["options"]


@pytest.mark.parametrize("table", ["event_outbox", "journey_logs", "import_errors"])
def test_bigint_ids_come_from_a_sequence(engine: Engine, table: str) -> None:
    with engine.connect() as conn:
        default = conn.execute(
            text(
                "SELECT column_default FROM information_schema.columns"
                " WHERE table_schema = 'public' AND table_name = :t AND column_name = 'id'"
            ),
            {"t": table},
        ).scalar_one()
    assert default == f"nextval('{table}_id_seq'::regclass)"


def test_outbox_ids_follow_insert_order(engine: Engine) -> None:
    with engine.begin() as conn:
        for n in range(3):
            _insert(
                conn,
                "event_outbox",
                event_id=uuid.uuid4(),
                contact_id=uuid.UUID(int=1),
                contact_key="u1",
                event=f"e{n}",
            )
        events = conn.execute(text("SELECT event FROM event_outbox ORDER BY id")).scalars().all()
    assert events == ["e0", "e1", "e2"]
