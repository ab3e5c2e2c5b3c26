"""Campaigns: one-shot broadcasts of a template to an audience, and their recipient snapshot."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, Text, func, text
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from hogsend.db.tables.base import Base, Timestamps, uuid_pk

CAMPAIGN_STATUSES = ("queued", "scheduled", "sending", "paused", "sent", "cancelled", "failed")
AUDIENCE_KINDS = ("list", "bucket", "criteria")
RECIPIENT_STATUSES = ("pending", "sent", "skipped", "failed")


class Campaign(Timestamps, Base):
    """One broadcast: what to send, to whom, when, how fast, and how far it got."""

    __tablename__ = "campaigns"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text, server_default=text("'queued'"))
    audience_kind: Mapped[str] = mapped_column(Text)
    # {"id": "<list or bucket id>"} or {"criteria": <conditions JSON>}.
    audience: Mapped[dict[str, Any]] = mapped_column(JSONB)
    template_key: Mapped[str] = mapped_column(Text)
    props: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    from_email: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str | None] = mapped_column(Text)
    send_at: Mapped[datetime | None]
    # "HH:MM" in each recipient's time zone.
    local_time: Mapped[str | None] = mapped_column(Text)
    throttle_per_second: Mapped[float | None] = mapped_column(DOUBLE_PRECISION)
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    workflow_id: Mapped[str | None] = mapped_column(Text)
    total_recipients: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    sent_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    skipped_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    failed_count: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    # Decision reason -> count of skipped recipients.
    skip_reasons: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    # Durable position of the send loop in the recipient snapshot.
    cursor: Mapped[str | None] = mapped_column(Text)
    snapshot_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    paused_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    cancelled_at: Mapped[datetime | None]
    failed_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    last_progress_at: Mapped[datetime | None]
    # While parked (``sending``, no owning run: every pending recipient is due later),
    # when the scheduler starts the next run; NULL otherwise.
    resume_at: Mapped[datetime | None]
    created_by: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index(
            "uq_campaigns_idempotency_key",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("ix_campaigns_status_send_at", "status", "send_at"),
        Index("ix_campaigns_created_at", "created_at"),
        # The reaper looks for running campaigns that stopped making progress.
        Index(
            "ix_campaigns_last_progress_at_sending",
            "last_progress_at",
            postgresql_where=text("status = 'sending'"),
        ),
        # The scheduler's claim looks for parked campaigns whose resume time passed.
        Index(
            "ix_campaigns_resume_at",
            "resume_at",
            postgresql_where=text("resume_at IS NOT NULL"),
        ),
        CheckConstraint(
            "status IN ('queued','scheduled','sending','paused','sent','cancelled','failed')",
            name="status_known",
        ),
        CheckConstraint(
            "audience_kind IN ('list','bucket','criteria')", name="audience_kind_known"
        ),
        CheckConstraint(
            "local_time IS NULL OR local_time ~ '^([01][0-9]|2[0-3]):[0-5][0-9]$'",
            name="local_time_format",
        ),
        CheckConstraint(
            "throttle_per_second IS NULL OR throttle_per_second > 0", name="throttle_positive"
        ),
        # Only a parked campaign has a resume time: still sending, no run owns it.
        CheckConstraint(
            "resume_at IS NULL OR (status = 'sending' AND workflow_id IS NULL)",
            name="resume_at_parked",
        ),
    )


class CampaignRecipient(Base):
    """One contact of a campaign's audience snapshot and what happened to their message."""

    __tablename__ = "campaign_recipients"

    campaign_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True
    )
    # No foreign key: the snapshot keeps its rows when contacts merge or are erased.
    contact_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), primary_key=True)
    email: Mapped[str] = mapped_column(Text)
    # When this recipient is due (differs per recipient with ``local_time``).
    send_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"))
    # The mailer's decision code for skipped/failed recipients.
    reason: Mapped[str | None] = mapped_column(Text)
    email_send_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    sent_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        # The send loop pages due, pending recipients by (send_at, contact_id).
        Index(
            "ix_campaign_recipients_pending",
            "campaign_id",
            "send_at",
            "contact_id",
            postgresql_where=text("status = 'pending'"),
        ),
        # No (campaign_id, status) index (migration 0017): only reports counted by it, and
        # it took an entry per recipient at the snapshot and at every outcome.
        CheckConstraint("status IN ('pending','sent','skipped','failed')", name="status_known"),
    )
