"""Bodies of the Segment-compatible routes under ``/segment/v1``.

Segment clients send more than we read (``context``, ``integrations``, ``_metadata``,
``channel`` ...), so unknown fields are accepted and ignored, unlike our own API.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from hogsend.api.schemas.common import ApiModel
from hogsend.api.schemas.events import MAX_NAME_LENGTH, ItemError, JsonObject, StoredText

_ISO_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")

SegmentType = Literal["track", "identify", "alias", "page", "screen", "group"]


def _id_text(value: str | int) -> str:
    # Segment libraries stringify numeric ids; some send them as JSON numbers.
    return str(value)


def _in_utc(value: datetime) -> datetime:
    # Segment reads a timestamp without an offset as UTC; we store UTC.
    if value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("datetime_range", "is out of range once in UTC") from None


SegmentId = Annotated[
    Annotated[StoredText, Field(max_length=512)] | StrictInt, AfterValidator(_id_text)
]
"""An id as Segment clients send it: a string, or a number taken as its decimal text."""


def _iso_text(value: object) -> object:
    if isinstance(value, str) and _ISO_DATE_TIME.match(value):
        return value
    raise PydanticCustomError("datetime_iso", "must be an ISO 8601 date-time")


SegmentTime = Annotated[datetime, BeforeValidator(_iso_text), AfterValidator(_in_utc)]
"""An ISO 8601 date-time; without an offset it is UTC (as Segment reads it)."""


class SegmentMessage(ApiModel):
    """One Segment-spec message (`track`, `identify`, `alias`, `page`, `screen`, `group`).

    What is read: `type` (required in a batch; the route names it otherwise),
    `messageId` (the idempotency key), `userId`, `anonymousId`, `traits` and
    `context.traits` (contact properties; an `email` trait is the contact's email),
    `event` and `properties` (track), `name`, `category` and `properties` (page,
    screen), `groupId` and `traits` (group), `previousId` (alias), and `timestamp`,
    `originalTimestamp` and `sentAt`. Everything else is accepted and ignored.
    """

    model_config = ConfigDict(extra="allow")

    type: SegmentType | None = None
    message_id: SegmentId | None = None
    user_id: SegmentId | None = None
    anonymous_id: SegmentId | None = None
    event: StoredText | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    name: StoredText | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    category: StoredText | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    properties: JsonObject | None = None
    traits: JsonObject | None = None
    context: dict[str, Any] | None = None
    group_id: SegmentId | None = None
    previous_id: SegmentId | None = None
    timestamp: SegmentTime | None = None
    original_timestamp: SegmentTime | None = None
    sent_at: SegmentTime | None = None


class SegmentBatch(ApiModel):
    """A Segment `/v1/batch` body: messages plus envelope fields."""

    model_config = ConfigDict(extra="allow")

    batch: list[Annotated[Any, WithJsonSchema(SegmentMessage.model_json_schema(by_alias=True))]] = (
        Field(description="Messages, each validated on its own; a bad one never fails the rest.")
    )
    sent_at: SegmentTime | None = None
    context: dict[str, Any] | None = None


class SegmentAck(ApiModel):
    """Segment's answer: the message was accepted."""

    success: bool


class SegmentRejection(ApiModel):
    """A message of a batch that was not stored."""

    index: int = Field(description="Position in `batch`, from 0.")
    message_id: str | None
    errors: list[ItemError]


class SegmentBatchAck(SegmentAck):
    """Segment's answer plus what happened to each message."""

    stored: int
    duplicates: int
    rejected: int
    rejections: list[SegmentRejection] = Field(description="Messages that were not stored.")
