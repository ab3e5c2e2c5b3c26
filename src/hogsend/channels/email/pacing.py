"""Pacing: a token bucket in front of a provider, and back-off when it says "slow down"."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable

from hogsend.channels.email.message import EmailProvider, OutgoingEmail, ProviderResult, send_when
from hogsend.errors import TransientProviderError

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """At most ``rate`` acquisitions per second on average, bursts of up to ``burst``.

    Waiting callers take a reservation (the token count goes negative) before they
    sleep, so concurrent callers queue fairly without holding a lock while waiting.

    Args:
        rate: tokens per second; 0 means unlimited.
        burst: bucket size (default: one second's worth, at least 1).
        clock: monotonic seconds (a virtual clock in tests).
        sleep: the awaitable sleep matching ``clock``.
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if rate < 0:
            raise ValueError("rate must be 0 (unlimited) or positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate, 1.0)
        self._clock = clock
        self._sleep = sleep
        self._tokens = self.burst
        self._last = clock()
        self._paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Hold every acquisition until ``seconds`` from now (a provider said wait)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)

    async def acquire(self) -> float:
        """Take one token, sleeping if needed; returns the seconds waited."""
        waited = 0.0
        # Looked at again after each sleep: a pause may be extended meanwhile.
        while (pause := self._paused_until - self._clock()) > 0:
            await self._sleep(pause)
            waited += pause
        if self.rate == 0:
            return waited
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1
        if self._tokens >= 0:
            return waited
        wait = -self._tokens / self.rate
        await self._sleep(wait)
        return waited + wait


class PacedProvider:
    """Wrap a provider with a token bucket and automatic back-off.

    When the provider raises TransientProviderError with a ``retry_after`` of at most
    ``max_backoff`` seconds, every send through this wrapper pauses for that long and
    the message is tried again, up to ``max_retries`` times. When it says to slow down
    without saying for how long (``throttled``: SMTP 421 or 45x, HTTP 429), every send
    pauses for a back-off of ``throttle_backoff`` seconds, doubled each time the
    provider throttles again after a pause, up to ``max_throttle_backoff``, and back to
    ``throttle_backoff`` once a message sent after the latest pause is accepted; the
    error propagates (the mailer retries that message with its own back-off, and its
    next call waits out the pause). Other errors propagate at once. The result's
    ``waited_seconds`` (rate limit and pauses) and ``attempts`` say what pacing did,
    for the decision row.
    """

    def __init__(
        self,
        inner: EmailProvider,
        *,
        rate_per_second: float = 0.0,
        max_retries: int = 3,
        max_backoff: float = 60.0,
        throttle_backoff: float = 1.0,
        max_throttle_backoff: float = 30.0,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        if not 0 < throttle_backoff <= max_throttle_backoff:
            raise ValueError("throttle_backoff must be positive and at most max_throttle_backoff")
        self.inner = inner
        self.name = inner.name
        self.bucket = TokenBucket(rate_per_second, clock=clock, sleep=sleep)
        self.max_retries = max_retries
        self.max_backoff = max_backoff
        self.throttle_backoff = throttle_backoff
        self.max_throttle_backoff = max_throttle_backoff
        self._next_backoff = throttle_backoff
        # Back-offs started so far. A call made before the latest one started tells
        # nothing new: a throttle answer to it is part of the same episode (no longer
        # pause), its acceptance does not show the provider recovered (no reset).
        self._backoffs = 0

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        """Send through the bucket, backing off as the provider asks."""
        return await self._send(message, None)

    async def send_gated(self, message: OutgoingEmail, gate: Awaitable[bool]) -> ProviderResult:
        """:meth:`send`, the wrapped provider accepting only once ``gate`` gives True.

        See :func:`~hogsend.channels.email.message.send_when`.
        """
        return await self._send(message, gate)

    async def _send(self, message: OutgoingEmail, gate: Awaitable[bool] | None) -> ProviderResult:
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            waited += await self.bucket.acquire()
            backoffs = self._backoffs
            try:
                if gate is None:
                    result = await self.inner.send(message)
                else:
                    result = await send_when(self.inner, message, gate)
            except TransientProviderError as exc:
                delay = exc.retry_after
                if delay is not None and delay <= self.max_backoff and attempt <= self.max_retries:
                    self.bucket.pause(delay)
                    continue
                if exc.throttled and backoffs == self._backoffs:
                    self._back_off()
                raise
            if backoffs == self._backoffs and self._next_backoff != self.throttle_backoff:
                self._next_backoff = self.throttle_backoff  # accepting again
            if waited == 0 and attempt == result.attempts:
                # Neither held back nor retried (the usual case): nothing to add, and no
                # copy of the result per message.
                return result
            return dataclasses.replace(
                result, waited_seconds=result.waited_seconds + waited, attempts=attempt
            )

    def _back_off(self) -> None:
        """Pause every send for the current back-off; the next one is twice as long."""
        delay = self._next_backoff
        self._next_backoff = min(delay * 2, self.max_throttle_backoff)
        self._backoffs += 1
        self.bucket.pause(delay)

    async def aclose(self) -> None:
        """Close the wrapped provider."""
        await self.inner.aclose()
