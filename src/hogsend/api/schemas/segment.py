"""Bodies of the Segment-compatible routes under ``/segment/v1``.

Segment clients send more than we read (``context``, ``integrations``, ``_metadata``,
``channel`` ...), so unknown fields are accepted and ignored, unlike our own API.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pydantic_core import PydanticCustomError

from hogsend.api.schemas.common import ApiModel
from hogsend.api.schemas.events import (
    MAX_NAME_LENGTH,
    ItemError,
    JsonObject,
    StoredText,
    storable_object,
)

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


MAX_SEGMENT_ID_LENGTH = 512

SegmentId = Annotated[
    Annotated[StoredText, Field(max_length=MAX_SEGMENT_ID_LENGTH)] | StrictInt,
    AfterValidator(_id_text),
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


@dataclass(slots=True, kw_only=True)
class PlainMessage:
    """A message of the common shape, checked by :func:`plain_message` (no model built).

    The fields :class:`SegmentMessage` has, with the values its validation gives them.
    """

    type: SegmentType | None
    message_id: str | None
    user_id: str | None
    anonymous_id: str | None
    event: str | None
    name: str | None
    category: str | None
    properties: dict[str, Any] | None
    traits: dict[str, Any] | None
    context: dict[str, Any] | None
    group_id: str | None
    previous_id: str | None
    timestamp: datetime | None
    original_timestamp: datetime | None
    sent_at: datetime | None


_TYPES: dict[object, SegmentType] = {kind: kind for kind in get_args(SegmentType)}
# Field names SegmentMessage also accepts instead of their camelCase alias: a message
# using one goes through the model, which knows which of the two wins.
_BY_NAME = frozenset(
    {
        "message_id",
        "user_id",
        "anonymous_id",
        "group_id",
        "previous_id",
        "original_timestamp",
        "sent_at",
    }
)
_PLAIN_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}:\d{2})")
_SEGMENT_TIME: TypeAdapter[datetime] = TypeAdapter(SegmentTime)
_MAX_PLAIN_INT = 2**63


class _NotPlain(Exception):
    """The message needs the model (an error to name, or an unusual shape)."""


def _text(raw: dict[str, Any], field: str, limit: int) -> str | None:
    # ASCII without NUL: what StoredText accepts without a second look.
    value = raw.get(field)
    if value is None:
        return None
    if type(value) is str and len(value) <= limit and value.isascii() and "\x00" not in value:
        return value
    raise _NotPlain


def _plain_id(raw: dict[str, Any], field: str) -> str | None:
    value = raw.get(field)
    if type(value) is int and -_MAX_PLAIN_INT < value < _MAX_PLAIN_INT:
        return str(value)
    return _text(raw, field, MAX_SEGMENT_ID_LENGTH)


def _object(raw: dict[str, Any], field: str) -> dict[str, Any] | None:
    value = raw.get(field)
    if value is None:
        return None
    if type(value) is not dict:
        raise _NotPlain
    try:
        return storable_object(value)
    except PydanticCustomError:
        raise _NotPlain from None


def segment_time(value: object) -> datetime:
    """A :data:`SegmentTime` from JSON, as the model validates it.

    The usual ``2026-01-31T12:00:00.123Z`` shape is read by :meth:`datetime.fromisoformat`
    (the same instant, in UTC); anything else by the model's own validation.

    Raises:
        ValidationError: not an ISO 8601 date-time (or out of range).
    """
    if type(value) is str and _PLAIN_TIME.fullmatch(value):
        try:
            return _in_utc(datetime.fromisoformat(value))
        except (ValueError, PydanticCustomError):
            pass
    return _SEGMENT_TIME.validate_python(value)


def _time(raw: dict[str, Any], field: str) -> datetime | None:
    value = raw.get(field)
    if value is None:
        return None
    try:
        return segment_time(value)
    except ValidationError:
        raise _NotPlain from None


def plain_message(raw: dict[str, Any]) -> PlainMessage | None:
    """``raw`` checked without building a :class:`SegmentMessage`, or None: use the model.

    Accepts only what the model accepts and gives each field the value the model would
    (tests/unit/test_batch_items.py compares the two); anything else (an error to
    report, non-ASCII text, snake_case keys) returns None. The model cost a fifth of the
    API's CPU per Segment batch message (bench/ingest.py).
    """
    if not _BY_NAME.isdisjoint(raw):
        return None
    given = raw.get("type")
    kind = None if given is None or type(given) is not str else _TYPES.get(given)
    if given is not None and kind is None:
        return None
    context = raw.get("context")
    if context is not None and type(context) is not dict:
        return None
    try:
        return PlainMessage(
            type=kind,
            message_id=_plain_id(raw, "messageId"),
            user_id=_plain_id(raw, "userId"),
            anonymous_id=_plain_id(raw, "anonymousId"),
            event=_text(raw, "event", MAX_NAME_LENGTH),
            name=_text(raw, "name", MAX_NAME_LENGTH),
            category=_text(raw, "category", MAX_NAME_LENGTH),
            properties=_object(raw, "properties"),
            traits=_object(raw, "traits"),
            context=context,
            group_id=_plain_id(raw, "groupId"),
            previous_id=_plain_id(raw, "previousId"),
            timestamp=_time(raw, "timestamp"),
            original_timestamp=_time(raw, "originalTimestamp"),
            sent_at=_time(raw, "sentAt"),
        )
    except _NotPlain:
        return None


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
