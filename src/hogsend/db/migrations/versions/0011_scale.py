"""scale: indexes that keep bucket backfill and reconcile linear in the population, and
import files stored uncompressed so a chunk reads its slice without decompressing the
file up to it

``(contact_id, bucket_id)`` serves the membership epoch (count of a contact's earlier
rows in a bucket) and the "already a member" probe per contact; the partial
``(bucket_id, coalesce(last_evaluated_at, '-infinity'), id)`` index over active rows lets a sweep
batch read its oldest-evaluated members in index order instead of sorting them all.

``import_jobs.content`` gets ``STORAGE EXTERNAL``: out of line but not compressed, so
``substring(content FROM offset FOR n)`` fetches only the TOAST chunks it needs (with
compression, every chunk decompressed the file from its start: quadratic in its size).

Revision ID: 0011_scale
Revises: 0010_ingest_indexes
Create Date: 2026-11-29 00:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011_scale"
down_revision: str | None = "0010_ingest_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE import_jobs ALTER COLUMN content SET STORAGE EXTERNAL")
    op.create_index(
        "ix_bucket_memberships_contact_id_bucket_id",
        "bucket_memberships",
        ["contact_id", "bucket_id"],
    )
    op.create_index(
        "ix_bucket_memberships_sweep_order",
        "bucket_memberships",
        ["bucket_id", sa.text("coalesce(last_evaluated_at, '-infinity'::timestamptz)"), "id"],
        postgresql_where=sa.text("status = 'active' AND deleted_at IS NULL"),
    )


def downgrade() -> None:
    op.execute("ALTER TABLE import_jobs ALTER COLUMN content SET STORAGE EXTENDED")
    op.drop_index("ix_bucket_memberships_sweep_order", table_name="bucket_memberships")
    op.drop_index("ix_bucket_memberships_contact_id_bucket_id", table_name="bucket_memberships")
