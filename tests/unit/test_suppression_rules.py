"""The suppression rules: complaints and hard bounces at once, soft bounces in a row."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from hogsend.core.suppression import (
    AddressHealth,
    after_bounce,
    after_complaint,
    after_delivery,
    after_manual,
    lifted,
)

T0 = datetime(2026, 5, 1, tzinfo=UTC)


def soft(health: AddressHealth, n: int = 1, threshold: int = 3) -> AddressHealth:
    for i in range(n):
        at = T0 + timedelta(hours=i)
        health = after_bounce(health, "soft", at=at, now=at, threshold=threshold)
    return health


def test_a_hard_bounce_suppresses_at_once() -> None:
    health = after_bounce(AddressHealth(), "hard", at=T0, now=T0 + timedelta(seconds=5))
    assert health.suppressed
    assert health.reason == "hard_bounce"
    assert health.suppressed_at == T0 + timedelta(seconds=5)
    assert health.bounce_count == 1
    assert health.soft_bounce_streak == 0
    assert health.last_bounce_at == T0
    assert health.last_bounce_type == "hard"


def test_soft_bounces_suppress_at_the_threshold_in_a_row() -> None:
    two = soft(AddressHealth(), 2)
    assert not two.suppressed
    assert two.soft_bounce_streak == 2
    three = soft(two)
    assert three.suppressed
    assert three.reason == "soft_bounce"
    assert three.bounce_count == 3


def test_a_delivery_ends_the_streak() -> None:
    health = after_delivery(soft(AddressHealth(), 2))
    assert health.soft_bounce_streak == 0
    assert health.bounce_count == 2
    assert not soft(health, 2).suppressed
    assert soft(health, 3).suppressed


@pytest.mark.parametrize("threshold", [1, 2, 5])
def test_the_threshold_is_configurable(threshold: int) -> None:
    assert not soft(AddressHealth(), threshold - 1, threshold).suppressed
    assert soft(AddressHealth(), threshold, threshold).suppressed


def test_a_threshold_below_one_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        after_bounce(AddressHealth(), "soft", at=T0, now=T0, threshold=0)


def test_message_bounces_are_counted_but_never_suppress() -> None:
    health = AddressHealth()
    for _ in range(10):
        health = after_bounce(health, "message", at=T0, now=T0, threshold=1)
    assert not health.suppressed
    assert health.bounce_count == 10
    assert health.soft_bounce_streak == 0


def test_a_complaint_suppresses_at_once() -> None:
    health = after_complaint(AddressHealth(), at=T0, now=T0)
    assert (health.suppressed, health.reason, health.complaint_count) == (True, "complaint", 1)
    assert health.last_complaint_at == T0


def test_a_suppressed_address_keeps_its_first_reason_and_time() -> None:
    first = after_bounce(AddressHealth(), "hard", at=T0, now=T0)
    later = after_complaint(first, at=T0 + timedelta(days=1), now=T0 + timedelta(days=1))
    assert later.reason == "hard_bounce"
    assert later.suppressed_at == T0
    assert later.complaint_count == 1
    manual = after_manual(later, "manual", now=T0 + timedelta(days=2))
    assert manual == later


def test_a_delivery_never_lifts_a_suppression() -> None:
    suppressed = after_complaint(AddressHealth(), at=T0, now=T0)
    assert after_delivery(suppressed).suppressed


def test_lifting_keeps_the_history_and_restarts_the_streak() -> None:
    health = lifted(soft(AddressHealth(), 3))
    assert not health.suppressed
    assert health.reason is None
    assert health.suppressed_at is None
    assert health.bounce_count == 3
    assert health.soft_bounce_streak == 0
    assert soft(health, 3).suppressed
