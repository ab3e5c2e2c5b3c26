"""tracking: email_opens, one row per hit on an open pixel

Revision ID: 0003_tracking
Revises: 0002
Create Date: 2026-12-01 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_tracking"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "email_opens",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("email_send_id", sa.UUID(), nullable=False),
        sa.Column("ip_address", sa.Text(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("is_bot", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("bot_reason", sa.Text(), nullable=True),
        sa.Column("proxy", sa.Text(), nullable=True),
        sa.Column(
            "opened_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["email_send_id"],
            ["email_sends.id"],
            name=op.f("fk_email_opens_email_send_id_email_sends"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_opens")),
    )
    op.create_index(
        op.f("ix_email_opens_email_send_id"), "email_opens", ["email_send_id"], unique=False
    )
    op.create_index(op.f("ix_email_opens_opened_at"), "email_opens", ["opened_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_email_opens_opened_at"), table_name="email_opens")
    op.drop_index(op.f("ix_email_opens_email_send_id"), table_name="email_opens")
    op.drop_table("email_opens")
