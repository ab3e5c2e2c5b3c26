"""Pacing: the token bucket, back-off on retry_after and on throttling, on a virtual clock."""

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
        TransientProviderError("lost", provider="fake"),
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


def slow_down(code: int = 421) -> TransientProviderError:
    """An SMTP throttle answer: no wait given."""
    return TransientProviderError(f"SMTP {code}", provider="fake", status=code, throttled=True)


async def attempt(paced: PacedProvider) -> ProviderResult | TransientProviderError:
    try:
        return await paced.send(MESSAGE)
    except TransientProviderError as exc:
        return exc


async def test_a_throttle_pauses_every_send_and_leaves_the_retry_to_the_mailer() -> None:
    clock = VirtualClock()
    inner = Scripted(slow_down())
    paced = PacedProvider(inner, clock=clock, sleep=clock.sleep)
    with pytest.raises(TransientProviderError):
        await paced.send(MESSAGE)
    assert (inner.calls, clock.sleeps) == (1, [])  # not retried here, not slept on
    result = await paced.send(MESSAGE)  # the next send, whichever message it is
    assert result.waited_seconds == pytest.approx(1.0)
    assert (result.attempts, clock.sleeps) == (1, [1.0])


async def test_the_back_off_doubles_while_throttled_up_to_its_cap_and_resets_on_success() -> None:
    clock = VirtualClock()
    t = slow_down
    inner = Scripted(t(421), t(451), t(450), t(452), None, t(421), None)
    paced = PacedProvider(
        inner, throttle_backoff=0.5, max_throttle_backoff=3, clock=clock, sleep=clock.sleep
    )
    outcomes = [await attempt(paced) for _ in range(7)]
    assert [isinstance(o, ProviderResult) for o in outcomes] == [False] * 4 + [True, False, True]
    # Each send waits out the pause the throttle before it started: 0.5, 1, 2, then 3
    # (the cap); the acceptance resets it, so the next throttle pauses 0.5 again.
    assert clock.sleeps == [0.5, 1.0, 2.0, 3.0, 0.5]
    accepted = outcomes[4]
    assert isinstance(accepted, ProviderResult)
    assert accepted.waited_seconds == pytest.approx(3.0)


class InFlight(Scripted):
    """Calls wait for ``release``, so several are at the provider at once."""

    def __init__(self, *outcomes: Exception | None) -> None:
        super().__init__(*outcomes)
        self.release = asyncio.Event()

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        outcome = self.outcomes.pop(0) if self.outcomes else None
        await self.release.wait()
        self.calls += 1
        if outcome is not None:
            raise outcome
        return ProviderResult(provider=self.name, message_id=f"m{self.calls}")


async def test_answers_to_calls_made_before_a_pause_neither_lengthen_nor_reset_it() -> None:
    clock = VirtualClock()
    # Three calls at the provider together: two throttled, one accepted after them.
    inner = InFlight(slow_down(), slow_down(), None)
    paced = PacedProvider(inner, clock=clock, sleep=clock.sleep)
    together = [asyncio.ensure_future(attempt(paced)) for _ in range(3)]
    await asyncio.sleep(0)
    inner.release.set()
    outcomes = await asyncio.gather(*together)
    assert [isinstance(o, ProviderResult) for o in outcomes] == [False, False, True]
    assert clock.sleeps == []
    # One episode: one pause of 1 s, not 1 then 2; the acceptance of a call made before
    # it did not show the provider recovered, so the next throttle doubles it.
    inner.outcomes = [slow_down(), None]
    assert isinstance(await attempt(paced), TransientProviderError)
    assert isinstance(await attempt(paced), ProviderResult)
    assert clock.sleeps == [1.0, 2.0]


def test_the_throttle_back_off_must_fit_its_cap() -> None:
    with pytest.raises(ValueError, match="throttle_backoff"):
        PacedProvider(Scripted(), throttle_backoff=5, max_throttle_backoff=2)
    with pytest.raises(ValueError, match="throttle_backoff"):
        PacedProvider(Scripted(), throttle_backoff=0)


async def test_an_extended_pause_holds_a_send_already_waiting() -> None:
    clock = VirtualClock()

    async def sleep(seconds: float) -> None:
        clock.sleeps.append(seconds)
        await asyncio.sleep(0)  # others run while this one sleeps
        clock.now += seconds

    bucket = TokenBucket(0, clock=clock, sleep=sleep)
    bucket.pause(1)
    waiting = asyncio.ensure_future(bucket.acquire())
    await asyncio.sleep(0)  # asleep on the pause, at 0 s
    bucket.pause(2)  # a throttle answer meanwhile: until 2 s
    assert await waiting == pytest.approx(2.0)
    assert clock.sleeps == [1.0, 1.0]


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
