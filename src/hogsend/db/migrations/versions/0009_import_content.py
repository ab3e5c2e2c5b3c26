"""import_content: the uploaded import file kept in the job row, reachable by every worker

Revision ID: 0009_import_content
Revises: 0008_bucket_reconciled_at
Create Date: 2026-11-28 22:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_import_content"
down_revision: str | None = "0008_bucket_reconciled_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("import_jobs", sa.Column("content", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    op.drop_column("import_jobs", "content")
