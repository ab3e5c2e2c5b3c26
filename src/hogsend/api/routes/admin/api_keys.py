"""/v1/admin/api-keys: list (admin:read), mint and revoke (full-admin only)."""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import key_cache_of, require_scope
from hogsend.api.deps import DbSession
from hogsend.api.errors import problem_responses
from hogsend.api.schemas.api_keys import (
    ApiKeyOut,
    ApiKeyPage,
    ApiKeyQuery,
    CreateApiKey,
    CreatedApiKey,
    RevokedApiKey,
)
from hogsend.db.repos import api_keys
from hogsend.db.repos.api_keys import ApiKeyInfo
from hogsend.errors import NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: api keys"])


def _out(info: ApiKeyInfo) -> ApiKeyOut:
    return ApiKeyOut(
        id=info.id,
        name=info.name,
        key_prefix=info.key_prefix,
        scopes=list(info.scopes),
        created_by=info.created_by,
        last_used_at=info.last_used_at,
        revoked_at=info.revoked_at,
        expires_at=info.expires_at,
        created_at=info.created_at,
    )


@router.get(
    "/api-keys",
    summary="List API keys",
    dependencies=[require_scope("admin:read")],
)
async def list_api_keys(session: DbSession, query: Annotated[ApiKeyQuery, Query()]) -> ApiKeyPage:
    """Keys newest first; revoked ones only with ``includeRevoked=true``."""
    keys, total = await api_keys.list_keys(
        session, include_revoked=query.include_revoked, limit=query.limit, offset=query.offset
    )
    return ApiKeyPage(
        keys=[_out(k) for k in keys], total=total, limit=query.limit, offset=query.offset
    )


@router.post("/api-keys", status_code=201, summary="Mint an API key")
async def create_api_key(
    body: CreateApiKey,
    change: AdminChange = audited("full-admin", resource="api-keys", action="api-keys.create"),
) -> CreatedApiKey:
    """Mint a key. The response carries the secret ``key``, once; only its hash is kept."""
    principal = change.principal
    info, raw = await api_keys.create_key(
        change.session,
        name=body.name,
        scopes=body.scopes,
        expires_at=body.expires_at,
        created_by=principal.name,
        created_by_key_id=principal.key_id,
    )
    change.resource_id = str(info.id)
    change.detail = {
        "name": info.name,
        "scopes": list(info.scopes),
        "expiresAt": info.expires_at.isoformat() if info.expires_at else None,
        "before": None,
        "after": {"name": info.name, "scopes": list(info.scopes), "revoked": False},
    }
    return CreatedApiKey(
        id=info.id,
        name=info.name,
        key=raw,
        key_prefix=info.key_prefix,
        scopes=list(info.scopes),
        created_by=info.created_by,
        expires_at=info.expires_at,
        created_at=info.created_at,
    )


@router.delete(
    "/api-keys/{id}",
    summary="Revoke an API key",
    responses=problem_responses(404),
)
async def revoke_api_key(
    id: UUID,
    request: Request,
    change: AdminChange = audited("full-admin", resource="api-keys", action="api-keys.revoke"),
) -> RevokedApiKey:
    """Revoke a key; it is refused from the very next request. 404 if unknown or revoked.

    Other API processes may still accept it for up to `HOGSEND_API_KEY_CACHE_SECONDS`.
    """
    if not await api_keys.revoke_key(change.session, id):
        raise NotFound(f"API key {id} does not exist or is already revoked")
    change.detail = {"before": {"revoked": False}, "after": {"revoked": True}}
    cache = key_cache_of(request)
    if cache is not None:
        cache.forget(id)
    return RevokedApiKey(revoked=True)
