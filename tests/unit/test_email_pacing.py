"""Pacing: the token bucket and back-off on retry_after, on a virtual clock."""

from __future__ import annotations

import asyncio

import pytest

from hogsend.channels.email import OutgoingEmail, PacedProvider, ProviderResult, TokenBucket
from hogsend.errors import PermanentProviderError, TransientProviderError


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


MESSAGE = OutgoingEmail(from_email="a@x.test", to="b@x.test", subject="s", text="t")


async def test_bucket_spaces_out_after_the_burst() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(2.0, clock=clock, sleep=clock.sleep)
    waits = [await bucket.acquire() for _ in range(6)]
    assert waits[:2] == [0.0, 0.0]
    assert waits[2:] == pytest.approx([0.5, 0.5, 0.5, 0.5])
    assert clock.now == pytest.approx(2.0)


async def test_bucket_refills_while_idle() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(1.0, burst=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        assert await bucket.acquire() == 0.0
    clock.now += 10
    assert [await bucket.acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await bucket.acquire() == pytest.approx(1.0)


async def test_concurrent_callers_queue_fairly() -> None:
    clock = VirtualClock()

    async def record_only(seconds: float) -> None:
        # Every caller reserves before anyone wakes: time stands still meanwhile.
        await asyncio.sleep(0)

    bucket = TokenBucket(4.0, burst=1, clock=clock, sleep=record_only)
    waits = await asyncio.gather(*(bucket.acquire() for _ in range(4)))
    assert sorted(waits) == pytest.approx([0.0, 0.25, 0.5, 0.75])


async def test_zero_rate_is_unlimited() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(0, clock=clock, sleep=clock.sleep)
    assert [await bucket.acquire() for _ in range(100)] == [0.0] * 100
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(-1)


class Scripted:
    name = "fake"

    def __init__(self, *outcomes: Exception | None) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else None
        if outcome is not None:
            raise outcome
        return ProviderResult(provider=self.name, message_id=f"m{self.calls}")

    async def aclose(self) -> None:
        pass


def throttled(after: float | None) -> TransientProviderError:
    return TransientProviderError("429", provider="fake", status=429, retry_after=after)


async def test_backs_off_for_retry_after_and_reports_the_wait() -> None:
    clock = VirtualClock()
    inner = Scripted(throttled(5), throttled(2))
    paced = PacedProvider(inner, clock=clock, sleep=clock.sleep)
    result = await paced.send(MESSAGE)
    assert result.message_id == "m3"
    assert result.attempts == 3
    assert result.waited_seconds == pytest.approx(7.0)
    assert clock.sleeps == [5, 2]


async def test_a_pause_holds_other_sends_too() -> None:
    clock = VirtualClock()
    paced = PacedProvider(Scripted(throttled(3)), clock=clock, sleep=clock.sleep)
    await paced.send(MESSAGE)
    paced.bucket.pause(4)
    result = await paced.send(MESSAGE)
    assert result.waited_seconds == pytest.approx(4.0)


@pytest.mark.parametrize(
    "error",
    [
        throttled(None),
        throttled(120),
        PermanentProviderError("550", provider="fake", status=550),
    ],
)
async def test_errors_without_a_usable_retry_after_propagate(error: Exception) -> None:
    clock = VirtualClock()
    inner = Scripted(error)
    with pytest.raises(type(error)):
        await PacedProvider(inner, clock=clock, sleep=clock.sleep).send(MESSAGE)
    assert inner.calls == 1
    assert clock.sleeps == []


async def test_gives_up_after_max_retries() -> None:
    clock = VirtualClock()
    inner = Scripted(*(throttled(1) for _ in range(10)))
    paced = PacedProvider(inner, max_retries=2, clock=clock, sleep=clock.sleep)
    with pytest.raises(TransientProviderError):
        await paced.send(MESSAGE)
    assert inner.calls == 3


async def test_rate_limit_applies_through_the_wrapper() -> None:
    clock = VirtualClock()
    paced = PacedProvider(Scripted(), rate_per_second=1, clock=clock, sleep=clock.sleep)
    results = [await paced.send(MESSAGE) for _ in range(3)]
    assert [r.waited_seconds for r in results] == pytest.approx([0.0, 1.0, 1.0])


def test_a_message_needs_a_part() -> None:
    with pytest.raises(ValueError, match="part"):
        OutgoingEmail(from_email="a@x", to="b@x", subject="s")
    keyed = OutgoingEmail(
        from_email="A <a@x.test>", to="b@x", subject="s", text="t", idempotency_key="k"
    )
    assert keyed.message_id() == keyed.message_id()
    assert keyed.message_id().endswith("@x.test>")
