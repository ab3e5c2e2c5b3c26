"""How many recipients one campaign step takes: pause latency against per-batch overhead."""

from __future__ import annotations

from hogsend.runtime.campaigns import BATCH_SECONDS, batch_size, next_batch_size
from hogsend.settings import Settings


def test_unpaced_campaigns_take_the_setting() -> None:
    assert batch_size(Settings(env="test"), None) == 2000
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


def test_a_steps_first_batch_is_64_per_lane_then_sizes_follow_the_measured_rate() -> None:
    # 8 lanes: a first batch of 512 (rate unknown), then about BATCH_SECONDS' worth.
    assert next_batch_size(2000, 8, None, None) == 512
    assert next_batch_size(2000, 8, 512, None) == 1024
    assert next_batch_size(2000, 8, 512, 300.0) == 600 == 300 * BATCH_SECONDS
    # A slow campaign keeps the floor (the mailer's cost per batch stays amortised).
    assert next_batch_size(2000, 8, 600, 2.0) == 512
    assert next_batch_size(2000, 1, 600, 0.1) == 64


def test_batches_grow_at_most_twofold_and_never_past_the_cap() -> None:
    assert next_batch_size(4000, 8, 600, 5000.0) == 1200
    assert next_batch_size(2000, 8, 1500, 5000.0) == 2000
    assert next_batch_size(40, 8, None, None) == 40
    assert next_batch_size(40, 8, 40, 1.0) == 40
    # Under a throttle the cap is two seconds' worth: 4/s and 8 lanes give batches of 8.
    cap = batch_size(Settings(env="test"), 4.0)
    assert next_batch_size(cap, 8, None, None) == 8
    assert next_batch_size(cap, 8, 8, 4.0) == 8


def test_the_stage_clock_charges_each_lap_to_its_stage() -> None:
    from hogsend.runtime.campaigns import StageClock

    clock = StageClock()
    clock.lap("nothing yet")  # no mark: only starts the clock
    assert clock.wall == {}
    clock.lap("send")
    clock.lap("send")
    clock.lap("record")
    assert set(clock.wall) == set(clock.cpu) == {"send", "record"}
    assert all(seconds >= 0 for seconds in clock.wall.values())
    clock.reset()
    assert (clock.wall, clock.cpu, clock.batches) == ({}, {}, 0)
