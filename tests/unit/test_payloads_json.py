"""A batch's event payloads mean the same whichever encoder writes them."""

from __future__ import annotations

import json
import math
import uuid

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hogsend.db.repos.contacts import to_json
from hogsend.db.repos.events import bundle_json, payloads_json

_FLAT_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(), st.text()
)  # integers past 64 bits and lone surrogates included: orjson refuses them
_ANY_VALUE = st.recursive(
    st.one_of(_FLAT_VALUE, st.floats()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
_PAYLOAD = st.dictionaries(st.text(max_size=8), _ANY_VALUE | _FLAT_VALUE, max_size=5)


def _same_value(a: object, b: object) -> bool:
    # NaN is not equal to itself; compare it by kind.
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@given(st.lists(_PAYLOAD, max_size=6))
def test_the_same_json_value_as_the_standard_encoder(payloads: list[dict[str, object]]) -> None:
    assert _same_value(json.loads(payloads_json(payloads)), json.loads(to_json(payloads)))


@given(st.lists(st.dictionaries(st.text(max_size=8), _FLAT_VALUE, max_size=5), max_size=6))
def test_flat_payloads_take_orjson_when_it_can_write_them(
    payloads: list[dict[str, object]],
) -> None:
    try:
        expected = orjson.dumps(payloads).decode()
    except orjson.JSONEncodeError:
        expected = to_json(payloads)
    assert payloads_json(payloads) == expected


def test_nan_still_reaches_postgres_as_nan() -> None:
    # Postgres refuses it, so the batch refuses the item as before (orjson writes null).
    assert payloads_json([{"a": "x"}, {"b": math.nan}]) == '[{"a":"x"},{"b":NaN}]'


def test_what_the_standard_encoder_refuses_is_still_refused() -> None:
    with pytest.raises(TypeError):
        payloads_json([{"a": object()}])
    with pytest.raises(TypeError):
        payloads_json([{"a": "x"}, {(1, 2): "tuple key"}])  # type: ignore[dict-item]


_TEXT_OR_NONE = st.none() | st.text()


@given(
    payload=_PAYLOAD,
    strings=st.lists(_TEXT_OR_NONE, min_size=5, max_size=5),
    ids=st.lists(st.uuids(), min_size=2, max_size=2),
    notify=st.booleans(),
)
def test_a_single_events_values_mean_the_same_whichever_encoder_writes_them(
    payload: dict[str, object], strings: list[str | None], ids: list[uuid.UUID], notify: bool
) -> None:
    now, key, val, name, occurred_at = strings
    bundle: dict[str, object] = {
        "now": now,
        "key": key,
        "val": val,
        "new_id": ids[0],
        "event_id": ids[1],
        "name": name,
        "properties": payload,
        "occurred_at": occurred_at,
        "notify": notify,
    }
    written = bundle_json(bundle, payload)
    assert _same_value(json.loads(written), json.loads(to_json(bundle)))
    flat = all(type(v) in (str, int, bool, type(None)) for v in payload.values())
    if not flat:
        assert written == to_json(bundle)  # floats and nesting: the standard encoder
