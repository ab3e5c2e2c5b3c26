"""People: contacts, the stale identity keys that still point at them, and their list memberships.

A contact's *resolved key* is ``coalesce(external_id, anonymous_id, id::text)``; the
history tables (events, memberships, journey runs, sends) store it as ``user_id`` next
to the contact's uuid as ``contact_id``. Only tables that belong to one contact and
follow it through merges carry a foreign key to ``contacts`` (contacts are soft-deleted
on merge, hard-deleted only by a GDPR erase, where cascading is what we want).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, ForeignKey, Index, Text, func, text
from sqlalchemy.dialects.postgresql import JSONB, UUID
from sqlalchemy.orm import Mapped, mapped_column

from hogsend.db.tables.base import Base, Timestamps, uuid_pk

ALIAS_KINDS = ("email", "external", "anonymous")
ALIAS_REASONS = ("merge", "promote")


class Contact(Timestamps, Base):
    """The canonical record of one person; at most one live row per identity key."""

    __tablename__ = "contacts"

    id: Mapped[uuid.UUID] = uuid_pk()
    external_id: Mapped[str | None] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(Text)
    anonymous_id: Mapped[str | None] = mapped_column(Text)
    timezone: Mapped[str | None] = mapped_column(Text)
    properties: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    first_seen_at: Mapped[datetime] = mapped_column(server_default=func.now())
    last_seen_at: Mapped[datetime] = mapped_column(server_default=func.now())
    deleted_at: Mapped[datetime | None]
    # GDPR erase: the row stays as a tombstone with its keys and properties wiped.
    erased_at: Mapped[datetime | None]

    __table_args__ = (
        Index(
            "uq_contacts_external_id_live",
            "external_id",
            unique=True,
            postgresql_where=text("external_id IS NOT NULL AND deleted_at IS NULL"),
        ),
        Index(
            "uq_contacts_email_live",
            func.lower(email),
            unique=True,
            postgresql_where=text("email IS NOT NULL AND deleted_at IS NULL"),
        ),
        Index(
            "uq_contacts_anonymous_id_live",
            "anonymous_id",
            unique=True,
            postgresql_where=text("anonymous_id IS NOT NULL AND deleted_at IS NULL"),
        ),
        # Admin listing pages newest first with a (created_at, id) keyset cursor.
        Index("ix_contacts_created_at_id", "created_at", "id"),
        CheckConstraint("erased_at IS NULL OR deleted_at IS NOT NULL", name="erased_is_deleted"),
    )


class ContactAlias(Timestamps, Base):
    """A key a contact no longer holds (merged away or promoted) and the survivor it means."""

    __tablename__ = "contact_aliases"

    id: Mapped[uuid.UUID] = uuid_pk()
    contact_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("contacts.id", ondelete="CASCADE"), index=True
    )
    alias_kind: Mapped[str] = mapped_column(Text)
    alias_value: Mapped[str] = mapped_column(Text)
    from_contact_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    reason: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("uq_contact_aliases_kind_value", "alias_kind", "alias_value", unique=True),
        CheckConstraint("alias_kind IN ('email','external','anonymous')", name="alias_kind_known"),
        CheckConstraint("reason IN ('merge','promote')", name="reason_known"),
    )


class ListSubscription(Timestamps, Base):
    """One contact's explicit choice for one list or send category.

    Rows instead of the reference's jsonb map on the preferences row: audiences of
    opt-in lists become an index scan, and each choice keeps its own source and time.
    No row means "the list's default" (``default_opt_in``).
    """

    __tablename__ = "list_subscriptions"

    contact_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("contacts.id", ondelete="CASCADE"), primary_key=True
    )
    list_id: Mapped[str] = mapped_column(Text, primary_key=True)
    subscribed: Mapped[bool]
    source: Mapped[str | None] = mapped_column(Text)
    subscribed_at: Mapped[datetime | None]
    unsubscribed_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_list_subscriptions_list_id_subscribed", "list_id", "subscribed", "contact_id"),
    )
