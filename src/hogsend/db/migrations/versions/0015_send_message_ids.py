"""Provider message ids in a narrow table of their own, so recording an outcome stays HOT

Every send updates its ``email_sends`` row with the provider's outcome. The unique index
on ``(provider, provider_message_id)`` made that update change an indexed column (NULL to
the provider's id), so Postgres could never keep it on the row's page ("HOT"): each
outcome wrote a new entry into every index of the table. Measured in the campaign
benchmark: 31,234 sends, 62,076 updates of ``email_sends``, 6,942 of them HOT, and the
outcome statement most of the database's CPU and WAL per send.

* ``email_send_messages`` (message id, provider, send id) is what a delivery report
  looks a send up by; the outcome writes one narrow row there (one index entry);
* ``uq_email_sends_provider_message_id`` is dropped: ``email_sends.provider_message_id``
  stays as the send's record (the admin API shows it), no longer indexed;
* existing ids are copied over.

Revision ID: 0015_send_message_ids
Revises: 0014_email_send_indexes
Create Date: 2026-11-29 15:35:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015_send_message_ids"
down_revision: str | None = "0014_email_send_indexes"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "email_send_messages",
        sa.Column("message_id", sa.Text(), nullable=False),
        sa.Column("provider", sa.Text(), nullable=False),
        sa.Column("email_send_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("message_id", "provider", name=op.f("pk_email_send_messages")),
    )
    op.execute(
        "INSERT INTO email_send_messages (message_id, provider, email_send_id)"
        " SELECT provider_message_id, coalesce(provider, ''), id FROM email_sends"
        " WHERE provider_message_id IS NOT NULL ON CONFLICT DO NOTHING"
    )
    op.drop_index("uq_email_sends_provider_message_id", table_name="email_sends")


def downgrade() -> None:
    op.create_index(
        "uq_email_sends_provider_message_id",
        "email_sends",
        ["provider", "provider_message_id"],
        unique=True,
        postgresql_where=sa.text("provider_message_id IS NOT NULL"),
    )
    op.drop_table("email_send_messages")
