"""deferred_sends: deferred attempts kept until the sweep sends them; sends by lower(address)

Revision ID: 0006_deferred_sends
Revises: 0005_transactional_sends
Create Date: 2026-11-30 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006_deferred_sends"
down_revision: str | None = "0005_transactional_sends"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deferred_sends",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("email_send_id", sa.UUID(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("request", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("status", sa.Text(), server_default=sa.text("'pending'"), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("resent_send_id", sa.UUID(), nullable=True),
        sa.Column("resent_decision", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "status IN ('pending','done','failed')", name=op.f("ck_deferred_sends_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["email_send_id"],
            ["email_sends.id"],
            name=op.f("fk_deferred_sends_email_send_id_email_sends"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["resent_send_id"],
            ["email_sends.id"],
            name=op.f("fk_deferred_sends_resent_send_id_email_sends"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deferred_sends")),
        sa.UniqueConstraint("email_send_id", name=op.f("uq_deferred_sends_email_send_id")),
    )
    op.create_index(
        "ix_deferred_sends_due",
        "deferred_sends",
        ["due_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_email_sends_lower_to_email_created_at",
        "email_sends",
        [sa.text("lower(to_email)"), "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_email_sends_lower_to_email_created_at", table_name="email_sends")
    op.drop_index(
        "ix_deferred_sends_due",
        table_name="deferred_sends",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_table("deferred_sends")
