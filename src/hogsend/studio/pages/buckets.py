"""Buckets: sizes and entries/exits per day, a bucket's readable criteria, members,
backfill and reconcile status, its enable switch, and a criteria preview.

The switch is a POST with the session's CSRF token, for admins only; it calls the
same repository function as ``PATCH /v1/admin/buckets/{id}`` and writes an audit row
(before and after) in the same transaction. The preview only reads.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from hogsend.core.conditions.codec import condition_from_dict
from hogsend.core.conditions.model import InvalidCondition
from hogsend.core.definitions import BucketDefinition
from hogsend.core.pagination import InvalidCursor
from hogsend.db.repos import bucket_activity, bucket_sweeps, reporting
from hogsend.db.repos import buckets as repo
from hogsend.studio.charts import bar_chart
from hogsend.studio.criteria_text import describe, duration
from hogsend.studio.error_pages import PageError
from hogsend.studio.rendering import render
from hogsend.studio.security import record_change, require_admin, require_viewer
from hogsend.studio.state import database, studio_of

DAYS = 30
PAGE_SIZE = 50
MAX_PREVIEW_CHARS = 20_000
_NOTICES = {
    "enabled": "The bucket is enabled: events and sweeps evaluate it again.",
    "disabled": "The bucket is disabled: nothing joins or leaves it until it is enabled.",
    "code": "The override is cleared: the bucket's `enabled` from the code applies.",
}


def _bucket(request: Request, bucket_id: str) -> BucketDefinition:
    for bucket in studio_of(request).app.buckets:
        if bucket.id == bucket_id:
            return bucket
    raise PageError(404, f"No bucket {bucket_id!r} is defined by the app.")


def _backfill(state: bucket_sweeps.BucketState | None, bucket: BucketDefinition) -> str:
    if bucket.criteria is None:
        return "manual bucket: members are added by hand"
    if state is None or state.backfill_status is None:
        return "not computed yet (the next sweep backfills it)"
    if state.backfill_status == "running":
        total = "?" if state.backfill_total is None else f"{state.backfill_total:,}"
        return f"running: {state.backfill_processed:,} of {total} contacts"
    return state.backfill_status


async def bucket_list(request: Request) -> Response:
    """Every bucket with its size, switch and backfill status, and entries/exits per day."""
    app = studio_of(request).app
    start = reporting.period_start(DAYS)
    async with database(request) as db:
        await require_viewer(request, db)
        overrides = await repo.enabled_overrides(db)
        counts = await repo.member_counts(db, [b.id for b in app.buckets])
        states = await bucket_sweeps.bucket_states(db)
        days = await bucket_activity.per_day(db, None, start=start, days=DAYS)
        totals = await bucket_activity.totals_since(db, start)
    rows = [
        {
            "bucket": b,
            "size": counts.get(b.id, 0),
            "enabled": overrides.get(b.id, b.enabled),
            "override": overrides.get(b.id),
            "backfill": _backfill(states.get(b.id), b),
            "entered": totals.get(b.id, (0, 0))[0],
            "left": totals.get(b.id, (0, 0))[1],
        }
        for b in app.buckets
    ]
    return render(
        request,
        "buckets.html",
        title="Buckets",
        current="buckets",
        rows=rows,
        days=DAYS,
        entered_chart=bar_chart(
            [(d.day, d.entered) for d in days], title="Entries per day", y_label="entered"
        ),
        left_chart=bar_chart(
            [(d.day, d.left) for d in days], title="Exits per day", y_label="left"
        ),
        notice=_NOTICES.get(request.query_params.get("notice", "")),
    )


async def bucket_page(request: Request) -> Response:
    """One bucket: criteria in words, switch, backfill/reconcile, chart, members, preview."""
    params = request.query_params
    status: Literal["active", "left"] = "left" if params.get("status") == "left" else "active"
    cursor = params.get("cursor") or None
    preview_text = params.get("criteria", "")
    async with database(request) as db:
        me = await require_viewer(request, db)
        bucket = _bucket(request, str(request.path_params["id"]))
        overrides = await repo.enabled_overrides(db)
        size = await repo.member_count(db, bucket.id)
        state = (await bucket_sweeps.bucket_states(db)).get(bucket.id)
        days = await bucket_activity.per_day(
            db, bucket.id, start=reporting.period_start(DAYS), days=DAYS
        )
        try:
            members = await repo.list_members(
                db, bucket.id, status=status, cursor=cursor, limit=PAGE_SIZE
            )
        except InvalidCursor:
            raise PageError(400, "That page link is no longer valid.") from None
        preview = await _preview(db, preview_text) if preview_text else None
    default_criteria = (
        "" if bucket.criteria is None else json.dumps(bucket.criteria.to_dict(), indent=2)
    )
    return render(
        request,
        "bucket.html",
        title=bucket.name,
        current="buckets",
        bucket=bucket,
        size=size,
        enabled=overrides.get(bucket.id, bucket.enabled),
        override=overrides.get(bucket.id),
        criteria=[] if bucket.criteria is None else describe(bucket.criteria),
        min_dwell=None if bucket.min_dwell is None else duration(bucket.min_dwell),
        max_dwell=None if bucket.max_dwell is None else duration(bucket.max_dwell),
        backfill=_backfill(state, bucket),
        reconciled_at=None if state is None else state.reconciled_at,
        entered_chart=bar_chart(
            [(d.day, d.entered) for d in days], title="Entries per day", y_label="entered"
        ),
        left_chart=bar_chart(
            [(d.day, d.left) for d in days], title="Exits per day", y_label="left"
        ),
        days=DAYS,
        members=members.items,
        next_cursor=members.next_cursor,
        status=status,
        preview_text=preview_text or default_criteria,
        preview=preview,
        can_change=me.user.is_admin,
        notice=_NOTICES.get(params.get("notice", "")),
    )


async def _preview(db: Any, raw: str) -> dict[str, Any]:
    """Count and sample the contacts a criteria (JSON) matches now, or say what is wrong."""
    if len(raw) > MAX_PREVIEW_CHARS:
        return {"error": f"The criteria is longer than {MAX_PREVIEW_CHARS:,} characters."}
    try:
        condition = condition_from_dict(json.loads(raw))
    except ValueError as exc:  # JSON errors and InvalidCondition alike
        where = ""
        if isinstance(exc, InvalidCondition) and exc.path:
            where = " at " + ".".join(str(p) for p in exc.path)
        reason = exc.reason if isinstance(exc, InvalidCondition) else str(exc)
        return {"error": f"Not a valid criteria{where}: {reason}"}
    count, sample = await repo.preview(db, condition, now=datetime.now(UTC), sample=10)
    return {"error": None, "count": count, "sample": sample, "lines": describe(condition)}


async def switch_bucket(request: Request) -> Response:
    """POST ``enabled`` = ``on`` / ``off`` / ``code`` (clear the override)."""
    async with database(request) as db:
        me, form = await require_admin(request, db)
        bucket = _bucket(request, str(request.path_params["id"]))
        choice = form.get("enabled")
        if choice not in ("on", "off", "code"):
            raise PageError(400, "Choose on, off or code.")
        value = None if choice == "code" else choice == "on"
        overrides = await repo.enabled_overrides(db)
        before = {
            "enabled": overrides.get(bucket.id, bucket.enabled),
            "override": overrides.get(bucket.id),
        }
        await repo.set_enabled(db, bucket.id, value, now=datetime.now(UTC))
        after = {"enabled": bucket.enabled if value is None else value, "override": value}
        await record_change(
            request,
            db,
            me,
            action="buckets.update",
            resource="buckets",
            resource_id=bucket.id,
            detail={"before": before, "after": after},
        )
        await db.commit()
    notice = "code" if value is None else "enabled" if value else "disabled"
    back = request.query_params.get("back")
    path = f"/buckets/{bucket.id}" if back == "bucket" else "/buckets"
    return RedirectResponse(studio_of(request).url(f"{path}?notice={notice}"), 303)
