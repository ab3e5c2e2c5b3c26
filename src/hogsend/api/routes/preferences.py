"""The links in every non-transactional email: RFC 8058 one-click unsubscribe and the
preference centre.

Both are authenticated by the signed token in the link (``hogsend.core.tokens``), not by
an API key, and answer HTML (or, to a mailbox provider, plain text) rather than JSON:

- ``POST {ONE_CLICK_PATH}?token=`` with the form body ``List-Unsubscribe=One-Click`` is
  what Gmail, Yahoo or Apple Mail send when the reader presses their "Unsubscribe"
  button. It unsubscribes from the message's list or category (from everything when the
  message had none) and answers 200. No cookie, session or CSRF token is involved:
  RFC 8058 requires the POST to work on its own.
- ``GET`` on the same URL is what a person (or a link scanner) gets by opening the link:
  a page with a button that makes that POST. A GET writes nothing.
- ``GET {PREFERENCES_PATH}?token=`` shows a form with one checkbox per list and a switch
  for all email; ``POST`` saves it and redirects back (303) with a confirmation.

These routes are left out of the OpenAPI document (they are pages for people and
mailbox providers, not API operations); docs/email.md describes them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from hogsend.api.deps import DbSession, hogsend_of, settings_of
from hogsend.api.pages import SECURITY_HEADERS, render_page
from hogsend.api.routes.transactions import in_transaction
from hogsend.channels.mailer import ONE_CLICK_PATH, PREFERENCES_PATH, signing_secret
from hogsend.core import tokens
from hogsend.core.clock import aware_now
from hogsend.core.contact import Contact
from hogsend.core.identity import Identity, IdentityError
from hogsend.core.preferences import ListState, form_changes, list_states, one_click_target
from hogsend.db.repos import contacts, preferences

router = APIRouter(tags=["email links"], include_in_schema=False)

ONE_CLICK_SOURCE = "one_click"
PREFERENCE_CENTER_SOURCE = "preference_center"
ONE_CLICK_FIELD = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"


# -- pieces -------------------------------------------------------------------------------


def _page(name: str, *, status: int = 200, **context: object) -> HTMLResponse:
    return HTMLResponse(render_page(name, **context), status_code=status, headers=SECURITY_HEADERS)


def _message(
    title: str,
    *paragraphs: str,
    status: int = 200,
    error: bool = False,
    preferences_url: str | None = None,
) -> HTMLResponse:
    return _page(
        "message.html",
        status=status,
        title=title,
        paragraphs=paragraphs,
        error=error,
        preferences_url=preferences_url,
    )


def _invalid_link() -> HTMLResponse:
    return _message(
        "This link does not work",
        "The link is incomplete, was changed, or has expired. Use the link in a more "
        "recent email, or reply to that email and we will take care of it.",
        status=400,
        error=True,
    )


def _gone() -> HTMLResponse:
    return _message(
        "Nothing to change",
        "We hold no email preferences for this address any more.",
        status=404,
        error=True,
    )


def _claims(
    request: Request, token: str | None, purpose: tokens.Purpose
) -> tokens.TokenClaims | None:
    """The token's claims, or None when it is missing, forged, expired or useless."""
    if not token:
        return None
    secret = signing_secret(settings_of(request))
    try:
        claims = tokens.verify(token, secret, purpose=purpose, now=aware_now())
    except tokens.InvalidToken:
        return None
    if claims.contact_id is None and claims.email is None:
        return None
    if claims.contact_id is not None and _uuid(claims.contact_id) is None:
        return None
    return claims


def _uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _preferences_url(request: Request, claims: tokens.TokenClaims) -> str:
    """A fresh preference-centre link for the same recipient (relative to this server)."""
    token = tokens.issue(
        purpose="preferences",
        secret=signing_secret(settings_of(request)),
        now=aware_now(),
        contact_id=claims.contact_id,
        email=claims.email,
    )
    return f"{PREFERENCES_PATH}?token={quote(token, safe='')}"


@dataclass(frozen=True, slots=True)
class _Recipient:
    """Whom a link is about: a live contact, or an address no contact holds (yet)."""

    contact: Contact | None
    email: str | None


async def _recipient(session: AsyncSession, claims: tokens.TokenClaims) -> _Recipient | None:
    """The token's contact (a merged one followed to its survivor), read-only.

    None when the contact was deleted or erased: there is nobody to hold a preference.
    A token minted for an address without a contact finds that address's contact if one
    exists by now.
    """
    if claims.contact_id is not None:
        contact_id = _uuid(claims.contact_id)
        assert contact_id is not None  # _claims refused anything else
        contact = await contacts.follow_contact(session, contact_id)
        if contact is None:
            return None
        return _Recipient(contact, contact.email or claims.email)
    assert claims.email is not None
    try:
        found = await contacts.find_contacts(session, email=claims.email)
    except IdentityError:
        return None
    return _Recipient(found[0] if found else None, found[0].email if found else claims.email)


async def _holder(session: AsyncSession, recipient: _Recipient) -> uuid.UUID:
    """The contact to write a choice on, creating one for an address nobody holds.

    Preferences are kept per contact (that is what the mailer's gate reads), so an
    address mailed before any event gets its contact here, as list subscriptions via
    the API do.
    """
    if recipient.contact is not None:
        return recipient.contact.id
    assert recipient.email is not None
    resolution = await contacts.resolve_contact(session, Identity(email=recipient.email))
    return resolution.contact_id


def _list_label(request: Request, list_id: str | None) -> str:
    if list_id is None:
        return "all marketing email"
    for item in hogsend_of(request).lists:
        if item.id == list_id:
            return f"the “{item.name}” emails"
    return f"emails of the “{list_id}” kind"


def _wants_html(request: Request) -> bool:
    # Browsers submitting the confirmation page ask for HTML; mailbox providers do not.
    return "text/html" in request.headers.get("accept", "")


async def _form(request: Request) -> FormData | None:
    try:
        return await request.form()
    except HTTPException:  # Starlette's answer to a malformed multipart body
        return None


# -- one-click ----------------------------------------------------------------------------


@router.get(ONE_CLICK_PATH)
async def confirm_unsubscribe(
    request: Request, session: DbSession, token: str | None = None
) -> Response:
    """A page asking to confirm the unsubscribe with a button. Writes nothing: link
    scanners and prefetchers open every link in a message."""
    claims = _claims(request, token, "unsubscribe")
    if claims is None:
        return _invalid_link()
    recipient = await _recipient(session, claims)
    if recipient is None:
        return _gone()
    assert token is not None
    return _page(
        "one_click.html",
        title="Unsubscribe",
        what=_list_label(request, one_click_target(claims.list_id)),
        email=recipient.email or "",
        action=f"{ONE_CLICK_PATH}?token={quote(token, safe='')}",
        preferences_url=_preferences_url(request, claims),
    )


@router.post(ONE_CLICK_PATH)
async def one_click_unsubscribe(request: Request, token: str | None = None) -> Response:
    """RFC 8058: unsubscribe from the message's list (or everything) and answer 200."""
    html = _wants_html(request)
    claims = _claims(request, token, "unsubscribe")
    if claims is None:
        return _invalid_link() if html else PlainTextResponse("Invalid link\n", status_code=400)
    form = await _form(request)
    if form is None or form.get(ONE_CLICK_FIELD) != ONE_CLICK_VALUE:
        detail = f"Expected the form body {ONE_CLICK_FIELD}={ONE_CLICK_VALUE} (RFC 8058)\n"
        return PlainTextResponse(detail, status_code=400)
    target = one_click_target(claims.list_id)

    async def unsubscribe(session: AsyncSession) -> bool:
        recipient = await _recipient(session, claims)
        if recipient is None:
            return False
        holder = await _holder(session, recipient)
        now = aware_now()
        if target is None:
            await preferences.set_unsubscribed_all(
                session, holder, True, source=ONE_CLICK_SOURCE, now=now
            )
        else:
            await contacts.set_list_subscriptions(
                session, holder, {target: False}, source=ONE_CLICK_SOURCE, now=now
            )
        return True

    if not await in_transaction(request, unsubscribe):
        return _gone() if html else PlainTextResponse("Unknown recipient\n", status_code=404)
    if not html:
        return PlainTextResponse("Unsubscribed\n")
    return _message(
        "You are unsubscribed",
        f"We will not send you {_list_label(request, target)} any more.",
        "Changed your mind? You can subscribe again from your preferences.",
        preferences_url=_preferences_url(request, claims),
    )


# -- preference centre --------------------------------------------------------------------


def _states(request: Request, state: preferences.PreferenceState) -> list[ListState]:
    return list_states(hogsend_of(request).lists, state.choices)


@router.get(PREFERENCES_PATH)
async def preference_centre(
    request: Request, session: DbSession, token: str | None = None, saved: str | None = None
) -> Response:
    """The preference form for the token's contact. Writes nothing."""
    claims = _claims(request, token, "preferences")
    if claims is None:
        return _invalid_link()
    recipient = await _recipient(session, claims)
    if recipient is None:
        return _gone()
    state = (
        await preferences.read_state(session, recipient.contact.id)
        if recipient.contact is not None
        else preferences.PreferenceState()
    )
    return _page(
        "preferences.html",
        title="Email preferences",
        saved=saved == "1",
        email=recipient.email or "",
        token=token,
        action=PREFERENCES_PATH,
        lists=_states(request, state),
        unsubscribed_all=state.unsubscribed_all,
    )


@router.post(PREFERENCES_PATH)
async def save_preferences(request: Request) -> Response:
    """Save the form: list boxes that changed, and the all-email switch; then 303 back.

    The signed token travels in the form: it is what authenticates the request, and a
    forged cross-site form cannot carry it, so it also serves as the CSRF token.
    """
    form = await _form(request)
    token = form.get("token") if form is not None else None
    claims = _claims(request, token if isinstance(token, str) else None, "preferences")
    if form is None or claims is None:
        return _invalid_link()
    shown = {v for v in form.getlist("shown") if isinstance(v, str)}
    checked = {v for v in form.getlist("list") if isinstance(v, str)}
    unsubscribe_all = form.get("unsubscribe_all") == "on"

    async def save(session: AsyncSession) -> bool:
        recipient = await _recipient(session, claims)
        if recipient is None:
            return False
        contact = recipient.contact
        state = (
            await preferences.read_state(session, contact.id)
            if contact is not None
            else preferences.PreferenceState()
        )
        changes = form_changes(_states(request, state), shown=shown, checked=checked)
        if contact is None and not changes and not unsubscribe_all:
            return True  # nothing to record: no contact is created for a no-op
        holder = await _holder(session, recipient)
        now = aware_now()
        await contacts.set_list_subscriptions(
            session, holder, changes, source=PREFERENCE_CENTER_SOURCE, now=now
        )
        await preferences.set_unsubscribed_all(
            session, holder, unsubscribe_all, source=PREFERENCE_CENTER_SOURCE, now=now
        )
        return True

    if not await in_transaction(request, save):
        return _gone()
    assert isinstance(token, str)
    return RedirectResponse(
        f"{PREFERENCES_PATH}?token={quote(token, safe='')}&saved=1",
        status_code=303,
        headers=SECURITY_HEADERS,
    )
