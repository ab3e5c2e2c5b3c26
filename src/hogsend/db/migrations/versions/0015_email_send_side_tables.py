"""email_sends: what a send wrote as extra updates of its wide row goes to narrow tables

A batch send updated its ``email_sends`` row twice: once to take its "decided ahead"
mark off before the provider call, once with the outcome. The unique index on
``(provider, provider_message_id)`` made the outcome change an indexed column, so it
could never stay on the row's page ("HOT"), and either update leaves the page whenever
the page is full of versions an open transaction may still see: then every index of the
table takes a new entry. Measured in the campaign benchmark: 31,234 sends, 62,076
updates of ``email_sends``, 6,942 of them HOT; the outcome statement was most of the
database's CPU and WAL per send.

* ``email_send_messages`` (message id, provider, send id) is what a delivery report
  looks a send up by; the outcome writes one narrow row there (one index entry);
* ``uq_email_sends_provider_message_id`` is dropped: ``email_sends.provider_message_id``
  stays as the send's record (the admin API shows it), no longer indexed;
* ``email_send_marks`` (send id) holds the "decided ahead" marks that were a key of
  ``decision_detail``: inserted with the row, deleted before the provider call;
* existing ids and marks are moved over.

Revision ID: 0015_email_send_side_tables
Revises: 0014_email_send_indexes
Create Date: 2026-11-29 15:35:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015_email_send_side_tables"
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
    op.create_table(
        "email_send_marks",
        sa.Column("email_send_id", postgresql.UUID(as_uuid=True), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("email_send_id", name=op.f("pk_email_send_marks")),
    )
    op.execute(
        "INSERT INTO email_send_marks (email_send_id) SELECT id FROM email_sends"
        " WHERE decision = 'queued' AND decision_detail ? 'ahead'"
    )
    op.execute(
        "UPDATE email_sends SET decision_detail = nullif(decision_detail - 'ahead', '{}')"
        " WHERE decision = 'queued' AND decision_detail ? 'ahead'"
    )


def downgrade() -> None:
    op.execute(
        "UPDATE email_sends SET decision_detail = coalesce(decision_detail, '{}')"
        " || '{\"ahead\": true}' WHERE id IN (SELECT email_send_id FROM email_send_marks)"
    )
    op.drop_table("email_send_marks")
    op.create_index(
        "uq_email_sends_provider_message_id",
        "email_sends",
        ["provider", "provider_message_id"],
        unique=True,
        postgresql_where=sa.text("provider_message_id IS NOT NULL"),
    )
    op.drop_table("email_send_messages")
