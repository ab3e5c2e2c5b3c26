"""Bodies of the data-plane event routes: ``POST /v1/events`` and ``/v1/events/batch``.

Also the pieces the contact and Segment bodies share: identity fields that normalise
and check themselves, and JSON payloads Postgres can store.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic_core import PydanticCustomError

from hogsend.api.schemas.common import ApiModel, IsoDateTime, Text
from hogsend.core.contact import Event
from hogsend.core.identity import (
    MAX_EMAIL_LENGTH,
    MAX_ID_LENGTH,
    Identity,
    IdentityConflict,
    IdentityError,
)
from hogsend.core.ingest import MAX_IDEMPOTENCY_KEY_LENGTH

MAX_JSON_DEPTH = 32
MAX_NAME_LENGTH = 200


def _clean_text(value: str) -> str:
    # Postgres text holds neither NUL nor lone surrogates (json.loads lets both through).
    if "\x00" in value:
        raise PydanticCustomError("text_nul", "cannot contain NUL characters")
    if value.isascii():
        return value  # no surrogates possible; skips an encode per string of every event
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "text_unicode", "contains unpaired surrogates (not valid Unicode)"
        ) from None
    return value


StoredText = Annotated[str, AfterValidator(_clean_text)]
"""A string Postgres can store: no NUL, valid Unicode."""


def _utc(value: datetime) -> datetime:
    # Postgres refuses UTC offsets past 15:59 that Python accepts; UTC is what we store.
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError("datetime_range", "is out of range once in UTC") from None


Timestamp = Annotated[IsoDateTime, AfterValidator(_utc)]
"""An ISO 8601 date-time with an offset, converted to UTC."""


def _check_json(value: Any, depth: int = 0) -> None:
    # Postgres jsonb refuses what text refuses and has no NaN/Infinity; json.loads allows them.
    if depth > MAX_JSON_DEPTH:
        raise PydanticCustomError("json_depth", f"is nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        _clean_text(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise PydanticCustomError("json_number", "numbers must be finite (no NaN/Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, depth)
            _check_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json(item, depth + 1)


def storable_object(value: dict[str, Any]) -> dict[str, Any]:
    """``value``, checked: Postgres can store it as jsonb (no NUL, finite numbers, depth).

    Raises:
        PydanticCustomError: naming what is wrong.
    """
    # Most payloads are flat objects of short ASCII strings and integers: checked in one
    # loop here; anything else (nesting, floats, other text) takes the full walk.
    for key, item in value.items():
        kind = type(item)
        if not (
            (kind is str and "\x00" not in item and item.isascii())
            or kind is int
            or kind is bool
            or item is None
        ):
            break
        if "\x00" in key or not key.isascii():
            break
    else:
        return value
    _check_json(value)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(storable_object)]
"""A JSON object Postgres can store (no NUL characters, finite numbers, bounded depth)."""


class IdentityFields(ApiModel):
    """Who a request is about: at least one of ``userId``, ``email``, ``anonymousId``.

    Ids are trimmed (blank means absent); emails are trimmed with the domain
    lower-cased. docs/events-and-identity.md has the rules.
    """

    user_id: str | None = Field(
        default=None,
        max_length=MAX_ID_LENGTH,
        description="Your id for the person (the contact's external id).",
    )
    email: str | None = Field(
        default=None, max_length=MAX_EMAIL_LENGTH, description="The person's email address."
    )
    anonymous_id: str | None = Field(
        default=None,
        max_length=MAX_ID_LENGTH,
        description="A pre-login visitor id; sent with a `userId` it identifies that visitor.",
    )

    @field_validator("user_id", "email", "anonymous_id")
    @classmethod
    def _storable_key(cls, value: str | None) -> str | None:
        return None if value is None else _clean_text(value)

    def identity(self) -> Identity | None:
        """The normalised identity, or None when no key is left after trimming.

        Normalising once, here, rather than in field validators too: in a batch it is
        a measurable share of the work.

        Raises:
            IdentityError: a key is unusable; ``field`` names it (see
                :data:`IDENTITY_FIELDS` for its JSON name).
        """
        try:
            return Identity(user_id=self.user_id, email=self.email, anonymous_id=self.anonymous_id)
        except IdentityError as exc:
            if exc.field == "identity":
                return None
            raise


IDENTITY_FIELDS = {"user_id": "userId", "email": "email", "anonymous_id": "anonymousId"}
"""JSON names of the identity fields, by :attr:`IdentityError.field`."""

IDENTITY_MISSING = "at least one of userId, email or anonymousId is needed"

IdempotencyKey = Annotated[
    StoredText,
    Field(
        min_length=1,
        max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
        description="Repeating a key returns the first event and changes nothing. "
        "The `Idempotency-Key` header wins over this field.",
    ),
]


class EventIn(IdentityFields):
    """One event about one person."""

    model_config = ConfigDict(extra="forbid")

    name: StoredText = Field(
        min_length=1, max_length=MAX_NAME_LENGTH, description="The event name, e.g. `signed_up`."
    )
    event_properties: JsonObject = Field(
        default_factory=dict, description="Stored on the event; journeys and buckets read them."
    )
    contact_properties: JsonObject | None = Field(
        default=None,
        description="A shallow patch of the contact's properties; `null` deletes a key. "
        "Applied only when the event is stored (never on a duplicate).",
    )
    lists: dict[StoredText, bool] | None = Field(
        default=None,
        description="List id → subscribed. Every id must be a list the app registers.",
    )
    timestamp: Timestamp | None = Field(
        default=None,
        description="When it happened, ISO 8601 with an offset; default: when received.",
    )
    idempotency_key: IdempotencyKey | None = None


class ConflictOut(ApiModel):
    """A given key that was not applied: the contact already holds another value there."""

    field: Literal["userId", "email", "anonymousId"]
    given: str
    existing: str


_FIELD_OF_KIND: dict[str, Literal["userId", "email", "anonymousId"]] = {
    "external": "userId",
    "email": "email",
    "anonymous": "anonymousId",
}


def conflicts_out(conflicts: tuple[IdentityConflict, ...]) -> list[ConflictOut] | None:
    """API form of identity conflicts; None when there are none."""
    if not conflicts:
        return None
    return [
        ConflictOut(field=_FIELD_OF_KIND[c.kind], given=c.given, existing=c.existing)
        for c in conflicts
    ]


class EventAccepted(ApiModel):
    """The event is stored (or was, for a repeated idempotency key)."""

    stored: bool = Field(description="False when the idempotency key was seen before.")
    event_id: UUID = Field(description="The stored event (the original one for a duplicate).")
    contact_id: UUID = Field(description="The contact the event belongs to.")
    duplicate: bool | None = Field(
        default=None, description="`true` when the idempotency key was seen before."
    )
    conflicts: list[ConflictOut] | None = Field(
        default=None, description="Given keys not applied to the contact (never overwritten)."
    )


class EventBatchIn(ApiModel):
    """Up to ``HOGSEND_BATCH_MAX_EVENTS`` events, each validated on its own."""

    model_config = ConfigDict(extra="forbid")

    events: list[Annotated[Any, WithJsonSchema({"$ref": "#/components/schemas/EventIn"})]] = Field(
        description="Events shaped like the body of `POST /v1/events`. A bad item is "
        "rejected alone; the others are still stored."
    )


class ItemError(ApiModel):
    """One bad field of a batch item (``field`` is relative to the item)."""

    field: str
    message: str


class BatchItemResult(ApiModel):
    """What happened to one item of a batch."""

    index: int = Field(description="Position of the item in the request, from 0.")
    status: Literal["stored", "duplicate", "rejected"]
    event_id: UUID | None = None
    contact_id: UUID | None = None
    conflicts: list[ConflictOut] | None = None
    errors: list[ItemError] | None = Field(default=None, description="Why it was rejected.")


class EventBatchResult(ApiModel):
    """Per-item results in request order, and totals."""

    results: list[BatchItemResult]
    stored: int
    duplicates: int
    rejected: int


class EventOut(ApiModel):
    """One stored event."""

    id: UUID
    event: str = Field(description="The event name.")
    contact_id: UUID | None
    user_id: str = Field(
        description="The contact's resolved key when stored (userId, else anonymousId, "
        "else the contact id); merges move it to the survivor's."
    )
    properties: dict[str, Any]
    idempotency_key: str | None
    source: str | None = Field(description="`api`, `batch`, `segment`, ...")
    occurred_at: datetime
    received_at: datetime | None


def event_out(event: Event) -> EventOut:
    """The API form of a stored event."""
    return EventOut(
        id=event.id,
        event=event.name,
        contact_id=event.contact_id,
        user_id=event.contact_key,
        properties=dict(event.properties),
        idempotency_key=event.idempotency_key,
        source=event.source,
        occurred_at=event.occurred_at,
        received_at=event.received_at,
    )


class EventPage(ApiModel):
    """A page of events, newest first."""

    events: list[EventOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class CursorQuery(ApiModel):
    """Keyset pagination parameters."""

    model_config = ConfigDict(extra="forbid")

    cursor: Text | None = Field(
        default=None, max_length=1024, description="`nextCursor` of the previous page."
    )
    limit: int = Field(default=50, ge=1, le=100, description="Page size, 1..100.")


class AdminEventQuery(CursorQuery):
    """Filters of the admin event listing; every given filter must match."""

    event: Text | None = Field(default=None, max_length=MAX_NAME_LENGTH, description="Exact name.")
    contact_id: UUID | None = Field(default=None)
    from_: Timestamp | None = Field(
        default=None, alias="from", description="occurredAt at or after."
    )
    to: Timestamp | None = Field(default=None, description="occurredAt at or before.")
