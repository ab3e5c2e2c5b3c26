"""/v1/admin/contacts/{id}/preferences: read and change a contact's email preferences.

Reading needs ``admin:read``; changing needs ``admin:write`` and is audited. This is
where support staff unsubscribe someone from everything (or take it back) on request.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, hogsend_of
from hogsend.api.errors import problem_responses
from hogsend.api.routes.events import unknown_lists
from hogsend.api.routes.transactions import invalid_field
from hogsend.api.schemas.lists import ListPreferenceOut, PreferencesIn, PreferencesOut
from hogsend.core.contact import Contact
from hogsend.core.preferences import list_states
from hogsend.db.repos import contacts, preferences
from hogsend.errors import NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: contacts"])

ADMIN_SOURCE = "admin"


def _out(request: Request, contact: Contact, state: preferences.PreferenceState) -> PreferencesOut:
    return PreferencesOut(
        contact_id=contact.id,
        email=contact.email,
        unsubscribed_all=state.unsubscribed_all,
        unsubscribed_at=state.unsubscribed_at,
        resubscribed_at=state.resubscribed_at,
        lists=[
            ListPreferenceOut(id=s.id, name=s.name, subscribed=s.subscribed, choice=s.choice)
            for s in list_states(hogsend_of(request).lists, state.choices)
        ],
    )


@router.get(
    "/contacts/{id}/preferences",
    summary="Read a contact's email preferences",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def get_preferences(id: UUID, request: Request, session: DbSession) -> PreferencesOut:
    """The global unsubscribe and, per registered list (and any category the contact
    chose for), whether a send to it would pass. A merged contact's id answers with the
    survivor; 404 for unknown, deleted or erased contacts."""
    contact = await contacts.follow_contact(session, id)
    if contact is None:
        raise NotFound(f"contact {id} does not exist")
    return _out(request, contact, await preferences.read_state(session, contact.id))


@router.put(
    "/contacts/{id}/preferences",
    summary="Change a contact's email preferences",
    responses=problem_responses(404),
)
async def put_preferences(
    id: UUID,
    body: PreferencesIn,
    request: Request,
    change: AdminChange = audited(
        "admin:write", resource="contacts", action="contacts.preferences.update"
    ),
) -> PreferencesOut:
    """Set `unsubscribedAll` (false resubscribes) and list choices; fields left out stay.
    Idempotent. Recorded with source `admin`."""
    unknown = unknown_lists(request, body.lists)
    if unknown:
        raise invalid_field(("body", "lists", unknown[0]), f"unknown list {unknown[0]!r}")
    session = change.session
    contact = await contacts.follow_contact(session, id)
    if contact is None:
        raise NotFound(f"contact {id} does not exist")
    change.resource_id = str(contact.id)
    before = await preferences.read_state(session, contact.id)
    if body.lists:
        await contacts.set_list_subscriptions(session, contact.id, body.lists, source=ADMIN_SOURCE)
    if body.unsubscribed_all is not None:
        await preferences.set_unsubscribed_all(
            session, contact.id, body.unsubscribed_all, source=ADMIN_SOURCE
        )
    after = await preferences.read_state(session, contact.id)
    change.detail = {
        **body.model_dump(exclude_none=True),
        "before": _audited(before),
        "after": _audited(after),
    }
    return _out(request, contact, after)


def _audited(state: preferences.PreferenceState) -> dict[str, Any]:
    """The stored choices as the audit row keeps them: the global switch and each list's."""
    return {"unsubscribedAll": state.unsubscribed_all, "lists": dict(sorted(state.choices.items()))}
