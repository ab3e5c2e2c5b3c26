"""POST /v1/admin/buckets/{id}/backfill: ask the workers to re-compute a bucket (admin:write)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from hogsend.api.audit import AdminChange, audited
from hogsend.api.deps import hogsend_of
from hogsend.api.errors import problem_responses
from hogsend.api.schemas.bucket_backfill import BackfillRequested
from hogsend.db.repos import bucket_sweeps
from hogsend.errors import Conflict, NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: buckets"])


@router.post(
    "/buckets/{id}/backfill",
    summary="Backfill a bucket",
    status_code=202,
    responses=problem_responses(404, 409),
)
async def request_bucket_backfill(
    id: str,
    request: Request,
    change: AdminChange = audited("admin:write", resource="buckets", action="buckets.backfill"),
) -> BackfillRequested:
    """Re-compute the bucket's membership from scratch, silently (no transition events).

    Marks the bucket ``pending``; the next reconcile sweep of a worker (every
    ``HOGSEND_BUCKET_RECONCILE_SECONDS``) runs it in chunks, and the bucket's backfill
    progress shows in ``hogsend buckets list``. A run already in progress continues.
    404 for an unknown bucket; 409 for a manual bucket (nothing to compute) or a
    disabled one (the sweep skips it).
    """
    bucket = next((b for b in hogsend_of(request).buckets if b.id == id), None)
    if bucket is None:
        raise NotFound(f"bucket {id!r} does not exist")
    if bucket.criteria is None:
        raise Conflict(f"bucket {id!r} is manual: its members are added by hand")
    states = await bucket_sweeps.bucket_states(change.session)
    if not bucket_sweeps.is_enabled(bucket, states.get(id)):
        raise Conflict(f"bucket {id!r} is disabled: enable it first")
    await bucket_sweeps.request_backfill(change.session, id)
    state = (await bucket_sweeps.bucket_states(change.session))[id]
    status = "running" if state.backfill_status == "running" else "pending"
    previous = states.get(id)
    change.detail = {
        "status": status,
        "before": {"backfill": previous.backfill_status if previous is not None else None},
        "after": {"backfill": status},
    }
    running = status == "running"
    return BackfillRequested(
        bucket_id=id,
        status=status,
        processed=state.backfill_processed if running else 0,
        total=state.backfill_total if running else None,
    )
