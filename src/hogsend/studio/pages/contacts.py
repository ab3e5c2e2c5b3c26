"""Contacts: search, the contact page (timeline, sends, explain), and what an admin may do.

Actions (global unsubscribe / resubscribe, delete, erase) each have a confirmation page
(GET, changes nothing) whose form POSTs with the session's CSRF token; the POST calls
the same repository functions as the API and writes an audit row in the same
transaction.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from hogsend.channels.mailer import explain
from hogsend.core.contact import Contact
from hogsend.core.identity import Identity, IdentityError
from hogsend.core.mailer_gates import is_subscribed
from hogsend.core.pagination import InvalidCursor
from hogsend.core.reactions import all_journeys
from hogsend.db.repos import buckets, contact_search, contacts, preferences, sends
from hogsend.db.repos.contacts import ResolutionRace
from hogsend.errors import TemplateNotFound
from hogsend.studio.error_pages import PageError
from hogsend.studio.rendering import render
from hogsend.studio.security import record_change, require_admin, require_viewer
from hogsend.studio.state import database, studio_of

PAGE_SIZE = 50
TIMELINE_SIZE = 25
SENDS_SIZE = 20
_NOTICES = {
    "unsubscribed": "The contact is now unsubscribed from all non-transactional email.",
    "resubscribed": "The global unsubscribe is lifted; the contact's list choices apply again.",
    "deleted": "The contact was deleted.",
    "erased": "The contact was erased: its keys, properties and events are gone for good.",
    "unchanged": "Nothing changed: the contact already was in that state.",
    "bucket-added": "The contact is now a member of the bucket.",
    "bucket-removed": "The contact left the bucket.",
    "bucket-limit": "Not added: the contact has entered that bucket as often as it allows.",
    "bucket-disabled": "Nothing changed: that bucket is switched off.",
}


def _cursor(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return value or None


async def contact_list(request: Request) -> Response:
    """Search by email / user id / anonymous id / contact id, or by one property."""
    params = request.query_params
    q = params.get("q", "").strip()
    prop = params.get("prop", "").strip()
    value = params.get("value", "")
    cursor = _cursor(request, "cursor")
    async with database(request) as db:
        await require_viewer(request, db)
        try:
            if prop:
                page = await contact_search.contacts_with_property(
                    db, prop, value, cursor=cursor, limit=PAGE_SIZE
                )
            else:
                page = await contacts.list_contacts(
                    db, search=q or None, cursor=cursor, limit=PAGE_SIZE
                )
        except (InvalidCursor, ValueError) as exc:
            raise PageError(400, f"The search could not run: {exc}") from None
    filters = {"q": q, "prop": prop, "value": value if prop else ""}
    return render(
        request,
        "contacts.html",
        title="Contacts",
        current="contacts",
        filters=filters,
        contacts=page.items,
        next_cursor=page.next_cursor,
        paged=cursor is not None,
        notice=_NOTICES.get(params.get("notice", "")),
    )


def _contact_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["id"])
    except ValueError:
        raise PageError(404, "That is not a contact id.") from None


class _Moved(Exception):
    """The contact was merged into another one: the page moves to the survivor."""

    def __init__(self, contact_id: uuid.UUID) -> None:
        self.contact_id = contact_id


async def _live_contact(db: AsyncSession, request: Request) -> Contact:
    """The contact of the path; a merged-away id redirects to its survivor."""
    contact_id = _contact_id(request)
    contact = await contacts.get_contact(db, contact_id)
    if contact is not None:
        return contact
    survivor = await contacts.follow_contact(db, contact_id)
    if survivor is not None:
        raise _Moved(survivor.id)
    raise PageError(404, f"Contact {contact_id} does not exist, or was deleted or erased.")


async def _explain(
    request: Request, db: AsyncSession, contact: Contact, template: str, journey: str
) -> dict[str, Any]:
    studio = studio_of(request)
    try:
        result = await explain(
            db,
            app=studio.app,
            settings=studio.settings,
            contact=contact,
            template=template or None,
            journey=journey or None,
        )
    except TemplateNotFound:
        return {"error": f"There is no template {template!r}.", "result": None}
    except KeyError:
        return {"error": f"There is no journey {journey!r}.", "result": None}
    would_send = result.decision in ("sent", "redirected")
    return {"error": None, "result": result, "would_send": would_send}


def _lists(request: Request, details: contacts.ContactDetails) -> list[dict[str, Any]]:
    """Every registered list with the contact's choice, plus choices for unknown lists."""
    choices = {s.list_id: s for s in details.lists}
    rows = []
    for item in studio_of(request).app.lists:
        choice = choices.pop(item.id, None)
        rows.append(
            {
                "id": item.id,
                "name": item.name,
                "default_opt_in": item.default_opt_in,
                "choice": choice,
                "subscribed": is_subscribed(
                    default_opt_in=item.default_opt_in,
                    choice=None if choice is None else choice.subscribed,
                ),
            }
        )
    for list_id, choice in sorted(choices.items()):
        rows.append(
            {
                "id": list_id,
                "name": "(not registered by the app)",
                "default_opt_in": None,
                "choice": choice,
                "subscribed": choice.subscribed,
            }
        )
    return rows


async def contact_page(request: Request) -> Response:
    """Everything about one contact, with its timeline, sends and the Explain box."""
    params = request.query_params
    timeline_cursor = _cursor(request, "timeline")
    sends_cursor = _cursor(request, "sends")
    template = params.get("template", "").strip()
    journey = params.get("journey", "").strip()
    async with database(request) as db:
        me = await require_viewer(request, db)
        try:
            contact = await _live_contact(db, request)
        except _Moved as moved:
            return RedirectResponse(studio_of(request).url(f"/contacts/{moved.contact_id}"), 303)
        details = await contacts.contact_details(db, contact)
        try:
            timeline = await contacts.timeline(
                db, contact.id, limit=TIMELINE_SIZE, cursor=timeline_cursor
            )
            attempts = await sends.list_sends(db, contact.id, limit=SENDS_SIZE, cursor=sends_cursor)
        except InvalidCursor as exc:
            raise PageError(400, str(exc)) from None
        explained = (
            await _explain(request, db, contact, template, journey) if "explain" in params else None
        )
        manual = await _manual_buckets(request, db, contact)
    studio = studio_of(request)
    return render(
        request,
        "contact.html",
        title=contact.email or contact.key,
        current="contacts",
        contact=contact,
        details=details,
        lists=_lists(request, details),
        timeline=timeline,
        timeline_cursor=timeline_cursor,
        attempts=attempts,
        sends_cursor=sends_cursor,
        templates=sorted(studio.app.template_keys()),
        journeys=[j.id for j in all_journeys(studio.app.journeys, studio.app.buckets)],
        explain_template=template,
        explain_journey=journey,
        explained=explained,
        can_change=me.user.is_admin,
        manual_buckets=manual,
        notice=_NOTICES.get(params.get("notice", "")),
    )


async def _manual_buckets(
    request: Request, db: AsyncSession, contact: Contact
) -> list[dict[str, Any]]:
    """The app's manual buckets and whether the contact is in each (one query)."""
    manual = [b for b in studio_of(request).app.buckets if b.kind == "manual"]
    if not manual:
        return []
    current = await buckets.active_memberships(db, contact.id)
    return [{"id": b.id, "name": b.name, "member": b.id in current} for b in manual]


async def change_manual_bucket(request: Request) -> Response:
    """POST ``op=add|remove``: put the contact in a manual bucket or take it out (audited)."""
    studio = studio_of(request)
    async with database(request) as db:
        me, form = await require_admin(request, db)
        op = str(form.get("op", ""))
        if op not in ("add", "remove"):
            raise PageError(400, "The form must say add or remove.")
        bucket = next(
            (
                b
                for b in studio.app.buckets
                if b.id == request.path_params["bucket"] and b.kind == "manual"
            ),
            None,
        )
        if bucket is None:
            raise PageError(404, "There is no manual bucket with that id.")
        try:
            contact = await _live_contact(db, request)
        except _Moved:
            raise PageError(409, "The contact was merged into another one meanwhile.") from None
        back = f"/contacts/{contact.id}?notice="
        if not await buckets.is_enabled(db, bucket):
            return RedirectResponse(studio.url(back + "bucket-disabled"), 303)
        now = datetime.now(UTC)
        if op == "add":
            membership, joined = await buckets.add_by_hand(db, bucket, contact.id, now=now)
            notice = "bucket-added" if joined else "bucket-limit" if membership is None else ""
            epoch = membership.entry_count if membership is not None else None
            states: tuple[dict[str, Any], dict[str, Any]] = (
                {"member": False, "epoch": None},
                {"member": True, "epoch": epoch},
            )
        else:
            left = await buckets.remove_by_hand(db, bucket, contact.id, now=now)
            notice = "bucket-removed" if left is not None else ""
            epoch = left.entry_count if left is not None else None
            states = ({"member": True, "epoch": epoch}, {"member": False, "epoch": None})
        if notice in ("", "bucket-limit"):
            return RedirectResponse(studio.url(back + (notice or "unchanged")), 303)
        await record_change(
            request,
            db,
            me,
            action="buckets.members." + op,
            resource="buckets",
            resource_id=bucket.id,
            detail={"contactId": str(contact.id), "before": states[0], "after": states[1]},
        )
        await db.commit()
    return RedirectResponse(studio.url(back + notice), 303)


async def explain_fragment(request: Request) -> Response:
    """The Explain box's result alone (htmx swaps it in; writes nothing)."""
    params = request.query_params
    async with database(request) as db:
        await require_viewer(request, db)
        try:
            contact = await _live_contact(db, request)
        except _Moved:
            raise PageError(404, "The contact was merged into another one; reload.") from None
        explained = await _explain(
            request, db, contact, params.get("template", "").strip(), params.get("journey", "")
        )
    return render(
        request, "explain_result.html", title="Explain", contact=contact, explained=explained
    )


# -- actions -----------------------------------------------------------------------------

_ACTIONS = {
    "unsubscribe": {
        "heading": "Unsubscribe from all email",
        "explain": "The contact will get no journey or campaign email any more (transactional "
        "email still goes out). Their list choices are kept and apply again after a resubscribe.",
        "button": "Unsubscribe",
        "danger": False,
    },
    "resubscribe": {
        "heading": "Lift the global unsubscribe",
        "explain": "The contact will again get email on the lists they are subscribed to. Only do "
        "this when the person asked for it.",
        "button": "Resubscribe",
        "danger": False,
    },
    "delete": {
        "heading": "Delete the contact",
        "explain": "Its running journeys end and its bucket stays close; its history stays for "
        "reporting. A later event with the same email or user id starts a new contact.",
        "button": "Delete contact",
        "danger": True,
    },
    "erase": {
        "heading": "Erase the contact (GDPR)",
        "explain": "Keys, properties, events, list choices and preferences are removed for good; "
        "send records are kept without the address. The address stays on the suppression list if "
        "it is there. This cannot be undone.",
        "button": "Erase for good",
        "danger": True,
    },
}


def _action(request: Request) -> str:
    action = str(request.path_params["action"])
    if action not in _ACTIONS:
        raise PageError(404, "There is no such contact action.")
    return action


async def confirm_action(request: Request) -> Response:
    """GET: what the action will do, and the form that does it (admins only)."""
    async with database(request) as db:
        me = await require_viewer(request, db)
        action = _action(request)
        if not me.user.is_admin:
            raise PageError(403, "Only admins can change contacts; your role is viewer.")
        try:
            contact = await _live_contact(db, request)
        except _Moved as moved:
            target = f"/contacts/{moved.contact_id}/{action}"
            return RedirectResponse(studio_of(request).url(target), 303)
    return render(
        request,
        "contact_confirm.html",
        title=_ACTIONS[action]["heading"],
        current="contacts",
        contact=contact,
        action=action,
        spec=_ACTIONS[action],
    )


def _identity(contact: Contact) -> Identity:
    try:
        return Identity(
            user_id=contact.user_id, email=contact.email, anonymous_id=contact.anonymous_id
        )
    except IdentityError:
        raise PageError(409, "This contact has no key to delete it by.") from None


async def perform_action(request: Request) -> Response:
    """POST: carry the action out, audit it, and go back to the contact (or the list)."""
    studio = studio_of(request)
    async with database(request) as db:
        me, _ = await require_admin(request, db)
        action = _action(request)
        try:
            contact = await _live_contact(db, request)
        except _Moved:
            raise PageError(409, "The contact was merged into another one meanwhile.") from None
        detail: dict[str, Any] = {"email": contact.email, "userId": contact.user_id}
        if action in ("unsubscribe", "resubscribe"):
            changed = await preferences.set_unsubscribed_all(
                db, contact.id, action == "unsubscribe", source="admin"
            )
            if not changed:
                target = studio.url(f"/contacts/{contact.id}?notice=unchanged")
                return RedirectResponse(target, 303)
            notice = "unsubscribed" if action == "unsubscribe" else "resubscribed"
            # set_unsubscribed_all reported a change, so the switch flipped.
            detail["before"] = {"unsubscribedAll": action != "unsubscribe"}
            detail["after"] = {"unsubscribedAll": action == "unsubscribe"}
            target = studio.url(f"/contacts/{contact.id}?notice={notice}")
        else:
            erase = action == "erase"
            try:
                deleted = await contacts.soft_delete_contacts(db, _identity(contact), erase=erase)
            except ResolutionRace:
                raise PageError(409, "The contact kept changing; try again.") from None
            if contact.id not in deleted.contact_ids:
                raise PageError(409, "The contact changed meanwhile; nothing was deleted.")
            detail["contactIds"] = [str(i) for i in deleted.contact_ids]
            detail["endedRuns"] = len(deleted.exited_workflow_ids)
            if erase:
                detail = {"contactIds": detail["contactIds"], "erased": len(deleted.erased_ids)}
            # An erased contact's before keeps no personal data: only that it was live.
            detail["before"] = {"deleted": False}
            detail["after"] = {"deleted": True, "erased": erase}
            target = studio.url(f"/contacts?notice={'erased' if erase else 'deleted'}")
        await record_change(
            request,
            db,
            me,
            action=f"contacts.{action}",
            resource="contacts",
            resource_id=str(contact.id),
            detail=detail,
        )
        await db.commit()
    return RedirectResponse(target, 303)
