"""Bodies of /v1/health and /v1/ready."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from hogsend.api.schemas.common import ApiModel

HealthStatus = Literal["healthy", "degraded", "migration_pending"]


class DatabaseHealth(ApiModel):
    """Whether Postgres answered, and how fast."""

    status: Literal["up", "down"]
    latency_ms: float | None = Field(description="Round trip of `SELECT 1`; null when down.")
    error: str | None = Field(default=None, description="Why it is down (exception type).")


class MigrationHealth(ApiModel):
    """The database schema against the migrations this build ships."""

    applied: str | None = Field(description="Revision the database is at; null if none.")
    required: str | None = Field(description="Revision this build needs (the head).")
    pending: list[str] = Field(description="Revisions still to apply, oldest first.")
    in_sync: bool


class WorkerHealth(ApiModel):
    """A worker, as its last heartbeat describes it."""

    worker_id: str
    hostname: str
    pid: int
    application_version: str
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    alive: bool = Field(description="Seen within worker_stale_seconds and not stopped.")


class DispatcherHealth(ApiModel):
    """The event outbox: how far the dispatchers are behind."""

    pending: int = Field(description="Events not processed yet (including those retrying).")
    lag_seconds: float = Field(description="Age of the oldest pending event; 0 when none.")
    dead: int = Field(description="Events that gave up and wait in the dead-letter queue.")


class HealthReport(ApiModel):
    """Health of the API and what it depends on."""

    status: HealthStatus = Field(
        description="`migration_pending` if the schema is behind or ahead of this build, "
        "`degraded` if the database is unreachable or the dispatcher lags by more than "
        "HOGSEND_DISPATCHER_LAG_THRESHOLD_SECONDS, else `healthy`. Workers are reported "
        "but never change the status by themselves: the API keeps accepting work while they "
        "are down (their backlog shows up as dispatcher lag)."
    )
    version: str
    timestamp: datetime
    uptime_seconds: float
    database: DatabaseHealth
    migrations: MigrationHealth | None = Field(
        description="Null when the database could not be asked."
    )
    workers: list[WorkerHealth]
    workers_alive: int
    dispatcher: DispatcherHealth | None = Field(
        description="Null when the database could not be asked."
    )


class Readiness(ApiModel):
    """Whether this process should receive traffic."""

    ready: bool
    database: Literal["up", "down"]
    migrations_in_sync: bool
