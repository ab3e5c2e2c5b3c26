"""The dead-letter queue: inspect failed work, retry it (really re-queued), or discard it."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from hogsend.core.reactions import all_journeys
from hogsend.db.repos import dead_letter_decisions, dead_letters, journeys, outbox
from hogsend.db.repos.dead_letters import DeadLetterEntry
from hogsend.errors import Conflict, NotFound
from hogsend.studio.error_pages import PageError
from hogsend.studio.rendering import render
from hogsend.studio.security import record_change, require_admin, require_viewer
from hogsend.studio.state import database, studio_of

PAGE_SIZE = 50
_NOTICES = {
    "retried": "The work is back in line: a worker will run it again shortly.",
    "retried-journey": (
        "A new run of the journey starts from the beginning under the current code; "
        "sends the failed run already made are not repeated."
    ),
    "discarded": "The entry is discarded.",
}


async def dead_letter_list(request: Request) -> Response:
    """Entries newest first; pending ones by default (``?status=`` any, or all)."""
    params = request.query_params
    status = params.get("status", "pending")
    if status not in (*dead_letters.STATUSES, "all"):
        status = "pending"
    source = params.get("source", "").strip()
    try:
        page = max(1, int(params.get("page", "1")))
    except ValueError:
        page = 1
    async with database(request) as db:
        await require_viewer(request, db)
        entries, total = await dead_letters.list_entries(
            db,
            status=None if status == "all" else status,
            source=source or None,
            limit=PAGE_SIZE,
            offset=(page - 1) * PAGE_SIZE,
        )
    return render(
        request,
        "dlq.html",
        title="Dead letters",
        current="dlq",
        entries=entries,
        total=total,
        status=status,
        statuses=(*dead_letters.STATUSES, "all"),
        source=source,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        notice=_NOTICES.get(params.get("notice", "")),
    )


def _entry_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["id"])
    except ValueError:
        raise PageError(404, "That is not a dead-letter entry id.") from None


async def dead_letter_page(request: Request) -> Response:
    """One entry: its payload, error and attempts, and (for admins) its decisions."""
    async with database(request) as db:
        me = await require_viewer(request, db)
        entry_id = _entry_id(request)
        entry = await dead_letters.get(db, entry_id)
        if entry is None:
            raise PageError(404, f"Dead-letter entry {entry_id} does not exist.")
        retry_run = await _retry_run(db, entry)
    return render(
        request,
        "dlq_entry.html",
        title="Dead letter",
        current="dlq",
        entry=entry,
        payload={k: v for k, v in entry.payload.items() if k != "traceback"},
        traceback=entry.payload.get("traceback"),
        retryable=entry.source in (outbox.DISPATCHER_SOURCE, journeys.DLQ_SOURCE),
        journey=entry.source == journeys.DLQ_SOURCE,
        retry_run=retry_run,
        can_change=me.user.is_admin and entry.status == "pending",
        notice=_NOTICES.get(request.query_params.get("notice", "")),
    )


async def _retry_run(db: AsyncSession, entry: DeadLetterEntry) -> str | None:
    """The run a retried ``journey`` entry started (the failed run points at it)."""
    if entry.source != journeys.DLQ_SOURCE or entry.status != "retried":
        return None
    try:
        failed = await journeys.get_run(db, uuid.UUID(str(entry.payload.get("runId"))))
    except ValueError:
        return None
    retried_by = None if failed is None else failed.context.get("retriedBy")
    return None if retried_by is None else str(retried_by)


async def decide(request: Request) -> Response:
    """POST retry or discard, through the functions ``/v1/admin/dlq/{id}/...`` uses."""
    async with database(request) as db:
        me, _ = await require_admin(request, db)
        entry_id = _entry_id(request)
        verb = str(request.path_params["decision"])
        if verb not in ("retry", "discard"):
            raise PageError(404, "A dead-letter entry can be retried or discarded.")
        try:
            if verb == "retry":
                app = studio_of(request).app
                retried = await dead_letter_decisions.retry(
                    db,
                    entry_id,
                    journey_ids={j.id for j in all_journeys(app.journeys, app.buckets)},
                )
                entry = retried.entry
                detail = retried.detail()
            else:
                entry = await dead_letter_decisions.discard(db, entry_id)
                detail = {
                    "source": entry.source,
                    "sourceId": entry.source_id,
                    "before": {"status": entry.status},
                    "after": {"status": "discarded"},
                }
        except NotFound as exc:
            raise PageError(404, str(exc)) from None
        except Conflict as exc:
            raise PageError(409, str(exc)) from None
        await record_change(
            request,
            db,
            me,
            action=f"dlq.{verb}",
            resource="dlq",
            resource_id=str(entry_id),
            detail=detail,
        )
        await db.commit()
    notice = "discarded"
    if verb == "retry":
        notice = "retried-journey" if entry.source == journeys.DLQ_SOURCE else "retried"
    return RedirectResponse(studio_of(request).url(f"/dlq/{entry_id}?notice={notice}"), 303)
