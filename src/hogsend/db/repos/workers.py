"""Worker heartbeats: who is alive, and since when."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.tables.operations import WorkerHeartbeat


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerSeen:
    """A worker as its last heartbeat describes it."""

    worker_id: str
    hostname: str
    pid: int
    application_version: str
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    alive: bool


async def beat(
    session: AsyncSession,
    *,
    worker_id: str,
    hostname: str,
    pid: int,
    application_version: str,
    started_at: datetime,
    info: dict[str, Any] | None = None,
) -> None:
    """Insert or refresh this worker's heartbeat row (clearing any stopped mark)."""
    now = func.now()
    stmt = insert(WorkerHeartbeat).values(
        worker_id=worker_id,
        hostname=hostname,
        pid=pid,
        application_version=application_version,
        started_at=started_at,
        last_seen_at=now,
        stopped_at=None,
        info=info or {},
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=[WorkerHeartbeat.worker_id],
        set_={
            "hostname": stmt.excluded.hostname,
            "pid": stmt.excluded.pid,
            "application_version": stmt.excluded.application_version,
            "started_at": stmt.excluded.started_at,
            "last_seen_at": now,
            "stopped_at": None,
            "info": stmt.excluded.info,
        },
    )
    await session.execute(stmt)


async def mark_stopped(session: AsyncSession, worker_id: str) -> None:
    """Record a clean shutdown so the worker is not mistaken for a crashed one."""
    await session.execute(
        update(WorkerHeartbeat)
        .where(WorkerHeartbeat.worker_id == worker_id)
        .values(stopped_at=func.now(), last_seen_at=func.now())
    )


async def list_workers(session: AsyncSession, *, stale_after: timedelta) -> list[WorkerSeen]:
    """Every known worker, newest heartbeat first, with ``alive`` judged by the database clock."""
    cutoff = func.now() - stale_after
    alive = (WorkerHeartbeat.stopped_at.is_(None)) & (WorkerHeartbeat.last_seen_at >= cutoff)
    rows = await session.execute(
        select(WorkerHeartbeat, alive.label("alive")).order_by(WorkerHeartbeat.last_seen_at.desc())
    )
    return [
        WorkerSeen(
            worker_id=hb.worker_id,
            hostname=hb.hostname,
            pid=hb.pid,
            application_version=hb.application_version,
            started_at=hb.started_at,
            last_seen_at=hb.last_seen_at,
            stopped_at=hb.stopped_at,
            alive=bool(is_alive),
        )
        for hb, is_alive in rows.all()
    ]


# -- takeover of dead workers ---------------------------------------------------------------

TAKEN_OVER_AT = "takenOverAt"
"""The ``info`` key a survivor sets on a dead worker's row; the next beat clears it."""


async def claim_dead_worker(
    session: AsyncSession,
    *,
    me: str,
    application_version: str,
    stale_after: timedelta,
) -> str | None:
    """Lock one dead worker of this version not yet taken over; its id, or None.

    Dead: no heartbeat for ``stale_after`` (a clean stop also counts once that long has
    passed, so a worker scaled away does not strand its leftovers). The row stays locked
    (``FOR UPDATE SKIP LOCKED``) until the transaction ends, so of several survivors
    exactly one takes a given worker over; :func:`mark_taken_over` then keeps it from
    being claimed again until it beats anew.
    """
    claimed: str | None = await session.scalar(
        select(WorkerHeartbeat.worker_id)
        .where(
            WorkerHeartbeat.worker_id != me,
            WorkerHeartbeat.application_version == application_version,
            WorkerHeartbeat.last_seen_at < func.now() - stale_after,
            ~WorkerHeartbeat.info.has_key(TAKEN_OVER_AT),
        )
        .order_by(WorkerHeartbeat.last_seen_at)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    return claimed


async def mark_taken_over(
    session: AsyncSession, worker_id: str, *, by: str, workflows: int
) -> None:
    """Record on the dead worker's row who took its workflows over, and how many."""
    await session.execute(
        update(WorkerHeartbeat)
        .where(WorkerHeartbeat.worker_id == worker_id)
        .values(
            info=WorkerHeartbeat.info.op("||")(
                func.jsonb_build_object(
                    TAKEN_OVER_AT, func.now(), "takenOverBy", by, "workflowsTakenOver", workflows
                )
            )
        )
    )
