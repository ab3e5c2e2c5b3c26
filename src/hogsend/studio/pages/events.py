"""Events: the newest events with filters, and a live tail (htmx polls the rows)."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import Response

from hogsend.core.contact import Event
from hogsend.core.identity import IdentityError
from hogsend.core.pagination import InvalidCursor, Page
from hogsend.db.repos import contacts, events
from hogsend.studio.error_pages import PageError
from hogsend.studio.rendering import render
from hogsend.studio.security import require_viewer
from hogsend.studio.state import database

PAGE_SIZE = 50
TAIL_SECONDS = 3


async def _contact_filter(db: AsyncSession, value: str) -> uuid.UUID | None:
    """A contact id from what was typed: an id, an email or a user id."""
    try:
        return uuid.UUID(value)
    except ValueError:
        pass
    try:
        found = await contacts.find_contacts(
            db, email=value if "@" in value else None, user_id=None if "@" in value else value
        )
    except IdentityError as exc:
        raise PageError(400, f"The contact filter {exc.field} {exc.reason}.") from None
    if not found:
        raise PageError(404, f"No live contact has the email or user id {value!r}.")
    return found[0].id


async def _page(request: Request) -> tuple[dict[str, str], Page[Event], str | None]:
    params = request.query_params
    filters = {"event": params.get("event", "").strip(), "contact": params.get("contact", "")}
    filters["contact"] = filters["contact"].strip()
    cursor = params.get("cursor") or None
    async with database(request) as db:
        await require_viewer(request, db)
        contact_id = await _contact_filter(db, filters["contact"]) if filters["contact"] else None
        try:
            page = await events.list_events(
                db,
                event=filters["event"] or None,
                contact_id=contact_id,
                cursor=cursor,
                limit=PAGE_SIZE,
            )
        except InvalidCursor as exc:
            raise PageError(400, str(exc)) from None
    return filters, page, cursor


async def event_list(request: Request) -> Response:
    """Newest events first; on the first page the rows refresh every few seconds."""
    filters, page, cursor = await _page(request)
    return render(
        request,
        "events.html",
        title="Events",
        current="events",
        filters=filters,
        page=page,
        paged=cursor is not None,
        tail_seconds=TAIL_SECONDS,
    )


async def event_rows(request: Request) -> Response:
    """Just the table rows of the first page: what the live tail swaps in."""
    filters, page, _ = await _page(request)
    return render(request, "event_rows.html", title="Events", filters=filters, page=page)
