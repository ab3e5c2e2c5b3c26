"""The mailer's gates as pure functions: each decision, the order, polarity, windows."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime, time, timedelta

import pytest

from hogsend.core.mailer_gates import (
    GATE_ORDER,
    GATED,
    GateResult,
    SendFacts,
    SendWindow,
    decide,
    is_subscribed,
)

NOW = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)  # a Wednesday
ORIGINAL = uuid.uuid4()


def facts(**changes: object) -> SendFacts:
    base = SendFacts(now=NOW, kind="campaign", list_id="newsletter", list_default_opt_in=True)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# Each gate's trigger, listed in gate order: switching on any later one must not change
# the decision an earlier one takes.
TRIGGERS: list[tuple[str, dict[str, object]]] = [
    ("duplicate", {"duplicate_of": ORIGINAL}),
    ("skipped_deleted", {"contact_deleted": True}),
    ("suppressed", {"suppressed": True, "suppression_reason": "complaint"}),
    ("unsubscribed", {"unsubscribed_all": True}),
    ("capped", {"frequency_cap_count": 1, "recent_sends": 1}),
    (
        "deferred",
        {"send_window": SendWindow(start=time(18), end=time(20), timezone="UTC")},
    ),
    ("redirected", {"test_mode": True}),
]


def test_nothing_in_the_way_means_sent() -> None:
    result = decide(facts())
    assert result == GateResult(decision="sent")
    assert result.goes_out


def test_trigger_table_follows_the_declared_order() -> None:
    assert [name for name, _ in TRIGGERS] == list(GATE_ORDER)
    assert "redirected" not in GATED
    assert "duplicate" in GATED


@pytest.mark.parametrize("index", range(len(TRIGGERS)))
def test_each_gate_alone_and_with_every_later_gate(index: int) -> None:
    name, trigger = TRIGGERS[index]
    assert decide(facts(**trigger)).decision == name
    later: dict[str, object] = {}
    for _, more in TRIGGERS[index + 1 :]:
        later.update(more)
    assert decide(facts(**later, **trigger)).decision == name


def test_suppressed_and_unsubscribed_is_suppressed() -> None:
    result = decide(facts(suppressed=True, suppression_reason="hard_bounce", unsubscribed_all=True))
    assert result.decision == "suppressed"
    assert result.detail == {"gate": "suppressed", "reason": "hard_bounce"}


def test_duplicate_points_at_the_original() -> None:
    result = decide(facts(duplicate_of=ORIGINAL))
    assert result.duplicate_of == ORIGINAL
    assert result.detail["duplicateOf"] == str(ORIGINAL)
    assert not result.goes_out


@pytest.mark.parametrize(
    ("default_opt_in", "choice", "expected"),
    [
        (True, None, True),
        (True, False, False),
        (True, True, True),
        (False, None, False),
        (False, True, True),
        (False, False, False),
        (None, None, True),  # an id no list registers: subscribed until an unsubscribe
        (None, False, False),
    ],
)
def test_polarity(default_opt_in: bool | None, choice: bool | None, expected: bool) -> None:
    assert is_subscribed(default_opt_in=default_opt_in, choice=choice) is expected
    result = decide(facts(list_default_opt_in=default_opt_in, list_choice=choice))
    assert (result.decision == "sent") is expected


def test_list_unsubscribe_detail_says_why() -> None:
    never = decide(facts(list_default_opt_in=False))
    assert never.detail["why"] == "opt-in list, never subscribed"
    left = decide(facts(list_choice=False))
    assert left.detail == {
        "gate": "unsubscribed",
        "scope": "list",
        "listId": "newsletter",
        "why": "unsubscribed",
    }
    assert decide(facts(unsubscribed_all=True)).detail["scope"] == "all"


def test_no_list_and_the_transactional_category_need_no_subscription() -> None:
    assert decide(facts(list_id=None, list_default_opt_in=False)).decision == "sent"
    assert decide(facts(list_id="transactional", list_choice=False)).decision == "sent"


def test_transactional_is_exempt_from_unsubscribes_and_caps_not_suppression() -> None:
    blocked = {
        "unsubscribed_all": True,
        "list_choice": False,
        "frequency_cap_count": 1,
        "recent_sends": 5,
        "suppress_gap": timedelta(days=1),
        "journey_last_sent_at": NOW,
    }
    assert decide(facts(kind="transactional", **blocked)).decision == "sent"
    assert decide(facts(kind="transactional", suppressed=True)).decision == "suppressed"
    assert decide(facts(kind="transactional", contact_deleted=True)).decision == ("skipped_deleted")


def test_skip_preference_check_skips_unsubscribes_and_caps_only() -> None:
    assert decide(facts(skip_preference_check=True, unsubscribed_all=True)).decision == "sent"
    capped = facts(skip_preference_check=True, frequency_cap_count=1, recent_sends=1)
    assert decide(capped).decision == "sent"
    assert decide(facts(skip_preference_check=True, suppressed=True)).decision == "suppressed"


def test_journey_suppress_gap() -> None:
    gap = timedelta(hours=6)
    recent = facts(kind="journey", suppress_gap=gap, journey_last_sent_at=NOW - timedelta(hours=1))
    result = decide(recent)
    assert result.decision == "capped"
    assert result.detail["rule"] == "journey_suppress"
    assert result.detail["allowedAt"] == (NOW + timedelta(hours=5)).isoformat()
    old = dataclasses.replace(recent, journey_last_sent_at=NOW - gap)
    assert decide(old).decision == "sent"
    assert decide(dataclasses.replace(recent, suppress_gap=None)).decision == "sent"


def test_frequency_cap_counts_allowed_sends() -> None:
    assert decide(facts(frequency_cap_count=3, recent_sends=2)).decision == "sent"
    result = decide(facts(frequency_cap_count=3, recent_sends=3))
    assert result.decision == "capped"
    assert result.detail["rule"] == "frequency_cap"
    assert result.detail["limit"] == 3
    assert decide(facts(frequency_cap_count=0, recent_sends=100)).decision == "sent"


def test_the_gap_is_checked_before_the_frequency_cap() -> None:
    both = facts(
        kind="journey",
        suppress_gap=timedelta(days=1),
        journey_last_sent_at=NOW,
        frequency_cap_count=1,
        recent_sends=1,
    )
    assert decide(both).detail["rule"] == "journey_suppress"


def test_deferred_carries_the_next_opening() -> None:
    window = SendWindow(start=time(9), end=time(17), weekdays=frozenset({0, 1, 2, 3, 4}))
    late = facts(send_window=window, now=datetime(2026, 3, 6, 18, 0, tzinfo=UTC))  # Friday
    result = decide(late)
    assert result.decision == "deferred"
    assert result.deferred_until == datetime(2026, 3, 9, 9, 0, tzinfo=UTC)  # Monday
    assert result.detail["deferredUntil"] == "2026-03-09T09:00:00+00:00"
    assert decide(facts(send_window=window)).decision == "sent"


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        decide(facts(now=datetime(2026, 1, 1)))


class TestSendWindow:
    def test_edges(self) -> None:
        window = SendWindow(start=time(9), end=time(17), timezone="UTC")
        day = datetime(2026, 3, 4, tzinfo=UTC)
        assert window.next_open(day.replace(hour=9)) is None
        assert window.next_open(day.replace(hour=16, minute=59)) is None
        assert window.next_open(day.replace(hour=17)) == day.replace(day=5, hour=9)
        assert window.next_open(day.replace(hour=3)) == day.replace(hour=9)

    def test_overnight_window(self) -> None:
        window = SendWindow(start=time(22), end=time(6), timezone="UTC")
        day = datetime(2026, 3, 4, tzinfo=UTC)
        assert window.next_open(day.replace(hour=23)) is None
        assert window.next_open(day.replace(hour=2)) is None  # yesterday's night
        assert window.next_open(day.replace(hour=12)) == day.replace(hour=22)

    def test_equal_bounds_open_all_day(self) -> None:
        window = SendWindow(start=time(0), end=time(0), weekdays=frozenset({2}), timezone="UTC")
        assert window.next_open(NOW) is None
        thursday = datetime(2026, 3, 5, 1, tzinfo=UTC)
        assert window.next_open(thursday) == datetime(2026, 3, 11, tzinfo=UTC)

    def test_contact_timezone_and_fallbacks(self) -> None:
        window = SendWindow(start=time(9), end=time(17))
        # 12:00 UTC is 21:00 in Tokyo: closed; opens 09:00 Tokyo = 00:00 UTC next day.
        assert window.next_open(NOW, contact_timezone="Asia/Tokyo") == datetime(
            2026, 3, 5, 0, 0, tzinfo=UTC
        )
        assert window.next_open(NOW, contact_timezone="Not/AZone") is None  # UTC
        assert window.next_open(NOW) is None

    def test_window_zone_wins_over_the_contact(self) -> None:
        window = SendWindow(start=time(9), end=time(17), timezone="UTC")
        assert window.next_open(NOW, contact_timezone="Asia/Tokyo") is None

    def test_dst_gap(self) -> None:
        # 2026-03-08 02:30 does not exist in New York; the window opens after the jump.
        window = SendWindow(start=time(2, 30), end=time(4), timezone="America/New_York")
        before = datetime(2026, 3, 8, 6, 0, tzinfo=UTC)  # 01:00 EST
        opens = window.next_open(before)
        assert opens is not None
        assert before < opens <= datetime(2026, 3, 8, 8, 0, tzinfo=UTC)

    def test_validation(self) -> None:
        with pytest.raises(ValueError, match="weekdays"):
            SendWindow(start=time(9), end=time(17), weekdays=frozenset())
        with pytest.raises(ValueError, match="weekdays"):
            SendWindow(start=time(9), end=time(17), weekdays=frozenset({7}))
        with pytest.raises(ValueError, match="aware"):
            SendWindow(start=time(9), end=time(17)).next_open(datetime(2026, 1, 1))
