"""email_sends: the kind of each send, and the hand-off of sends a worker delivers

Revision ID: 0005_transactional_sends
Revises: 0004_webhook_receipts
Create Date: 2026-11-29 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005_transactional_sends"
down_revision: str | None = "0004_webhook_receipts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "email_sends",
        sa.Column("kind", sa.Text(), server_default=sa.text("'transactional'"), nullable=False),
    )
    op.add_column(
        "email_sends",
        sa.Column("handoff", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    # Rows written before the column existed: the sender is known from the run it belongs to.
    op.execute(
        "UPDATE email_sends SET kind = CASE WHEN journey_id IS NOT NULL THEN 'journey'"
        " WHEN campaign_id IS NOT NULL THEN 'campaign' ELSE 'transactional' END"
    )
    op.create_check_constraint(
        op.f("ck_email_sends_kind_known"),
        "email_sends",
        "kind IN ('transactional','journey','campaign','test')",
    )
    op.create_check_constraint(
        op.f("ck_email_sends_handoff_only_queued"),
        "email_sends",
        "handoff IS NULL OR decision = 'queued'",
    )
    op.create_index(
        "ix_email_sends_handoff",
        "email_sends",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("handoff IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_email_sends_handoff",
        table_name="email_sends",
        postgresql_where=sa.text("handoff IS NOT NULL"),
    )
    op.drop_constraint(op.f("ck_email_sends_handoff_only_queued"), "email_sends", type_="check")
    op.drop_constraint(op.f("ck_email_sends_kind_known"), "email_sends", type_="check")
    op.drop_column("email_sends", "handoff")
    op.drop_column("email_sends", "kind")
