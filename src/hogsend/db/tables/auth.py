"""Who may call the API and use Studio: API keys, Studio users and their sessions."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import CheckConstraint, ForeignKey, Index, Text, func, text
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.orm import Mapped, mapped_column

from hogsend.db.tables.base import Base, Timestamps, uuid_pk

API_SCOPES = ("ingest", "read", "admin:read", "admin:write", "full-admin")
STUDIO_ROLES = ("viewer", "admin")


class ApiKey(Timestamps, Base):
    """A hashed API key. The raw key is shown once at creation and never stored."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = uuid_pk()
    name: Mapped[str] = mapped_column(Text)
    key_prefix: Mapped[str] = mapped_column(Text)
    key_hash: Mapped[str] = mapped_column(Text, unique=True)
    scopes: Mapped[list[str]] = mapped_column(ARRAY(Text))
    created_by: Mapped[str | None] = mapped_column(Text)
    created_by_key_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(
            "scopes <@ ARRAY['ingest','read','admin:read','admin:write','full-admin']::text[]"
            " AND cardinality(scopes) > 0",
            name="scopes_known",
        ),
        Index("ix_api_keys_revoked_at", "revoked_at"),
    )


class StudioUser(Timestamps, Base):
    """A person who signs in to Studio."""

    __tablename__ = "studio_users"

    id: Mapped[uuid.UUID] = uuid_pk()
    email: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(Text)
    password_hash: Mapped[str] = mapped_column(Text)
    role: Mapped[str] = mapped_column(Text, server_default=text("'viewer'"))
    last_login_at: Mapped[datetime | None]
    disabled_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint("role IN ('viewer','admin')", name="role_known"),
        Index("uq_studio_users_email", func.lower(email), unique=True),
    )


class StudioSession(Timestamps, Base):
    """A signed-in Studio browser session (the cookie holds the raw token; we store its hash)."""

    __tablename__ = "studio_sessions"

    id: Mapped[uuid.UUID] = uuid_pk()
    user_id: Mapped[uuid.UUID] = mapped_column(
        UUID(as_uuid=True), ForeignKey("studio_users.id", ondelete="CASCADE"), index=True
    )
    token_hash: Mapped[str] = mapped_column(Text, unique=True)
    csrf_token: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    ip_address: Mapped[str | None] = mapped_column(Text)
    user_agent: Mapped[str | None] = mapped_column(Text)
