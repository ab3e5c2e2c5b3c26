"""The audit log: every admin mutation, from the API or from Studio, with filters."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from starlette.requests import Request
from starlette.responses import Response

from hogsend.db.repos import audit
from hogsend.studio.error_pages import PageError
from hogsend.studio.rendering import render
from hogsend.studio.security import require_viewer
from hogsend.studio.state import database

PAGE_SIZE = 50
_FILTERS = ("actor", "action", "resource", "resource_id", "since", "until")


def _day(value: str, field: str) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise PageError(400, f"The {field} filter must be a date like 2030-01-31.") from None


async def audit_list(request: Request) -> Response:
    """Entries newest first, filtered by actor, action, resource (and id) and days."""
    params = request.query_params
    filters = {name: params.get(name, "").strip() for name in _FILTERS}
    try:
        page = max(1, int(params.get("page", "1")))
    except ValueError:
        page = 1
    since_day = _day(filters["since"], "since")
    until_day = _day(filters["until"], "until")
    since = datetime.combine(since_day, time.min, tzinfo=UTC) if since_day else None
    # "until" is a whole day, inclusive: everything before the next midnight.
    until = (
        datetime.combine(until_day + timedelta(days=1), time.min, tzinfo=UTC)
        - timedelta(microseconds=1)
        if until_day
        else None
    )
    async with database(request) as db:
        await require_viewer(request, db)
        entries, total = await audit.list_entries(
            db,
            actor=filters["actor"] or None,
            action=filters["action"] or None,
            resource=filters["resource"] or None,
            resource_id=filters["resource_id"] or None,
            since=since,
            until=until,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
    return render(
        request,
        "audit.html",
        title="Audit log",
        current="audit",
        filters=filters,
        entries=entries,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
    )
