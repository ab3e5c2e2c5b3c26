"""The dev outbox: messages the outbox provider "sent", stored whole for Studio and the API."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.tables.email import OutboxMessage


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """One message in the outbox."""

    id: uuid.UUID
    email_send_id: uuid.UUID | None
    to_email: str
    from_email: str
    subject: str
    headers: dict[str, Any]
    html: str | None
    text: str | None
    created_at: datetime


def _stored(row: OutboxMessage) -> StoredMessage:
    return StoredMessage(
        id=row.id,
        email_send_id=row.email_send_id,
        to_email=row.to_email,
        from_email=row.from_email,
        subject=row.subject,
        headers=dict(row.headers or {}),
        html=row.html,
        text=row.text,
        created_at=row.created_at,
    )


async def add(
    session: AsyncSession,
    *,
    to_email: str,
    from_email: str,
    subject: str,
    headers: Mapping[str, Any],
    html: str | None,
    text: str | None,
    email_send_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Store one message; returns its id."""
    message_id: uuid.UUID | None = await session.scalar(
        insert(OutboxMessage)
        .values(
            to_email=to_email,
            from_email=from_email,
            subject=subject,
            headers=dict(headers),
            html=html,
            text=text,
            email_send_id=email_send_id,
        )
        .returning(OutboxMessage.id)
    )
    assert message_id is not None
    return message_id


async def get(session: AsyncSession, message_id: uuid.UUID) -> StoredMessage | None:
    """One message by id."""
    row = await session.get(OutboxMessage, message_id)
    return _stored(row) if row is not None else None


async def list_messages(
    session: AsyncSession,
    *,
    to_email: str | None = None,
    limit: int = 50,
    before: tuple[datetime, uuid.UUID] | None = None,
) -> list[StoredMessage]:
    """Newest first; ``before`` is the (created_at, id) of the last row of the previous page."""
    query = select(OutboxMessage).order_by(OutboxMessage.created_at.desc(), OutboxMessage.id.desc())
    if to_email is not None:
        query = query.where(func.lower(OutboxMessage.to_email) == to_email.lower())
    if before is not None:
        query = query.where(
            (OutboxMessage.created_at < before[0])
            | ((OutboxMessage.created_at == before[0]) & (OutboxMessage.id < before[1]))
        )
    rows = (await session.scalars(query.limit(limit))).all()
    return [_stored(row) for row in rows]


async def count(session: AsyncSession) -> int:
    """How many messages the outbox holds."""
    return int(await session.scalar(select(func.count()).select_from(OutboxMessage)) or 0)
