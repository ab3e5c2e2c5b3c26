"""bucket_configs.reconciled_at: up to when reconcile has looked at every member

Revision ID: 0008_bucket_reconciled_at
Revises: 0007_bucket_active_contact
Create Date: 2026-11-30 13:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_bucket_reconciled_at"
down_revision: str | None = "0007_bucket_active_contact"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "bucket_configs", sa.Column("reconciled_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("bucket_configs", "reconciled_at")
