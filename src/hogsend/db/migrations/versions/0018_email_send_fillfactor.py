"""email_sends: half of each page left free, so a round's outcome updates stay there

Every send inserts its ``email_sends`` row and updates it once with the outcome; that
update changes no indexed column, so Postgres keeps it on the row's page ("HOT", no
index entry) when the page has room for the new version. A campaign writes a chunk's
decision rows in one statement, so they fill each page up to the fillfactor, and its
lanes then record their outcomes a round at a time (8 by default) in one statement:
the versions of one statement cannot make room for each other, and each outcome adds
its detail and message id (about 330 to 450 bytes a row). At ``fillfactor = 90``
(migration 0014) 42% of the campaign benchmark's outcome updates left their page and
wrote an entry in each of the table's six or seven indexes; at 50, 1%.

The cost is space: a page holds about 11 sent rows instead of 13 to 15 (measured:
the heap 21-35% larger; with its indexes, which no longer take those entries, 8-18%).
Applies to pages written from now on; existing pages keep their rows as they are.

Revision ID: 0018_email_send_fillfactor
Revises: 0017_link_sets_recipient_index
Create Date: 2026-11-30 08:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0018_email_send_fillfactor"
down_revision: str | None = "0017_link_sets_recipient_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("ALTER TABLE email_sends SET (fillfactor = 50)")


def downgrade() -> None:
    op.execute("ALTER TABLE email_sends SET (fillfactor = 90)")
