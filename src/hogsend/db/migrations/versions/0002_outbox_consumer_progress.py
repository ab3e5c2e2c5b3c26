"""outbox: per-consumer progress, indexes over blocking and dead rows

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "event_outbox",
        sa.Column(
            "consumers_done",
            postgresql.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
    )
    op.create_index(
        "ix_event_outbox_blocking",
        "event_outbox",
        ["contact_id", "id"],
        unique=False,
        postgresql_where=sa.text(
            "processed_at IS NULL AND dead_at IS NULL AND (locked_until IS NOT NULL OR attempts > 0)"
        ),
    )
    op.create_index(
        "ix_event_outbox_dead",
        "event_outbox",
        ["id"],
        unique=False,
        postgresql_where=sa.text("dead_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_event_outbox_dead",
        table_name="event_outbox",
        postgresql_where=sa.text("dead_at IS NOT NULL"),
    )
    op.drop_index(
        "ix_event_outbox_blocking",
        table_name="event_outbox",
        postgresql_where=sa.text(
            "processed_at IS NULL AND dead_at IS NULL AND (locked_until IS NOT NULL OR attempts > 0)"
        ),
    )
    op.drop_column("event_outbox", "consumers_done")
