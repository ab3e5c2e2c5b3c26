"""/v1/contacts: upsert, find, read, delete or erase contacts, and page their events.

Writes need the ``ingest`` scope, reads the ``read`` scope.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession
from hogsend.api.errors import problem_responses
from hogsend.api.routes.events import identity_of, unknown_lists
from hogsend.api.routes.transactions import in_transaction, invalid_cursor, invalid_field
from hogsend.api.schemas.contacts import (
    ContactDelete,
    ContactOut,
    ContactsDeleted,
    ContactUpsert,
    ContactUpserted,
    FindContactsQuery,
    FoundContacts,
    contact_out,
)
from hogsend.api.schemas.events import (
    IDENTITY_MISSING,
    CursorQuery,
    EventPage,
    conflicts_out,
    event_out,
)
from hogsend.core.identity import IdentityError, Resolution
from hogsend.core.pagination import InvalidCursor
from hogsend.db.repos import contacts
from hogsend.db.repos.contacts import DeletedContacts
from hogsend.errors import NotFound

router = APIRouter(tags=["contacts"])

_FIELD_NAMES = {"user_id": "userId", "email": "email", "anonymous_id": "anonymousId"}


@router.put(
    "/v1/contacts",
    summary="Create, link or merge a contact",
    dependencies=[require_scope("ingest")],
    responses=problem_responses(503),
)
async def upsert_contact(body: ContactUpsert, request: Request) -> ContactUpserted:
    """Resolve the contact the keys name and patch its properties, in one transaction.

    Unknown keys create a contact; keys of one contact attach the missing ones (an
    `anonymousId` sent with a `userId` identifies that visitor and keeps its history);
    keys of several contacts merge them into one. A key is never overwritten: a given
    key that differs from the contact's is reported in `conflicts`. `properties` is a
    shallow patch (`null` deletes a key); `lists` records list choices.
    """
    identity = identity_of(body)
    unknown = unknown_lists(request, body.lists)
    if unknown:
        raise invalid_field(("body", "lists", unknown[0]), f"unknown list {unknown[0]!r}")

    async def upsert(session: AsyncSession) -> Resolution:
        resolution = await contacts.resolve_contact(session, identity, properties=body.properties)
        if body.lists:
            await contacts.set_list_subscriptions(
                session, resolution.contact_id, body.lists, source="api"
            )
        return resolution

    resolution = await in_transaction(request, upsert)
    return ContactUpserted(
        id=resolution.contact_id,
        created=resolution.created,
        linked=resolution.linked,
        merged=resolution.merged,
        conflicts=conflicts_out(resolution.conflicts) or [],
    )


@router.get(
    "/v1/contacts/find",
    summary="Find contacts by key",
    dependencies=[require_scope("read")],
)
async def find_contacts(
    query: Annotated[FindContactsQuery, Query()], session: DbSession
) -> FoundContacts:
    """Live contacts holding any of the given keys (0 to 3 of them, oldest first).

    Keys that were merged away still find the contact they were merged into.
    """
    try:
        found = await contacts.find_contacts(
            session, email=query.email, user_id=query.user_id, anonymous_id=query.anonymous_id
        )
    except IdentityError as exc:
        if exc.field == "identity":
            raise invalid_field(("query",), IDENTITY_MISSING) from None
        raise invalid_field(("query", _FIELD_NAMES[exc.field]), exc.reason) from None
    return FoundContacts(contacts=[contact_out(c) for c in found])


@router.get(
    "/v1/contacts/{id}",
    summary="Read a contact",
    dependencies=[require_scope("read")],
    responses=problem_responses(404),
)
async def get_contact(id: UUID, session: DbSession) -> ContactOut:
    """One live contact by id. The id of a contact merged into another answers with the
    survivor. 404 for unknown, deleted or erased contacts."""
    contact = await contacts.follow_contact(session, id)
    if contact is None:
        raise NotFound(f"contact {id} does not exist")
    return contact_out(contact)


@router.delete(
    "/v1/contacts",
    summary="Delete or erase contacts",
    dependencies=[require_scope("ingest")],
    responses=problem_responses(404, 503),
)
async def delete_contacts(body: ContactDelete, request: Request) -> ContactsDeleted:
    """Delete the live contacts the keys resolve to (aliases followed).

    A soft delete keeps the history, ends running journeys and bucket stays, and lets
    the same keys start a new contact later. `erase: true` is the GDPR erasure: keys,
    properties and events are removed for good (suppressions of the address stay).
    404 when no live contact matches.
    """
    identity = identity_of(body)
    erase = body.erase

    async def delete(session: AsyncSession) -> DeletedContacts:
        return await contacts.soft_delete_contacts(session, identity, erase=erase)

    deleted = await in_transaction(request, delete)
    if not deleted.contact_ids:
        raise NotFound("no live contact has these keys")
    return ContactsDeleted(deleted=True, contact_ids=list(deleted.contact_ids), erased=erase)


@router.get(
    "/v1/contacts/{id}/events",
    summary="Page a contact's events",
    dependencies=[require_scope("read")],
    responses=problem_responses(404),
)
async def contact_events(
    id: UUID, query: Annotated[CursorQuery, Query()], session: DbSession
) -> EventPage:
    """The contact's events, newest `occurredAt` first, `limit` per page; pass
    `nextCursor` back as `cursor` for the next page. Events of contacts merged into this
    one are included (merges move them)."""
    contact = await contacts.follow_contact(session, id)
    if contact is None:
        raise NotFound(f"contact {id} does not exist")
    try:
        page = await contacts.contact_events(
            session, contact.id, cursor=query.cursor, limit=query.limit
        )
    except InvalidCursor as exc:
        raise invalid_cursor(exc) from None
    return EventPage(events=[event_out(e) for e in page.items], next_cursor=page.next_cursor)
