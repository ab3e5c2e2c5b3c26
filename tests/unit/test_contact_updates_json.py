"""The claim's contact-update rows encode alike on the C path and the standard one."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from hogsend.db.repos.contacts import rows_to_json, to_json
from hogsend.db.repos.events import _ContactUpdate, updates_json

_SEEN = st.one_of(
    st.none(),
    st.datetimes(
        min_value=datetime(1990, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
    ),
)
_PLAIN_UPDATE = st.builds(
    _ContactUpdate,
    id=st.uuids(),
    properties=st.none(),
    seen_at=_SEEN,
    changed=st.booleans(),
)


def _standard(updates: list[_ContactUpdate]) -> str:
    return to_json([u.row() for u in updates])


@given(st.lists(_PLAIN_UPDATE, max_size=20))
def test_rows_without_properties_encode_as_the_standard_encoder_does(
    updates: list[_ContactUpdate],
) -> None:
    fast = updates_json(updates)
    assert fast == rows_to_json([u.row() for u in updates])  # the C path was taken
    assert json.loads(fast) == json.loads(_standard(updates))
    # The same instants, not only the same text after parsing.
    for got, update in zip(json.loads(fast), updates, strict=True):
        if update.seen_at is not None:
            assert datetime.fromisoformat(got["seen_at"]) == update.seen_at


def test_a_user_payload_keeps_the_standard_encoder() -> None:
    # The standard encoder writes NaN (which Postgres then refuses, as for any payload);
    # orjson would have written null.
    update = _ContactUpdate(
        id=uuid.uuid4(), properties={"score": float("nan")}, seen_at=None, changed=True
    )
    assert updates_json([update]) == _standard([update])
    assert "NaN" in updates_json([update])


def test_an_offset_with_seconds_keeps_the_standard_encoder() -> None:
    # A historical offset with seconds, which orjson would round to whole minutes.
    lmt = timezone(-timedelta(hours=6, minutes=41, seconds=16))
    update = _ContactUpdate(
        id=uuid.uuid4(), properties=None, seen_at=datetime(1880, 1, 1, tzinfo=lmt), changed=False
    )
    assert updates_json([update]) == _standard([update])
    assert "-06:41:16" in updates_json([update])
