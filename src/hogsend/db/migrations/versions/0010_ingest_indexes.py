"""ingest_indexes: fewer index entries per ingested event

Every event inserts a ``user_events`` row and an ``event_outbox`` row, and most new
identities a ``contacts`` row; each index on them is one more entry to write. Dropped:
``ix_user_events_user_id_event_occurred_at`` and ``ix_contacts_email``, which no query
uses (events are read by contact id, name or time; contacts by ``lower(email)``
through ``uq_contacts_email_live``, or by an ``ILIKE`` search no btree serves).
``ix_event_outbox_processed_at`` now covers processed rows only: its one reader, the
retention sweep (``processed_at < ...``), never looks at pending ones, which were an
entry per ingested event.

Revision ID: 0010_ingest_indexes
Revises: 0009_import_content
Create Date: 2026-11-29 00:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_ingest_indexes"
down_revision: str | None = "0009_import_content"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_user_events_user_id_event_occurred_at", table_name="user_events")
    op.drop_index("ix_contacts_email", table_name="contacts")
    op.drop_index("ix_event_outbox_processed_at", table_name="event_outbox")
    op.create_index(
        "ix_event_outbox_processed_at",
        "event_outbox",
        ["processed_at"],
        unique=False,
        postgresql_where=sa.text("processed_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_event_outbox_processed_at", table_name="event_outbox")
    op.create_index("ix_event_outbox_processed_at", "event_outbox", ["processed_at"], unique=False)
    op.create_index("ix_contacts_email", "contacts", ["email"], unique=False)
    op.create_index(
        "ix_user_events_user_id_event_occurred_at",
        "user_events",
        ["user_id", "event", "occurred_at"],
        unique=False,
    )
