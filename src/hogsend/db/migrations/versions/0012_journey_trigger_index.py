"""journey_states (journey_id, trigger_event_id): find the run an event started

Every enrollment first looks for the run its trigger event already started (a
redelivered trigger must enroll once); without this index that look-up read every run
of the journey, so enrolling slowed down as runs accumulated.

Revision ID: 0012_journey_trigger_index
Revises: 0011_scale
Create Date: 2026-11-29 00:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0012_journey_trigger_index"
down_revision: str | None = "0011_scale"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_journey_states_journey_id_trigger_event_id",
        "journey_states",
        ["journey_id", "trigger_event_id"],
    )


def downgrade() -> None:
    op.drop_index("ix_journey_states_journey_id_trigger_event_id", table_name="journey_states")
