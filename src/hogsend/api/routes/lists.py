"""/v1/lists: the app's lists with their audiences, and subscribing contacts to them.

Reading needs the ``read`` scope, subscribing and unsubscribing the ``ingest`` scope.
Lists are defined in code (``define_list``); these routes never create one.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from fastapi import APIRouter, Request
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, hogsend_of
from hogsend.api.errors import problem_responses
from hogsend.api.routes.transactions import in_transaction, invalid_field
from hogsend.api.schemas.events import IDENTITY_FIELDS
from hogsend.api.schemas.lists import ListMembershipIn, ListMembershipOut, ListOut, ListsOut
from hogsend.core.definitions import ListDefinition
from hogsend.core.identity import Identity, IdentityError
from hogsend.db.repos import contacts, preferences
from hogsend.errors import NotFound

router = APIRouter(tags=["lists"])

MEMBERSHIP_IDENTITY_MISSING = "give contactId, or at least one of userId, email or anonymousId"


@router.get("/v1/lists", summary="List the app's lists", dependencies=[require_scope("read")])
async def list_lists(request: Request, session: DbSession) -> ListsOut:
    """Every list the app registers, in registration order, with `subscriberCount`: the
    live contacts a send to the list would reach now (an address, no global unsubscribe,
    not suppressed, subscribed under the list's default)."""
    registered = hogsend_of(request).lists
    counts = await preferences.subscriber_counts(session, registered)
    return ListsOut(
        lists=[
            ListOut(
                id=item.id,
                name=item.name,
                description=item.description,
                default_opt_in=item.default_opt_in,
                subscriber_count=counts[item.id],
            )
            for item in registered
        ]
    )


def _registered(request: Request, list_id: str) -> ListDefinition:
    for item in hogsend_of(request).lists:
        if item.id == list_id:
            return item
    raise NotFound(f"unknown list {list_id!r}: the app registers no list with this id")


@dataclass(frozen=True, slots=True)
class _Membership:
    contact_id: UUID
    unsubscribed_all: bool


async def _set_membership(
    request: Request, list_id: str, body: ListMembershipIn, subscribed: bool
) -> ListMembershipOut:
    _registered(request, list_id)
    has_keys = any(v is not None for v in (body.user_id, body.email, body.anonymous_id))
    if body.contact_id is not None and has_keys:
        raise invalid_field(("body", "contactId"), MEMBERSHIP_IDENTITY_MISSING + ", not both")
    contact_id = body.contact_id
    identity: Identity | None = None
    if contact_id is None:
        try:
            identity = body.identity()
        except IdentityError as exc:
            raise invalid_field(("body", IDENTITY_FIELDS[exc.field]), exc.reason) from None
        if identity is None:
            raise invalid_field(("body",), MEMBERSHIP_IDENTITY_MISSING)

    async def write(session: AsyncSession) -> _Membership:
        if identity is not None:
            # Like Hogsend 0.7: keys nobody holds create the contact, so a choice made
            # before the first event is kept.
            resolution = await contacts.resolve_contact(session, identity)
            target = resolution.contact_id
        else:
            assert contact_id is not None
            found = await contacts.follow_contact(session, contact_id)
            if found is None:
                raise NotFound(f"contact {contact_id} does not exist (or was deleted)")
            target = found.id
        await contacts.set_list_subscriptions(session, target, {list_id: subscribed}, source="api")
        state = await preferences.read_state(session, target)
        return _Membership(contact_id=target, unsubscribed_all=state.unsubscribed_all)

    done = await in_transaction(request, write)
    return ListMembershipOut(
        list=list_id,
        subscribed=subscribed,
        contact_id=done.contact_id,
        unsubscribed_all=done.unsubscribed_all,
    )


@router.post(
    "/v1/lists/{id}/subscribe",
    summary="Subscribe a contact to a list",
    dependencies=[require_scope("ingest")],
    responses=problem_responses(404, 503),
)
async def subscribe(id: str, body: ListMembershipIn, request: Request) -> ListMembershipOut:
    """Record that the contact wants the list. Idempotent: subscribing again changes
    nothing (the first time and source stay). Keys nobody holds create the contact; an
    unknown `contactId` is a 404, as is a list the app does not register. A global
    unsubscribe is not taken back (see `unsubscribedAll` in the answer)."""
    return await _set_membership(request, id, body, True)


@router.post(
    "/v1/lists/{id}/unsubscribe",
    summary="Unsubscribe a contact from a list",
    dependencies=[require_scope("ingest")],
    responses=problem_responses(404, 503),
)
async def unsubscribe(id: str, body: ListMembershipIn, request: Request) -> ListMembershipOut:
    """Record that the contact does not want the list; sends to it are then
    `unsubscribed`. Idempotent; contacts, 404s and creation as for subscribe."""
    return await _set_membership(request, id, body, False)
