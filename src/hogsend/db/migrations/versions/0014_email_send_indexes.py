"""email_sends: fewer indexes for every attempt to write, and room for in-page updates

Every send writes one ``email_sends`` row and then updates it with its outcome; each
index of the table takes an entry on the insert, and again on every update that cannot
stay on its page ("HOT"). Measured per send, index upkeep was most of the WAL the
mailer wrote. So:

* dropped ``ix_email_sends_to_email_created_at_category``: no query reads ``to_email``
  as stored; the frequency cap counts by ``lower(to_email)``, which
  ``ix_email_sends_lower_to_email_created_at`` serves;
* dropped ``ix_email_sends_user_id``: no query looks sends up by ``user_id`` (merges and
  erasure find them by ``contact_id``);
* dropped ``ix_email_sends_status``: nothing filters on ``status`` alone (reports filter
  by time, contact or campaign first), and ``status`` changes on every outcome, which
  made that index one more reason the outcome update could not be HOT;
* ``ix_email_sends_journey_state_id`` and ``ix_email_sends_campaign_id`` cover only the
  rows that have one: every lookup through them names a value (the funnels, the
  ``ON DELETE SET NULL`` of runs and campaigns), and a send of the other kinds no longer
  writes a NULL entry;
* ``fillfactor = 90``: a tenth of each page left free, so an update that changes no
  indexed column (the batch path's "started" mark) stays on its page with no index write.

Revision ID: 0014_email_send_indexes
Revises: 0013_alert_rules
Create Date: 2026-11-29 12:50:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_email_send_indexes"
down_revision: str | None = "0013_alert_rules"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_email_sends_to_email_created_at_category", table_name="email_sends")
    op.drop_index("ix_email_sends_user_id", table_name="email_sends")
    op.drop_index("ix_email_sends_status", table_name="email_sends")
    for column in ("journey_state_id", "campaign_id"):
        op.drop_index(f"ix_email_sends_{column}", table_name="email_sends")
        op.create_index(
            f"ix_email_sends_{column}",
            "email_sends",
            [column],
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
        )
    # Applies to pages written from now on; existing pages fill up as they are rewritten.
    op.execute("ALTER TABLE email_sends SET (fillfactor = 90)")


def downgrade() -> None:
    op.execute("ALTER TABLE email_sends RESET (fillfactor)")
    for column in ("journey_state_id", "campaign_id"):
        op.drop_index(f"ix_email_sends_{column}", table_name="email_sends")
        op.create_index(f"ix_email_sends_{column}", "email_sends", [column])
    op.create_index("ix_email_sends_status", "email_sends", ["status"])
    op.create_index("ix_email_sends_user_id", "email_sends", ["user_id"])
    op.create_index(
        "ix_email_sends_to_email_created_at_category",
        "email_sends",
        ["to_email", "created_at", "category"],
    )
