"""tracked_links: no foreign key to email_sends

Every tracked link of every message checked its foreign key when inserted: a trigger
running a query on ``email_sends`` and taking a ``FOR KEY SHARE`` lock on the send's row
(one more WAL record per link). The mailer writes a message's links in the statement
(batch path) or just after the transaction (single path) that writes its send row, and
nothing else writes them; the only statement that deletes sends (abandoning attempts
that never reached a provider) now deletes their links itself instead of through
``ON DELETE CASCADE``.

Revision ID: 0016_tracked_link_send_key
Revises: 0015_email_send_side_tables
Create Date: 2026-11-29 18:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016_tracked_link_send_key"
down_revision: str | None = "0015_email_send_side_tables"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "fk_tracked_links_email_send_id_email_sends"


def upgrade() -> None:
    op.drop_constraint(_NAME, "tracked_links", type_="foreignkey")


def downgrade() -> None:
    # Links whose send is gone could not have been written under the key: drop them first.
    op.execute(
        "DELETE FROM tracked_links l WHERE NOT EXISTS"
        " (SELECT 1 FROM email_sends s WHERE s.id = l.email_send_id)"
    )
    op.create_foreign_key(
        _NAME, "tracked_links", "email_sends", ["email_send_id"], ["id"], ondelete="CASCADE"
    )
