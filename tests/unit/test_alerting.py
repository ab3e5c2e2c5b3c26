"""The pure alert decision: fire once, repeat per cooldown, resolve once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hogsend.core.alerting import breached, decide, notifies

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
COOLDOWN = timedelta(minutes=30)


@pytest.mark.parametrize(
    ("holds", "firing_since", "last", "expected"),
    [
        (True, None, None, "fire"),
        (True, None, NOW - timedelta(days=1), "fire"),
        (True, NOW - timedelta(hours=1), NOW - timedelta(minutes=10), "hold"),
        (True, NOW - timedelta(hours=1), NOW - COOLDOWN, "repeat"),
        (True, NOW - timedelta(hours=1), None, "repeat"),
        (False, NOW - timedelta(hours=1), NOW - timedelta(minutes=1), "resolve"),
        (False, None, NOW - timedelta(minutes=1), "quiet"),
    ],
)
def test_decide(
    holds: bool, firing_since: datetime | None, last: datetime | None, expected: str
) -> None:
    outcome = decide(
        holds=holds, firing_since=firing_since, last_notified_at=last, cooldown=COOLDOWN, now=NOW
    )
    assert outcome == expected
    assert notifies(outcome) is (expected in ("fire", "repeat", "resolve"))


def test_a_rule_that_keeps_holding_notifies_once_per_cooldown() -> None:
    firing, last, sent = None, None, 0
    for minute in range(0, 120):
        now = NOW + timedelta(minutes=minute)
        outcome = decide(
            holds=True, firing_since=firing, last_notified_at=last, cooldown=COOLDOWN, now=now
        )
        if notifies(outcome):
            sent += 1
            last = now
            firing = firing or now
    assert sent == 4  # minutes 0, 30, 60, 90


def test_breached() -> None:
    # rates need volume
    assert not breached("bounce_rate_exceeded", 0.5, 0.1, 3, 4)
    assert breached("bounce_rate_exceeded", 0.5, 0.1, 4, 4)
    assert not breached("high_complaint_rate", 0.1, 0.1, 100, 4)  # equal is not past
    assert breached("high_complaint_rate", 0.11, 0.1, 100, 0)
    assert not breached("high_complaint_rate", 0.5, 0.1, None, 1)
    # counts and lag: above the threshold
    assert breached("dispatcher_lag", 301, 300, None, 0)
    assert not breached("journey_failure_spike", 3, 3, None, 0)
    # workers: fewer alive than the threshold
    assert breached("worker_down", 0, 1, None, 0)
    assert not breached("worker_down", 2, 2, None, 0)
