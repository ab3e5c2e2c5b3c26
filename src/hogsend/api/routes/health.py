"""GET /v1/health and GET /v1/ready: open, for load balancers and operators."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from hogsend import __version__
from hogsend.api.deps import engine_of, sessionmaker_of, settings_of
from hogsend.api.schemas.health import (
    DatabaseHealth,
    DispatcherHealth,
    HealthReport,
    MigrationHealth,
    Readiness,
    WorkerHealth,
)
from hogsend.db.migrate import status_of
from hogsend.db.repos import outbox
from hogsend.db.repos.workers import list_workers

router = APIRouter(tags=["health"])

PROBE_TIMEOUT_SECONDS = 3.0
"""A database that has not answered by then counts as down (health must not hang)."""


@dataclass(frozen=True, slots=True)
class _Probe:
    database: DatabaseHealth
    migrations: MigrationHealth | None


async def _probe(request: Request) -> _Probe:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            async with engine_of(request).connect() as conn:
                started = time.perf_counter()
                await conn.execute(text("SELECT 1"))
                latency = (time.perf_counter() - started) * 1000
                schema = await conn.run_sync(status_of)
    except Exception as exc:  # any failure to reach or query Postgres means "down"
        return _Probe(
            database=DatabaseHealth(status="down", latency_ms=None, error=type(exc).__name__),
            migrations=None,
        )
    return _Probe(
        database=DatabaseHealth(status="up", latency_ms=round(latency, 3)),
        migrations=MigrationHealth(
            applied=schema.applied,
            required=schema.required,
            pending=schema.pending,
            in_sync=schema.in_sync,
        ),
    )


async def _workers(request: Request) -> list[WorkerHealth]:
    stale_after = timedelta(seconds=settings_of(request).worker_stale_seconds)
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            async with sessionmaker_of(request)() as session:
                seen = await list_workers(session, stale_after=stale_after)
    except Exception:  # e.g. the heartbeat table does not exist yet (migration pending)
        return []
    return [
        WorkerHealth(
            worker_id=w.worker_id,
            hostname=w.hostname,
            pid=w.pid,
            application_version=w.application_version,
            started_at=w.started_at,
            last_seen_at=w.last_seen_at,
            stopped_at=w.stopped_at,
            alive=w.alive,
        )
        for w in seen
    ]


async def _dispatcher(request: Request) -> DispatcherHealth | None:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            async with sessionmaker_of(request)() as session:
                lag = await outbox.outbox_lag(session)
                dead = await outbox.dead_count(session)
    except Exception:  # e.g. the outbox does not exist yet (migration pending)
        return None
    return DispatcherHealth(
        pending=lag.pending, lag_seconds=lag.oldest_pending_age_seconds, dead=dead
    )


@router.get(
    "/v1/health",
    summary="Health of the API, its database, migrations and workers",
    responses={503: {"model": HealthReport, "description": "Degraded or migration pending"}},
)
async def health(request: Request, response: Response) -> HealthReport:
    """200 when healthy; 503 with the same body when degraded or a migration is pending."""
    probe = await _probe(request)
    up = probe.database.status == "up"
    workers = await _workers(request) if up else []
    dispatcher = await _dispatcher(request) if up else None
    lag_limit = settings_of(request).dispatcher_lag_threshold_seconds
    if probe.migrations is not None and not probe.migrations.in_sync:
        status = "migration_pending"
    elif not up or (dispatcher is not None and dispatcher.lag_seconds > lag_limit):
        status = "degraded"
    else:
        status = "healthy"
    response.status_code = 200 if status == "healthy" else 503
    return HealthReport(
        status=status,
        version=__version__,
        timestamp=datetime.now(UTC),
        uptime_seconds=round(time.monotonic() - request.app.state.started_at, 3),
        database=probe.database,
        migrations=probe.migrations,
        workers=workers,
        workers_alive=sum(1 for w in workers if w.alive),
        dispatcher=dispatcher,
    )


@router.get(
    "/v1/ready",
    summary="Whether this process should receive traffic",
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
async def ready(request: Request, response: Response) -> Readiness:
    """200 when the database answers and its schema matches this build, else 503."""
    probe = await _probe(request)
    in_sync = probe.migrations is not None and probe.migrations.in_sync
    is_ready = probe.database.status == "up" and in_sync
    response.status_code = 200 if is_ready else 503
    return Readiness(ready=is_ready, database=probe.database.status, migrations_in_sync=in_sync)
