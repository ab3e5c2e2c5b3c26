"""aware_now: an explicit aware instant passes through; naive is refused; none means now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from hogsend.core.clock import aware_now


def test_explicit_aware_instant_is_returned_unchanged() -> None:
    at = datetime(2026, 1, 2, 3, 4, tzinfo=timezone(timedelta(hours=2)))
    assert aware_now(at) is at


def test_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        aware_now(datetime(2026, 1, 2))


def test_default_is_the_current_utc_time() -> None:
    before = datetime.now(UTC)
    got = aware_now()
    assert got.tzinfo is UTC
    assert before <= got <= datetime.now(UTC)
