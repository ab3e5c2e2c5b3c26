"""The courier: delivers the sends that :meth:`Mailer.queue` handed off; one per worker.

The transactional API decides a send and records it ``queued`` with a hand-off in the
request (see :mod:`hogsend.channels.mailer`), then answers. Every worker runs one
:class:`Courier`, which loops::

    find    up to a few batches' worth of waiting hand-offs, oldest first
    deliver each through Mailer.deliver_queued, ``email_queue_concurrency`` at a time;
            a per-send advisory lock makes concurrent couriers skip what another holds
    idle    when nothing was delivered: wait ``email_queue_poll_seconds``, or less when
            a NOTIFY on ``hogsend_sends`` (sent by the hand-off at commit) wakes it

Delivery is at least once: a worker that dies between the provider's acceptance and the
row's update leaves the send waiting, and the next round sends it again with the same
idempotency key (docs/email.md, "Transactional email"). A send whose delivery raised
something other than a provider error (the database went away ...) is retried after a
back-off that doubles per failure, in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import TYPE_CHECKING

import structlog

from hogsend.db.engine import libpq_url, make_sessionmaker
from hogsend.db.repos import sends
from hogsend.errors import TemplateError
from hogsend.runtime.wakeups import listen_for_wakeups

if TYPE_CHECKING:
    from hogsend.channels.mailer import Mailer

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 300.0
"""Longest wait before a send whose delivery failed unexpectedly is tried again."""


class Courier:
    """Finds handed-off sends and delivers them with the worker's mailer.

    Args:
        mailer: the worker's mailer (its engine, provider and settings are used).
        poll_seconds: the idle wait between rounds when no NOTIFY arrives.
        concurrency: sends delivered at once.
        listen: keep a ``LISTEN hogsend_sends`` connection to wake up at once.
    """

    def __init__(
        self,
        mailer: Mailer,
        *,
        poll_seconds: float,
        concurrency: int,
        listen: bool = True,
    ) -> None:
        self.mailer = mailer
        self.poll_seconds = poll_seconds
        self.concurrency = concurrency
        self.listen = listen
        self._sessions = make_sessionmaker(mailer.engine)
        self._database_url = mailer.engine.url.render_as_string(hide_password=False)
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        # send id -> (failures so far, monotonic time before which it is not retried)
        self._failing: dict[uuid.UUID, tuple[int, float]] = {}
        self.listening = False
        """Whether the LISTEN connection is up."""

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the delivery loop (and the LISTEN connection)."""
        self._stopping = False
        self._loop_task = asyncio.create_task(self._run(), name="hogsend-courier")
        if self.listen:
            self._listen_task = asyncio.create_task(self._listen(), name="hogsend-courier-listen")
        log.info("courier started", concurrency=self.concurrency)

    async def stop(self, *, timeout: float = 10.0) -> None:
        """Let the deliveries in flight finish (up to ``timeout``), then stop."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            done, _ = await asyncio.wait({self._loop_task}, timeout=timeout)
            if not done:
                log.warning("courier did not finish in time; cancelling", timeout=timeout)
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._listen_task is not None:
            self._listen_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listen_task
            self._listen_task = None
        log.info("courier stopped")

    def wake(self) -> None:
        """Look for hand-offs now instead of at the end of the idle wait."""
        self._wake.set()

    # -- one round -----------------------------------------------------------------------

    def _held_back(self, now: float) -> list[uuid.UUID]:
        return [send_id for send_id, (_, until) in self._failing.items() if until > now]

    async def run_once(self) -> int:
        """Deliver the waiting hand-offs found now; returns how many this courier handled."""
        async with self._sessions() as session:
            due = await sends.due_handoffs(
                session, limit=self.concurrency * 4, skip=self._held_back(time.monotonic())
            )
        if not due:
            return 0
        gate = asyncio.Semaphore(self.concurrency)

        async def deliver(send_id: uuid.UUID) -> bool:
            async with gate:
                if self._stopping:
                    return False
                try:
                    outcome = await self.mailer.deliver_queued(send_id)
                except TemplateError as exc:
                    # Recorded on the row as provider_error; nothing to retry.
                    log.warning(
                        "handed-off send failed to render", send_id=str(send_id), error=str(exc)
                    )
                    return True
                except Exception:
                    failures = self._failing.get(send_id, (0, 0.0))[0] + 1
                    delay = min(self.poll_seconds * 2**failures, MAX_BACKOFF_SECONDS)
                    self._failing[send_id] = (failures, time.monotonic() + delay)
                    log.warning(
                        "handed-off send failed; will retry",
                        send_id=str(send_id),
                        failures=failures,
                        retry_in=delay,
                        exc_info=True,
                    )
                    return False
                self._failing.pop(send_id, None)
                return outcome is not None

        handled = await asyncio.gather(*(deliver(send_id) for send_id in due))
        return sum(handled)

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _run(self) -> None:
        failures = 0
        while not self._stopping:
            self._wake.clear()
            try:
                handled = await self.run_once()
            except Exception:
                failures += 1
                log.warning("courier round failed", exc_info=True, failures=failures)
                await self._idle(min(self.poll_seconds * 2**failures, 30.0))
                continue
            failures = 0
            if handled == 0:
                await self._idle(self.poll_seconds)

    async def _listen(self) -> None:
        await listen_for_wakeups(
            libpq_url(self._database_url),
            sends.HANDOFF_CHANNEL,
            self._wake,
            set_listening=lambda live: setattr(self, "listening", live),
            what="courier",
        )
