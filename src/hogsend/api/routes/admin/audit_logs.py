"""/v1/admin/audit-logs: the trail of admin mutations (admin:read)."""

from __future__ import annotations

from fastapi import APIRouter, Query
from pydantic import AwareDatetime

from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession
from hogsend.api.schemas.audit_logs import AuditLogOut, AuditLogPage
from hogsend.api.schemas.common import MAX_OFFSET, MAX_PAGE_SIZE, Text
from hogsend.db.repos import audit

router = APIRouter(prefix="/v1/admin", tags=["admin: audit logs"])


@router.get(
    "/audit-logs",
    summary="List audit log entries",
    dependencies=[require_scope("admin:read")],
)
async def list_audit_logs(
    session: DbSession,
    limit: int = Query(50, ge=1, le=MAX_PAGE_SIZE),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    actor: Text | None = Query(None, max_length=200, description="Exact key name."),
    action: Text | None = Query(None, max_length=200, description="Exact, e.g. api-keys.create."),
    resource: Text | None = Query(None, max_length=200, description="Exact, e.g. api-keys."),
    resource_id: Text | None = Query(None, alias="resourceId", max_length=200),
    since: AwareDatetime | None = Query(None, alias="from", description="Inclusive lower bound."),
    until: AwareDatetime | None = Query(None, alias="to", description="Inclusive upper bound."),
) -> AuditLogPage:
    """Entries newest first, filtered by every parameter given."""
    entries, total = await audit.list_entries(
        session,
        actor=actor,
        action=action,
        resource=resource,
        resource_id=resource_id,
        since=since,
        until=until,
        limit=limit,
        offset=offset,
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
        limit=limit,
        offset=offset,
    )
