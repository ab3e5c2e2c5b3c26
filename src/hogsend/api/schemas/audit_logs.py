"""Bodies of /v1/admin/audit-logs."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from hogsend.api.schemas.common import ApiModel, Page


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


class AuditLogPage(Page):
    """A page of audit entries, newest first."""

    logs: list[AuditLogOut]
