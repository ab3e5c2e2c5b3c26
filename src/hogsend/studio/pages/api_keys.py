"""API keys: list, mint (the raw key is shown once, on the answer to the POST), revoke."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, time

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from hogsend.api.auth import KeyCache
from hogsend.db.repos import api_keys
from hogsend.db.repos.api_keys import ApiKeyInfo
from hogsend.db.tables.auth import API_SCOPES
from hogsend.studio.error_pages import PageError
from hogsend.studio.rendering import render
from hogsend.studio.security import record_change, require_admin, require_viewer
from hogsend.studio.state import database, studio_of

PAGE_SIZE = 50
_NOTICES = {"revoked": "The key is revoked: requests with it are refused from now on."}


def _page_number(request: Request) -> int:
    try:
        return max(1, int(request.query_params.get("page", "1")))
    except ValueError:
        return 1


async def _listing(request: Request, include_revoked: bool) -> tuple[list[ApiKeyInfo], int, int]:
    page = _page_number(request)
    async with database(request) as db:
        await require_viewer(request, db)
        keys, total = await api_keys.list_keys(
            db, include_revoked=include_revoked, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
    return keys, total, page


def _render(
    request: Request,
    *,
    keys: list[ApiKeyInfo],
    total: int,
    page: int,
    include_revoked: bool,
    created: tuple[ApiKeyInfo, str] | None = None,
    errors: dict[str, str] | None = None,
    form: KeyForm | None = None,
    status: int = 200,
) -> Response:
    return render(
        request,
        "api_keys.html",
        status_code=status,
        title="API keys",
        current="api-keys",
        keys=keys,
        total=total,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        include_revoked=include_revoked,
        scopes=API_SCOPES,
        created=created,
        errors=errors or {},
        form=form or KeyForm(),
        now=datetime.now(UTC),
        notice=_NOTICES.get(request.query_params.get("notice", "")),
    )


async def key_list(request: Request) -> Response:
    """Active keys (``?all=1``: revoked ones too), newest first."""
    include_revoked = request.query_params.get("all") == "1"
    keys, total, page = await _listing(request, include_revoked)
    return _render(request, keys=keys, total=total, page=page, include_revoked=include_revoked)


@dataclass(frozen=True, slots=True, kw_only=True)
class KeyForm:
    """What the create-key form holds (shown again when it has errors)."""

    name: str = ""
    scopes: tuple[str, ...] = ()
    expires: str = ""


def _new_key_fields(form: FormData) -> tuple[KeyForm, dict[str, str], datetime | None]:
    name = str(form.get("name") or "").strip()
    scopes = tuple(str(s) for s in form.getlist("scopes"))
    expires = str(form.get("expires") or "").strip()
    errors: dict[str, str] = {}
    if not name:
        errors["name"] = "is required"
    elif len(name) > 200:
        errors["name"] = "must be at most 200 characters"
    if not scopes:
        errors["scopes"] = "choose at least one"
    elif any(s not in API_SCOPES for s in scopes):
        errors["scopes"] = f"must be among {', '.join(API_SCOPES)}"
    expires_at: datetime | None = None
    if expires:
        try:
            # End of the chosen day, UTC: a key "expiring on the 31st" works all that day.
            expires_at = datetime.combine(date.fromisoformat(expires), time.max, tzinfo=UTC)
        except ValueError:
            errors["expires"] = "must be a date like 2030-01-31"
        else:
            if expires_at <= datetime.now(UTC):
                errors["expires"] = "must be in the future"
    return KeyForm(name=name, scopes=scopes, expires=expires), errors, expires_at


async def create_key(request: Request) -> Response:
    """Mint a key with the same function as ``POST /v1/admin/api-keys``; show it once."""
    async with database(request) as db:
        me, form = await require_admin(request, db)
        values, errors, expires_at = _new_key_fields(form)
        if not errors:
            info, raw = await api_keys.create_key(
                db,
                name=values.name,
                scopes=values.scopes,
                expires_at=expires_at,
                created_by=f"studio:{me.user.email}",
            )
            await record_change(
                request,
                db,
                me,
                action="api-keys.create",
                resource="api-keys",
                resource_id=str(info.id),
                detail={
                    "name": info.name,
                    "scopes": list(info.scopes),
                    "expiresAt": info.expires_at.isoformat() if info.expires_at else None,
                    "before": None,
                    "after": {"name": info.name, "scopes": list(info.scopes), "revoked": False},
                },
            )
            await db.commit()
        keys, total = await api_keys.list_keys(db, limit=PAGE_SIZE)
    if errors:
        return _render(
            request,
            keys=keys,
            total=total,
            page=1,
            include_revoked=False,
            errors=errors,
            form=values,
            status=400,
        )
    return _render(
        request,
        keys=keys,
        total=total,
        page=1,
        include_revoked=False,
        created=(info, raw),
        status=201,
    )


def _key_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["id"])
    except ValueError:
        raise PageError(404, "That is not an API key id.") from None


async def confirm_revoke(request: Request) -> Response:
    """GET: which key, and the form that revokes it (admins only)."""
    async with database(request) as db:
        me = await require_viewer(request, db)
        key_id = _key_id(request)
        if not me.user.is_admin:
            raise PageError(403, "Only admins can revoke keys; your role is viewer.")
        info = await api_keys.get_key(db, key_id)
    if info is None or info.revoked_at is not None:
        raise PageError(404, f"API key {key_id} does not exist or is already revoked.")
    return render(request, "api_key_revoke.html", title="Revoke key", current="api-keys", key=info)


async def revoke_key(request: Request) -> Response:
    """POST: revoke with the same function as ``DELETE /v1/admin/api-keys/{id}``."""
    async with database(request) as db:
        me, _ = await require_admin(request, db)
        key_id = _key_id(request)
        info = await api_keys.get_key(db, key_id)
        if info is None or not await api_keys.revoke_key(db, key_id):
            raise PageError(404, f"API key {key_id} does not exist or is already revoked.")
        await record_change(
            request,
            db,
            me,
            action="api-keys.revoke",
            resource="api-keys",
            resource_id=str(key_id),
            detail={
                "name": info.name,
                "before": {"revoked": False},
                "after": {"revoked": True},
            },
        )
        await db.commit()
    # The API's in-process key cache forgets it at once, as the admin route does.
    cache = getattr(studio_of(request).api.state, "key_cache", None)
    if isinstance(cache, KeyCache):
        cache.forget(key_id)
    return RedirectResponse(studio_of(request).url("/api-keys?notice=revoked"), 303)
