"""bucket_memberships: one active stay per contact and bucket, by contact id

Revision ID: 0007_bucket_active_contact
Revises: 0006_deferred_sends
Create Date: 2026-11-30 12:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_bucket_active_contact"
down_revision: str | None = "0006_deferred_sends"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ACTIVE = sa.text("status = 'active' AND deleted_at IS NULL")


def upgrade() -> None:
    op.create_index(
        "uq_bucket_memberships_contact_bucket_active",
        "bucket_memberships",
        ["contact_id", "bucket_id"],
        unique=True,
        postgresql_where=_ACTIVE,
    )


def downgrade() -> None:
    op.drop_index(
        "uq_bucket_memberships_contact_bucket_active",
        table_name="bucket_memberships",
        postgresql_where=_ACTIVE,
    )
