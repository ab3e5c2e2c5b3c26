"""Bucket backfill and the reconcile sweep, run by every worker (one sweeps at a time).

Every worker runs a :class:`BucketSweeper`, a plain asyncio task (like the deferred-send
sweep) rather than a DBOS scheduled workflow: a sweep is many short transactions whose
effects are idempotent on their own (compare-and-set updates, deterministic event
keys), so it needs no step journal, and a session-level advisory lock is enough to let
one worker at a time sweep — a worker that dies releases it with its connection, and
the next round of any other worker carries on. Each round:

1. tries the reconcile lock; without it the round is skipped;
2. backfills the buckets that need it (first deploy, changed criteria fingerprint, an
   admin/CLI request, or a run whose lease expired), chunk by chunk, silently;
3. for each enabled criteria bucket, in this order: criteria leaves (time-based
   buckets, and deferred leaves of the others), absence joins (time-based), max-dwell
   leaves, dwell fires. Joins and dwell fires wait until the bucket's backfill for the
   current criteria completed (the first-deploy quiet window).

The enable switch is ``bucket_configs.enabled`` when an admin set it, the code's
``enabled`` otherwise; a disabled bucket is neither backfilled nor reconciled.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import structlog
from sqlalchemy import text

from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import bucket_sweeps as sweeps
from hogsend.db.repos.bucket_sweeps import BackfillClaim, DwellSchedule, LeaseLost

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    from hogsend.app import Hogsend
    from hogsend.core.definitions import BucketDefinition
    from hogsend.settings import Settings

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]
ProgressCallback = Callable[[BackfillClaim], None]
STOP_TIMEOUT_SECONDS = 10.0
SWEEP_CONCURRENCY = 2


def _utcnow() -> datetime:
    return datetime.now(UTC)


def dwell_schedules(bucket: BucketDefinition) -> tuple[DwellSchedule, ...]:
    """The bucket's dwell schedules (its ``on_dwell(after=|every=)`` reactions)."""
    return tuple(
        DwellSchedule(label=r.label or "", after=r.after, every=r.every)
        for r in bucket.dwell_schedules
    )


@dataclass(slots=True, kw_only=True)
class BackfillReport:
    """What one backfill run did (``ran`` False: nothing to do or another runner holds it)."""

    bucket_id: str
    ran: bool = False
    completed: bool = False
    lost_lease: bool = False
    resumed: bool = False
    mode: str | None = None
    joined: int = 0
    left: int = 0
    processed: int = 0
    error: str | None = None


@dataclass(slots=True, kw_only=True)
class ReconcileReport:
    """What one sweep did: transitions per kind (``left_criteria``, ``joined``,
    ``left_max_dwell``, ``dwell``) and the backfills it ran."""

    ran: bool = True
    counts: Counter[str] = field(default_factory=Counter)
    backfills: list[BackfillReport] = field(default_factory=list)


class BucketSweeper:
    """Backfills and reconciles the app's buckets.

    Args:
        app: the app whose buckets are swept.
        engine: the database.
        clock: the current instant (a virtual one in tests).
        interval_seconds: the wait between two sweeps.
        batch_size: memberships (or candidates) per reconcile transaction.
        chunk_size: contacts per backfill transaction.
        lease: how long a silent backfill keeps its lease.
        dwell: dwell schedules per bucket id, overriding what the definitions say.
        concurrency: buckets reconciled at the same time within one sweep.
    """

    def __init__(
        self,
        app: Hogsend,
        engine: AsyncEngine,
        *,
        clock: Clock = _utcnow,
        interval_seconds: float = 60.0,
        batch_size: int = 1000,
        chunk_size: int = 2000,
        lease: timedelta = timedelta(minutes=5),
        dwell: Mapping[str, Sequence[DwellSchedule]] | None = None,
        concurrency: int = SWEEP_CONCURRENCY,
    ) -> None:
        self.app = app
        self.engine = engine
        self.interval_seconds = interval_seconds
        self.batch_size = batch_size
        self.chunk_size = chunk_size
        self.lease = lease
        self._dwell = dict(dwell or {})
        self.concurrency = max(1, concurrency)
        self._clock = clock
        self._sessions = make_sessionmaker(engine)
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_settings(cls, app: Hogsend, settings: Settings, engine: AsyncEngine) -> BucketSweeper:
        """A sweeper configured by the ``HOGSEND_BUCKET_*`` settings."""
        return cls(
            app,
            engine,
            interval_seconds=settings.bucket_reconcile_seconds,
            batch_size=settings.bucket_sweep_batch_size,
            chunk_size=settings.bucket_backfill_chunk_size,
            lease=timedelta(seconds=settings.bucket_backfill_lease_seconds),
        )

    def schedules(self, bucket: BucketDefinition) -> tuple[DwellSchedule, ...]:
        """The dwell schedules the sweep fires for ``bucket``."""
        if bucket.id in self._dwell:
            return tuple(self._dwell[bucket.id])
        return dwell_schedules(bucket)

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Sweep now (backfilling new or changed buckets first), then every interval."""
        self._stopping = False
        self._task = asyncio.create_task(self._run(), name="hogsend-bucket-sweep")

    async def stop(self, *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Let the batch in flight finish (up to ``timeout``), then stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout)
            if not done:
                log.warning("bucket sweep did not finish in time; cancelling")
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                report = await self.run_once()
                if report.counts or report.backfills:
                    log.info(
                        "buckets reconciled",
                        counts=dict(report.counts),
                        backfills=[b.bucket_id for b in report.backfills if b.ran],
                    )
            except Exception:
                log.warning("bucket sweep failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.interval_seconds)

    # -- one sweep ------------------------------------------------------------------------

    async def run_once(self, *, now: datetime | None = None) -> ReconcileReport:
        """One sweep (unless another worker is sweeping: ``ran`` is then False)."""
        async with self.engine.connect() as conn:
            held = bool(await conn.scalar(sweeps.RECONCILE_LOCK))
            await conn.commit()
            if not held:
                return ReconcileReport(ran=False)
            try:
                return await self._sweep(now)
            finally:
                try:
                    await conn.execute(sweeps.RECONCILE_UNLOCK)
                    await conn.commit()
                except BaseException:
                    # Closing the connection is the other way to release the lock.
                    await conn.invalidate()
                    raise

    async def _states(self) -> dict[str, sweeps.BucketState]:
        async with self._sessions() as session:
            return await sweeps.bucket_states(session)

    async def _sweep(self, now: datetime | None) -> ReconcileReport:
        report = ReconcileReport()
        states = await self._states()
        for bucket in self.app.buckets:
            if self._stopping:
                break
            state = states.get(bucket.id)
            if bucket.criteria is None or not sweeps.is_enabled(bucket, state):
                continue
            if sweeps.backfill_needed(bucket, state):
                report.backfills.append(await self.backfill(bucket, now=now))
        states = await self._states()
        # Buckets are independent (their own rows, their own transition keys), so a few
        # are reconciled side by side: a sweep is mostly waiting on Postgres, which can
        # use more than one core.
        gate = asyncio.Semaphore(self.concurrency)

        async def one(bucket: BucketDefinition) -> None:
            state = states.get(bucket.id)
            if bucket.criteria is None or not sweeps.is_enabled(bucket, state):
                return
            async with gate:
                if self._stopping:
                    return
                try:
                    await self._reconcile(bucket, state, report.counts, now)
                except Exception:
                    # One bucket's failure must not starve the others.
                    log.warning("bucket reconcile failed", bucket_id=bucket.id, exc_info=True)

        await asyncio.gather(*(one(bucket) for bucket in self.app.buckets))
        return report

    async def _full_pass(
        self,
        find: Callable[[AsyncSession], Awaitable[list[uuid.UUID]]],
        apply: Callable[[AsyncSession, Sequence[uuid.UUID]], Awaitable[int]],
    ) -> int:
        """A pass without a watermark: ``find`` the candidates in one read-only
        transaction, then ``apply`` the pass to them a batch per transaction (each
        candidate is checked again there, under its row lock). Returns the sum of what
        the batches returned (their transitions)."""
        async with self._sessions() as session, session.begin():
            candidates = await find(session)
        done = 0
        for start in range(0, len(candidates), self.batch_size):
            if self._stopping:
                break
            async with self._sessions() as session, session.begin():
                done += await apply(session, candidates[start : start + self.batch_size])
        return done

    async def _reconcile(
        self,
        bucket: BucketDefinition,
        state: sweeps.BucketState | None,
        counts: Counter[str],
        now: datetime | None,
    ) -> None:
        instant = now or self._clock()
        settled = sweeps.settled(bucket, state)
        # Only what time changed since the previous complete sweep (shared by workers).
        since = sweeps.reconciled_since(bucket, state)
        # Without a watermark (no sweep completed for these criteria), a time-based
        # bucket's passes look at everyone: a set-based read finds the few candidates
        # first, and the batches only evaluate those.
        full = since is None and sweeps.is_time_based(bucket)
        # (a) criteria leaves: time-based buckets, and due deadlines everywhere.
        if full:

            async def leave(session: AsyncSession, only: Sequence[uuid.UUID]) -> int:
                left, _, _ = await sweeps.criteria_leaves(
                    session, bucket, instant, batch_size=self.batch_size, only=only
                )
                return len(left)

            if n_left := await self._full_pass(
                lambda session: sweeps.leave_candidates(session, bucket, instant), leave
            ):
                counts["left_criteria"] += n_left
        cursor: sweeps.SweepCursor | None = None
        while not full and not self._stopping:
            async with self._sessions() as session, session.begin():
                left, seen, cursor = await sweeps.criteria_leaves(
                    session,
                    bucket,
                    instant,
                    since=since,
                    batch_size=self.batch_size,
                    after=cursor,
                )
            counts["left_criteria"] += len(left)
            if seen < self.batch_size:
                break
        # (b) absence joins, once the silent backfill has claimed the historical cohort.
        if settled and full:

            async def join(session: AsyncSession, only: Sequence[uuid.UUID]) -> int:
                joined, _ = await sweeps.absence_joins(
                    session,
                    bucket,
                    instant,
                    since=None,
                    after=None,
                    batch_size=self.batch_size,
                    only=only,
                )
                return len(joined)

            if n_joined := await self._full_pass(
                lambda session: sweeps.join_candidates(session, bucket, instant), join
            ):
                counts["joined"] += n_joined
        elif settled and sweeps.is_time_based(bucket):
            after: uuid.UUID | None = None
            while not self._stopping:
                async with self._sessions() as session, session.begin():
                    joined, after = await sweeps.absence_joins(
                        session,
                        bucket,
                        instant,
                        since=since,
                        after=after,
                        batch_size=self.batch_size,
                    )
                counts["joined"] += len(joined)
                if after is None:
                    break
        if settled and not self._stopping:
            async with self._sessions() as session, session.begin():
                await sweeps.mark_reconciled(session, bucket, instant)
        # (c) max-dwell leaves.
        if bucket.max_dwell is not None:
            while not self._stopping:
                async with self._sessions() as session, session.begin():
                    left = await sweeps.max_dwell_leaves(
                        session, bucket, instant, batch_size=self.batch_size
                    )
                counts["left_max_dwell"] += len(left)
                if len(left) < self.batch_size:
                    break
        # (d) dwell fires (after the leaves: a member that just left fires nothing).
        if settled:
            for schedule in self.schedules(bucket):
                while not self._stopping:
                    async with self._sessions() as session, session.begin():
                        fired = await sweeps.dwell_fires(
                            session, bucket, schedule, instant, batch_size=self.batch_size
                        )
                    counts["dwell"] += len(fired)
                    if len(fired) < self.batch_size:
                        break

    # -- backfill -------------------------------------------------------------------------

    async def _refresh_statistics(self) -> None:
        """ANALYZE the memberships a backfill just rewrote in bulk.

        Autovacuum gets there eventually, but the sweeps that follow would be planned
        meanwhile with the statistics of a table that was (nearly) empty, and a join
        planned for one row over hundreds of thousands walks them once per outer row.
        Best effort: without the privilege, the plans just wait for autovacuum.
        """
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("ANALYZE bucket_memberships"))
                await conn.commit()
        except Exception:
            log.warning("could not analyze bucket_memberships", exc_info=True)

    async def backfill(
        self,
        bucket: BucketDefinition,
        *,
        now: datetime | None = None,
        force: bool = False,
        progress: ProgressCallback | None = None,
        max_chunks: int | None = None,
    ) -> BackfillReport:
        """Run (or resume) the bucket's silent backfill to the end.

        Args:
            bucket: the bucket.
            now: a fixed instant for every chunk (tests); the clock otherwise.
            force: re-evaluate even when the criteria did not change.
            progress: called after the claim and after every chunk.
            max_chunks: stop after this many chunks, leaving the run resumable (tests).
        """
        report = BackfillReport(bucket_id=bucket.id)
        async with self._sessions() as session, session.begin():
            claim = await sweeps.claim_backfill(
                session, bucket, now or self._clock(), lease=self.lease, force=force
            )
        if claim is None:
            return report
        report.ran = True
        report.resumed = claim.resumed
        report.mode = claim.mode
        if progress is not None:
            progress(claim)
        chunks = 0
        try:
            while max_chunks is None or chunks < max_chunks:
                async with self._sessions() as session, session.begin():
                    result = await sweeps.backfill_chunk(
                        session, bucket, claim, now or self._clock(), chunk_size=self.chunk_size
                    )
                chunks += 1
                claim = result.claim
                report.joined += result.joined
                report.left += result.left
                report.processed = claim.processed
                if progress is not None:
                    progress(claim)
                if result.done:
                    report.completed = True
                    break
        except LeaseLost:
            report.lost_lease = True
            log.warning("bucket backfill taken over by another runner", bucket_id=bucket.id)
        except Exception as exc:
            report.error = f"{type(exc).__name__}: {exc}"
            log.warning("bucket backfill failed", bucket_id=bucket.id, exc_info=True)
            async with self._sessions() as session, session.begin():
                await sweeps.fail_backfill(session, claim, report.error)
        if report.completed:
            await self._refresh_statistics()
            log.info(
                "bucket backfilled",
                bucket_id=bucket.id,
                mode=claim.mode,
                joined=report.joined,
                left=report.left,
            )
        return report
