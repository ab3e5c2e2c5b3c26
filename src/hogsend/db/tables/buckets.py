"""Buckets: membership history of the real-time segments and their per-bucket admin state."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, Index, Integer, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from hogsend.db.tables.base import Base, Timestamps, uuid_pk

MEMBERSHIP_STATUSES = ("active", "left")
MEMBERSHIP_SOURCES = ("event", "reconcile", "backfill", "manual")
BACKFILL_STATUSES = ("pending", "running", "completed", "failed")

_ACTIVE = text("status = 'active' AND deleted_at IS NULL")


class BucketMembership(Timestamps, Base):
    """One continuous stay of a contact in a bucket; a re-join starts a new row."""

    __tablename__ = "bucket_memberships"

    id: Mapped[uuid.UUID] = uuid_pk()
    # No foreign key: merges rewrite these, and the history outlives a contact's erase.
    contact_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), index=True)
    user_id: Mapped[str] = mapped_column(Text)
    # Stored normalised (the reference kept the raw event spelling).
    user_email: Mapped[str | None] = mapped_column(Text)
    bucket_id: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'active'"))
    entered_at: Mapped[datetime] = mapped_column(server_default=func.now())
    left_at: Mapped[datetime | None]
    # Why the stay ended: criteria, max_dwell, manual, merge, contact_deleted ...
    left_reason: Mapped[str | None] = mapped_column(Text)
    # Criteria-window / fast-expiry deadline, reused as the min-dwell deferred-leave deadline.
    expires_at: Mapped[datetime | None]
    max_dwell_at: Mapped[datetime | None]
    last_evaluated_at: Mapped[datetime | None]
    # Membership epoch: 1 + every earlier row of (user, bucket), whatever its status.
    entry_count: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    source: Mapped[str | None] = mapped_column(Text)
    context: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    dwell_state: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    dwell_anchor_at: Mapped[datetime | None]
    deleted_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "uq_bucket_memberships_user_bucket_active",
            "user_id",
            "bucket_id",
            unique=True,
            postgresql_where=_ACTIVE,
        ),
        # The writers key on the contact id (a contact's text key can change).
        Index(
            "uq_bucket_memberships_contact_bucket_active",
            "contact_id",
            "bucket_id",
            unique=True,
            postgresql_where=_ACTIVE,
        ),
        Index("ix_bucket_memberships_user_id_bucket_id", "user_id", "bucket_id"),
        Index("ix_bucket_memberships_bucket_id_status_id", "bucket_id", "status", "id"),
        Index(
            "ix_bucket_memberships_bucket_id_status_entered_at", "bucket_id", "status", "entered_at"
        ),
        Index(
            "ix_bucket_memberships_bucket_id_status_last_evaluated_at",
            "bucket_id",
            "status",
            "last_evaluated_at",
        ),
        # Epoch counts and "already a member?" probes, one contact at a time.
        Index("ix_bucket_memberships_contact_id_bucket_id", "contact_id", "bucket_id"),
        # A sweep batch reads its oldest-evaluated active members in index order.
        Index(
            "ix_bucket_memberships_sweep_order",
            "bucket_id",
            func.coalesce(text("last_evaluated_at"), text("'-infinity'::timestamptz")),
            "id",
            postgresql_where=_ACTIVE,
        ),
        # Deadline sweeps only ever look at active rows: partial indexes stay small.
        Index("ix_bucket_memberships_expires_at_active", "expires_at", postgresql_where=_ACTIVE),
        Index(
            "ix_bucket_memberships_max_dwell_at_active", "max_dwell_at", postgresql_where=_ACTIVE
        ),
        CheckConstraint("status IN ('active','left')", name="status_known"),
        CheckConstraint(
            "source IS NULL OR source IN ('event','reconcile','backfill','manual')",
            name="source_known",
        ),
        CheckConstraint("status = 'active' OR left_at IS NOT NULL", name="left_has_left_at"),
        CheckConstraint("entry_count >= 1", name="entry_count_positive"),
    )


class BucketConfig(Timestamps, Base):
    """Admin and bookkeeping state of one code-defined bucket: override, fingerprint, backfill."""

    __tablename__ = "bucket_configs"

    id: Mapped[uuid.UUID] = uuid_pk()
    bucket_id: Mapped[str] = mapped_column(Text, unique=True)
    # NULL = no admin override, the code's ``enabled`` applies.
    enabled: Mapped[bool | None]
    # Fingerprint of the criteria the current membership was computed with.
    criteria_hash: Mapped[str | None] = mapped_column(Text)
    backfill_status: Mapped[str | None] = mapped_column(Text)
    backfill_mode: Mapped[str | None] = mapped_column(Text)
    # The fingerprint the running backfill works towards; copied to criteria_hash on success.
    backfill_criteria_hash: Mapped[str | None] = mapped_column(Text)
    backfill_started_at: Mapped[datetime | None]
    backfill_finished_at: Mapped[datetime | None]
    # Refreshed while a backfill makes progress, so a dead one can be detected and taken over.
    backfill_heartbeat_at: Mapped[datetime | None]
    backfill_cursor: Mapped[str | None] = mapped_column(Text)
    backfill_total: Mapped[int | None] = mapped_column(Integer)
    backfill_processed: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    backfill_error: Mapped[str | None] = mapped_column(Text)
    # Reconcile (or the backfill) evaluated every member and candidate as of this instant
    # for the current criteria; later sweeps only look at what time changed since.
    reconciled_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(
            "backfill_status IS NULL"
            " OR backfill_status IN ('pending','running','completed','failed')",
            name="backfill_status_known",
        ),
        CheckConstraint(
            "backfill_mode IS NULL OR backfill_mode IN ('initial','reeval')",
            name="backfill_mode_known",
        ),
    )
