"""Bodies of the Segment-compatible routes under ``/segment/v1``.

Segment clients send more than we read (``context``, ``integrations``, ``_metadata``,
``channel`` ...), so unknown fields are accepted and ignored, unlike our own API.
"""

from __future__ import annotations

import re
from collections.abc import Callable
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

    type: SegmentType | None = None
    message_id: str | None = None
    user_id: str | None = None
    anonymous_id: str | None = None
    event: str | None = None
    name: str | None = None
    category: str | None = None
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None
    group_id: str | None = None
    previous_id: str | None = None
    timestamp: datetime | None = None
    original_timestamp: datetime | None = None
    sent_at: datetime | None = None


_TYPES: dict[object, SegmentType] = {kind: kind for kind in get_args(SegmentType)}
# Field names SegmentMessage also accepts instead of their camelCase alias: a message
# using one goes through the model, which knows which of the two wins.
BY_NAME_FIELDS = frozenset(
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


def _plain_text(value: object, limit: int) -> str:
    # ASCII without NUL: what StoredText accepts without a second look.
    if type(value) is str and len(value) <= limit and value.isascii() and "\x00" not in value:
        return value
    raise _NotPlain


def _plain_name(value: object) -> str:
    return _plain_text(value, MAX_NAME_LENGTH)


def _plain_id(value: object) -> str:
    if type(value) is int and -_MAX_PLAIN_INT < value < _MAX_PLAIN_INT:
        return str(value)
    return _plain_text(value, MAX_SEGMENT_ID_LENGTH)


def _plain_object(value: object) -> dict[str, Any]:
    if type(value) is not dict:
        raise _NotPlain
    try:
        return storable_object(value)
    except PydanticCustomError:
        raise _NotPlain from None


def _plain_context(value: object) -> dict[str, Any]:
    if type(value) is not dict:
        raise _NotPlain
    return value


def _plain_type(value: object) -> SegmentType:
    kind = _TYPES.get(value) if type(value) is str else None
    if kind is None:
        raise _NotPlain
    return kind


def segment_time(value: object) -> datetime:
    """A :data:`SegmentTime` from JSON, as the model validates it.

    The usual ``2026-01-31T12:00:00.123Z`` shape is read by :meth:`datetime.fromisoformat`
    (the same instant, in UTC); anything else by the model's own validation.

    Raises:
        ValidationError: not an ISO 8601 date-time (or out of range).
    """
    if type(value) is str and _PLAIN_TIME.fullmatch(value):
        try:
            parsed = datetime.fromisoformat(value)
            # A ``Z`` (what the clients send) parses to UTC itself: nothing to convert.
            return parsed if parsed.tzinfo is UTC else _in_utc(parsed)
        except (ValueError, PydanticCustomError):
            pass
    return _SEGMENT_TIME.validate_python(value)


def _plain_time(value: object) -> datetime:
    try:
        return segment_time(value)
    except ValidationError:
        raise _NotPlain from None


# JSON key → (PlainMessage field, check): the check returns the value the model would
# give the field, or raises _NotPlain.
_PLAIN_FIELDS: dict[str, tuple[str, Callable[[object], object]]] = {
    "type": ("type", _plain_type),
    "messageId": ("message_id", _plain_id),
    "userId": ("user_id", _plain_id),
    "anonymousId": ("anonymous_id", _plain_id),
    "event": ("event", _plain_name),
    "name": ("name", _plain_name),
    "category": ("category", _plain_name),
    "properties": ("properties", _plain_object),
    "traits": ("traits", _plain_object),
    "context": ("context", _plain_context),
    "groupId": ("group_id", _plain_id),
    "previousId": ("previous_id", _plain_id),
    "timestamp": ("timestamp", _plain_time),
    "originalTimestamp": ("original_timestamp", _plain_time),
    "sentAt": ("sent_at", _plain_time),
}


def plain_message(raw: dict[str, Any]) -> PlainMessage | None:
    """``raw`` checked without building a :class:`SegmentMessage`, or None: use the model.

    Accepts only what the model accepts and gives each field the value the model would
    (tests/unit/test_plain_items.py compares the two); anything else (an error to
    report, non-ASCII text, snake_case keys) returns None. The model cost a fifth of the
    API's CPU per Segment batch message (bench/ingest.py). One pass over the message's
    own keys: other keys are ignored, as the model ignores them.
    """
    values: dict[str, Any] = {}
    try:
        for key, value in raw.items():
            known = _PLAIN_FIELDS.get(key)
            if known is None:
                if key in BY_NAME_FIELDS:
                    return None
            elif value is not None:
                values[known[0]] = known[1](value)
    except _NotPlain:
        return None
    return PlainMessage(**values)


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
