"""/v1/admin/contacts/{id}/sends and /explain: why a contact did or didn't get a message.

All GET, scope ``admin:read``.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request

from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, hogsend_of, settings_of
from hogsend.api.errors import problem_responses
from hogsend.api.routes.transactions import invalid_cursor
from hogsend.api.schemas.sends import (
    ExplainOut,
    ExplainQuery,
    SendAttemptPage,
    SendAttemptQuery,
    explain_facts_out,
    send_attempt_out,
)
from hogsend.channels.mailer import explain
from hogsend.core.contact import Contact
from hogsend.core.pagination import InvalidCursor
from hogsend.db.repos import contacts, sends
from hogsend.errors import NotFound, TemplateNotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: contacts"])


async def _addressed(session: DbSession, id: UUID) -> tuple[Contact, UUID | None]:
    """The contact a send to ``id`` addresses, as the mailer finds it, and the survivor's id
    when ``id`` was merged into another.

    A contact merged away stands for its survivor (its history moved there); a deleted or
    erased one stands for itself, so that its attempts can still be listed and an attempt
    now is explained as ``skipped_deleted``. Only an id no contact ever had is not found.
    """
    contact = await contacts.get_contact(session, id, include_deleted=True)
    if contact is None:
        raise NotFound(f"contact {id} does not exist")
    if contact.deleted_at is None:
        return contact, None
    survivor = await contacts.follow_contact(session, id)
    if survivor is None or survivor.id == contact.id:
        return contact, None
    return survivor, survivor.id


@router.get(
    "/contacts/{id}/sends",
    summary="List a contact's send attempts",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def contact_sends(
    id: UUID, query: Annotated[SendAttemptQuery, Query()], session: DbSession
) -> SendAttemptPage:
    """Every attempt to email the contact, newest first, each with its decision (`sent`,
    `duplicate`, `suppressed`, `unsubscribed`, `capped`, `deferred` ...) and the facts
    behind it; optionally only those of one template or journey. A deleted or erased
    contact's attempts are listed too; for a contact merged into another, the survivor's
    (its attempts moved there), with `mergedInto` set."""
    contact, merged_into = await _addressed(session, id)
    try:
        page = await sends.list_sends(
            session,
            contact.id,
            limit=query.limit,
            cursor=query.cursor,
            template_key=query.template,
            journey_id=query.journey,
        )
    except InvalidCursor as exc:
        raise invalid_cursor(exc) from None
    return SendAttemptPage(
        sends=[send_attempt_out(r) for r in page.items],
        next_cursor=page.next_cursor,
        merged_into=merged_into,
    )


@router.get(
    "/contacts/{id}/explain",
    summary="Explain whether a contact would get a template or journey message now",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def explain_send(
    id: UUID, query: Annotated[ExplainQuery, Query()], request: Request, session: DbSession
) -> ExplainOut:
    """Runs the mailer's gates as a dry run against the contact's current facts
    (suppression, unsubscribes, list polarity, journey gap, frequency cap, test mode) and
    returns the decision an attempt made now would get, plus the latest attempts for that
    template or journey. Both given: that journey sending that template; neither: any
    non-transactional email. A deleted or erased contact gets `skipped_deleted`, as a send
    would; a contact merged into another is explained as its survivor (`mergedInto`).
    Writes nothing. 404 for an unknown contact, template or journey."""
    contact, merged_into = await _addressed(session, id)
    try:
        result = await explain(
            session,
            app=hogsend_of(request),
            settings=settings_of(request),
            contact=contact,
            template=query.template,
            journey=query.journey,
        )
    except TemplateNotFound as exc:
        raise NotFound(str(exc)) from None
    except KeyError:
        raise NotFound(f"journey {query.journey!r} is not registered") from None
    return ExplainOut(
        would_send=result.decision in ("sent", "redirected"),
        decision=result.decision,
        detail=dict(result.detail),
        deferred_until=result.deferred_until,
        facts=explain_facts_out(result.facts),
        recent=[send_attempt_out(r) for r in result.recent],
        merged_into=merged_into,
    )
