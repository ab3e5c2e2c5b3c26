"""How many recipients one campaign step takes: pause latency against per-batch overhead."""

from __future__ import annotations

from hogsend.runtime.campaigns import batch_size
from hogsend.settings import Settings


def test_unpaced_campaigns_take_the_setting() -> None:
    assert batch_size(Settings(env="test"), None) == 500
    assert batch_size(Settings(env="test", campaign_batch_size=40), None) == 40


def test_a_throttle_caps_a_batch_at_two_seconds_worth() -> None:
    assert batch_size(Settings(env="test"), 4.0) == 8
    assert batch_size(Settings(env="test"), 0.2) == 1
    # A throttle faster than the setting can fill does not raise it.
    assert batch_size(Settings(env="test", campaign_batch_size=40), 1000.0) == 40


def test_provider_pacing_caps_a_batch_like_a_throttle_and_the_slower_wins() -> None:
    paced = Settings(env="test", email_rate_per_second=10.0)
    assert batch_size(paced, None) == 20
    assert batch_size(paced, 2.0) == 4
    assert batch_size(paced, 50.0) == 20
