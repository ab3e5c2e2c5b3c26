"""The worker: DBOS launched on hogsend's Postgres, queues declared, a heartbeat row.

A worker's life::

    start()  configure logs → launch DBOS (recovering this executor's pending workflows)
             → declare queues → close app registration → first heartbeat → heartbeat loop
             → the dead-worker takeover (hogsend.runtime.takeover) → the retention
             sweep (hogsend.runtime.retention)
             → the event dispatcher (hogsend.runtime.dispatcher) → the courier delivering
             handed-off sends (hogsend.runtime.courier) and the deferred-send sweep
             (hogsend.runtime.deferred) and the campaign scheduler
             (hogsend.runtime.campaigns), all only for an app with templates → the
             import scheduler → the alert evaluator (hogsend.runtime.alerts) → the
             bucket sweeper (hogsend.runtime.reconcile)
    stop()   stop the campaign scheduler, the sweep and the courier (sends in flight
             finish) → stop the dispatcher (rows in flight finish, the rest are
             released) → stop the heartbeat → DBOS stops dequeuing and drains
             running workflows for a few seconds → mark the heartbeat row stopped
             → release the database

``hogsend worker`` runs one with :meth:`Worker.run`, which stops on SIGTERM or SIGINT;
``hogsend dev`` calls :meth:`Worker.start` and :meth:`Worker.stop` itself around the
API server in the same process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend.app import Hogsend
from hogsend.channels.email import EmailProvider, build_provider
from hogsend.channels.mailer import Mailer
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import workers as worker_repo
from hogsend.errors import ConfigurationError
from hogsend.logs import configure_logging
from hogsend.runtime import queue_polls
from hogsend.runtime.alerts import AlertSweep
from hogsend.runtime.campaigns import CampaignScheduler
from hogsend.runtime.courier import Courier
from hogsend.runtime.dbos_setup import (
    Registration,
    cancel_stranded_workflows,
    destroy_dbos,
    launch_dbos,
)
from hogsend.runtime.deferred import DeferredSweep
from hogsend.runtime.dispatcher import Dispatcher, build_consumers
from hogsend.runtime.imports import ImportScheduler
from hogsend.runtime.journey_retries import RetryStarter
from hogsend.runtime.journeys import ExitSweep, JourneyRuntime, ParkWaker, journey_consumers
from hogsend.runtime.queues import declare_queues
from hogsend.runtime.reconcile import BucketSweeper
from hogsend.runtime.retention import RetentionSweep
from hogsend.runtime.stop_signals import install_stop_handlers, remove_stop_handlers
from hogsend.runtime.takeover import Takeover
from hogsend.settings import Settings

log = structlog.get_logger(__name__)


class Worker:
    """One worker process's durable-execution side.

    Args:
        app: the user's app; its registration closes when the worker starts.
        settings: settings with ``database_url`` set (the CLI resolves embedded Postgres).
        engine: an engine to share (``hogsend dev`` shares the API's); the worker makes
            and disposes its own when omitted.
        registrations: hooks run before DBOS launches, each registering workflows.
        drain_seconds: how long a graceful stop waits for running workflows.

    Raises:
        ConfigurationError: when ``settings.database_url`` is unset.
    """

    def __init__(
        self,
        app: Hogsend,
        settings: Settings,
        *,
        engine: AsyncEngine | None = None,
        registrations: Sequence[Registration] = (),
        drain_seconds: int = 5,
    ) -> None:
        if settings.database_url is None:
            raise ConfigurationError(
                "the worker needs a database: set HOGSEND_DATABASE_URL "
                "(hogsend dev starts an embedded Postgres for you)"
            )
        self.app = app
        self.settings = settings
        self.database_url = settings.database_url
        self.registrations = tuple(registrations)
        self.drain_seconds = drain_seconds
        self.queue_names: list[str] = []
        self._engine = engine
        self._owns_engine = engine is None
        self._started_at: datetime | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self.dispatcher: Dispatcher | None = None
        self.courier: Courier | None = None
        self._email_provider: EmailProvider | None = None
        self.deferred: DeferredSweep | None = None
        self.journeys: JourneyRuntime | None = None
        self.exit_sweep: ExitSweep | None = None
        self.park_waker: ParkWaker | None = None
        self.journey_retries: RetryStarter | None = None
        self.bucket_sweeper: BucketSweeper | None = None
        self.campaigns: CampaignScheduler | None = None
        self.imports: ImportScheduler | None = None
        self.alerts: AlertSweep | None = None
        self.takeover: Takeover | None = None
        self.retention: RetentionSweep | None = None
        self._stop_requested = asyncio.Event()
        self._running = False

    @property
    def running(self) -> bool:
        """Whether :meth:`start` completed and :meth:`stop` has not run yet."""
        return self._running

    @property
    def engine(self) -> AsyncEngine:
        """The engine for hogsend's tables (after :meth:`start`)."""
        if self._engine is None:
            raise RuntimeError("the worker is not started")
        return self._engine

    async def start(self) -> None:
        """Launch DBOS, declare queues, close registration and start heartbeating."""
        configure_logging(self.settings)
        if self._engine is None:
            # Connections kept open, overflow ones too: see make_async_engine.
            self._engine = make_async_engine(
                self.database_url, pool_size=self.settings.db_pool_size, keep_overflow=True
            )
        registrations = list(self.registrations)
        if self.app.journeys or any(b.reactions for b in self.app.buckets):
            # Before launch: recovered runs may send at once, so the mailer must exist.
            mailer = None
            if self.app.templates is not None:
                self._email_provider = build_provider(self.settings, self.engine)
                mailer = Mailer(self.app, self.settings, self.engine, self._email_provider)
            self.journeys = JourneyRuntime(
                self.app,
                self.engine,
                mailer=mailer,
                park_after=timedelta(seconds=self.settings.journey_park_after_seconds),
            )
            registrations.append(self.journeys.register)
        self._started_at = datetime.now(UTC)
        # Beat before DBOS recovers this executor's workflows: a survivor taking this id
        # over holds the row's lock, so the beat waits for its commit (the resumed
        # workflows are then no longer PENDING here) or stops it from starting.
        await self._beat()
        # DBOS.launch blocks for a moment (system schema migrations, recovery lookup);
        # it must run on this thread so that DBOS adopts this event loop.
        launch_dbos(self.settings, self.database_url, registrations=registrations)
        # The reads of every queue poll from statements written once (queue_polls).
        queue_polls.install()
        self.queue_names = await declare_queues()
        self.app.launch()
        await self._beat()
        self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="hogsend-heartbeat")
        # Resumes the in-flight workflows of workers that died for good (stale heartbeat).
        self.takeover = Takeover(
            self.engine,
            worker_id=self.settings.worker_id,
            application_version=self.settings.application_version,
            stale_after=timedelta(seconds=self.settings.worker_stale_seconds),
            every=self.settings.heartbeat_seconds,
        )
        self.takeover.start()
        # Deletes webhook receipts and finished DBOS workflows past their retention.
        self.retention = RetentionSweep.from_settings(self.settings, self.engine)
        self.retention.start()
        self.dispatcher = Dispatcher(
            self.engine,
            self.settings,
            build_consumers(
                self.app,
                journeys=journey_consumers(self.journeys) if self.journeys is not None else (),
            ),
            database_url=self.database_url,
        )
        await self.dispatcher.start()
        if self.journeys is not None:
            self.exit_sweep = ExitSweep(self.engine)
            self.exit_sweep.start()
            self.park_waker = ParkWaker(self.engine)
            self.park_waker.start()
            self.journey_retries = RetryStarter(self.journeys)
            self.journey_retries.start()
        self.imports = ImportScheduler(self.app, self.settings, self.engine)
        await self.imports.start()
        if self.app.templates is not None:
            if self._email_provider is None:
                self._email_provider = build_provider(self.settings, self.engine)
            self.courier = Courier(
                Mailer(self.app, self.settings, self.engine, self._email_provider),
                poll_seconds=self.settings.email_queue_poll_seconds,
                concurrency=self.settings.email_queue_concurrency,
            )
            await self.courier.start()
            self.deferred = DeferredSweep.from_settings(self.app, self.settings, self.engine)
            await self.deferred.start()
            self.campaigns = CampaignScheduler(
                self.app,
                self.settings,
                self.engine,
                Mailer(self.app, self.settings, self.engine, self._email_provider),
            )
            await self.campaigns.start()
        # Alert rules are evaluated by one worker at a time (an advisory lock per round).
        self.alerts = AlertSweep.for_app(
            self.app,
            self.settings,
            self.engine,
            Mailer(self.app, self.settings, self.engine, self._email_provider)
            if self._email_provider is not None
            else None,
        )
        await self.alerts.start()
        if any(b.criteria is not None for b in self.app.buckets):
            # Backfills new or changed buckets at once, then reconciles every interval.
            self.bucket_sweeper = BucketSweeper.from_settings(self.app, self.settings, self.engine)
            await self.bucket_sweeper.start()
        self._running = True
        log.info(
            "worker started",
            worker_id=self.settings.worker_id,
            application_version=self.settings.application_version,
            queues=self.queue_names,
        )

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop gracefully (safe to call from a signal handler)."""
        self._stop_requested.set()

    async def stop(self) -> None:
        """Stop taking work, drain briefly, mark the heartbeat row stopped, release the DB."""
        if not self._running:
            return
        self._running = False
        log.info("worker stopping", worker_id=self.settings.worker_id)
        if self.bucket_sweeper is not None:
            await self.bucket_sweeper.stop(timeout=self.drain_seconds)
            self.bucket_sweeper = None
        if self.alerts is not None:
            await self.alerts.stop()
            self.alerts = None
        if self.campaigns is not None:
            await self.campaigns.stop()
            self.campaigns = None
        if self.imports is not None:
            await self.imports.stop()
            self.imports = None
        if self.deferred is not None:
            await self.deferred.stop(timeout=self.drain_seconds)
            self.deferred = None
        if self.courier is not None:
            await self.courier.stop(timeout=self.drain_seconds)
            self.courier = None
        if self.exit_sweep is not None:
            await self.exit_sweep.stop()
            self.exit_sweep = None
        if self.park_waker is not None:
            await self.park_waker.stop()
            self.park_waker = None
        if self.journey_retries is not None:
            await self.journey_retries.stop()
            self.journey_retries = None
        if self.dispatcher is not None:
            # Before DBOS goes away: consumers start and signal workflows.
            await self.dispatcher.stop(timeout=self.drain_seconds)
            self.dispatcher = None
        if self.takeover is not None:
            await self.takeover.stop()
            self.takeover = None
        if self.retention is not None:
            await self.retention.stop()
            self.retention = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        loop = asyncio.get_running_loop()
        # DBOS waits for running workflows with time.sleep, and those workflows run on
        # this loop: destroy on a separate thread so the loop keeps serving them.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hogsend-stop") as pool:
            await loop.run_in_executor(pool, lambda: destroy_dbos(drain_seconds=self.drain_seconds))
        stranded = await cancel_stranded_workflows()
        if stranded:
            log.info("worker left workflows for recovery", workflows=stranded)
        # DBOS made its (now shut down) executor this loop's default; give it a live one.
        loop.set_default_executor(ThreadPoolExecutor(thread_name_prefix="asyncio"))
        if self.journeys is not None:
            self.journeys.close()
        # Only now: the workflows DBOS drained above (a campaign's batch, a journey's
        # send) were still sending through the provider.
        if self._email_provider is not None:
            await self._email_provider.aclose()
            self._email_provider = None
        try:
            async with make_sessionmaker(self.engine)() as session, session.begin():
                await worker_repo.mark_stopped(session, self.settings.worker_id)
        except Exception:
            log.exception("could not mark the worker stopped")
        if self._owns_engine and self._engine is not None:
            await self._engine.dispose()
            self._engine = None
        log.info("worker stopped", worker_id=self.settings.worker_id)

    async def run(self, *, handle_signals: bool = True) -> None:
        """Start, wait for a stop request (SIGTERM/SIGINT by default), then stop."""
        if handle_signals:
            install_stop_handlers(self.request_stop)
        try:
            await self.start()
            await self._stop_requested.wait()
        finally:
            await self.stop()
            if handle_signals:
                remove_stop_handlers()

    # -- heartbeat ----------------------------------------------------------------------

    async def _beat(self) -> None:
        assert self._started_at is not None
        async with make_sessionmaker(self.engine)() as session, session.begin():
            await worker_repo.beat(
                session,
                worker_id=self.settings.worker_id,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                application_version=self.settings.application_version,
                started_at=self._started_at,
                info={"queues": self.queue_names},
            )

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_seconds)
            try:
                await self._beat()
            except Exception:
                # A database blip must not kill the worker; a long one makes it look
                # dead to /v1/health, which is the truth.
                log.warning("heartbeat failed", exc_info=True)
