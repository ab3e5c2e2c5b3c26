"""alert_rules: firing state and the last evaluation, so a firing rule notifies once

Revision ID: 0013_alert_rules
Revises: 0012_journey_trigger_index
Create Date: 2026-11-29 00:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013_alert_rules"
down_revision: str | None = "0012_journey_trigger_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "alert_rules", sa.Column("firing_since", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "alert_rules", sa.Column("last_evaluated_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "alert_rules",
        sa.Column("last_value", sa.dialects.postgresql.DOUBLE_PRECISION(), nullable=True),
    )


def downgrade() -> None:
    op.drop_column("alert_rules", "last_value")
    op.drop_column("alert_rules", "last_evaluated_at")
    op.drop_column("alert_rules", "firing_since")
