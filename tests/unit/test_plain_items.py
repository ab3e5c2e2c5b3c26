"""Batch items and Segment messages of the common shape skip the pydantic models.

:func:`plain_item` and :func:`plain_message` must accept only what the models accept and
give every field the value the models give it; anything else goes to the models (which
name the fields at fault). Compared here on generated bodies mixing good and bad values.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from hogsend.api.routes.events import event_input, plain_item
from hogsend.api.routes.segment import AliasInput, MessageError, map_message, plain_input, to_input
from hogsend.api.schemas.events import EventIn
from hogsend.api.schemas.segment import (
    PlainMessage,
    SegmentMessage,
    SegmentTime,
    SegmentType,
    plain_message,
    segment_time,
)
from hogsend.core.identity import IdentityError
from hogsend.core.ingest import EventInput

TEXTS = [
    "u-1",
    "  padded  ",
    "",
    "   ",
    "Zoë",
    "a\x00b",
    "tab\there",
    "\ud800",
    "ann@example.com",
    "Ann@Example.COM ",
    "not-an-email@",
    "x" * 200,
    "x" * 201,
    "y" * 512,
    "y" * 513,
    "e" * 250 + "@x.io",
    "2026-01-31T12:00:00Z",
    "2026-01-31T12:00:00.123456+05:30",
    "2026-01-31T12:00:00",
    "2026-13-31T12:00:00Z",
    "2026-01-31T12:00:00.1234567Z",
    "2026-01-31 12:00:00Z",
    "2026-01-31T24:00:00Z",
    "0001-01-01T00:00:00+01:00",
    "track",
    "identify",
    "alias",
    "group",
    "bogus",
]
OBJECTS: list[Any] = [
    {},
    {"path": "/docs/1", "ms": 12, "ref": "bench", "ok": True, "none": None},
    {"price": 9.5, "tags": ["a", "b"], "nested": {"k": "v"}},
    {"a": "x\x00y"},
    {"a": float("nan")},
    {"email": "ann@example.com", "plan": "pro"},
    {"email": 5},
    {"traits": {"email": "bob@example.com"}},
    {"traits": "nope"},
]
VALUES = st.one_of(
    st.sampled_from(TEXTS),
    st.sampled_from(OBJECTS),
    st.none(),
    st.booleans(),
    st.sampled_from([0, 7, -3, 2**63, -(2**63), 2**70]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.just(["a", 1]),
    st.text(max_size=12),
)

ITEM_KEYS = [
    "name",
    "userId",
    "email",
    "anonymousId",
    "eventProperties",
    "contactProperties",
    "timestamp",
    "idempotencyKey",
    "user_id",
    "lists",
    "extra",
]
MESSAGE_KEYS = [
    "type",
    "messageId",
    "userId",
    "anonymousId",
    "event",
    "name",
    "category",
    "properties",
    "traits",
    "context",
    "groupId",
    "previousId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "message_id",
    "sent_at",
    "integrations",
]

# Mostly good values, so that many generated bodies are accepted and compared field by
# field (not only refused by both).


def _model_item(raw: dict[str, Any]) -> EventInput | None:
    """What the model path makes of an item (None: it reports an error)."""
    try:
        body = EventIn.model_validate(raw)
        identity = body.identity()
    except (ValidationError, IdentityError):
        return None
    if identity is None:
        return None
    return event_input(body, identity, idempotency_key=None, source="batch")


def _assert_same_time(plain: datetime | None, model: datetime | None) -> None:
    assert plain == model
    if plain is not None and model is not None:
        assert plain.utcoffset() == model.utcoffset() == timedelta(0)


_GOOD_TEXT = st.sampled_from(["page_viewed", "u-1", "  u-2 ", "ann@example.com"])
_GOOD_OBJECT = st.sampled_from([{}, {"path": "/docs/1", "ms": 12}, {"plan": "pro", "n": None}])
_GOOD_TIME = st.sampled_from(["2026-01-31T12:00:00Z", "2026-01-31T12:00:00.5+02:00"])
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "email": st.sampled_from(["ann@example.com", "Ann@Example.COM", " bob@x.io "]),
    "eventProperties": _GOOD_OBJECT,
    "contactProperties": _GOOD_OBJECT,
    "properties": _GOOD_OBJECT,
    "traits": _GOOD_OBJECT,
    "context": st.sampled_from([{}, {"library": {"name": "x"}}, {"traits": {"a": 1}}]),
    "timestamp": _GOOD_TIME,
    "originalTimestamp": _GOOD_TIME,
    "sentAt": _GOOD_TIME,
    "type": st.sampled_from(["track", "identify", "page", "screen", "group", "alias"]),
    "userId": st.one_of(_GOOD_TEXT, st.integers(min_value=-5, max_value=10**6)),
}


def _body(keys: list[str], required: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    def value(key: str) -> st.SearchStrategy[Any]:
        good = GOOD.get(key, _GOOD_TEXT)
        # One value in five from anything (one_of would weigh each of VALUES' branches).
        return st.integers(0, 4).flatmap(lambda n: VALUES if n == 0 else good)

    return st.fixed_dictionaries(
        {key: value(key) for key in required},
        optional={key: value(key) for key in keys if key not in required},
    )


# Keys that always send a body to the model are left to the unconstrained bodies.
ITEMS = _body(ITEM_KEYS[:8], ("name", "userId"))
MESSAGES = _body([*MESSAGE_KEYS[:15], "integrations"], ("messageId", "userId"))


@settings(max_examples=800, deadline=None)
@given(st.one_of(ITEMS, st.dictionaries(st.sampled_from(ITEM_KEYS), VALUES, max_size=8)))
def test_a_plain_item_is_exactly_what_the_model_makes_of_it(raw: dict[str, Any]) -> None:
    plain = plain_item(raw)
    if plain is None:
        return
    model = _model_item(raw)
    assert model is not None, "the plain path accepted an item the model refuses"
    assert plain == model
    _assert_same_time(plain.occurred_at, model.occurred_at)


@settings(max_examples=800, deadline=None)
@given(st.one_of(MESSAGES, st.dictionaries(st.sampled_from(MESSAGE_KEYS), VALUES, max_size=9)))
def test_a_plain_message_is_exactly_what_the_model_makes_of_it(raw: dict[str, Any]) -> None:
    plain = plain_message(raw)
    if plain is None:
        return
    try:
        model = SegmentMessage.model_validate(raw)
    except ValidationError as exc:
        raise AssertionError(
            f"the plain path accepted a message the model refuses: {exc}"
        ) from None
    for field in PlainMessage.__dataclass_fields__:
        assert getattr(plain, field) == getattr(model, field), field
    for field in ("timestamp", "original_timestamp", "sent_at"):
        _assert_same_time(getattr(plain, field), getattr(model, field))


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-18 * 60 + 1, max_value=18 * 60 - 1),
    st.sampled_from(["seconds", "milliseconds", "microseconds"]),
    st.booleans(),
)
def test_segment_times_read_like_the_model_reads_them(
    when: datetime, offset_minutes: int, spec: str, zulu: bool
) -> None:
    zone = UTC if zulu else timezone(timedelta(minutes=offset_minutes))
    text = when.replace(tzinfo=zone).isoformat(timespec=spec)
    if zulu:
        text = text.replace("+00:00", "Z")
    adapter: TypeAdapter[datetime] = TypeAdapter(SegmentTime)
    try:
        expected = adapter.validate_python(text)
    except ValidationError:
        with pytest.raises(ValidationError):
            segment_time(text)
        return
    _assert_same_time(segment_time(text), expected)


def test_the_common_shapes_take_the_plain_path() -> None:
    item = {
        "name": "page_viewed",
        "userId": "user-1",
        "email": "Ann@Example.COM",
        "eventProperties": {"path": "/docs/1", "ms": 12},
        "contactProperties": {"plan": "pro"},
        "timestamp": "2026-01-31T12:00:00+01:00",
        "idempotencyKey": "e-1",
    }
    plain = plain_item(item)
    assert plain is not None
    assert plain == _model_item(item)
    assert plain.identity is not None
    assert plain.identity.email == "Ann@example.com"
    assert plain.occurred_at == datetime(2026, 1, 31, 11, tzinfo=UTC)

    message = {
        "type": "track",
        "event": "Order Completed",
        "userId": 42,
        "properties": {"total": 42.5},
        "messageId": "3f4b1c2e",
        "timestamp": "2026-01-31T12:00:00.250Z",
        "context": {"library": {"name": "analytics-python", "version": "2.3"}},
        "integrations": {},
    }
    found = plain_message(message)
    assert found is not None
    assert found.user_id == "42"
    assert found.timestamp == datetime(2026, 1, 31, 12, 0, 0, 250000, tzinfo=UTC)


@pytest.mark.parametrize(
    "item",
    [
        {"name": "x", "userId": "u", "lists": {"news": True}},  # lists: the app's ids
        {"name": "x", "user_id": "u"},  # snake_case: the model decides
        {"name": "x", "userId": "   "},  # no identity: an error to name
        {"name": "x", "userId": "u", "eventProperties": None},
        {"name": "Zoë", "userId": "u"},  # non-ASCII: the model's full text check
        {"name": "x", "userId": "u", "unknown": 1},
    ],
)
def test_other_items_take_the_model_path(item: dict[str, Any]) -> None:
    assert plain_item(item) is None


_RECEIVED = datetime(2026, 1, 31, 12, 0, 5, tzinfo=UTC)
_SENT = datetime(2026, 1, 31, 12, 0, 1, tzinfo=UTC)
# Without traits and the alias / group ids, which always take the general mapping.
_PLAIN_MESSAGE_KEYS = [
    key
    for key in (*MESSAGE_KEYS[:15], "integrations")
    if key not in ("traits", "groupId", "previousId")
]


def _mapped(raw: dict[str, Any], kind: SegmentType | None) -> EventInput | AliasInput | None:
    """What the general mapping makes of a message, through the model (None: an error)."""
    try:
        message = SegmentMessage.model_validate(raw)
    except ValidationError:
        return None
    try:
        return map_message(message, kind, batch_sent_at=_SENT, received_at=_RECEIVED)
    except MessageError:
        return None


@settings(max_examples=1500, deadline=None)
@given(
    st.one_of(
        _body(_PLAIN_MESSAGE_KEYS, ("messageId", "userId", "type")),
        _body(_PLAIN_MESSAGE_KEYS, ("messageId", "anonymousId", "event")),
        st.dictionaries(st.sampled_from(MESSAGE_KEYS), VALUES, max_size=9),
    ),
    st.sampled_from([None, None, "track", "page", "screen", "identify"]),
)
def test_a_plain_input_is_exactly_what_the_general_mapping_makes(
    raw: dict[str, Any], kind: SegmentType | None
) -> None:
    plain = plain_input(raw, kind, batch_sent_at=_SENT, received_at=_RECEIVED)
    if plain is None:
        return
    mapped = _mapped(raw, kind)
    assert mapped is not None, "the plain path accepted a message the general path refuses"
    assert plain == mapped
    # Identities compare by their ids only: their keys (what ingest looks up) too.
    assert plain.identity is not None
    assert isinstance(mapped, EventInput)
    assert mapped.identity is not None
    assert plain.identity.keys == mapped.identity.keys
    _assert_same_time(plain.occurred_at, mapped.occurred_at)
    # And to_input, which tries the plain path first, answers the same.
    assert to_input(raw, kind, batch_sent_at=_SENT, received_at=_RECEIVED) == mapped


def test_the_usual_track_page_and_screen_take_the_plain_input_path() -> None:
    track = {
        "type": "track",
        "event": "Order Completed",
        "userId": " 42 ",
        "properties": {"total": 42, "sku": "a-1"},
        "messageId": "3f4b1c2e",
        "originalTimestamp": "2026-01-31T12:00:00Z",
        "context": {"library": {"name": "analytics-python", "version": "2.3"}},
        "integrations": {},
    }
    page = {"type": "page", "anonymousId": 7, "name": "Pricing", "category": "Docs"}
    cases: list[tuple[dict[str, Any], SegmentType | None]] = [
        (track, None),
        (page, None),
        ({**page, "type": None}, "screen"),
    ]
    for raw, kind in cases:
        plain = plain_input(raw, kind, batch_sent_at=_SENT, received_at=_RECEIVED)
        assert plain is not None
        assert plain == _mapped(raw, kind)
    plain = plain_input(track, None, batch_sent_at=_SENT, received_at=_RECEIVED)
    assert plain is not None
    assert plain.identity is not None
    assert plain.identity.user_id == "42"
    assert plain.idempotency_key == "segment:3f4b1c2e"
    # Corrected for the device's clock: received 4 s after it was sent.
    assert plain.occurred_at == datetime(2026, 1, 31, 12, 0, 4, tzinfo=UTC)
    screen = plain_input(page, "screen", batch_sent_at=None, received_at=_RECEIVED)
    assert screen is not None
    assert (screen.name, dict(screen.properties)) == (
        "screen",
        {"name": "Pricing", "category": "Docs"},
    )


@pytest.mark.parametrize(
    "raw",
    [
        {"type": "identify", "userId": "u", "traits": {"plan": "pro"}},
        {"type": "track", "event": "x", "userId": "u", "traits": {}},
        {"type": "track", "event": "x", "userId": "u", "context": {"traits": {"a": 1}}},
        {"type": "track", "event": "x", "user_id": "u"},
        {"type": "track", "event": "  ", "userId": "u"},
        {"type": "track", "event": "x", "userId": "tab\there"},
        {"type": "track", "event": "x", "userId": "Zoë"},
        {"type": "track", "event": "x"},
        {"type": "group", "userId": "u", "groupId": "g"},
        {"type": "alias", "userId": "u", "previousId": "p"},
        {"type": "bogus", "event": "x", "userId": "u"},
    ],
)
def test_other_messages_take_the_general_mapping(raw: dict[str, Any]) -> None:
    assert plain_input(raw, None, batch_sent_at=None, received_at=_RECEIVED) is None
