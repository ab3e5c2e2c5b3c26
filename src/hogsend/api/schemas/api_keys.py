"""Bodies of /v1/whoami and /v1/admin/api-keys."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

from pydantic import Field, field_validator

from hogsend.api.schemas.common import ApiModel, IsoDateTime, Page, PageQuery

Scope = Literal["ingest", "read", "admin:read", "admin:write", "full-admin"]


class Whoami(ApiModel):
    """The key a request authenticated with."""

    id: UUID
    name: str
    key_prefix: str
    scopes: list[Scope]
    expires_at: datetime | None


class ApiKeyOut(ApiModel):
    """An API key (never its secret)."""

    id: UUID
    name: str
    key_prefix: str = Field(description="First 12 characters of the key, to tell keys apart.")
    scopes: list[Scope]
    created_by: str | None = Field(description="Name of the key that minted this one.")
    last_used_at: datetime | None = Field(description="Refreshed at most once a minute.")
    revoked_at: datetime | None
    expires_at: datetime | None
    created_at: datetime


class ApiKeyQuery(PageQuery):
    """Filters of the key listing."""

    include_revoked: bool = Field(default=False, description="Also list revoked keys.")


class ApiKeyPage(Page):
    """A page of API keys, newest first."""

    keys: list[ApiKeyOut]


def _default_scopes() -> list[Scope]:
    return ["read"]


class CreateApiKey(ApiModel):
    """What to mint."""

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00]*[^\s\x00][^\x00]*$",
        description="A label for people, e.g. `backend-prod`.",
    )
    scopes: list[Scope] = Field(
        default_factory=_default_scopes, min_length=1, max_length=5, description="Granted scopes."
    )
    expires_at: IsoDateTime | None = Field(
        default=None, description="When the key stops working (with a UTC offset); null: never."
    )

    @field_validator("expires_at")
    @classmethod
    def _in_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return value


class CreatedApiKey(ApiModel):
    """A new key. ``key`` is shown this once and cannot be recovered."""

    id: UUID
    name: str
    key: str = Field(description="The secret. Store it now: only its hash is kept.")
    key_prefix: str
    scopes: list[Scope]
    created_by: str | None
    expires_at: datetime | None
    created_at: datetime


class RevokedApiKey(ApiModel):
    """Outcome of a revocation."""

    revoked: bool
