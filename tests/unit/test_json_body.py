"""parse_json answers what json.loads answers for any body; rows_to_json what to_json writes."""

from __future__ import annotations

import json
import math
from datetime import UTC
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hogsend.api.json_body import parse_json
from hogsend.db.repos.contacts import rows_to_json, to_json

NUMBER_TEXT = st.from_regex(r"\A-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?\Z")
JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def _same(body: bytes) -> None:
    try:
        expected: Any = json.loads(body)
    except (ValueError, RecursionError) as exc:
        with pytest.raises(type(exc)):
            parse_json(body)
        return
    got = parse_json(body)
    assert json.dumps(got, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert _types(got) == _types(expected)


def _types(value: Any) -> Any:
    """The value with every leaf replaced by its type (int and float must not swap)."""
    if isinstance(value, dict):
        return {k: _types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_types(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return type(value)


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES, st.booleans())
def test_documents_parse_as_the_standard_parser_parses_them(value: Any, ascii_only: bool) -> None:
    _same(json.dumps({"batch": [value]}, ensure_ascii=ascii_only).encode())


@settings(max_examples=400, deadline=None)
@given(NUMBER_TEXT)
def test_numbers_parse_to_the_same_int_or_float(number: str) -> None:
    _same(f'{{"n": {number}, "l": [{number}]}}'.encode())


@pytest.mark.parametrize(
    "body",
    [
        b'{"a": NaN, "b": Infinity, "c": -Infinity}',
        b'{"a": 1e400}',
        b'{"a": "\\ud800"}',
        b'\xef\xbb\xbf{"a": 1}',
        '{"a": "\u00e9"}'.encode("utf-16"),
        b'{"a": 18446744073709551616, "b": -9223372036854775809}',
        b'{"a": 12345678901234567890123}',
        b'{"a": 1, "a": 2}',
        b'{"a": "x\x01"}',
        b'{"a": "\xff"}',
        b"",
        b"[1,]",
        b'{"a": 1} x',
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_what_orjson_refuses_or_reads_otherwise_is_the_standard_parser_s(body: bytes) -> None:
    _same(body)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "ord": st.integers(min_value=-(2**70), max_value=2**70),
                "id": st.uuids(),
                "name": st.text(max_size=10),
                "at": st.one_of(st.none(), st.datetimes(timezones=st.just(UTC))),
                "flag": st.booleans(),
            }
        ),
        max_size=5,
    )
)
def test_rows_encode_to_the_same_json_as_to_json(rows: list[dict[str, Any]]) -> None:
    assert json.loads(rows_to_json(rows)) == json.loads(to_json(rows))
