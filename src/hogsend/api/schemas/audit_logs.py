"""Bodies of /v1/admin/audit-logs."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import Field

from hogsend.api.schemas.common import ApiModel, IsoDateTime, Page, PageQuery, Text


class AuditLogOut(ApiModel):
    """One admin mutation."""

    id: UUID
    actor: str
    actor_key_id: UUID | None
    actor_user_id: UUID | None
    action: str
    resource: str
    resource_id: str | None
    detail: dict[str, Any] | None
    ip_address: str | None
    request_id: str | None
    created_at: datetime


class AuditLogQuery(PageQuery):
    """Filters of the audit log listing; every given filter must match."""

    actor: Text | None = Field(default=None, max_length=200, description="Exact key name.")
    action: Text | None = Field(
        default=None, max_length=200, description="Exact, e.g. `api-keys.create`."
    )
    resource: Text | None = Field(
        default=None, max_length=200, description="Exact, e.g. `api-keys`."
    )
    resource_id: Text | None = Field(default=None, max_length=200)
    since: IsoDateTime | None = Field(
        default=None, alias="from", description="Created at or after (ISO 8601)."
    )
    until: IsoDateTime | None = Field(
        default=None, alias="to", description="Created at or before (ISO 8601)."
    )


class AuditLogPage(Page):
    """A page of audit entries, newest first."""

    logs: list[AuditLogOut]
