"""Entry limits as pure decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hogsend.core.entry_rules import (
    NO_ENTRIES,
    PriorEntries,
    after_entry,
    entry_ordinal,
    entry_refusal,
    next_entry_at,
)

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


def ended(count: int, last: datetime) -> PriorEntries:
    return PriorEntries(count=count, last_entered_at=last, live=False)


def test_first_entry_is_allowed_under_every_limit() -> None:
    assert entry_refusal("once", NO_ENTRIES, NOW) is None
    assert entry_refusal("unlimited", NO_ENTRIES, NOW) is None
    assert entry_refusal("once_per_period", NO_ENTRIES, NOW, period=DAY) is None


def test_once_means_once_whatever_happened_to_the_run() -> None:
    assert entry_refusal("once", ended(1, NOW - 300 * DAY), NOW) == "already_entered_once"


def test_once_per_period_counts_from_the_last_entry() -> None:
    assert entry_refusal("once_per_period", ended(3, NOW - DAY / 2), NOW, period=DAY) == (
        "period_not_elapsed"
    )
    # Exactly one period later is allowed.
    assert entry_refusal("once_per_period", ended(3, NOW - DAY), NOW, period=DAY) is None
    assert next_entry_at("once_per_period", ended(3, NOW - DAY / 2), period=DAY) == NOW + DAY / 2


def test_unlimited_still_allows_one_live_run_only() -> None:
    live = after_entry(NO_ENTRIES, NOW - DAY)
    assert live.live
    assert live.count == 1
    assert entry_refusal("unlimited", live, NOW) == "already_active"
    assert entry_refusal("unlimited", ended(7, NOW - DAY), NOW) is None
    # A live run refuses even when the period has elapsed.
    assert entry_refusal("once_per_period", live, NOW, period=DAY / 4) == "already_active"


def test_next_entry_without_a_time_bound() -> None:
    assert next_entry_at("unlimited", ended(1, NOW)) is None
    assert next_entry_at("once", ended(1, NOW)) is None
    assert next_entry_at("once_per_period", NO_ENTRIES, period=DAY) is None


def test_ordinals_number_entries_from_one() -> None:
    assert entry_ordinal(NO_ENTRIES) == 1
    assert entry_ordinal(after_entry(after_entry(NO_ENTRIES, NOW), NOW)) == 3


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="entry_period"):
        entry_refusal("once_per_period", NO_ENTRIES, NOW)
    with pytest.raises(ValueError, match="entry_period"):
        next_entry_at("once_per_period", ended(1, NOW), period=timedelta(0))
    with pytest.raises(ValueError, match="aware"):
        entry_refusal("once", NO_ENTRIES, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="last_entered_at"):
        PriorEntries(count=1)
    with pytest.raises(ValueError, match="negative"):
        PriorEntries(count=-1)
