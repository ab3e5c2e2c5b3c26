"""The dispatcher: hands every stored event to the engine's consumers, in order per contact.

Ingest writes an event and its ``event_outbox`` row in one transaction and does nothing
else. Every worker runs one :class:`Dispatcher`, which loops::

    claim   up to dispatcher_batch_size due rows under a lease (see hogsend.db.repos.outbox)
    process the rows of different contacts concurrently (dispatcher_concurrency), the
            rows of one contact one after the other in id order; for each row, run the
            consumers that have not handled it yet, in their fixed order
    idle    when nothing was claimed: wait dispatcher_poll_seconds, or less when a
            NOTIFY on hogsend_outbox (sent by ingest at commit) wakes it up

Guarantees and the consumer contract:

* **At least once.** A row is marked processed only after every consumer returned. A
  worker that dies mid-row loses its lease after ``dispatcher_lease_seconds`` and the
  row is delivered again, so **consumers must be idempotent**: handling the same event
  twice must have the effect of handling it once (deterministic workflow ids, unique
  keys with ``ON CONFLICT DO NOTHING``, upserts).
* **Progress commits with the writes.** Each consumer runs inside a savepoint of a
  transaction that also records which consumers are done (``consumers_done``) and,
  when all are, that the row is processed. A consumer's writes through the ``session``
  it is given therefore commit together with its progress: a retry skips consumers that
  already succeeded, and never sees half of a consumer's writes. Side effects outside
  that session (DBOS calls, HTTP) are only at-least-once. A consumer must not commit or
  roll back the session. (An event alone in its transaction with one consumer wanting
  it skips the savepoint: a failure rolls the transaction back and is recorded in one
  of its own, with the same result. Consumers that say they need no savepoint run
  without one, and a failure of one of them redoes the transaction with savepoints:
  see :func:`consumer_needs_savepoint`.) One transaction holds the events of several contacts, up to
  ``dispatcher_events_per_transaction`` (a commit per event was the cost that limited
  dispatching): a consumer's savepoint keeps its failure from touching the other
  events, and if the transaction as a whole fails, the failure is recorded for the
  event it failed on and the others are processed again one transaction each.
* **Per-contact order.** A row is never processed while an earlier pending row of the
  same contact is unprocessed: not while it is leased, waiting for a retry, or held in
  this batch. A dead row (given up, in the dead-letter queue) no longer holds back the
  rows after it.
* **Retries.** A consumer raising an exception stops that row's attempt: the row gets
  ``attempts + 1``, ``last_error`` and ``next_attempt_at = now + backoff`` (exponential
  from ``dispatcher_backoff_base_seconds`` up to ``dispatcher_backoff_max_seconds``, with
  jitter), and the contact's later rows in the batch are released to wait behind it.
  After ``dispatcher_max_attempts`` attempts the row is marked dead and a
  ``dead_letter_queue`` entry keeps the event, the consumer and the error.
* **Retention.** Processed rows are deleted by a sweep once older than
  ``dispatcher_retention_seconds``; the events themselves stay in ``user_events``.

Consumers are registered in one fixed order: bucket membership → exits → wake-ups →
triggers (each added by its own feature). :func:`build_consumers` is that registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import random
import traceback
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from hogsend.core.identifiers import check_id, duplicates
from hogsend.db.engine import libpq_url, make_sessionmaker
from hogsend.db.repos import outbox
from hogsend.db.repos.outbox import OUTBOX_CHANNEL, ClaimedRow, ClaimToken
from hogsend.errors import DefinitionError, RegistrationClosedError
from hogsend.runtime.wakeups import listen_for_wakeups
from hogsend.settings import Settings

if TYPE_CHECKING:
    from hogsend.app import Hogsend

log = structlog.get_logger(__name__)

SWEEP_INTERVAL_SECONDS = 60.0
"""How often each dispatcher deletes processed rows past their retention."""

STOP_TIMEOUT_SECONDS = 10.0
"""How long a graceful stop lets the rows in flight finish before cancelling them."""

_MAX_ERROR_CHARS = 2_000
_MAX_TRACEBACK_CHARS = 8_000


@dataclass(frozen=True, slots=True, kw_only=True)
class DispatchedEvent:
    """One stored event, as consumers receive it.

    Attributes:
        outbox_id: the outbox row being processed.
        event_id: the ``user_events`` id (stable across redeliveries: key effects on it).
        contact_id: the contact the event belongs to.
        contact_key: the contact's resolved key (``user_id`` of history tables).
        name: the event name, e.g. ``signed_up`` or ``bucket:entered:trial``.
        properties: the event's properties.
        occurred_at: when it happened (timezone-aware UTC).
        source: where it came from (api, batch, segment, bucket, ...), if known.
        attempt: 1 on the first delivery, higher on retries and redeliveries.
    """

    outbox_id: int
    event_id: uuid.UUID
    contact_id: uuid.UUID
    contact_key: str
    name: str
    properties: Mapping[str, Any]
    occurred_at: datetime
    source: str | None
    attempt: int


class EventConsumer(Protocol):
    """Something that reacts to every dispatched event (buckets, exits, wake-ups, triggers).

    ``name`` is a kebab-case id stored in ``event_outbox.consumers_done``: keep it stable.
    ``consume`` gets the event and the transaction it runs in (see the module docstring
    for what that promises); it must be idempotent and signal failure by raising.
    It may also define ``wants(event) -> bool`` (see :func:`consumer_wants`) and
    ``needs_savepoint = False`` (see :func:`consumer_needs_savepoint`).
    """

    @property
    def name(self) -> str:
        """Stable kebab-case id of the consumer."""
        ...

    async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
        """Handle one event; raise to have it retried later."""
        ...


def consumer_wants(consumer: EventConsumer, event: DispatchedEvent) -> bool:
    """Whether ``consumer`` has anything to do with ``event``.

    A consumer may define ``wants(event) -> bool``, a pure check (no I/O) that says it
    would do nothing with an event: the dispatcher then counts it done without a
    savepoint (two round trips saved per consumer and event), and finishes an event no
    pending consumer wants in one statement with the batch's others like it, without a
    lane. Without one, every event is wanted.
    """
    wants = getattr(consumer, "wants", None)
    return True if wants is None else bool(wants(event))


def consumer_needs_savepoint(consumer: EventConsumer) -> bool:
    """Whether ``consumer`` must run in a savepoint of its own when it shares a transaction.

    A consumer may set ``needs_savepoint = False``: it accepts that its writes in the
    session are rolled back when another consumer of the same transaction fails, and that
    it is then run again for the same attempt (its effects outside the session, already
    at-least-once, may happen twice). The dispatcher then runs a transaction whose
    wanted consumers all say so without savepoints (a savepoint pair is two round trips
    per consumer and event); when one of them fails, it rolls the transaction back and
    does it again with a savepoint per consumer, which records the failure as usual.
    Without the attribute, a consumer gets its savepoint.
    """
    return bool(getattr(consumer, "needs_savepoint", True))


_EXTRA_CONSUMERS_ATTRIBUTE = "_hogsend_extra_consumers"


def add_extra_consumers(app: Hogsend, consumers: Sequence[EventConsumer]) -> None:
    """Testing hook: make every worker loading ``app`` run ``consumers`` too.

    They run after the built-in consumers, in the order given. This is how the test
    suite puts a recording consumer into a real ``hogsend worker`` subprocess (its test
    app module calls this); it is not a public API and may change with the features that
    add real consumers.

    Raises:
        RegistrationClosedError: the app is already launched.
    """
    if app.launched:
        raise RegistrationClosedError(
            "cannot add consumers: the app is launched; add them before the worker starts"
        )
    existing: tuple[EventConsumer, ...] = getattr(app, _EXTRA_CONSUMERS_ATTRIBUTE, ())
    setattr(app, _EXTRA_CONSUMERS_ATTRIBUTE, (*existing, *consumers))


def build_consumers(
    app: Hogsend, *, journeys: Sequence[EventConsumer] = ()
) -> tuple[EventConsumer, ...]:
    """The consumers a worker runs for ``app``, in their fixed order.

    Bucket membership, exits, wake-ups and triggers will come first, in that order, as
    their features land; then anything added with :func:`add_extra_consumers`.
    ``journeys`` are the journey consumers (exits, wake-ups, triggers) of the worker's
    journey runtime (``hogsend.runtime.journeys.journey_consumers``).
    """
    built_in: tuple[EventConsumer, ...] = ()
    if any(bucket.kind == "criteria" for bucket in app.buckets):
        # Imported here: the consumer module imports this one (DispatchedEvent).
        from hogsend.runtime.bucket_membership import BucketMembershipConsumer

        built_in += (BucketMembershipConsumer(app.buckets),)
    extra: tuple[EventConsumer, ...] = getattr(app, _EXTRA_CONSUMERS_ATTRIBUTE, ())
    return (*built_in, *journeys, *extra)


def backoff_seconds(
    attempt: int, *, base: float, maximum: float, rng: random.Random | None = None
) -> float:
    """Delay before retrying after failed attempt number ``attempt`` (1-based).

    ``base * 2**(attempt-1)`` capped at ``maximum``, then "equal jitter": a uniform pick
    in the upper half, so retries of events that failed together spread out but none
    comes back sooner than half the nominal delay.
    """
    nominal: float = min(maximum, base * 2.0 ** max(attempt - 1, 0))
    uniform = rng.uniform if rng is not None else random.uniform
    return nominal / 2 + uniform(0, nominal / 2)


class _Outcome(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    DEAD = "dead"
    LOST = "lost"


class _ClaimLost(Exception):
    """Our lease on a row expired and someone else claimed it: drop our attempt."""


class _Unsaved(Exception):
    """A consumer running without a savepoint failed: roll back, record the failure."""

    def __init__(self, done: list[str], consumer: str, error: Exception) -> None:
        super().__init__(consumer)
        self.done = done
        self.consumer = consumer
        self.error = error


def _event_of(row: ClaimedRow) -> DispatchedEvent:
    return DispatchedEvent(
        outbox_id=row.id,
        event_id=row.event_id,
        contact_id=row.contact_id,
        contact_key=row.contact_key,
        name=row.event,
        properties=row.properties,
        occurred_at=row.occurred_at,
        source=row.source,
        attempt=row.attempts + 1,
    )


def _describe(consumer: str, exc: BaseException) -> str:
    return f"{consumer}: {type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS]


class Dispatcher:
    """Claims outbox rows and runs the consumers on them; one per worker.

    Args:
        engine: the worker's engine (each contact in flight uses one pooled connection).
        settings: ``dispatcher_*`` settings and ``worker_id``.
        consumers: in the order they run (see :func:`build_consumers`).
        worker_id: who claims (``claimed_by``); defaults to ``settings.worker_id``. Two
            dispatchers must never share one while both run.
        database_url: for the ``LISTEN`` connection; defaults to the engine's URL.
        rng: randomness of the backoff jitter (tests pass a seeded one).

    Raises:
        DefinitionError: a consumer name is not kebab-case or is used twice.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        consumers: Sequence[EventConsumer] = (),
        *,
        worker_id: str | None = None,
        database_url: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        names = [check_id("consumer", consumer.name) for consumer in consumers]
        if dupes := duplicates(names):
            raise DefinitionError(f"consumer names used twice: {', '.join(dupes)}")
        self.consumers = tuple(consumers)
        self.settings = settings
        self.worker_id = worker_id or settings.worker_id
        self.database_url = database_url or engine.url.render_as_string(hide_password=False)
        self._engine = engine
        self._sessions = make_sessionmaker(engine)
        self._rng = rng or random.Random()
        self._wake = asyncio.Event()
        self._stopping = False
        self._loop_task: asyncio.Task[None] | None = None
        self._side_tasks: list[asyncio.Task[None]] = []
        self.listening = False
        """Whether the LISTEN connection is up (tests and health checks read it)."""

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Take back this worker id's leases (its previous process is gone) and start."""
        self._stopping = False
        async with self._sessions() as session, session.begin():
            released = await outbox.release_worker(session, self.worker_id)
        if released:
            log.info("dispatcher took back its leases", worker_id=self.worker_id, rows=released)
        self._loop_task = asyncio.create_task(self._run(), name="hogsend-dispatcher")
        self._side_tasks = [asyncio.create_task(self._sweep_loop(), name="hogsend-outbox-sweep")]
        if self.settings.dispatcher_listen:
            self._side_tasks.append(
                asyncio.create_task(self._listen(), name="hogsend-outbox-listen")
            )
        log.info(
            "dispatcher started",
            worker_id=self.worker_id,
            consumers=[c.name for c in self.consumers],
        )

    async def stop(self, *, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """Finish the rows in flight (up to ``timeout``), release the rest, and stop."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            done, _ = await asyncio.wait({self._loop_task}, timeout=timeout)
            if not done:
                log.warning("dispatcher did not finish in time; cancelling", timeout=timeout)
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        for task in self._side_tasks:
            task.cancel()
        for task in self._side_tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._side_tasks = []
        try:
            async with self._sessions() as session, session.begin():
                await outbox.release_worker(session, self.worker_id)
        except Exception:
            log.warning("could not release the dispatcher's leases", exc_info=True)
        log.info("dispatcher stopped", worker_id=self.worker_id)

    def wake(self) -> None:
        """Look at the outbox now instead of at the end of the idle wait."""
        self._wake.set()

    # -- one round -----------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim one batch and process it; returns how many rows were claimed."""
        async with self._sessions() as session, session.begin():
            rows = await outbox.claim(
                session,
                worker_id=self.worker_id,
                batch_size=self.settings.dispatcher_batch_size,
                lease_seconds=self.settings.dispatcher_lease_seconds,
            )
        if rows:
            await self._process(rows)
        return len(rows)

    async def drain(self) -> int:
        """Run rounds until one claims nothing; returns the rows claimed in all.

        Rows waiting for a retry or leased elsewhere are not waited for.
        """
        total = 0
        while claimed := await self.run_once():
            total += claimed
        return total

    async def sweep(self) -> int:
        """Delete processed rows past their retention now; returns how many."""
        total = 0
        while True:
            async with self._sessions() as session, session.begin():
                deleted = await outbox.sweep(
                    session, retention_seconds=self.settings.dispatcher_retention_seconds
                )
            total += deleted
            if deleted == 0 or self._stopping:
                return total

    # -- processing ----------------------------------------------------------------------

    def _pending_consumers(self, row: ClaimedRow) -> list[EventConsumer]:
        return [c for c in self.consumers if c.name not in row.consumers_done]

    def _unwanted(self, row: ClaimedRow) -> list[str] | None:
        """The row's progress once done, if none of its pending consumers wants it.

        None when some consumer has work to do on the row (it goes through a lane).
        """
        if not row.event_found:
            return list(row.consumers_done)
        event = _event_of(row)
        done = list(row.consumers_done)
        for consumer in self._pending_consumers(row):
            if consumer_wants(consumer, event):
                return None
            done.append(consumer.name)
        return done

    async def _process(self, rows: list[ClaimedRow]) -> None:
        token = rows[0].token
        nothing_to_do: list[tuple[int, list[str]]] = []
        for row in rows:
            done = self._unwanted(row)
            if done is not None:
                nothing_to_do.append((row.id, done))
        if nothing_to_do:
            # No consumer will see these rows (bucket transitions nothing reacts to are
            # most of them), so finishing them ahead of earlier rows of their contact has
            # no visible effect on order: one statement for all, no lane, no savepoint.
            async with self._sessions() as session, session.begin():
                await outbox.complete_rows(session, token, nothing_to_do)
        skip = {row_id for row_id, _ in nothing_to_do}
        by_contact: dict[uuid.UUID, list[ClaimedRow]] = {}
        for row in rows:
            if row.id not in skip:
                by_contact.setdefault(row.contact_id, []).append(row)
        if not by_contact:
            return
        renewer = asyncio.create_task(
            self._renew_leases(token, [r.id for r in rows if r.id not in skip]),
            name="hogsend-outbox-renew",
        )
        groups = deque(by_contact.values())
        lanes = min(self.settings.dispatcher_concurrency, len(groups))
        # Share the batch between the lanes rather than fill the first ones.
        pending = sum(len(rows) for rows in groups)
        per_transaction = max(
            1, min(self.settings.dispatcher_events_per_transaction, -(-pending // lanes))
        )
        try:
            await asyncio.gather(*(self._lane(groups, per_transaction) for _ in range(lanes)))
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _lane(self, groups: deque[list[ClaimedRow]], per_transaction: int) -> None:
        # A lane keeps one connection for the whole batch: no pool checkout (and ping)
        # per event. It takes whole contacts, enough for one transaction at a time.
        async with self._engine.connect() as conn:
            while groups:
                chunk = [groups.popleft()]
                size = len(chunk[0])
                while groups and size < per_transaction:
                    chunk.append(groups.popleft())
                    size += len(chunk[-1])
                if per_transaction == 1 or size == 1:
                    for rows in chunk:
                        await self._process_contact(rows, conn)
                else:
                    await self._process_chunk(chunk, conn)

    async def _process_contact(self, rows: list[ClaimedRow], conn: AsyncConnection) -> None:
        for index, row in enumerate(rows):
            if self._stopping:
                await self._release(rows[index:])
                return
            outcome = await self._process_row(row, conn)
            if outcome in (_Outcome.RETRY, _Outcome.LOST):
                # The contact's later events wait behind this one (a retry blocks them
                # by its due time; a lost row is someone else's now).
                await self._release(rows[index + 1 :])
                return

    async def _release(self, rows: list[ClaimedRow]) -> None:
        if not rows:
            return
        try:
            async with self._sessions() as session, session.begin():
                await outbox.release(session, rows[0].token, [r.id for r in rows])
        except Exception:
            log.warning("could not release rows; their lease will expire", exc_info=True)

    async def _run_consumers(
        self, row: ClaimedRow, session: AsyncSession, *, savepoints: bool = True
    ) -> tuple[list[str], tuple[str, Exception] | None]:
        """Run the row's pending consumers, each in a savepoint, until one fails.

        Returns the consumers done (before and now) and the failure, if any. Without
        ``savepoints`` (one consumer wants the row and it is alone in its transaction,
        see :meth:`_process_row`), a failure raises :class:`_Unsaved` instead: the
        transaction may be unusable, and nothing of it is worth keeping.
        """
        event = _event_of(row)
        done = list(row.consumers_done)
        for consumer in self._pending_consumers(row):
            if not consumer_wants(consumer, event):
                done.append(consumer.name)
                continue
            if not savepoints:
                try:
                    await consumer.consume(event, session)
                except Exception as exc:
                    raise _Unsaved(done, consumer.name, exc) from exc
                done.append(consumer.name)
                continue
            try:
                async with session.begin_nested():
                    await consumer.consume(event, session)
            except Exception as exc:
                return done, (consumer.name, exc)
            done.append(consumer.name)
        return done, None

    def _wanted(self, row: ClaimedRow) -> list[EventConsumer]:
        event = _event_of(row)
        return [c for c in self._pending_consumers(row) if consumer_wants(c, event)]

    def _savepoint_free(self, rows: Sequence[ClaimedRow]) -> bool:
        """Whether every consumer that wants one of ``rows`` runs without a savepoint
        (see :func:`consumer_needs_savepoint`)."""
        return all(
            not consumer_needs_savepoint(consumer) for row in rows for consumer in self._wanted(row)
        )

    async def _process_chunk(
        self, chunk: list[list[ClaimedRow]], conn: AsyncConnection, *, careful: bool = False
    ) -> None:
        """Process several contacts' rows in one transaction, with the rules of one row.

        Each row's consumers run in savepoints as in :meth:`_process_row`; the rows that
        succeed are marked processed together, a failure is recorded for its row (whose
        contact's later rows are released when it will be retried), all before one
        commit. If a claim turns out lost, nothing is kept and the rows are processed
        one by one. If the transaction itself fails, the failure is recorded for the
        row it failed on (if any), as :meth:`_process_row` does, and the other rows are
        processed one by one.

        When every consumer that wants one of the rows needs no savepoint (see
        :func:`consumer_needs_savepoint`), they run without any, unless ``careful``; a
        consumer's failure then rolls the transaction back and the chunk is processed
        again, ``careful``, with the savepoints.
        """
        token = chunk[0][0].token
        savepoints = careful or not self._savepoint_free([r for rows in chunk for r in rows])
        current: ClaimedRow | None = None
        failure: tuple[str, Exception] | None = None
        try:
            async with (
                AsyncSession(bind=conn, expire_on_commit=False) as session,
                session.begin(),
            ):
                completed: list[tuple[int, list[str]]] = []
                released: list[int] = []
                for rows in chunk:
                    for index, row in enumerate(rows):
                        if self._stopping:
                            released.extend(r.id for r in rows[index:])
                            break
                        current = row
                        done, failure = await self._run_consumers(
                            row, session, savepoints=savepoints
                        )
                        if failure is None:
                            completed.append((row.id, done))
                            continue
                        outcome = await self._record_failure(session, row, done, *failure)
                        if outcome is None:
                            raise _ClaimLost
                        failure = None
                        if outcome is _Outcome.RETRY:
                            released.extend(r.id for r in rows[index + 1 :])
                            break
                current = None
                if completed:
                    marked = await outbox.complete_rows(session, token, completed)
                    if len(marked) != len(completed):
                        raise _ClaimLost
                if released:
                    await outbox.release(session, token, released)
        except _ClaimLost:
            log.warning(
                "a claim of this batch was lost meanwhile; processing its rows one by one",
                outbox_ids=[r.id for rows in chunk for r in rows],
            )
            for rows in chunk:
                await self._process_contact(rows, conn)
        except _Unsaved:
            # A consumer without a savepoint failed: nothing of the chunk was kept. The
            # careful pass runs each consumer in its savepoint and records the failure.
            await self._process_chunk(chunk, conn, careful=True)
        except Exception as exc:
            redo = chunk
            if current is not None:
                name, error = failure if failure is not None else ("dispatcher", exc)
                outcome = await self._record_failure_alone(current, name, error)
                redo = []
                for rows in chunk:
                    if current not in rows:
                        redo.append(rows)
                        continue
                    at = rows.index(current)
                    later = rows[at + 1 :]
                    if outcome is _Outcome.DEAD:
                        redo.append(rows[:at] + later)
                    else:
                        await self._release(later)  # they wait behind the failed row
                        redo.append(rows[:at])
            for rows in redo:
                await self._process_contact(rows, conn)

    async def _record_failure_alone(
        self, row: ClaimedRow, consumer: str, exc: Exception, done: list[str] | None = None
    ) -> _Outcome:
        """Record a failed attempt in a transaction of its own, against the old progress
        (or ``done``: consumers that did nothing for the row, so wrote nothing)."""
        try:
            async with self._sessions() as session, session.begin():
                recorded = await self._record_failure(
                    session, row, list(row.consumers_done) if done is None else done, consumer, exc
                )
        except Exception:
            log.exception("could not record a failed attempt", outbox_id=row.id)
            return _Outcome.LOST
        return recorded or _Outcome.LOST

    async def _process_row(
        self, row: ClaimedRow, conn: AsyncConnection, *, careful: bool = False
    ) -> _Outcome:
        failure: tuple[str, Exception] | None = None
        # With one consumer to run, its savepoint protects nothing else of the
        # transaction: the same rules hold if a failure rolls the whole transaction back
        # and is recorded in one of its own, against the progress of the consumers
        # before it (which did nothing for this event). A savepoint pair was two of the
        # event's five round trips and most of the dispatcher's Python per event.
        # Several consumers that need no savepoint run without one too: a failure rolls
        # the transaction back and the row is processed again, carefully.
        wanted = self._wanted(row)
        alone = len(wanted) <= 1
        savepoints = not alone and (careful or not self._savepoint_free([row]))
        try:
            async with (
                AsyncSession(bind=conn, expire_on_commit=False) as session,
                session.begin(),
            ):
                done, failure = await self._run_consumers(row, session, savepoints=savepoints)
                if failure is None:
                    if not await outbox.complete(session, row.token, row.id, consumers_done=done):
                        raise _ClaimLost
                    return _Outcome.DONE
                outcome = await self._record_failure(session, row, done, *failure)
                if outcome is None:
                    raise _ClaimLost
                return outcome
        except _Unsaved as unsaved:
            if not alone:
                return await self._process_row(row, conn, careful=True)
            return await self._record_failure_alone(
                row, unsaved.consumer, unsaved.error, unsaved.done
            )
        except _ClaimLost:
            log.warning(
                "outbox row was claimed by another dispatcher meanwhile; dropping this attempt",
                outbox_id=row.id,
                event_id=str(row.event_id),
            )
            return _Outcome.LOST
        except Exception as exc:
            # The transaction itself failed (say, the connection broke): none of this
            # attempt's writes were kept, so record the failure against the old progress.
            name, error = failure if failure is not None else ("dispatcher", exc)
            return await self._record_failure_alone(row, name, error)

    async def _record_failure(
        self,
        session: AsyncSession,
        row: ClaimedRow,
        done: list[str],
        consumer: str,
        exc: Exception,
    ) -> _Outcome | None:
        settings = self.settings
        attempt = row.attempts + 1
        delay = backoff_seconds(
            attempt,
            base=settings.dispatcher_backoff_base_seconds,
            maximum=settings.dispatcher_backoff_max_seconds,
            rng=self._rng,
        )
        error = _describe(consumer, exc)
        trace = "".join(traceback.format_exception(exc))[-_MAX_TRACEBACK_CHARS:]
        failure = await outbox.fail(
            session,
            row,
            consumers_done=done,
            error=error,
            retry_in_seconds=delay,
            max_attempts=settings.dispatcher_max_attempts,
            dead_letter_detail={"consumer": consumer, "traceback": trace},
        )
        if failure is None:
            return None
        context = {
            "outbox_id": row.id,
            "event_id": str(row.event_id),
            "event_name": row.event,
            "consumer": consumer,
            "attempt": failure.attempts,
            "error": error,
        }
        if failure.dead:
            log.error("event gave up; written to the dead-letter queue", **context)
            return _Outcome.DEAD
        log.warning("consumer failed; event will be retried", retry_in=round(delay, 3), **context)
        return _Outcome.RETRY

    async def _renew_leases(self, token: ClaimToken, ids: list[int]) -> None:
        every = self.settings.dispatcher_lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            try:
                async with self._sessions() as session, session.begin():
                    await outbox.renew(
                        session, token, ids, lease_seconds=self.settings.dispatcher_lease_seconds
                    )
            except Exception:
                log.warning("could not renew outbox leases", exc_info=True)

    # -- background loops ----------------------------------------------------------------

    async def _idle(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _run(self) -> None:
        poll = self.settings.dispatcher_poll_seconds
        failures = 0
        while not self._stopping:
            self._wake.clear()
            try:
                claimed = await self.run_once()
            except Exception:
                failures += 1
                log.warning("dispatcher round failed", exc_info=True, failures=failures)
                await self._idle(min(poll * 2**failures, 30.0))
                continue
            failures = 0
            if claimed == 0:
                await self._idle(poll)
            # After a batch, look again at once: it may have unblocked later events.

    async def _listen(self) -> None:
        await listen_for_wakeups(
            libpq_url(self.database_url),
            OUTBOX_CHANNEL,
            self._wake,
            set_listening=lambda live: setattr(self, "listening", live),
            what="outbox",
        )

    async def _sweep_loop(self) -> None:
        while True:
            try:
                if deleted := await self.sweep():
                    log.info("outbox swept", rows=deleted)
            except Exception:
                log.warning("outbox sweep failed", exc_info=True)
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
