"""Who is asking, and may they: sessions, CSRF tokens, roles, sign-in limits, headers.

* **Session**: a random 256-bit token in the ``hogsend_studio`` cookie (HttpOnly,
  SameSite=Lax, Path=<prefix>, Secure over https or as configured); the database keeps
  its SHA-256 and the session's expiry, checked on every request.
* **CSRF**: each session has its own random token; every POST form carries it in
  ``csrf_token`` (htmx requests may send ``X-CSRF-Token``) and the server compares it in
  constant time. The sign-in and setup forms, which come before any session, use a
  double-submit token: a random cookie and its HMAC in the form.
* **Roles**: ``viewer`` reads everything; only ``admin`` may POST a change.
* **Sign-in limit**: attempts per client address and email per rate-limit window,
  counted by the API's rate limiter before the password is even checked.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hogsend.api.ratelimit import RateLimitDecision
from hogsend.db.repos import audit, studio_users
from hogsend.db.repos.studio_users import SignedIn
from hogsend.studio.error_pages import LoginRequired, PageError, SetupRequired
from hogsend.studio.state import StudioState, studio_of

SESSION_COOKIE = "hogsend_studio"
FORM_COOKIE = "hogsend_studio_form"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
MAX_FORM_FIELDS = 50

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "object-src 'none'"
)


def cookie_secure(request: Request) -> bool:
    """Whether Studio's cookies get the Secure flag for this request."""
    mode = studio_of(request).settings.studio_cookie_secure
    if mode == "auto":
        return request.url.scheme == "https"
    return mode == "always"


def _set_cookie(
    request: Request, response: Response, name: str, value: str, max_age: int | None
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=studio_of(request).prefix,
        secure=cookie_secure(request),
        httponly=True,
        samesite="lax",
    )


def start_cookie(request: Request, response: Response, token: str) -> None:
    """Hand the browser its new session token."""
    lifetime = studio_of(request).settings.studio_session_seconds
    _set_cookie(request, response, SESSION_COOKIE, token, lifetime)


def end_cookie(request: Request, response: Response) -> None:
    """Make the browser forget its session token."""
    _set_cookie(request, response, SESSION_COOKIE, "", 0)


async def current_session(request: Request, db: AsyncSession) -> SignedIn | None:
    """The live session the request's cookie names, or None (also stored on the request)."""
    raw = request.cookies.get(SESSION_COOKIE)
    me = None
    if raw and len(raw) <= 128:
        me = await studio_users.signed_in(db, studio_users.hash_session_token(raw))
    request.state.me = me
    return me


async def require_viewer(request: Request, db: AsyncSession) -> SignedIn:
    """The signed-in user, of any role.

    Raises:
        SetupRequired: nobody can sign in yet (no user exists).
        LoginRequired: no live session.
    """
    me = await current_session(request, db)
    if me is not None:
        return me
    if await studio_users.count_users(db) == 0:
        raise SetupRequired()
    raise LoginRequired()


def _same_token(expected: str, given: object) -> bool:
    return (
        isinstance(given, str)
        and bool(given)
        and hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))
    )


async def read_form(request: Request, *, max_files: int = 0) -> FormData:
    """The POSTed form (urlencoded or multipart), with a bound on its fields and files."""
    try:
        return await request.form(max_files=max_files, max_fields=MAX_FORM_FIELDS)
    except Exception as exc:  # malformed multipart or too many fields
        raise PageError(400, f"The form could not be read: {exc}") from None


async def require_form(
    request: Request, db: AsyncSession, *, admin: bool = True, max_files: int = 0
) -> tuple[SignedIn, FormData]:
    """For a POST: a live session, its CSRF token and, unless ``admin=False``, the admin role.

    ``max_files`` allows that many uploaded files (an import form); 0 refuses any.

    Raises:
        LoginRequired: no live session.
        PageError: 403 for a missing or wrong CSRF token, or a viewer where admin is needed.
    """
    me = await require_viewer(request, db)
    form = await read_form(request, max_files=max_files)
    given = form.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER)
    if not _same_token(me.csrf_token, given):
        raise PageError(
            403,
            "This form's security token is missing or out of date (CSRF protection). "
            "Go back, reload the page and try again.",
        )
    if admin and not me.user.is_admin:
        raise PageError(403, "Your role is viewer: you can look at everything but change nothing.")
    return me, form


async def require_admin(request: Request, db: AsyncSession) -> tuple[SignedIn, FormData]:
    """For a POST that changes something: see :func:`require_form`."""
    return await require_form(request, db, admin=True)


def session_token(request: Request) -> str | None:
    """The raw session token the request's cookie holds, if any."""
    return request.cookies.get(SESSION_COOKIE)


# -- the sign-in and setup forms (no session yet) -------------------------------------


def _form_key(studio: StudioState) -> bytes:
    secret = studio.settings.secret_key
    return secret.get_secret_value().encode("utf-8") if secret is not None else studio.form_key


def _signature(studio: StudioState, nonce: str) -> str:
    return hmac.new(_form_key(studio), nonce.encode("utf-8"), hashlib.sha256).hexdigest()


def form_token(request: Request) -> tuple[str, str | None]:
    """The CSRF token to put in a sign-in or setup form.

    Returns:
        The token, and the nonce cookie to set (None when the browser holds one).
    """
    studio = studio_of(request)
    nonce = request.cookies.get(FORM_COOKIE)
    if nonce and 20 <= len(nonce) <= 64:
        return _signature(studio, nonce), None
    nonce = secrets.token_urlsafe(32)
    return _signature(studio, nonce), nonce


def give_form_cookie(request: Request, response: Response, nonce: str | None) -> None:
    """Set the nonce cookie :func:`form_token` asked for, if any."""
    if nonce is not None:
        _set_cookie(request, response, FORM_COOKIE, nonce, None)


def check_form_token(request: Request, form: FormData) -> None:
    """Refuse a sign-in or setup POST whose token does not match its nonce cookie.

    Raises:
        PageError: 403.
    """
    nonce = request.cookies.get(FORM_COOKIE)
    if not nonce or not _same_token(_signature(studio_of(request), nonce), form.get(CSRF_FIELD)):
        raise PageError(
            403,
            "This form's security token is missing or out of date (CSRF protection). "
            "Reload the page and try again; cookies must be enabled.",
        )


# -- sign-in attempts ------------------------------------------------------------------


def client_address(request: Request) -> str:
    """The client's address as the server sees it (uvicorn applies trusted proxy headers)."""
    return request.client.host if request.client else "unknown"


async def count_login_attempt(request: Request, email: str) -> RateLimitDecision:
    """Count a sign-in attempt for this address and email; ``allowed`` is false past the limit."""
    studio = studio_of(request)
    who = f"{client_address(request)}\0{email.strip().lower()}"
    bucket = "studio-login:" + hashlib.sha256(who.encode("utf-8")).hexdigest()[:32]
    return await studio.rate_limiter.hit(bucket, limit=studio.settings.studio_login_attempts)


# -- audit -----------------------------------------------------------------------------


async def record_change(
    request: Request,
    db: AsyncSession,
    me: SignedIn,
    *,
    action: str,
    resource: str,
    resource_id: str | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Append the audit row of a Studio change, in the change's own transaction."""
    await audit.record(
        db,
        actor=f"studio:{me.user.email}",
        actor_user_id=me.user.id,
        action=action,
        resource=resource,
        resource_id=resource_id,
        detail=detail,
        ip_address=client_address(request) if request.client else None,
        request_id=getattr(request.state, "request_id", None),
    )


# -- response headers ------------------------------------------------------------------


class SecurityHeadersMiddleware:
    """Headers every Studio response carries: CSP, no framing, no sniffing, no caching.

    Pages are never cached (``no-store``): they hold personal data, and the page showing
    a new API key must not be kept anywhere. Static files keep their own caching.
    """

    def __init__(self, app: ASGIApp, *, static_prefix: str) -> None:
        self.app = app
        self.static_prefix = static_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        is_static = scope["path"].startswith(self.static_prefix)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                # A response that chose its own policy keeps it (rendered email in a
                # sandboxed frame needs inline styles and may be framed by Studio).
                headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
                headers.setdefault("X-Frame-Options", "DENY")
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "same-origin"
                if not is_static:
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
