"""Event payloads Postgres cannot store are refused whether or not they are flat.

Flat objects of ASCII strings and integers are checked in one loop; everything else
takes the full walk. Both must refuse the same things and accept the same things.
"""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from hogsend.api.schemas.events import MAX_JSON_DEPTH, EventIn


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels):
        value = {"a": value}
    return value


REFUSED = [
    ({"a": "x\x00y"}, "NUL"),
    ({"a\x00": 1}, "NUL"),
    ({"a": "\ud800"}, "surrogates"),
    ({"\udfff": True}, "surrogates"),
    ({"a": 1, "b": float("nan")}, "finite"),
    ({"a": "ok", "b": {"c": "x\x00"}}, "NUL"),
    ({"a": ["ok", "\ud800"]}, "surrogates"),
    ({"a": "é\x00"}, "NUL"),
    (_deep(MAX_JSON_DEPTH + 2), "deeper"),
]

ACCEPTED = [
    {},
    {"path": "/docs/1", "ms": 12, "ref": "bench", "ok": True, "none": None},
    {"name": "Zoë", "city": "Zürich"},
    {"price": 9.5, "tags": ["a", "b"], "nested": {"k": "v"}},
    _deep(MAX_JSON_DEPTH),
]


@pytest.mark.parametrize(("properties", "reason"), REFUSED)
def test_unstorable_properties_are_refused(properties: dict[str, Any], reason: str) -> None:
    for field in ("eventProperties", "contactProperties"):
        with pytest.raises(ValidationError) as caught:
            EventIn.model_validate({"name": "x", "userId": "u", field: properties})
        [error] = caught.value.errors()
        assert error["loc"] == (field,)
        assert reason in error["msg"]


@pytest.mark.parametrize("properties", ACCEPTED)
def test_storable_properties_are_kept_as_given(properties: dict[str, Any]) -> None:
    event = EventIn.model_validate(
        {"name": "x", "userId": "u", "eventProperties": properties, "contactProperties": properties}
    )
    assert event.event_properties == properties
    assert event.contact_properties == properties
