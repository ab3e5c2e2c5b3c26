"""The dev outbox: messages the outbox provider "sent", stored whole for Studio and the API."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.pagination import InvalidCursor, Page, decode_cursor, encode_cursor, page_of
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


async def add_many(session: AsyncSession, rows: Sequence[Mapping[str, Any]]) -> None:
    """Store many messages in one statement.

    Each row names its ``id``, ``to_email``, ``from_email``, ``subject``, ``headers``,
    ``html``, ``text`` and optionally ``email_send_id`` and ``created_at`` (default: the
    transaction's time, which every row of one call would then share).
    """
    if rows:
        await session.execute(insert(OutboxMessage), [dict(row) for row in rows])


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


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _cursor(message: StoredMessage) -> str:
    return encode_cursor(message.created_at.isoformat(), str(message.id))


async def page_messages(
    session: AsyncSession,
    *,
    to_email: str | None = None,
    search: str | None = None,
    email_send_id: uuid.UUID | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[StoredMessage]:
    """A page of messages, newest first, every given filter matching.

    Args:
        to_email: the recipient, compared case-insensitively.
        search: a substring (any case) of the recipient, the sender or the subject;
            ``%`` and ``_`` match themselves.
        email_send_id: the send attempt the messages belong to.
        limit: the page size.
        cursor: ``next_cursor`` of the previous page.

    Raises:
        InvalidCursor: ``cursor`` is not one this listing handed out.
    """
    before: tuple[datetime, uuid.UUID] | None = None
    if cursor is not None:
        at, last_id = decode_cursor(cursor, 2)
        try:
            before = (datetime.fromisoformat(at), uuid.UUID(last_id))
        except ValueError:
            raise InvalidCursor("cursor is not valid") from None
        if before[0].utcoffset() is None:
            raise InvalidCursor("cursor is not valid")
    query = select(OutboxMessage).order_by(OutboxMessage.created_at.desc(), OutboxMessage.id.desc())
    if to_email is not None:
        query = query.where(func.lower(OutboxMessage.to_email) == to_email.lower())
    if search is not None:
        pattern = f"%{_escape_like(search)}%"
        query = query.where(
            or_(
                OutboxMessage.to_email.ilike(pattern, escape="\\"),
                OutboxMessage.from_email.ilike(pattern, escape="\\"),
                OutboxMessage.subject.ilike(pattern, escape="\\"),
            )
        )
    if email_send_id is not None:
        query = query.where(OutboxMessage.email_send_id == email_send_id)
    if before is not None:
        query = query.where(
            (OutboxMessage.created_at < before[0])
            | ((OutboxMessage.created_at == before[0]) & (OutboxMessage.id < before[1]))
        )
    rows = (await session.scalars(query.limit(limit + 1))).all()
    return page_of([_stored(row) for row in rows], limit, _cursor)


async def delete_messages(session: AsyncSession, *, to_email: str | None = None) -> int:
    """Delete every message, or only those to ``to_email`` (any case); returns how many."""
    statement = delete(OutboxMessage)
    if to_email is not None:
        statement = statement.where(func.lower(OutboxMessage.to_email) == to_email.lower())
    result = await session.execute(statement.returning(OutboxMessage.id))
    return len(result.all())
