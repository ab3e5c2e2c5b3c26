"""Events: the append-only event log and the outbox the dispatcher consumes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, Text, func, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from hogsend.db.tables.base import Base, uuid_pk


class UserEvent(Base):
    """One stored event, attributed to a contact; the idempotency ledger of ingest.

    Rows are only ever rewritten by identity merges (``user_id``/``contact_id`` move to
    the survivor) and deleted by a GDPR erase.
    """

    __tablename__ = "user_events"

    id: Mapped[uuid.UUID] = uuid_pk()
    # No foreign key: merges rewrite it and erasure deletes the contact's events.
    contact_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    user_id: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(Text)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    idempotency_key: Mapped[str | None] = mapped_column(Text)
    # Where it came from: api, batch, segment, webhook:<name>, bucket, tracking, admin ...
    source: Mapped[str | None] = mapped_column(Text)
    occurred_at: Mapped[datetime] = mapped_column(server_default=func.now())
    received_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        Index(
            "uq_user_events_idempotency_key",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        Index("ix_user_events_contact_id_event_occurred_at", "contact_id", "event", "occurred_at"),
        Index("ix_user_events_contact_id_occurred_at", "contact_id", "occurred_at"),
        Index("ix_user_events_event_occurred_at", "event", "occurred_at"),
        Index("ix_user_events_occurred_at", "occurred_at"),
    )


_PENDING = text("processed_at IS NULL AND dead_at IS NULL")
_BLOCKING = (
    "processed_at IS NULL AND dead_at IS NULL AND (locked_until IS NOT NULL OR attempts > 0)"
)


class EventOutbox(Base):
    """Work the dispatcher still owes one event; written in the ingest transaction.

    Workers claim pending rows in ``id`` order with ``FOR UPDATE SKIP LOCKED`` and take
    a short lease (``claimed_by``/``locked_until``) while they run the consumers.
    """

    __tablename__ = "event_outbox"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # No foreign key to user_events: an erase may delete the event before the row is swept.
    event_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True), unique=True)
    contact_id: Mapped[uuid.UUID] = mapped_column(UUID(as_uuid=True))
    contact_key: Mapped[str] = mapped_column(Text)
    event: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    next_attempt_at: Mapped[datetime] = mapped_column(server_default=func.now())
    claimed_by: Mapped[str | None] = mapped_column(Text)
    claimed_at: Mapped[datetime | None]
    locked_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    processed_at: Mapped[datetime | None]
    # Gave up after the last attempt; the error went to the dead-letter queue.
    dead_at: Mapped[datetime | None]
    # Names of the consumers that already handled this event, so a retry skips them.
    # Appended in the same transaction as each consumer's own writes.
    consumers_done: Mapped[list[str]] = mapped_column(
        ARRAY(Text), server_default=text("'{}'::text[]")
    )
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        Index("ix_event_outbox_pending", "id", postgresql_where=_PENDING),
        # "Is an earlier event of this contact still pending?" keeps per-contact order.
        Index("ix_event_outbox_pending_contact", "contact_id", "id", postgresql_where=_PENDING),
        # Processed rows only: the retention sweep's; pending rows would be an entry each.
        Index(
            "ix_event_outbox_processed_at",
            "processed_at",
            postgresql_where=text("processed_at IS NOT NULL"),
        ),
        # Pending rows that can hold back their contact's other events: leased (maybe in
        # flight) or retrying. Small, so the claim can ask "is this contact busy?" cheaply.
        Index(
            "ix_event_outbox_blocking",
            "contact_id",
            "id",
            postgresql_where=text(_BLOCKING),
        ),
        # Dead rows wait here for an operator (DLQ retry or discard); health counts them.
        Index("ix_event_outbox_dead", "id", postgresql_where=text("dead_at IS NOT NULL")),
    )
