"""Durable journeys on DBOS: the workflow per journey, its context, and the dispatcher's part.

Each journey is one DBOS async workflow named ``hogsend.journey:<id>``. A run's life::

    trigger   the dispatcher's ``journey-triggers`` consumer checks the guards (enabled,
              trigger filter, entry limit), inserts the ``journey_states`` row and
              enqueues the workflow under the deterministic enrollment id
    start     the run moves its row to ``active`` (one statement, not a step): the contact
              and the start time come from its input, recorded at enrollment; a run
              enqueued without them (a retry) has a start step that loads the contact
    body      the user's ``async def`` awaits ``ctx.*``; every operation is one or more
              DBOS steps, so a recovered run replays them without repeating side effects
    waits     ``sleep`` and ``wait_for_event`` are ``DBOS.recv`` on one topic with a
              timeout: an exit message or the awaited event ends them early
    end       ``completed`` / ``failed`` never overwrite ``exited``

Exits (``exit_on``, admin cancel, contact deletion or merge) set the row ``exited`` in
the exiting transaction and send the run an exit message; the run raises
:class:`~hogsend.errors.JourneyExit` at its next await. ``send_email`` share-locks the row
while it sends, so an exit either waits for a send in flight or prevents it.
"""

from __future__ import annotations

import asyncio
import contextvars
import time as monotonic_time
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast

import structlog
from dbos import DBOS
from dbos._error import DBOSNonExistentWorkflowError
from psycopg.errors import LockNotAvailable
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from hogsend.channels.mailer import Mailer, SendRequest
from hogsend.core.contact import Contact, Event
from hogsend.core.definitions import JourneyDefinition
from hogsend.core.enrollment import (
    contact_from_message,
    enrollment_workflow_id,
    event_from_message,
    event_message,
    pick_variant,
    properties_match,
    run_input,
    spec_event,
    spec_matches,
    starts_from_input,
)
from hogsend.core.entry_rules import Refusal, entry_ordinal, entry_refusal
from hogsend.core.identifiers import durable_name
from hogsend.core.journey_context import JourneyHistory, When
from hogsend.core.mailer_gates import SendWindow, journey_send_kind
from hogsend.core.reactions import all_journeys
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import buckets as buckets_repo
from hogsend.db.repos import contacts as contacts_repo
from hogsend.db.repos import enrollments as enrollments_repo
from hogsend.db.repos import journeys as repo
from hogsend.errors import ConfigurationError, JourneyExit, NoRecipient, TemplateNotFound
from hogsend.runtime import due_wake, replay, step_records
from hogsend.runtime.dbos_setup import DBOS_SCHEMA
from hogsend.runtime.divergence import Divergence, record_divergence
from hogsend.runtime.due_wake import WakeEnd
from hogsend.runtime.enrollments import JourneyEnqueuer
from hogsend.runtime.polling import Poller
from hogsend.runtime.queues import JOURNEYS

if TYPE_CHECKING:
    from hogsend.app import Hogsend
    from hogsend.runtime.dispatcher import DispatchedEvent

log = structlog.get_logger(__name__)

TOPIC = "hogsend.journey"

EXIT_SWEEP_SECONDS = 1.0
"""How often a worker looks for runs exited elsewhere (API, Studio) that still run."""
"""The one DBOS message topic of a run: exit signals and awaited events."""

START_LOCK_TIMEOUT_MS = 100
START_RETRY_SECONDS = 0.2
START_RETRY_MAX_SECONDS = 2.0
"""A run's start step waits for its enrolling transaction in these slices."""

T = TypeVar("T")
Clock = Callable[[], datetime]
Workflow = Callable[[str, dict[str, Any]], Coroutine[Any, Any, str]]


def utc_now() -> datetime:
    """The real clock."""
    return datetime.now(UTC)


def journey_workflow_name(journey_id: str) -> str:
    """The durable DBOS name of a journey's workflow."""
    return durable_name("journey", journey_id)


def _enrolled(enrollment: dict[str, Any]) -> tuple[Contact, datetime]:
    """The contact and the clock an enrollment recorded in its run's input."""
    return (
        contact_from_message(enrollment["contact"]),
        datetime.fromisoformat(enrollment["enrolledAt"]),
    )


class JourneyRuntime:
    """Everything the journey workflows of one worker process share.

    Args:
        app: the user's app (its journeys).
        engine: hogsend's database.
        mailer: sends ``ctx.send_email``; None for an app without templates (sending
            then fails the run loudly).
        clock: the time source of ``ctx.now()`` and deadlines (tests inject one).
        park_after: waits longer than this are parked (no coroutine until they are due).
    """

    def __init__(
        self,
        app: Hogsend,
        engine: AsyncEngine,
        *,
        mailer: Mailer | None = None,
        clock: Clock = utc_now,
        park_after: timedelta = timedelta(minutes=10),
    ) -> None:
        self.app = app
        self.engine = engine
        self.mailer = mailer
        self.clock = clock
        self.park_after = park_after
        self.sessions = make_sessionmaker(engine)
        # The user's journeys and the bucket reactions' (raises on an id used by both).
        self.definitions = {j.id: j for j in all_journeys(app.journeys, app.buckets)}
        self.buckets = {b.id: b for b in app.buckets}
        self.workflows: dict[str, Workflow] = {}
        self._enqueuer: JourneyEnqueuer | None = None

    @property
    def enqueuer(self) -> JourneyEnqueuer:
        """Enqueues runs in the enrolling transaction (made on first use)."""
        if self._enqueuer is None:
            self._enqueuer = JourneyEnqueuer(self.engine.url.render_as_string(hide_password=False))
        return self._enqueuer

    def close(self) -> None:
        """Release the enqueuer's DBOS client, if one was made (the worker's stop)."""
        if self._enqueuer is not None:
            self._enqueuer.close()
            self._enqueuer = None

    # -- registration ----------------------------------------------------------------------

    def register(self) -> None:
        """Register one DBOS workflow per journey (a hook run before ``DBOS.launch``)."""
        for definition in self.definitions.values():
            self.workflows[definition.id] = DBOS.workflow(
                name=journey_workflow_name(definition.id)
            )(self._workflow_for(definition))

    def _workflow_for(self, definition: JourneyDefinition) -> Workflow:
        runtime = self

        async def run_journey(state_id: str, enrollment: dict[str, Any]) -> str:
            return await runtime.run(definition, uuid.UUID(state_id), enrollment)

        run_journey.__qualname__ = f"journey:{definition.id}"
        return run_journey

    # -- one run ---------------------------------------------------------------------------

    async def run(
        self, definition: JourneyDefinition, state_id: uuid.UUID, enrollment: dict[str, Any]
    ) -> str:
        """The body of every journey workflow; returns the run's final status."""
        # The run's step records, read in one transaction as it begins: a replay answers
        # its recorded steps from them and its new steps need no check of their own.
        recorded = replay.install()
        # DBOS's step records from statements prepared once (hogsend.runtime.step_records).
        records = step_records.install()
        workflow_id = DBOS.workflow_id
        if recorded is None or workflow_id is None:
            started = await self._start(definition, state_id, enrollment)
            return await self._run(definition, state_id, enrollment, started)
        try:
            if starts_from_input(enrollment):
                # The records come with the statement that begins the run: a first
                # execution pays one transaction before its body, not two.
                started = await self._begin_and_recall(state_id, workflow_id, enrollment, recorded)
            else:
                await recorded.prefetch(workflow_id)
                started = await self._start(definition, state_id, enrollment)
            return await self._run(definition, state_id, enrollment, started)
        finally:
            recorded.forget(workflow_id)
            if records is not None:
                records.forget(workflow_id)

    async def _start(
        self, definition: JourneyDefinition, state_id: uuid.UUID, enrollment: dict[str, Any]
    ) -> tuple[Contact, str, datetime] | None:
        """Begin the run when its step records were not read with the begin statement."""
        if starts_from_input(enrollment):
            return await self._begin(state_id, enrollment)
        # Enqueued without its contact (a retry; a run recorded by older code): the
        # start step, which a replay of such a run finds recorded at step 0.
        started: tuple[Contact, str, datetime] | None = await DBOS.run_step_async(
            {"name": "journey.start"}, self._start_step, definition.id, state_id, enrollment
        )
        return started

    async def _run(
        self,
        definition: JourneyDefinition,
        state_id: uuid.UUID,
        enrollment: dict[str, Any],
        started: tuple[Contact, str, datetime] | None,
    ) -> str:
        if started is None:
            return "refused"
        contact, status, now = started
        if status not in repo.RUNNING:
            return status
        ctx = DurableJourneyContext(self, definition, state_id, contact, enrollment, now)
        try:
            await definition.body(contact, ctx)
        except JourneyExit as exc:
            await DBOS.run_step_async(
                {"name": "journey.exited"}, self._exited_step, state_id, exc.reason
            )
            return "exited"
        except JourneyDiverged as diverged:
            # No further step: it would be checked against the recording too.
            await record_divergence(
                self.sessions,
                journey_id=definition.id,
                state_id=state_id,
                workflow_id=enrollment["workflowId"],
                application_version=DBOS.application_version,
                error=diverged.error,
                trigger=enrollment["trigger"],
            )
            raise diverged.error from None
        except Exception as exc:
            await DBOS.run_step_async(
                {"name": "journey.failed"},
                self._finish_step,
                definition.id,
                state_id,
                "failed",
                f"{type(exc).__name__}: {exc}"[:2000],
            )
            raise
        # Not a DBOS step: marking the run completed is idempotent (a run that already
        # ended keeps its status and gets no second log line), so a replay may run it
        # again, and a step's recording (a system-database transaction) is saved.
        return await self._finish_step(definition.id, state_id, "completed", None)

    async def _begin_and_recall(
        self,
        state_id: uuid.UUID,
        workflow_id: str,
        enrollment: dict[str, Any],
        recorded: replay.RecordedSteps,
    ) -> tuple[Contact, str, datetime] | None:
        """The replay prefetch and :meth:`_begin` on one connection of hogsend's.

        The run's step records (DBOS's rows, in the same database) answer its steps'
        checks, as :meth:`replay.RecordedSteps.prefetch` would. With records, it is a
        replay and goes on without the begin statement (as :meth:`_run` does after a
        prefetch) and without a transaction; without, the begin statement follows in a
        transaction on the same connection: a first execution pays one transaction
        before its body, not two.
        """
        # A connection, not an ORM session: these three transactions of every run (this
        # one, a step's write, completion) are plain statements, and a session's
        # bookkeeping was about 0.3 ms of CPU each (bench/journeys.py).
        async with self.engine.connect() as conn:
            # Read in autocommit: a replay (a woken run) only reads, and a transaction
            # around the read cost it a BEGIN and a COMMIT round trip (bench/journeys.py).
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            found = await enrollments_repo.recall_steps(conn, workflow_id, dbos_schema=DBOS_SCHEMA)
            # Raises for a cancelled workflow, as the prefetch does.
            if recorded.preload(workflow_id, found.workflow_status, found.records):
                contact, enrolled_at = _enrolled(enrollment)
                return contact, "active", enrolled_at
            # A first execution begins in a transaction on the same connection: the read
            # and BEGIN are the round trips the BEGIN and read were. Nothing can record a
            # step of this workflow in between (this execution owns it).
            await conn.commit()
            await conn.execution_options(isolation_level=conn.dialect.default_isolation_level)
            async with conn.begin():
                return await self._begin_in(conn, state_id, enrollment)

    async def _begin(
        self, state_id: uuid.UUID, enrollment: dict[str, Any]
    ) -> tuple[Contact, str, datetime] | None:
        """Begin a run from its input: the contact and the clock the enrollment recorded
        there, so a replay sees the same ones. Not a DBOS step (a step here was a fifth
        of an enrollment's round trips, bench/journeys.py): the statement is idempotent
        and tells a first execution from a replay by the row itself.
        """
        async with self.engine.begin() as session:
            return await self._begin_in(session, state_id, enrollment)

    async def _begin_in(
        self,
        session: AsyncSession | AsyncConnection,
        state_id: uuid.UUID,
        enrollment: dict[str, Any],
    ) -> tuple[Contact, str, datetime] | None:
        """:meth:`_begin` in the caller's transaction."""
        begun = await enrollments_repo.begin_run(session, state_id, now=self.clock())
        if begun is None:
            return None
        if begun.moved and begun.contact_gone:
            # Deleted after the enrollment read it, by a transaction that could not see
            # the uncommitted run to exit it.
            await repo.exit_runs(session, reason="contact_deleted", state_ids=[state_id])
            return None
        contact, now = _enrolled(enrollment)
        if begun.moved or begun.begun_before:
            # A replay goes on as a recorded start step did: into the body, whose recorded
            # steps replay and whose next step sees an exit that landed since.
            return contact, "active", now
        # Ended before it began (an exit while it was queued): the body does not run.
        return contact, begun.status, now

    async def _start_step(
        self, journey_id: str, state_id: uuid.UUID, enrollment: dict[str, Any]
    ) -> tuple[Contact, str, datetime] | None:
        now = self.clock()
        committed, started = await self._start_committed(state_id, now)
        if committed:
            return started
        pause = START_RETRY_SECONDS
        while True:
            try:
                return await self._start_once(journey_id, state_id, enrollment, now)
            except DBAPIError as exc:
                if not isinstance(exc.orig, LockNotAvailable):
                    raise
            # The enrolling transaction has not committed yet. Wait for it without
            # holding a pooled connection: many starting runs blocked in the insert
            # drained the pool under load (bench/journeys.py). Back off: a long
            # dispatcher transaction should not be polled by every run it started.
            await asyncio.sleep(pause)
            pause = min(pause * 2, START_RETRY_MAX_SECONDS)

    async def _start_committed(
        self, state_id: uuid.UUID, now: datetime
    ) -> tuple[bool, tuple[Contact, str, datetime] | None]:
        """The start step in one statement, for a run whose row is committed (every run
        enqueued in its enrolling transaction); (False, None) when there is no such row,
        and the step falls back to waiting for its enrollment (:meth:`_start_once`)."""
        async with self.sessions() as session, session.begin():
            found = await enrollments_repo.start_run(session, state_id, now=now)
            if found is None:
                return False, None
            if found.contact is None:
                if found.status in repo.RUNNING:
                    await repo.exit_runs(session, reason="contact_deleted", state_ids=[state_id])
                return True, None
        return True, (found.contact, found.status, now)

    async def _start_once(
        self, journey_id: str, state_id: uuid.UUID, enrollment: dict[str, Any], now: datetime
    ) -> tuple[Contact, str, datetime] | None:
        async with self.sessions() as session, session.begin():
            await session.execute(text(f"SET LOCAL lock_timeout = '{START_LOCK_TIMEOUT_MS}ms'"))
            # Waits (see _start_step) until the enrolling transaction commits; inserts the
            # row itself when that transaction rolled back after enqueueing (its retry
            # will find the run).
            await repo.insert_run(
                session,
                state_id=state_id,
                journey_id=journey_id,
                workflow_id=enrollment["workflowId"],
                contact_id=uuid.UUID(enrollment["contactId"]),
                user_id=enrollment["userId"],
                user_email=enrollment.get("email"),
                entry_count=enrollment["ordinal"],
                trigger_event_id=uuid.UUID(enrollment["trigger"]["id"]),
                context={},
                now=now,
            )
            run = await repo.get_run(session, state_id)
            if run is None:
                return None
            contact = await contacts_repo.get_contact(session, run.contact_id)
            if contact is None and run.status in repo.RUNNING:
                await repo.exit_runs(session, reason="contact_deleted", state_ids=[state_id])
                return None
            status = await repo.move(session, state_id, status="active", step="start", now=now)
        assert contact is not None
        return contact, status or run.status, now

    async def _exited_step(self, state_id: uuid.UUID, reason: str) -> None:
        async with self.sessions() as session, session.begin():
            # Usually a no-op: whoever exited the run marked it. This covers an exit
            # message whose sender's transaction did not commit.
            await repo.exit_runs(session, reason=reason, state_ids=[state_id], now=self.clock())

    async def _finish_step(
        self, journey_id: str, state_id: uuid.UUID, status: str, error: str | None
    ) -> str:
        now = self.clock()
        async with self.engine.connect() as conn:
            # One statement, atomic by itself: autocommit spares its BEGIN and COMMIT
            # round trips (every run ends here, bench/journeys.py).
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            ended, after = await repo.finish_logged(
                conn, state_id, status=status, error=error, now=now
            )
        return status if ended else (after or status)

    # -- enrollment ------------------------------------------------------------------------

    async def enroll(
        self,
        session: AsyncSession,
        definition: JourneyDefinition,
        *,
        contact_id: uuid.UUID,
        contact_key: str,
        trigger: Event,
    ) -> str | None:
        """Run the guards and start a run; returns the workflow id, or None if refused.

        Runs inside the caller's transaction (the dispatcher's); refusals are logged in
        it. Idempotent per (journey, trigger event): a redelivered trigger finds its run.
        """
        now = self.clock()
        # Three statements (see hogsend.db.repos.enrollments): the lock and the switch,
        # the guards' reads in the lock's snapshot, the run with its log line.
        switch = await enrollments_repo.lock_and_read_switch(session, contact_id, definition.id)
        facts = await enrollments_repo.read_facts(session, contact_id, definition.id, trigger.id)
        if facts.existing is not None:
            existing = facts.existing
            await self._enqueue_in(
                session, definition, existing.id, _enrollment_of(existing, trigger)
            )
            return existing.workflow_id

        async def refuse(reason: Refusal) -> None:
            await repo.add_log(
                session,
                journey_id=definition.id,
                action="refused",
                contact_id=contact_id,
                user_id=contact_key,
                detail={"reason": reason, "eventId": str(trigger.id), "event": trigger.name},
                started_at=now,
                finished_at=now,
            )

        if not (definition.enabled if switch is None else switch):
            await refuse("disabled")
            return None
        bucket = self.buckets.get(definition.bucket_id) if definition.bucket_id else None
        if bucket is not None and not await buckets_repo.is_enabled(session, bucket):
            await refuse("bucket_disabled")
            return None
        if not spec_matches(definition.trigger, trigger.name, trigger.properties):
            await refuse("trigger_filter")
            return None
        history = facts.prior
        reason = entry_refusal(definition.entry_limit, history, now, period=definition.entry_period)
        if reason is not None:
            await refuse(reason)
            return None
        contact = facts.contact
        if contact is None:
            await refuse("contact_deleted")
            return None
        ordinal = entry_ordinal(history)
        workflow_id = enrollment_workflow_id(definition.id, contact_id, ordinal)
        state_id = uuid.uuid4()
        enrollment = run_input(
            workflow_id=workflow_id,
            contact_id=contact_id,
            user_id=contact.key,
            email=contact.email,
            ordinal=ordinal,
            trigger=event_message(trigger),
            # The run begins from these, without a start step (JourneyRuntime._begin).
            contact=contact,
            enrolled_at=now,
        )
        inserted = await enrollments_repo.insert_enrolled(
            session,
            state_id=state_id,
            journey_id=definition.id,
            workflow_id=workflow_id,
            contact_id=contact_id,
            user_id=contact.key,
            user_email=contact.email,
            entry_count=ordinal,
            trigger_event_id=trigger.id,
            detail={"eventId": str(trigger.id), "event": trigger.name, "ordinal": ordinal},
            now=now,
        )
        if not inserted:
            await refuse("already_active")
            return None
        await self._enqueue_in(session, definition, state_id, enrollment)
        return workflow_id

    async def start_run(
        self, definition: JourneyDefinition, state_id: uuid.UUID, enrollment: dict[str, Any]
    ) -> None:
        """Enqueue the workflow of a run whose row exists (a retry's, say); idempotent per
        ``enrollment["workflowId"]``."""
        async with self.sessions() as session, session.begin():
            await self._enqueue_in(session, definition, state_id, enrollment)

    async def _enqueue_in(
        self,
        session: AsyncSession,
        definition: JourneyDefinition,
        state_id: uuid.UUID,
        enrollment: dict[str, Any],
    ) -> None:
        """Enqueue the run's workflow in the enrolling transaction (see JourneyEnqueuer)."""
        if definition.id not in self.workflows:
            raise ConfigurationError(f"journey {definition.id!r} is not registered with DBOS")
        await self.enqueuer.enqueue(
            session,
            workflow_name=journey_workflow_name(definition.id),
            workflow_id=enrollment["workflowId"],
            args=(str(state_id), enrollment),
        )

    # -- exits -------------------------------------------------------------------------------

    async def signal_exit(self, workflow_ids: Sequence[str], reason: str) -> None:
        """Tell running workflows they were exited (their rows already say so)."""
        await signal_exit(workflow_ids, reason)


def _enrollment_of(run: enrollments_repo.ExistingRun, trigger: Event) -> dict[str, Any]:
    return run_input(
        workflow_id=run.workflow_id,
        contact_id=run.contact_id,
        user_id=run.user_id,
        email=None,
        ordinal=run.entry_count,
        trigger=event_message(trigger),
    )


async def signal_exit(workflow_ids: Sequence[str], reason: str) -> None:
    """Send each workflow the exit message (from a process running DBOS)."""
    for workflow_id in workflow_ids:
        try:
            await DBOS.send_async(
                workflow_id,
                {"kind": "exit", "reason": reason},
                TOPIC,
                idempotency_key=f"exit:{workflow_id}",
            )
        except DBOSNonExistentWorkflowError:
            # Not started yet: its first step reads the row, which says exited.
            continue


class ExitSweep(Poller):
    """Wakes workflows whose runs were exited outside a worker (admin cancel, contact
    deletion or merge in the API): their rows say ``exited``, their workflow still runs.

    Every worker polls (the query is cheap) and sends the exit message; DBOS's
    idempotency key makes sends from several workers one message.
    """

    task_name = "hogsend-journey-exits"
    failure = "journey exit sweep failed"

    def __init__(self, engine: AsyncEngine, *, every: float = EXIT_SWEEP_SECONDS) -> None:
        self.sessions = make_sessionmaker(engine)
        self.every = every

    async def run_once(self) -> int:
        """Signal every exited run that still runs; returns how many."""
        async with self.sessions() as session:
            found = await repo.exited_still_running(session, dbos_schema=DBOS_SCHEMA)
        for workflow_id, reason in found:
            await signal_exit([workflow_id], reason)
        return len(found)


class _Ended:
    """The wait was ended, and its closing written, by the ``journey.woke`` step."""


_ENDED = _Ended()


class _Parked(BaseException):
    """Ends a parked run's coroutine; its workflow is cancelled and resumed when due."""


class ParkWaker(Poller):
    """Resumes parked runs when they fall due, on the bounded journeys queue.

    Every worker runs one; ``FOR UPDATE SKIP LOCKED`` shares the due runs among them.
    """

    task_name = "hogsend-journey-waker"
    failure = "journey park waker failed"

    def __init__(self, engine: AsyncEngine, *, every: float = 1.0, clock: Clock = utc_now) -> None:
        self.sessions = make_sessionmaker(engine)
        self.every = every
        self.clock = clock

    async def run_once(self) -> int:
        """Resume the runs due now; returns how many."""
        # Closes the waits of due runs with nothing pending and resumes them, set-based,
        # in the claim's transaction; None leaves every run to DBOS's resume.
        waking = due_wake.install(JOURNEYS.name)
        total = 0
        while True:
            now = self.clock()
            async with self.sessions() as session, session.begin():
                due = await repo.claim_due_parked(session, now=now)
                rest = [run.workflow_id for run in due]
                if due and waking is not None:
                    rest = await waking.wake(session, due, now)
                if rest:
                    await DBOS.resume_workflows_async(rest, queue_name=JOURNEYS.name)
            total += len(due)
            if len(due) < 100:
                return total


class JourneyDiverged(BaseException):
    """A replay met a step its code no longer has (see :mod:`hogsend.runtime.divergence`).

    A ``BaseException`` so that a body's ``except Exception`` cannot swallow it and go
    on from a state its code does not describe.
    """

    def __init__(self, error: Divergence) -> None:
        super().__init__(str(error))
        self.error = error


async def _step(name: str, func: Callable[..., Coroutine[Any, Any, T]], *args: Any) -> T:
    """One recorded DBOS step of a run (its name says which operation it belongs to)."""
    recorded = replay.installed()
    try:
        if recorded is not None:
            # A step the run recorded before (a replay) is answered from its records.
            found, output = recorded.replayed(name)
            if found:
                return cast(T, output)
        return await DBOS.run_step_async({"name": name}, func, *args)
    except Divergence as exc:
        raise JourneyDiverged(exc) from exc


async def _recv(timeout_seconds: float) -> Any:
    """``DBOS.recv`` on the run's topic, a divergence raised as :class:`JourneyDiverged`."""
    try:
        return await DBOS.recv_async(TOPIC, timeout_seconds=timeout_seconds)
    except Divergence as exc:
        raise JourneyDiverged(exc) from exc


class _History(JourneyHistory):
    def __init__(self, ctx: DurableJourneyContext) -> None:
        self._ctx = ctx

    def _since(self, within: timedelta | None) -> datetime | None:
        return None if within is None else self._ctx.now() - within

    async def has_event(self, name: str, *, within: timedelta | None = None) -> bool:
        return await self.count(name, within=within) > 0

    async def count(self, name: str, *, within: timedelta | None = None) -> int:
        ctx = self._ctx
        since = self._since(within)

        async def read() -> int | None:
            async with ctx.runtime.sessions() as session:
                if await repo.lock_status(session, ctx.state_id) not in repo.RUNNING:
                    return None
                return await repo.count_events(session, ctx.contact.id, name, since=since)

        count = await ctx.step("history.count", read)
        if count is None:
            raise JourneyExit(await ctx._exit_reason())
        return count

    async def last(self, name: str) -> Event | None:
        ctx = self._ctx

        async def read() -> tuple[bool, dict[str, Any] | None]:
            async with ctx.runtime.sessions() as session:
                if await repo.lock_status(session, ctx.state_id) not in repo.RUNNING:
                    return False, None
                found = await repo.contact_events(session, ctx.contact.id, name, limit=1)
            return True, event_message(found[0]) if found else None

        running, data = await ctx.step("history.last", read)
        if not running:
            raise JourneyExit(await ctx._exit_reason())
        return None if data is None else event_from_message(data)


class DurableJourneyContext:
    """The :class:`~hogsend.core.journey_context.JourneyContext` of a run on DBOS.

    Operations are numbered in the order the body awaits them; the number is part of
    each send's idempotency key (``journey:<state id>:<n>``) and of the step log.
    """

    def __init__(
        self,
        runtime: JourneyRuntime,
        definition: JourneyDefinition,
        state_id: uuid.UUID,
        contact: Contact,
        enrollment: Mapping[str, Any],
        now: datetime,
    ) -> None:
        self.runtime = runtime
        self.definition = definition
        self.state_id = state_id
        self.contact = contact
        self._trigger = event_from_message(enrollment["trigger"])
        self._now = now
        self._n = 0
        self._history = _History(self)
        # A retry's: the keys the failed run sent under, by operation number.
        self._sent_before: Mapping[str, Mapping[str, str]] = (enrollment.get("retry") or {}).get(
            "sends"
        ) or {}

    # -- plain reads -------------------------------------------------------------------------

    @property
    def trigger_event(self) -> Event:
        """The event that enrolled the contact."""
        return self._trigger

    @property
    def history(self) -> JourneyHistory:
        """The contact's stored events."""
        return self._history

    def now(self) -> datetime:
        """The recorded time of the run's latest clock reading: its start, the start of
        each operation, the end of each wait (replays give the same value)."""
        return self._now

    def when(self) -> When:
        """A new send window builder."""
        return When()

    # -- machinery ----------------------------------------------------------------------------

    def _next(self, action: str) -> str:
        self._n += 1
        return f"{self._n}:{action}"

    async def step(self, name: str, func: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run ``func`` as one DBOS step named ``journey.<name>``."""
        return await _step(f"journey.{name}", func)

    async def _read_clock(self) -> datetime:
        return self.runtime.clock()

    async def _clock(self) -> datetime:
        self._now = await _step("journey.clock", self._read_clock)
        return self._now

    async def _move(
        self,
        step: str,
        *,
        status: str,
        next_wake_at: datetime | None = None,
        waiting_for_event: str | None = None,
        context: Mapping[str, Any] | None = None,
        lookback: tuple[str, datetime, Mapping[str, Any] | None] | None = None,
    ) -> dict[str, Any] | None:
        """Record the run's position; raises JourneyExit when the run already ended.

        With ``lookback`` (event name, since, match) also returns a matching stored event.
        """
        runtime = self.runtime
        state_id = self.state_id

        async def write() -> tuple[str | None, dict[str, Any] | None, datetime]:
            now = runtime.clock()
            async with runtime.sessions() as session, session.begin():
                status_after = await repo.move(
                    session,
                    state_id,
                    status=status,
                    step=step,
                    next_wake_at=next_wake_at,
                    waiting_for_event=waiting_for_event,
                    context=context,
                    now=now,
                )
                found = None
                if lookback is not None and status_after in repo.RUNNING:
                    name, since, match = lookback
                    for event in reversed(
                        await repo.contact_events(session, self.contact.id, name, since=since)
                    ):
                        if properties_match(match, event.properties):
                            found = event_message(event)
                            break
                return status_after, found, now

        # The operation label in the name makes a replay of edited code fail loudly at the
        # first operation that changed (DBOSUnexpectedStepError), not reuse its result.
        status_after, found, now = await _step(f"journey.move {step}", write)
        # A wait ends with a move: ctx.now() then reads the wake-up time (recorded, so a
        # replay sees the same), as the harness's virtual clock does.
        self._now = now
        if status_after not in repo.RUNNING:
            raise JourneyExit(await self._exit_reason())
        return found

    async def _exit_reason(self) -> str:
        async def read() -> str:
            async with self.runtime.sessions() as session:
                run = await repo.get_run(session, self.state_id)
            return (run.exit_reason if run is not None else None) or "exited"

        return await _step("journey.exit-reason", read)

    async def _wait(
        self, deadline: datetime, wait: int | None, end: WakeEnd | None = None
    ) -> dict[str, Any] | _Ended | None:
        """Receive on the run's topic until ``deadline``: an exit raises, the awaited
        event (message of wait number ``wait``) returns, anything else is skipped."""
        while True:
            remaining = (deadline - await self._clock()).total_seconds()
            if remaining > self.runtime.park_after.total_seconds():
                if await self._park(end):
                    # Resumed: the wait goes on for what is left (at least a tick, so a
                    # message delivered while parked is read and step ids stay aligned),
                    # unless it is over with no message to read.
                    left = await self._woke(deadline, end)
                    if left is None or isinstance(left, _Ended):
                        return left
                    remaining = left
            elif remaining <= 0:
                return None
            message = await _recv(remaining)
            if message is None:
                return None
            if message.get("kind") == "exit":
                raise JourneyExit(str(message.get("reason") or "exited"))
            if wait is not None and message.get("kind") == "event" and message.get("wait") == wait:
                return dict(message["event"])

    async def _woke(self, deadline: datetime, end: WakeEnd | None) -> float | _Ended | None:
        """After a resume: the seconds left to wait, or the end of the wait when it is over
        and no message is pending (None, or :data:`_ENDED` when ``end`` was done too).

        One step where a clock step, a 1 ms ``recv`` and the wait's closing move and log
        step were: waking 10,000 due runs is replay-bound (bench/journeys.py), and a due
        run with nothing flagged pending (:func:`repo.flag_pending` flags every event sent
        to a waiter, before sending) has nothing to receive. The closing move checks the
        run's status, so an exit that landed while it was parked ends it here; a delivery
        racing this transaction is kept and ignored, as a timed-out ``recv`` left it.
        """
        runtime = self.runtime
        state_id = self.state_id

        async def read() -> tuple[datetime, bool, str | None]:
            now = runtime.clock()
            async with runtime.sessions() as session, session.begin():
                pending = await repo.is_pending(session, state_id)
                if end is None or pending or now < deadline:
                    return now, pending, None
                # Over: what the steps after the wait would write, in this transaction.
                status = await repo.move(
                    session, state_id, status="active", step=end.step, context=end.context, now=now
                )
                if status in repo.RUNNING:
                    await repo.add_log(
                        session,
                        journey_id=self.definition.id,
                        action=end.action,
                        state_id=state_id,
                        contact_id=self.contact.id,
                        user_id=self.contact.key,
                        step=end.step,
                        detail=end.detail,
                        started_at=end.started,
                        finished_at=now,
                    )
            return now, pending, status

        self._now, pending, ended = await _step("journey.woke", read)
        if ended is not None:
            if ended not in repo.RUNNING:
                raise JourneyExit(await self._exit_reason())
            return _ENDED
        left = (deadline - self._now).total_seconds()
        if left <= 0 and not pending:
            return None
        return max(left, 0.001)

    async def _park(self, end: WakeEnd | None) -> bool:
        """Park the run: True once resumed; ends the coroutine when it just parked.

        The step is recorded, so a resumed run replays it as "parked" and goes on; only
        its first execution cancels the workflow and raises. ``end`` (what closing the
        wait writes) goes into the parked row, so the waker can close the wait of a run
        due with nothing pending, and record its ``journey.woke`` step, for a whole due
        group at once (:mod:`hogsend.runtime.due_wake`).
        """
        runtime = self.runtime
        state_id = self.state_id
        executed: list[bool] = []
        wake_end = None if end is None else end.to_json()

        async def park() -> bool:
            async with runtime.sessions() as session, session.begin():
                parked = await repo.park(session, state_id, wake_end)
            executed.append(parked)
            return parked

        parked = await _step("journey.park", park)
        if parked and executed:
            workflow_id = DBOS.workflow_id
            assert workflow_id is not None
            # From a fresh context, so the cancel takes no step id of this workflow.
            await asyncio.get_running_loop().create_task(
                DBOS.cancel_workflow_async(workflow_id), context=contextvars.Context()
            )
            raise _Parked
        return parked

    async def _log(self, step: str, action: str, started: datetime, **detail: Any) -> None:
        runtime = self.runtime

        name = f"journey.log {step}"

        async def log_line(conn: AsyncConnection) -> bool:
            return await repo.log_if_running(
                conn,
                self.state_id,
                journey_id=self.definition.id,
                action=action,
                contact_id=self.contact.id,
                user_id=self.contact.key,
                step=step,
                detail=detail,
                started_at=started,
                finished_at=runtime.clock(),
            )

        async def write() -> bool:
            # The line and the step's record commit together (one transaction, not two).
            return await step_records.in_transaction(runtime.engine, name, log_line)

        # An exit that landed since the last wait ends the run here, not at the next wait.
        if not await _step(name, write):
            raise JourneyExit(await self._exit_reason())

    # -- waiting -------------------------------------------------------------------------------

    async def sleep(self, duration: timedelta) -> None:
        """Wait durably for ``duration`` (an exit ends the wait at once)."""
        started = await self._clock()
        await self._sleep_to(started + duration, "sleep", started)

    async def sleep_until(self, when: datetime) -> None:
        """Wait durably until ``when`` (timezone-aware)."""
        if when.utcoffset() is None:
            raise ValueError("sleep_until needs a timezone-aware datetime")
        started = await self._clock()
        await self._sleep_to(when, "sleep", started)

    async def _sleep_to(self, deadline: datetime, action: str, started: datetime) -> None:
        step = self._next(action)
        await self._move(step, status="waiting", next_wake_at=deadline)
        detail = {"until": deadline.isoformat()}
        end = WakeEnd(step=step, action=action, started=started, detail=detail)
        if isinstance(await self._wait(deadline, None, end), _Ended):
            return
        await self._move(step, status="active")
        await self._log(step, action, started, **detail)

    async def wait_for_event(
        self,
        name: str,
        *,
        timeout: timedelta,
        match: Mapping[str, Any] | None = None,
        lookback: timedelta | None = None,
    ) -> Event | None:
        """Wait for the contact's next ``name`` event (see the Protocol)."""
        started = await self._clock()
        step = self._next(f"wait_for_event:{name}")
        deadline = started + timeout
        # Events stored since the wait began always count: one dispatched between that
        # instant and the waiting row's commit would otherwise be missed.
        since = started - (lookback or timedelta(0))
        found = await self._move(
            step,
            status="waiting",
            next_wake_at=deadline,
            waiting_for_event=name,
            context={"wait": {"step": self._n, "match": dict(match) if match else None}},
            lookback=(name, since, match),
        )
        closing: dict[str, Any] = {"wait": None, "pending": False}
        if found is None:
            end = WakeEnd(
                step=step,
                action="wait_for_event",
                started=started,
                detail={"event": name, "outcome": "timeout", "eventId": None},
                context=closing,
            )
            waited = await self._wait(deadline, self._n, end)
            if isinstance(waited, _Ended):
                return None
            found = waited
        await self._move(step, status="active", context=closing)
        await self._log(
            step,
            "wait_for_event",
            started,
            event=name,
            outcome="timeout" if found is None else "event",
            eventId=None if found is None else found["id"],
        )
        return None if found is None else event_from_message(found)

    # -- effects ----------------------------------------------------------------------------------

    async def send_email(
        self,
        *,
        template: str,
        props: Mapping[str, Any] | None = None,
        subject: str | None = None,
        send_window: When | SendWindow | None = None,
    ) -> None:
        """Send ``template`` through the mailer's gates (idempotent per run and step)."""
        step = self._next(f"send_email:{template}")
        key = f"journey:{self.state_id}:{self._n}"
        before = self._sent_before.get(str(self._n))
        if before is not None and before.get("template") == template:
            # A retry at an operation where the failed run sent this template: its key,
            # so the mailer answers ``duplicate`` instead of mailing the contact again.
            key = before["key"]
        window = send_window.window() if isinstance(send_window, When) else send_window
        while True:
            started = await self._clock()
            outcome = await _step(
                f"journey.send_email {step}",
                self._send_step,
                step,
                SendRequest(
                    template=template,
                    contact_id=self.contact.id,
                    props=dict(props or {}),
                    subject=subject,
                    kind=journey_send_kind(_template_category(self.runtime.app, template)),
                    journey_id=self.definition.id,
                    journey_state_id=self.state_id,
                    suppress_gap=self.definition.suppress,
                    send_window=window,
                    idempotency_key=key,
                    resend_when_open=False,
                ),
                started,
            )
            if outcome is None:
                raise JourneyExit(await self._exit_reason())
            decision, deferred_until = outcome
            if decision == "deferred" and deferred_until is not None:
                # Outside the send window: wait for it durably, then try again (same key).
                await self._sleep_to(deadline=deferred_until, action="send_window", started=started)
                continue
            return

    async def _send_step(
        self, step: str, request: SendRequest, started: datetime
    ) -> tuple[str, datetime | None] | None:
        mailer = self.runtime.mailer
        if mailer is None:
            raise ConfigurationError(
                f"journey {self.definition.id!r} sends email but the app has no templates"
            )
        runtime = self.runtime
        async with runtime.sessions() as session, session.begin():
            # Held through the send: an exit waits for this transaction, so it either
            # happened before (nothing is sent) or after (the send counts).
            if await repo.lock_status(session, self.state_id) not in repo.RUNNING:
                return None
            await repo.move(session, self.state_id, status="active", step=step)
            detail: dict[str, Any] = {
                "template": request.template,
                "idempotencyKey": request.idempotency_key,
            }
            try:
                outcome = await mailer.send(request)
            except NoRecipient:
                # A contact without an address (anonymous, say) skips the send; the
                # journey goes on, as it would for an unsubscribed contact.
                decision, deferred_until = "no_recipient", None
            else:
                decision, deferred_until = outcome.decision, outcome.deferred_until
                detail["sendId"] = str(outcome.send_id)
            await repo.add_log(
                session,
                journey_id=self.definition.id,
                action="send_email",
                state_id=self.state_id,
                contact_id=self.contact.id,
                user_id=self.contact.key,
                step=step,
                detail={**detail, "decision": decision},
                started_at=started,
                finished_at=runtime.clock(),
            )
        return decision, deferred_until

    async def enroll(self, journey_id: str, contact: Contact) -> bool:
        """Enroll ``contact`` (its own identity) in ``journey_id``; the guards apply."""
        definition = self.runtime.definitions.get(journey_id)
        if definition is None:
            raise ConfigurationError(f"ctx.enroll: no journey {journey_id!r} in the app")
        step = self._next(f"enroll:{journey_id}")
        # A stable id per (run, step): a retried step finds the run it started.
        trigger = Event(
            id=uuid.uuid5(self.state_id, step),
            name=spec_event(definition.trigger),
            contact_key=contact.key,
            contact_id=contact.id,
            occurred_at=self._now,
            properties={"enrolledBy": self.definition.id},
            source="journey",
        )
        runtime = self.runtime

        async def start() -> bool | None:
            async with runtime.sessions() as session, session.begin():
                # Share-locked like a send: an exit either comes first (no enrollment)
                # or waits for this one.
                if await repo.lock_status(session, self.state_id) not in repo.RUNNING:
                    return None
                started = await runtime.enroll(
                    session,
                    definition,
                    contact_id=contact.id,
                    contact_key=contact.key,
                    trigger=trigger,
                )
            return started is not None

        started_run = await self.step(f"enroll {step}", start)
        if started_run is None:
            raise JourneyExit(await self._exit_reason())
        await self._log(step, "enroll", self._now, journey=journey_id, enrolled=started_run)
        return started_run

    async def variant(
        self, test_id: str, variants: Sequence[str], weights: Sequence[float] | None = None
    ) -> str:
        """The contact's variant of ``test_id``, recorded in the step log."""
        chosen = pick_variant(self.contact.id, test_id, variants, weights)
        step = self._next(f"variant:{test_id}")
        await self._log(step, "variant", self._now, test=test_id, variant=chosen)
        return chosen

    async def log(self, message: str, **fields: Any) -> None:
        """Record a line in the run's step log."""
        step = self._next("log")
        await self._log(step, "log", self._now, message=message, **fields)

    async def patched(self, name: str) -> bool:
        """Whether this run takes the new code of the change ``name`` (see the Protocol).

        A DBOS patch marker: recorded for runs that reach it under the new code; a run
        recorded before the change finds another step at this position and takes the old
        path. Takes no operation number, so the numbering of later operations does not move.
        """
        try:
            return await DBOS.patch_async(f"hogsend:{name}")
        except Divergence as exc:
            raise JourneyDiverged(exc) from exc


# -- the dispatcher's consumers ------------------------------------------------------------------


def _event_of(event: DispatchedEvent) -> Event:
    return Event(
        id=event.event_id,
        name=event.name,
        contact_key=event.contact_key,
        contact_id=event.contact_id,
        occurred_at=event.occurred_at,
        properties=event.properties,
        source=event.source,
    )


# The journey consumers need no savepoint of their own (see consumer_needs_savepoint):
# their writes are keyed (the trigger event, the run) and their DBOS messages carry
# idempotency keys, so running one again after a rollback does what running it once does.


class JourneyExits:
    """Consumer: an event matching a journey's ``exit_on`` exits the contact's run of it."""

    name = "journey-exits"
    needs_savepoint = False

    def __init__(self, runtime: JourneyRuntime) -> None:
        self.runtime = runtime

    def wants(self, event: DispatchedEvent) -> bool:
        """Whether some journey's ``exit_on`` matches the event (else no savepoint)."""
        return any(
            spec_matches(spec, event.name, event.properties)
            for definition in self.runtime.definitions.values()
            for spec in definition.exit_on
        )

    async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
        """Exit matching runs in the dispatcher's transaction, then signal them."""
        for definition in self.runtime.definitions.values():
            spec = next(
                (s for s in definition.exit_on if spec_matches(s, event.name, event.properties)),
                None,
            )
            if spec is None:
                continue
            ended = await repo.exit_runs(
                session,
                reason=f"exit_on:{event.name}",
                contact_id=event.contact_id,
                journey_ids=[definition.id],
            )
            await signal_exit([wf for _, wf in ended], f"exit_on:{event.name}")


class JourneyWakeups:
    """Consumer: delivers an event to the contact's runs waiting for it."""

    name = "journey-wakeups"
    needs_savepoint = False

    def __init__(self, runtime: JourneyRuntime) -> None:
        self.runtime = runtime

    async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
        """Send the event to each matching waiter (idempotent per event and run)."""
        for waiter in await repo.waiters(session, event.contact_id, event.name):
            if not properties_match(waiter.match, event.properties):
                continue
            parked = await repo.flag_pending(session, waiter.state_id)
            try:
                await DBOS.send_async(
                    waiter.workflow_id,
                    {
                        "kind": "event",
                        "wait": waiter.wait,
                        "event": event_message(_event_of(event)),
                    },
                    TOPIC,
                    idempotency_key=f"event:{event.event_id}:{waiter.workflow_id}:{waiter.wait}",
                )
            except DBOSNonExistentWorkflowError:
                continue
            if parked:
                await DBOS.resume_workflows_async([waiter.workflow_id], queue_name=JOURNEYS.name)


class JourneyTriggers:
    """Consumer: starts the journeys an event triggers (guards, then the workflow)."""

    name = "journey-triggers"
    needs_savepoint = False

    def __init__(self, runtime: JourneyRuntime) -> None:
        self.runtime = runtime
        self.triggers = {spec_event(d.trigger) for d in runtime.definitions.values()}

    def wants(self, event: DispatchedEvent) -> bool:
        """Whether some journey's trigger names the event (else no savepoint)."""
        return event.name in self.triggers

    async def consume(self, event: DispatchedEvent, session: AsyncSession) -> None:
        """Enroll the contact in each journey whose trigger names this event."""
        for definition in self.runtime.definitions.values():
            if spec_event(definition.trigger) != event.name:
                continue
            started = monotonic_time.perf_counter()
            workflow_id = await self.runtime.enroll(
                session,
                definition,
                contact_id=event.contact_id,
                contact_key=event.contact_key,
                trigger=_event_of(event),
            )
            log.debug(
                "journey trigger",
                journey=definition.id,
                workflow_id=workflow_id,
                ms=round((monotonic_time.perf_counter() - started) * 1000, 2),
            )


def journey_consumers(
    runtime: JourneyRuntime,
) -> tuple[JourneyExits, JourneyWakeups, JourneyTriggers]:
    """The journey consumers in their fixed order: exits → wake-ups → triggers."""
    return (JourneyExits(runtime), JourneyWakeups(runtime), JourneyTriggers(runtime))


def _template_category(app: Hogsend, key: str) -> str | None:
    """The category template ``key`` declares (None for an unknown key: the mailer
    refuses it when the send is made)."""
    if app.templates is None:
        return None
    try:
        return app.templates.get(key).meta.category
    except TemplateNotFound:
        return None
