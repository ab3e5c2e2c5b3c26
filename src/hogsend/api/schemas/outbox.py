"""Bodies of the admin outbox viewer (``/v1/admin/outbox``): what the dev provider kept."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import ConfigDict, Field

from hogsend.api.schemas.common import ApiModel, Text
from hogsend.api.schemas.events import CursorQuery
from hogsend.core.identity import MAX_EMAIL_LENGTH
from hogsend.db.repos.outbox_messages import StoredMessage


class OutboxQuery(CursorQuery):
    """Paging and filters of the outbox listing; every given filter must match."""

    to: Text | None = Field(
        default=None, max_length=MAX_EMAIL_LENGTH, description="Exact recipient (any case)."
    )
    search: Text | None = Field(
        default=None,
        min_length=1,
        max_length=200,
        description="Substring of the recipient, sender or subject (any case).",
    )
    send_id: UUID | None = Field(default=None, description="Messages of one send attempt.")


class OutboxClearQuery(ApiModel):
    """Which messages to delete: all, or one recipient's."""

    model_config = ConfigDict(extra="forbid")

    to: Text | None = Field(
        default=None, max_length=MAX_EMAIL_LENGTH, description="Only this recipient's (any case)."
    )


class OutboxMessageSummary(ApiModel):
    """One stored message, without its parts."""

    id: UUID
    email_send_id: UUID | None = Field(description="The send attempt it belongs to.")
    to: str
    from_: str = Field(alias="from")
    subject: str
    created_at: datetime


class OutboxMessageOut(OutboxMessageSummary):
    """One stored message, whole."""

    headers: dict[str, Any] = Field(
        description="Every header a real provider would have got (Message-ID, Reply-To, "
        "List-Unsubscribe, X-Hogsend-* ...)."
    )
    html: str | None
    text: str | None


class OutboxPage(ApiModel):
    """A page of messages, newest first."""

    messages: list[OutboxMessageSummary]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class OutboxCleared(ApiModel):
    """How many messages were deleted."""

    deleted: int


def outbox_summary(message: StoredMessage) -> OutboxMessageSummary:
    """The listing form of a stored message."""
    return OutboxMessageSummary(
        id=message.id,
        email_send_id=message.email_send_id,
        to=message.to_email,
        from_=message.from_email,
        subject=message.subject,
        created_at=message.created_at,
    )


def outbox_message(message: StoredMessage) -> OutboxMessageOut:
    """The detail form of a stored message."""
    return OutboxMessageOut(
        id=message.id,
        email_send_id=message.email_send_id,
        to=message.to_email,
        from_=message.from_email,
        subject=message.subject,
        created_at=message.created_at,
        headers=message.headers,
        html=message.html,
        text=message.text,
    )
