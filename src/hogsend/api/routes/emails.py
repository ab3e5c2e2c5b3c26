"""POST /v1/emails: the transactional API (scope ``ingest``, its own rate-limit group).

A request decides and hands off; it never waits for a provider. In order: validate the
body (422 naming the field), refuse ``skipPreferenceCheck`` without ``full-admin``
(403), find the template (422), resolve the recipient (404 when ``userId`` has no
address), render once with the props (422 when they do not fit the template), then
:meth:`~hogsend.channels.mailer.Mailer.queue` runs the gates and writes the decision
row in one transaction. A send that passed every gate is ``queued`` and a worker's
courier delivers it; docs/email.md ("Transactional email") has the delivery guarantees.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request

from hogsend.api.auth import has_scope, require_scope
from hogsend.api.deps import hogsend_of, mailer_of, sessionmaker_of
from hogsend.api.errors import problem_responses
from hogsend.api.previews import find_template, render_or_422, stand_in_contact
from hogsend.api.routes.transactions import invalid_field
from hogsend.api.schemas.emails import EmailAccepted, EmailIn, EmailStatus
from hogsend.channels.mailer import SendOutcome, SendRequest
from hogsend.core.contact import Contact
from hogsend.core.identity import Identity
from hogsend.core.ingest import MAX_IDEMPOTENCY_KEY_LENGTH
from hogsend.core.mailer_gates import TRANSACTIONAL_CATEGORY, SendKind
from hogsend.db.repos import contacts as contacts_repo
from hogsend.db.repos import sends
from hogsend.db.repos.api_keys import Principal
from hogsend.errors import Forbidden, NotFound

router = APIRouter(tags=["emails"])

# The status a gated decision answers with (the reference's vocabulary).
_GATED_STATUS: dict[str, EmailStatus] = {
    "suppressed": "suppressed",
    "unsubscribed": "unsubscribed",
    "capped": "skipped",
    "skipped_deleted": "skipped",
    "deferred": "skipped",
}


async def _recipient(request: Request, body: EmailIn) -> tuple[Contact | None, str]:
    """The contact the send is logged under (if any) and the address it goes to.

    ``userId`` names the contact when it resolves, else ``to``'s owner (aliases are
    followed); ``to``, when given, is always the address.

    Raises:
        NotFound: no ``to`` and ``userId`` resolves to no contact with an address.
    """
    contact: Contact | None = None
    async with sessionmaker_of(request)() as session:
        if body.user_id is not None:
            found = await contacts_repo.lookup_contacts(
                session, Identity(user_id=body.user_id).keys
            )
            contact = next(iter(found.values()), None)
        if contact is None and body.to is not None:
            found = await contacts_repo.lookup_contacts(session, Identity(email=body.to).keys)
            contact = next(iter(found.values()), None)
    if body.to is not None:
        return contact, body.to
    if contact is None or contact.email is None:
        raise NotFound(f"no contact with userId {body.user_id!r} and an email address; pass `to`")
    return contact, contact.email


def _kind(body: EmailIn, template_category: str | None) -> SendKind:
    """Transactional without a category (given, else the template's) or with
    ``transactional``; any other category makes it a marketing send (``campaign``),
    gated as the mailer gates every send to a category (a list's or not), so an
    unsubscribe from it or from everything holds here too. ``skipPreferenceCheck``
    makes it transactional."""
    category = body.category or template_category
    if body.skip_preference_check or category in (None, TRANSACTIONAL_CATEGORY):
        return "transactional"
    return "campaign"


async def _accepted(request: Request, outcome: SendOutcome) -> EmailAccepted:
    if outcome.decision == "queued":
        return EmailAccepted(email_send_id=outcome.send_id, status="queued", decision="queued")
    if outcome.decision == "duplicate" and outcome.duplicate_of is not None:
        async with sessionmaker_of(request)() as session:
            original = await sends.get_send(session, outcome.duplicate_of)
        if original is not None:
            status = _GATED_STATUS.get(original.decision, original.status)
            return EmailAccepted(
                email_send_id=original.id,
                status=status,
                decision=original.decision,
                duplicate=True,
            )
    return EmailAccepted(
        email_send_id=outcome.send_id,
        status=_GATED_STATUS.get(outcome.decision, "skipped"),
        decision=outcome.decision,
    )


@router.post(
    "/v1/emails",
    status_code=202,
    summary="Send a transactional email",
    response_model_exclude_none=True,
    responses=problem_responses(404),
)
async def send_email(
    body: EmailIn,
    request: Request,
    principal: Principal = require_scope("ingest"),
    idempotency_key_header: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
            description="Wins over the body's `idempotencyKey`.",
        ),
    ] = None,
) -> EmailAccepted:
    """Send one email from a template to one person, without waiting for the provider.

    The gates run now (suppression always applies; transactional sends are exempt from
    unsubscribes and the frequency cap and carry no List-Unsubscribe header) and the
    decision row is written; a send that passed them is `queued` and a worker delivers
    it within moments. A send is transactional without a category (the body's, else the
    template's) or with `transactional`; any other category makes it a marketing send to
    that list or category: the global unsubscribe, the one from that list or category
    and the cap apply, and it carries List-Unsubscribe and a preference-centre link.
    A repeated idempotency key answers with the original send and sends nothing.
    """
    if body.to is None and body.user_id is None:
        raise invalid_field(("body",), "one of to or userId is needed")
    if body.skip_preference_check and not has_scope(principal.scopes, "full-admin"):
        raise Forbidden(
            "skipPreferenceCheck needs a full-admin key",
            headers={
                "WWW-Authenticate": 'Bearer realm="hogsend", error="insufficient_scope", '
                'scope="full-admin"'
            },
        )
    registry = hogsend_of(request).templates
    template = find_template(registry, body.template, ("body", "template"))
    assert registry is not None
    kind = _kind(body, template.category)
    contact, address = await _recipient(request, body)
    render_or_422(
        registry,
        template.key,
        contact=contact or stand_in_contact(address),
        props=body.props,
        subject=body.subject,
        marketing=kind != "transactional",
        location=("body", "props"),
    )
    outcome = await mailer_of(request).queue(
        SendRequest(
            template=template.key,
            contact_id=contact.id if contact is not None else None,
            to_email=address,
            props=body.props,
            subject=body.subject,
            from_email=body.from_,
            reply_to=body.reply_to_header(),
            category=body.category,
            kind=kind,
            idempotency_key=idempotency_key_header or body.idempotency_key,
            skip_preference_check=body.skip_preference_check,
        )
    )
    return await _accepted(request, outcome)
