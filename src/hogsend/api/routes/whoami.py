"""GET /v1/whoami: which key am I using, and what may it do."""

from __future__ import annotations

from fastapi import APIRouter

from hogsend.api.auth import require_key
from hogsend.api.schemas.api_keys import Whoami
from hogsend.db.repos.api_keys import Principal

router = APIRouter(tags=["keys"])


@router.get("/v1/whoami", summary="Describe the calling API key")
async def whoami(principal: Principal = require_key()) -> Whoami:
    """The name, prefix, scopes and expiry of the key sent; any valid key may ask."""
    return Whoami(
        id=principal.key_id,
        name=principal.name,
        key_prefix=principal.key_prefix,
        scopes=sorted(principal.scopes),
        expires_at=principal.expires_at,
    )
