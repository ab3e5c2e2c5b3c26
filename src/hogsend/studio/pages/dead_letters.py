"""The dead-letter queue: inspect failed work, retry it (really re-queued), or discard it."""

from __future__ import annotations

import uuid

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from hogsend.db.repos import dead_letter_decisions, dead_letters, outbox
from hogsend.errors import Conflict, NotFound
from hogsend.studio.error_pages import PageError
from hogsend.studio.rendering import render
from hogsend.studio.security import record_change, require_admin, require_viewer
from hogsend.studio.state import database, studio_of

PAGE_SIZE = 50
_NOTICES = {
    "retried": "The work is back in line: a worker will run it again shortly.",
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
    return render(
        request,
        "dlq_entry.html",
        title="Dead letter",
        current="dlq",
        entry=entry,
        payload={k: v for k, v in entry.payload.items() if k != "traceback"},
        traceback=entry.payload.get("traceback"),
        retryable=entry.source == outbox.DISPATCHER_SOURCE,
        can_change=me.user.is_admin and entry.status == "pending",
        notice=_NOTICES.get(request.query_params.get("notice", "")),
    )


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
                retried = await dead_letter_decisions.retry(db, entry_id)
                entry = retried.entry
                detail = {
                    "source": entry.source,
                    "sourceId": entry.source_id,
                    "outboxId": retried.outbox_id,
                }
            else:
                entry = await dead_letter_decisions.discard(db, entry_id)
                detail = {"source": entry.source, "sourceId": entry.source_id}
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
    notice = "retried" if verb == "retry" else "discarded"
    return RedirectResponse(studio_of(request).url(f"/dlq/{entry_id}?notice={notice}"), 303)
