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
from hogsend.api.routes.admin.contacts import _live
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
from hogsend.core.pagination import InvalidCursor
from hogsend.db.repos import sends
from hogsend.errors import NotFound, TemplateNotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: contacts"])


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
    behind it; optionally only those of one template or journey."""
    contact = await _live(session, id)
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
        sends=[send_attempt_out(r) for r in page.items], next_cursor=page.next_cursor
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
    non-transactional email. Writes nothing. 404 for an unknown contact, template or
    journey."""
    contact = await _live(session, id)
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
    )
