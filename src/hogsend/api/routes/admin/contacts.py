"""/v1/admin/contacts: list and search contacts, read one in full, page its timeline.

All GET, scope ``admin:read``.
"""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query
from pydantic.alias_generators import to_camel

from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession
from hogsend.api.errors import problem_responses
from hogsend.api.routes.transactions import invalid_cursor
from hogsend.api.schemas.contacts import (
    AdminContactDetail,
    AdminContactPage,
    AdminContactQuery,
    AliasOut,
    ListSubscriptionOut,
    SuppressionOut,
    TimelineEntryOut,
    TimelinePage,
    admin_contact_out,
)
from hogsend.api.schemas.events import CursorQuery
from hogsend.core.contact import Contact
from hogsend.core.pagination import InvalidCursor
from hogsend.db.repos import contacts
from hogsend.errors import NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: contacts"])


async def _live(session: DbSession, id: UUID) -> Contact:
    contact = await contacts.get_contact(session, id)
    if contact is None:
        raise NotFound(f"contact {id} does not exist (or was deleted or merged)")
    return contact


@router.get(
    "/contacts",
    summary="List and search contacts",
    dependencies=[require_scope("admin:read")],
)
async def list_contacts(
    query: Annotated[AdminContactQuery, Query()], session: DbSession
) -> AdminContactPage:
    """Live contacts, newest first; `search` matches part of an email, userId or
    anonymousId (`%` and `_` are literal), or a whole contact id."""
    try:
        page = await contacts.list_contacts(
            session, search=query.search, cursor=query.cursor, limit=query.limit
        )
    except InvalidCursor as exc:
        raise invalid_cursor(exc) from None
    return AdminContactPage(
        contacts=[admin_contact_out(c) for c in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/contacts/{id}",
    summary="Read a contact in full",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def get_contact(id: UUID, session: DbSession) -> AdminContactDetail:
    """The contact with the keys it answers to through aliases, its list choices, its
    global unsubscribe and its address's suppression state. 404 if not live."""
    contact = await _live(session, id)
    details = await contacts.contact_details(session, contact)
    suppression = details.suppression
    return AdminContactDetail(
        contact=admin_contact_out(contact),
        aliases=[
            AliasOut(
                kind=a.kind,
                value=a.value,
                reason=a.reason,
                from_contact_id=a.from_contact_id,
                created_at=a.created_at,
            )
            for a in details.aliases
        ],
        lists=[
            ListSubscriptionOut(
                list_id=s.list_id,
                subscribed=s.subscribed,
                source=s.source,
                subscribed_at=s.subscribed_at,
                unsubscribed_at=s.unsubscribed_at,
                updated_at=s.updated_at,
            )
            for s in details.lists
        ],
        unsubscribed_all=details.unsubscribed_all,
        unsubscribed_at=details.unsubscribed_at,
        suppression=None
        if suppression is None
        else SuppressionOut(
            suppressed=suppression.suppressed,
            reason=suppression.reason,
            suppressed_at=suppression.suppressed_at,
            bounce_count=suppression.bounce_count,
            complaint_count=suppression.complaint_count,
            last_bounce_at=suppression.last_bounce_at,
            last_complaint_at=suppression.last_complaint_at,
        ),
    )


def _camel_keys(data: Any) -> dict[str, Any]:
    return {to_camel(key): value for key, value in dict(data).items()}


@router.get(
    "/contacts/{id}/timeline",
    summary="Page a contact's timeline",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def contact_timeline(
    id: UUID, query: Annotated[CursorQuery, Query()], session: DbSession
) -> TimelinePage:
    """Everything that happened to the contact, newest first: events, bucket entries and
    exits, journey runs and their steps, and every send attempt."""
    contact = await _live(session, id)
    try:
        page = await contacts.timeline(session, contact.id, limit=query.limit, cursor=query.cursor)
    except InvalidCursor as exc:
        raise invalid_cursor(exc) from None
    return TimelinePage(
        entries=[
            TimelineEntryOut(kind=e.kind, at=e.at, id=e.id, data=_camel_keys(e.data))
            for e in page.items
        ],
        next_cursor=page.next_cursor,
    )
