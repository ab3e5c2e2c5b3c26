"""The deferred-send sweep: attempts deferred to a send window go out when it opens.

When the window gate defers an attempt, the mailer stores the request in
``deferred_sends`` in the transaction that writes the ``deferred`` decision row (unless
the sender resends itself: ``SendRequest.resend_when_open=False``, as durable journeys
do). Every worker runs a :class:`DeferredSweep`; each round:

1. tries the sweep's advisory lock — one worker sweeps at a time, the others skip;
2. loads the pending rows whose ``due_at`` has passed, oldest first, in batches;
3. hands each stored request back to the same :class:`~hogsend.channels.mailer.Mailer`,
   so every gate runs again at send time (an unsubscribe, a suppression or a cap that
   arrived in between wins) and the resend writes its own decision row;
4. marks the row ``done`` with the resend's row and decision.

Resends carry the deferred attempt's idempotency key (one is made up for requests that
had none), so a sweep that dies between the provider and step 4 resends as a
``duplicate`` next round, never as a second message (beyond the provider window that
docs/email.md describes). A round that fails on a row before any decision (database
down, a template gone since) retries it with back-off and gives up after
:data:`MAX_ROUNDS`, leaving ``status = 'failed'`` and ``last_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog

from hogsend.channels.mailer import Mailer, request_from_record
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import sends
from hogsend.errors import NoRecipient, TemplateError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from hogsend.app import Hogsend
    from hogsend.settings import Settings

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]

CONCURRENCY = 4
"""Resends in flight at once in one sweep (each holds a pooled connection)."""
MAX_ROUNDS = 5
"""Failed rounds on one deferred send before it is marked ``failed``."""
RETRY_BASE_SECONDS = 60.0
RETRY_MAX_SECONDS = 3600.0
STOP_TIMEOUT_SECONDS = 10.0

# The request itself is bad: the next round would fail the same way.
_FINAL_ERRORS = (TemplateError, NoRecipient)
_MAX_ERROR_CHARS = 2000


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True, kw_only=True)
class SweepReport:
    """What one round did.

    Attributes:
        ran: False when another worker held the sweep (nothing was looked at).
        decisions: resends per decision of their attempt (``sent``, ``unsubscribed`` ...).
        retried: rows whose round failed and that wait for a later one.
        failed: rows given up on.
    """

    ran: bool = True
    decisions: Counter[str] = field(default_factory=Counter)
    retried: int = 0
    failed: int = 0

    @property
    def resent(self) -> int:
        """Rows that got a new attempt (whatever its decision)."""
        return sum(self.decisions.values())


class DeferredSweep:
    """Resends deferred sends through ``mailer`` once their window opens; one per worker.

    Args:
        mailer: the mailer every resend goes through (its engine holds the rows).
        clock: the current instant (a virtual one in tests; share it with the mailer).
        batch_size: rows loaded at once.
        interval_seconds: the wait between two rounds.
        concurrency: resends in flight at once.
        owns_provider: close the mailer's provider on :meth:`stop`.
    """

    def __init__(
        self,
        mailer: Mailer,
        *,
        clock: Clock = _utcnow,
        batch_size: int = 200,
        interval_seconds: float = 15.0,
        concurrency: int = CONCURRENCY,
        owns_provider: bool = False,
    ) -> None:
        if batch_size < 1 or concurrency < 1:
            raise ValueError("batch_size and concurrency must be at least 1")
        self.mailer = mailer
        self.batch_size = batch_size
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._slots = asyncio.Semaphore(concurrency)
        self._sessions = make_sessionmaker(mailer.engine)
        self._owns_provider = owns_provider
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, app: Hogsend, settings: Settings, engine: AsyncEngine) -> DeferredSweep:
        """A sweep with its own mailer on the provider ``settings`` name."""
        from hogsend.channels.email import build_provider

        mailer = Mailer(app, settings, engine, build_provider(settings, engine))
        return cls(
            mailer,
            batch_size=settings.deferred_sweep_batch_size,
            interval_seconds=settings.deferred_sweep_seconds,
            owns_provider=True,
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Sweep now, then every ``interval_seconds``, until :meth:`stop`."""
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="hogsend-deferred-sweep")

    async def stop(self, *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Let the resends in flight finish (up to ``timeout``), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                log.warning("deferred-send sweep did not finish in time; cancelling")
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._owns_provider:
            await self.mailer.provider.aclose()

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                report = await self.run_once()
                if report.resent or report.failed:
                    log.info(
                        "deferred sends swept",
                        decisions=dict(report.decisions),
                        retried=report.retried,
                        failed=report.failed,
                    )
            except Exception:
                log.warning("deferred-send sweep failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_seconds)

    # -- one round ------------------------------------------------------------------------

    async def run_once(self) -> SweepReport:
        """One round: resend every due deferred send (unless another worker is sweeping)."""
        lock, unlock = sends.sweep_lock_sql()
        async with self.mailer.engine.connect() as conn:
            held = bool(await conn.scalar(lock))
            await conn.commit()
            if not held:
                return SweepReport(ran=False)
            try:
                return await self._sweep()
            finally:
                try:
                    await conn.execute(unlock)
                    await conn.commit()
                except BaseException:
                    # Closing the connection is the other way to release the lock.
                    await conn.invalidate()
                    raise

    async def _sweep(self) -> SweepReport:
        report = SweepReport()
        seen: set[uuid.UUID] = set()
        while not self._stopping:
            async with self._sessions() as session:
                due = await sends.due_deferred(session, now=self._clock(), limit=self.batch_size)
            # A row whose outcome could not be recorded is due again: once per round.
            fresh = [record for record in due if record.id not in seen]
            if not fresh:
                break
            seen.update(record.id for record in fresh)
            await asyncio.gather(*(self._resend(record, report) for record in fresh))
            if len(due) < self.batch_size:
                break
        return report

    async def _resend(self, record: sends.DeferredRecord, report: SweepReport) -> None:
        async with self._slots:
            try:
                request = request_from_record(record.request)
                outcome = await self.mailer.send(request)
            except Exception as exc:
                await self._postpone(record, exc, report)
                return
            try:
                async with self._sessions() as session, session.begin():
                    await sends.finish_deferred(
                        session,
                        record.id,
                        resent_send_id=outcome.send_id,
                        resent_decision=outcome.decision,
                    )
            except Exception:
                # Due again next round: its key makes that resend a ``duplicate``.
                log.warning("could not record a deferred resend", exc_info=True)
            report.decisions[outcome.decision] += 1

    async def _postpone(
        self, record: sends.DeferredRecord, exc: Exception, report: SweepReport
    ) -> None:
        error = f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]
        final = isinstance(exc, (*_FINAL_ERRORS, KeyError, TypeError, ValueError))
        rounds = record.attempts + 1
        retry_at: datetime | None = None
        if not final and rounds < MAX_ROUNDS:
            delay = min(RETRY_BASE_SECONDS * 2 ** (rounds - 1), RETRY_MAX_SECONDS)
            retry_at = self._clock() + timedelta(seconds=delay)
        context = {"deferred_id": str(record.id), "error": error, "rounds": rounds}
        if retry_at is None:
            report.failed += 1
            log.error("deferred send given up", **context)
        else:
            report.retried += 1
            log.warning("deferred send failed; retrying", retry_at=retry_at.isoformat(), **context)
        try:
            async with self._sessions() as session, session.begin():
                await sends.postpone_deferred(session, record.id, error=error, retry_at=retry_at)
        except Exception:
            log.warning("could not record a failed deferred resend", exc_info=True)
