"""Operating the engine: workers, rate limits, audit trail, alerts, dead letters."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Integer, Text, text
from sqlalchemy.dialects.postgresql import DOUBLE_PRECISION, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from hogsend.db.tables.base import Base, Timestamps, uuid_pk


class WorkerHeartbeat(Base):
    """One row per worker identity, refreshed every few seconds while it runs."""

    __tablename__ = "worker_heartbeats"

    worker_id: Mapped[str] = mapped_column(Text, primary_key=True)
    hostname: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    application_version: Mapped[str] = mapped_column(Text)
    started_at: Mapped[datetime]
    last_seen_at: Mapped[datetime] = mapped_column(index=True)
    stopped_at: Mapped[datetime | None]
    info: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))


class RateLimitCounter(Base):
    """Requests counted per (key, route group) in one fixed window."""

    __tablename__ = "rate_limit_counters"

    bucket: Mapped[str] = mapped_column(Text, primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    hits: Mapped[int] = mapped_column(Integer, server_default=text("0"))

    __table_args__ = (Index("ix_rate_limit_counters_window_start", "window_start"),)


class AuditLog(Timestamps, Base):
    """One admin mutation: who did what to which resource."""

    __tablename__ = "audit_logs"

    id: Mapped[uuid.UUID] = uuid_pk()
    actor: Mapped[str] = mapped_column(Text, index=True)
    actor_key_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    actor_user_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    action: Mapped[str] = mapped_column(Text)
    resource: Mapped[str] = mapped_column(Text)
    resource_id: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    ip_address: Mapped[str | None] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        Index("ix_audit_logs_resource_resource_id", "resource", "resource_id"),
        Index("ix_audit_logs_created_at", "created_at"),
    )


class AlertRule(Timestamps, Base):
    """An operator alert evaluated on a schedule."""

    __tablename__ = "alert_rules"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(Text)
    type: Mapped[str] = mapped_column(Text, index=True)
    threshold: Mapped[dict[str, Any]] = mapped_column(JSONB)
    channel: Mapped[str] = mapped_column(Text)
    channel_config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    enabled: Mapped[bool] = mapped_column(server_default=text("true"), index=True)
    cooldown_minutes: Mapped[int] = mapped_column(Integer, server_default=text("60"))
    last_fired_at: Mapped[datetime | None]
    # Set while the rule's condition holds: it notifies on entering that state, then
    # again only every cooldown_minutes (0010_alert_rules).
    firing_since: Mapped[datetime | None]
    last_evaluated_at: Mapped[datetime | None]
    last_value: Mapped[float | None] = mapped_column(DOUBLE_PRECISION)

    __table_args__ = (
        CheckConstraint(
            "type IN ('bounce_rate_exceeded','journey_failure_spike','delivery_issue',"
            "'high_complaint_rate','dispatcher_lag','worker_down')",
            name="type_known",
        ),
        CheckConstraint("channel IN ('webhook','slack','email')", name="channel_known"),
    )


class AlertHistory(Timestamps, Base):
    """One delivery of a fired alert."""

    __tablename__ = "alert_history"

    id: Mapped[uuid.UUID] = uuid_pk()
    # CASCADE (not the reference's NO ACTION): deleting a rule must not fail on its history.
    alert_rule_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("alert_rules.id", ondelete="CASCADE"), index=True
    )
    payload: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    delivery_status: Mapped[str] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("delivery_status IN ('sent','failed')", name="delivery_status_known"),
        Index("ix_alert_history_created_at", "created_at"),
    )


class DeadLetter(Timestamps, Base):
    """Work that failed past its retries, parked with its error for an operator."""

    __tablename__ = "dead_letter_queue"

    id: Mapped[uuid.UUID] = uuid_pk()
    source: Mapped[str] = mapped_column(Text, index=True)
    source_id: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    error: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    status: Mapped[str] = mapped_column(Text, server_default=text("'pending'"), index=True)
    retried_at: Mapped[datetime | None]
    resolved_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("status IN ('pending','retried','discarded')", name="status_known"),
        Index("ix_dead_letter_queue_created_at", "created_at"),
    )
