"""/v1/admin/audit-logs: the trail of admin mutations (admin:read)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession
from hogsend.api.schemas.audit_logs import AuditLogOut, AuditLogPage, AuditLogQuery
from hogsend.db.repos import audit

router = APIRouter(prefix="/v1/admin", tags=["admin: audit logs"])


@router.get(
    "/audit-logs",
    summary="List audit log entries",
    dependencies=[require_scope("admin:read")],
)
async def list_audit_logs(
    session: DbSession, query: Annotated[AuditLogQuery, Query()]
) -> AuditLogPage:
    """Entries newest first, filtered by every parameter given."""
    entries, total = await audit.list_entries(
        session,
        actor=query.actor,
        action=query.action,
        resource=query.resource,
        resource_id=query.resource_id,
        since=query.since,
        until=query.until,
        limit=query.limit,
        offset=query.offset,
    )
    return AuditLogPage(
        logs=[
            AuditLogOut(
                id=e.id,
                actor=e.actor,
                actor_key_id=e.actor_key_id,
                actor_user_id=e.actor_user_id,
                action=e.action,
                resource=e.resource,
                resource_id=e.resource_id,
                detail=e.detail,
                ip_address=e.ip_address,
                request_id=e.request_id,
                created_at=e.created_at,
            )
            for e in entries
        ],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )
