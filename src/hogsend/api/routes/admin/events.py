"""/v1/admin/events: browse the event log (GET only, scope ``admin:read``)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query

from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession
from hogsend.api.errors import problem_responses
from hogsend.api.routes.transactions import invalid_cursor
from hogsend.api.schemas.events import AdminEventQuery, EventOut, EventPage, event_out
from hogsend.core.pagination import InvalidCursor
from hogsend.db.repos import events
from hogsend.errors import NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: events"])


@router.get("/events", summary="List events", dependencies=[require_scope("admin:read")])
async def list_events(query: Annotated[AdminEventQuery, Query()], session: DbSession) -> EventPage:
    """Events newest `occurredAt` first, filtered by exact `event` name, `contactId` and
    the `from`..`to` range (inclusive); keyset-paged with `cursor`."""
    try:
        page = await events.list_events(
            session,
            event=query.event,
            contact_id=query.contact_id,
            since=query.from_,
            until=query.to,
            cursor=query.cursor,
            limit=query.limit,
        )
    except InvalidCursor as exc:
        raise invalid_cursor(exc) from None
    return EventPage(events=[event_out(e) for e in page.items], next_cursor=page.next_cursor)


@router.get(
    "/events/{id}",
    summary="Read an event",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def get_event(id: UUID, session: DbSession) -> EventOut:
    """One stored event. 404 if unknown (or erased)."""
    event = await events.get_event(session, id)
    if event is None:
        raise NotFound(f"event {id} does not exist")
    return event_out(event)
