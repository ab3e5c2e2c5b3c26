"""Journeys: one row per enrollment (run), the admin override per journey, and the step log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, CheckConstraint, ForeignKey, Index, Integer, Text, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from hogsend.db.tables.base import Base, Timestamps, uuid_pk

JOURNEY_STATUSES = ("enrolled", "active", "waiting", "completed", "exited", "failed")
RUNNING_STATUSES = ("enrolled", "active", "waiting")
TERMINAL_STATUSES = ("completed", "exited", "failed")

_RUNNING = text("status IN ('enrolled','active','waiting') AND deleted_at IS NULL")


class JourneyState(Timestamps, Base):
    """One enrollment of one contact in one journey, mirrored from its DBOS workflow."""

    __tablename__ = "journey_states"

    id: Mapped[uuid.UUID] = uuid_pk()
    # No foreign key: merges move runs to the survivor (contact_id and user_id together).
    contact_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    user_id: Mapped[str] = mapped_column(Text)
    # Nullable: a contact may have no email (the reference stored "" instead).
    user_email: Mapped[str | None] = mapped_column(Text)
    journey_id: Mapped[str] = mapped_column(Text)
    # Deterministic enrollment key (journey, contact, entry ordinal) = the DBOS workflow id.
    workflow_id: Mapped[str] = mapped_column(Text, unique=True)
    status: Mapped[str] = mapped_column(Text, server_default=text("'enrolled'"))
    entry_count: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    current_step: Mapped[str | None] = mapped_column(Text)
    next_wake_at: Mapped[datetime | None]
    # Event name a ``wait_for_event`` is parked on, so the dispatcher finds its waiters.
    waiting_for_event: Mapped[str | None] = mapped_column(Text)
    exit_reason: Mapped[str | None] = mapped_column(Text)
    # No foreign key: events may be erased while the run's history stays.
    trigger_event_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    context: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    error_message: Mapped[str | None] = mapped_column(Text)
    completed_at: Mapped[datetime | None]
    exited_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]

    __table_args__ = (
        # Partial: one RUNNING run per (user, journey); terminal rows repeat freely
        # (the reference's full index on (user, journey, status) broke re-entry).
        Index(
            "uq_journey_states_user_journey_running",
            "user_id",
            "journey_id",
            unique=True,
            postgresql_where=_RUNNING,
        ),
        # Entry limits and history: all runs of (user, journey) by entry time.
        Index(
            "ix_journey_states_user_id_journey_id_created_at", "user_id", "journey_id", "created_at"
        ),
        Index("ix_journey_states_journey_id_status", "journey_id", "status"),
        # The run a trigger event already started (a redelivery must enroll once).
        Index("ix_journey_states_journey_id_trigger_event_id", "journey_id", "trigger_event_id"),
        Index("ix_journey_states_status", "status"),
        Index(
            "ix_journey_states_next_wake_at_waiting",
            "next_wake_at",
            postgresql_where=text("status = 'waiting' AND next_wake_at IS NOT NULL"),
        ),
        Index(
            "ix_journey_states_waiters",
            "user_id",
            "waiting_for_event",
            postgresql_where=text("status = 'waiting' AND waiting_for_event IS NOT NULL"),
        ),
        CheckConstraint(
            "status IN ('enrolled','active','waiting','completed','exited','failed')",
            name="status_known",
        ),
        CheckConstraint(
            "status <> 'completed' OR completed_at IS NOT NULL", name="completed_at_set"
        ),
        CheckConstraint("status <> 'exited' OR exited_at IS NOT NULL", name="exited_at_set"),
        CheckConstraint("status <> 'failed' OR failed_at IS NOT NULL", name="failed_at_set"),
        CheckConstraint("entry_count >= 1", name="entry_count_positive"),
    )


class JourneyConfig(Timestamps, Base):
    """Admin override of one code-defined journey."""

    __tablename__ = "journey_configs"

    id: Mapped[uuid.UUID] = uuid_pk()
    journey_id: Mapped[str] = mapped_column(Text, unique=True)
    # NULL = no admin override, the code's ``enabled`` applies (same as bucket_configs).
    enabled: Mapped[bool | None]
    updated_by: Mapped[str | None] = mapped_column(Text)


class JourneyLog(Base):
    """One step of one run, with its timing; also enrollment refusals (no run, no state row).

    Ordered by the bigint ``id`` so a run's log reads in insertion order.
    """

    __tablename__ = "journey_logs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # Nullable for refusals, which never created a run.
    journey_state_id: Mapped[uuid.UUID | None] = mapped_column(
        UUID(as_uuid=True), ForeignKey("journey_states.id", ondelete="CASCADE")
    )
    journey_id: Mapped[str] = mapped_column(Text)
    contact_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    user_id: Mapped[str | None] = mapped_column(Text)
    step: Mapped[str | None] = mapped_column(Text)
    # enrolled, refused, send_email, sleep, wait_for_event, variant, exited, completed ...
    action: Mapped[str] = mapped_column(Text)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    started_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    finished_at: Mapped[datetime | None]
    duration_ms: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_journey_logs_journey_state_id_id", "journey_state_id", "id"),
        Index("ix_journey_logs_journey_id_started_at", "journey_id", "started_at"),
        Index("ix_journey_logs_contact_id_started_at", "contact_id", "started_at"),
    )
