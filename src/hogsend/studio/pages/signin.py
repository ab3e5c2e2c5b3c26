"""Setup (the first admin), sign-in and sign-out."""

from __future__ import annotations

import secrets

from sqlalchemy.ext.asyncio import AsyncSession
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from hogsend.core.identity import IdentityError, normalize_email
from hogsend.db.repos import studio_users
from hogsend.db.repos.studio_users import SignedIn, StudioUserInfo
from hogsend.studio import passwords
from hogsend.studio.error_pages import PageError
from hogsend.studio.rendering import render
from hogsend.studio.security import (
    check_form_token,
    client_address,
    count_login_attempt,
    current_session,
    end_cookie,
    form_token,
    give_form_cookie,
    read_form,
    record_change,
    require_form,
    session_token,
    start_cookie,
)
from hogsend.studio.state import database, studio_of

_NOTICES = {"signed-out": "You are signed out."}


def safe_next(request: Request, target: object) -> str:
    """Where to go after signing in: a Studio path, never another site."""
    studio = studio_of(request)
    if (
        isinstance(target, str)
        and (target == studio.prefix or target.startswith(studio.prefix + "/"))
        and "//" not in target
        and "\\" not in target
        and target.isprintable()
    ):
        return target
    return studio.url("/")


async def _sign_in(
    request: Request, db: AsyncSession, user: StudioUserInfo
) -> tuple[SignedIn, str]:
    token = secrets.token_urlsafe(32)
    me = await studio_users.start_session(
        db,
        user_id=user.id,
        token_hash=studio_users.hash_session_token(token),
        csrf_token=secrets.token_urlsafe(32),
        lifetime_seconds=studio_of(request).settings.studio_session_seconds,
        ip_address=client_address(request),
        user_agent=request.headers.get("user-agent"),
    )
    return me, token


def _setup_form(
    request: Request, *, email: str = "", errors: dict[str, str] | None = None, status: int = 200
) -> Response:
    token, nonce = form_token(request)
    response = render(
        request,
        "setup.html",
        status_code=status,
        title="Set up Studio",
        form_token=token,
        email=email,
        errors=errors or {},
        min_length=passwords.MIN_PASSWORD_LENGTH,
    )
    give_form_cookie(request, response, nonce)
    return response


async def setup(request: Request) -> Response:
    """GET: the form creating the first admin. POST: create it and sign it in.

    Exists only while no Studio user exists; afterwards both answer 404.
    """
    async with database(request) as db:
        if await studio_users.count_users(db) > 0:
            raise PageError(404, "Studio is already set up: sign in with your account.")
        if request.method == "GET":
            return _setup_form(request)
        form = await read_form(request)
        check_form_token(request, form)
        raw_email = str(form.get("email") or "")
        password = str(form.get("password") or "")
        errors: dict[str, str] = {}
        email: str | None = None
        try:
            email = normalize_email(raw_email)
        except IdentityError as exc:
            errors["email"] = exc.reason
        if email is None and "email" not in errors:
            errors["email"] = "is required"
        problem = passwords.password_problem(password)
        if problem is not None:
            errors["password"] = problem
        elif password != str(form.get("confirm") or ""):
            errors["confirm"] = "does not match the password"
        if errors or email is None:
            return _setup_form(request, email=raw_email, errors=errors, status=400)
        password_hash = await passwords.hash_in_thread(password)
        user = await studio_users.create_first_admin(db, email=email, password_hash=password_hash)
        if user is None:  # someone else finished the setup a moment ago
            raise PageError(404, "Studio is already set up: sign in with your account.")
        me, token = await _sign_in(request, db, user)
        await record_change(
            request,
            db,
            me,
            action="studio-users.create",
            resource="studio-users",
            resource_id=str(user.id),
            detail=user.created_detail("setup"),
        )
        await db.commit()
    response = RedirectResponse(studio_of(request).url("/"), status_code=303)
    start_cookie(request, response, token)
    return response


def _login_form(
    request: Request,
    *,
    email: str = "",
    next_target: str = "",
    error: str | None = None,
    status: int = 200,
) -> Response:
    token, nonce = form_token(request)
    response = render(
        request,
        "login.html",
        status_code=status,
        title="Sign in",
        form_token=token,
        email=email,
        next=next_target,
        error=error,
        notice=_NOTICES.get(request.query_params.get("notice", "")),
    )
    give_form_cookie(request, response, nonce)
    return response


async def login(request: Request) -> Response:
    """GET: the sign-in form. POST: check the password, start a session, go on."""
    studio = studio_of(request)
    async with database(request) as db:
        if request.method == "GET":
            if await current_session(request, db) is not None:
                target = safe_next(request, request.query_params.get("next"))
                return RedirectResponse(target, status_code=303)
            if await studio_users.count_users(db) == 0:
                return RedirectResponse(studio.url("/setup"), status_code=303)
            return _login_form(request, next_target=request.query_params.get("next", ""))
        form = await read_form(request)
        check_form_token(request, form)
        email = str(form.get("email") or "").strip()
        password = str(form.get("password") or "")
        next_target = str(form.get("next") or "")
        decision = await count_login_attempt(request, email)
        if not decision.allowed:
            raise PageError(
                429,
                f"Too many sign-in attempts for this address from here. "
                f"Try again in {decision.reset_seconds} s.",
                headers={"Retry-After": str(decision.reset_seconds)},
            )
        found = await studio_users.credentials(db, email) if email else None
        stored = found[1] if found is not None else None
        if found is None or not await passwords.verify_in_thread(stored, password):
            return _login_form(
                request,
                email=email,
                next_target=next_target,
                error="That email and password do not match an account.",
                status=400,
            )
        user, stored_hash = found
        if passwords.needs_rehash(stored_hash):
            new_hash = await passwords.hash_in_thread(password)
            await studio_users.set_password_hash(db, user.id, new_hash)
        _, token = await _sign_in(request, db, user)
        await db.commit()
    response = RedirectResponse(safe_next(request, next_target), status_code=303)
    start_cookie(request, response, token)
    return response


async def logout(request: Request) -> Response:
    """POST only, with the session's CSRF token: end the session."""
    async with database(request) as db:
        await require_form(request, db, admin=False)
        await studio_users.end_session(
            db, studio_users.hash_session_token(session_token(request) or "")
        )
        await db.commit()
    response = RedirectResponse(studio_of(request).url("/login?notice=signed-out"), status_code=303)
    end_cookie(request, response)
    return response
