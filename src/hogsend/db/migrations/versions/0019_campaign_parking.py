"""campaigns.resume_at: a campaign waiting for recipients due later parks instead of
sleeping in its run

A ``localTime`` campaign used to keep its run alive, sleeping up to a day for the next
recipients' local send time, and a sleeping run holds one of the ``campaigns`` queue's
few slots (2 per worker, 4 in the cluster): four such campaigns blocked every other
one. A run now parks when the next pending recipient is further away than its
longest in-run sleep: the campaign stays ``sending``, loses its owning run
(``workflow_id`` NULL) and records in ``resume_at`` when the scheduler's claim starts
the next run. ``send_at`` keeps the time the campaign was asked to start.

* ``resume_at``: set only while parked (a check keeps it so), NULL otherwise;
* ``ix_campaigns_resume_at``: partial, on the parked campaigns only, for the claim.

Revision ID: 0019_campaign_parking
Revises: 0018_email_send_fillfactor
Create Date: 2026-11-30 15:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019_campaign_parking"
down_revision: str | None = "0018_email_send_fillfactor"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CHECK = "ck_campaigns_resume_at_parked"


def upgrade() -> None:
    op.add_column("campaigns", sa.Column("resume_at", sa.DateTime(timezone=True)))
    op.create_check_constraint(
        op.f(_CHECK),
        "campaigns",
        "resume_at IS NULL OR (status = 'sending' AND workflow_id IS NULL)",
    )
    op.create_index(
        "ix_campaigns_resume_at",
        "campaigns",
        ["resume_at"],
        postgresql_where=sa.text("resume_at IS NOT NULL"),
    )


def downgrade() -> None:
    # A parked campaign goes back to waiting: the next claim starts its run, which
    # sleeps until its recipients are due, as before this revision.
    op.execute(
        "UPDATE campaigns SET status = 'queued', resume_at = NULL, updated_at = now()"
        " WHERE resume_at IS NOT NULL"
    )
    op.drop_index("ix_campaigns_resume_at", table_name="campaigns")
    op.drop_constraint(op.f(_CHECK), "campaigns", type_="check")
    op.drop_column("campaigns", "resume_at")
