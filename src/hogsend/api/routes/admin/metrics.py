"""/v1/admin/metrics/*: operational numbers (admin:read)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, settings_of
from hogsend.api.schemas.metrics import DispatcherMetrics
from hogsend.db.repos import outbox

router = APIRouter(prefix="/v1/admin", tags=["admin: metrics"])


@router.get(
    "/metrics/dispatcher",
    summary="Event dispatcher backlog and throughput",
    dependencies=[require_scope("admin:read")],
)
async def dispatcher_metrics(request: Request, session: DbSession) -> DispatcherMetrics:
    """Pending, leased, retrying and dead events, lag, and recent throughput."""
    stats = await outbox.stats(session)
    threshold = settings_of(request).dispatcher_lag_threshold_seconds
    return DispatcherMetrics(
        pending=stats.pending,
        leased=stats.leased,
        retrying=stats.retrying,
        dead=stats.dead,
        oldest_pending_at=stats.oldest_pending_at,
        lag_seconds=stats.lag_seconds,
        lag_threshold_seconds=threshold,
        lagging=stats.lag_seconds > threshold,
        processed_last_minute=stats.processed_last_minute,
        processed_last_hour=stats.processed_last_hour,
    )
