"""email: webhook receipts (provider delivery ids), soft-bounce streak per address

Revision ID: 0004_webhook_receipts
Revises: 0003_tracking
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_webhook_receipts"
down_revision: str | None = "0003_tracking"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "email_suppressions",
        sa.Column("soft_bounce_streak", sa.Integer(), server_default=sa.text("0"), nullable=False),
    )
    op.create_table(
        "webhook_receipts",
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("delivery_id", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("provider_message_id", sa.Text(), nullable=True),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("email_send_id", sa.UUID(), nullable=True),
        sa.Column(
            "received_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["email_send_id"],
            ["email_sends.id"],
            name=op.f("fk_webhook_receipts_email_send_id_email_sends"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("source", "delivery_id", name=op.f("pk_webhook_receipts")),
    )
    op.create_index(
        op.f("ix_webhook_receipts_received_at"), "webhook_receipts", ["received_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_webhook_receipts_received_at"), table_name="webhook_receipts")
    op.drop_table("webhook_receipts")
    op.drop_column("email_suppressions", "soft_bounce_streak")
