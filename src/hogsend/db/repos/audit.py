"""The audit trail of admin mutations: who changed what, from where, in which request."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.tables.operations import AuditLog


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One recorded admin mutation."""

    id: uuid.UUID
    actor: str
    actor_key_id: uuid.UUID | None
    actor_user_id: uuid.UUID | None
    action: str
    resource: str
    resource_id: str | None
    detail: dict[str, Any] | None
    ip_address: str | None
    request_id: str | None
    created_at: datetime


async def record(
    session: AsyncSession,
    *,
    actor: str,
    action: str,
    resource: str,
    resource_id: str | None = None,
    actor_key_id: uuid.UUID | None = None,
    actor_user_id: uuid.UUID | None = None,
    detail: dict[str, Any] | None = None,
    ip_address: str | None = None,
    request_id: str | None = None,
) -> uuid.UUID:
    """Append an entry; run it in the mutation's own transaction so both commit or neither."""
    entry_id: uuid.UUID | None = await session.scalar(
        insert(AuditLog)
        .values(
            actor=actor,
            actor_key_id=actor_key_id,
            actor_user_id=actor_user_id,
            action=action,
            resource=resource,
            resource_id=resource_id,
            detail=detail,
            ip_address=ip_address,
            request_id=request_id,
        )
        .returning(AuditLog.id)
    )
    assert entry_id is not None
    return entry_id


async def list_entries(
    session: AsyncSession,
    *,
    actor: str | None = None,
    action: str | None = None,
    resource: str | None = None,
    resource_id: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[AuditEntry], int]:
    """Entries newest first matching every given filter (``since``/``until`` inclusive)."""
    where = []
    if actor is not None:
        where.append(AuditLog.actor == actor)
    if action is not None:
        where.append(AuditLog.action == action)
    if resource is not None:
        where.append(AuditLog.resource == resource)
    if resource_id is not None:
        where.append(AuditLog.resource_id == resource_id)
    if since is not None:
        where.append(AuditLog.created_at >= since)
    if until is not None:
        where.append(AuditLog.created_at <= until)
    total = await session.scalar(select(func.count()).select_from(AuditLog).where(*where))
    rows = await session.scalars(
        select(AuditLog)
        .where(*where)
        .order_by(AuditLog.created_at.desc(), AuditLog.id.desc())
        .limit(limit)
        .offset(offset)
    )
    entries = [
        AuditEntry(
            id=row.id,
            actor=row.actor,
            actor_key_id=row.actor_key_id,
            actor_user_id=row.actor_user_id,
            action=row.action,
            resource=row.resource,
            resource_id=row.resource_id,
            detail=row.detail,
            ip_address=row.ip_address,
            request_id=row.request_id,
            created_at=row.created_at,
        )
        for row in rows
    ]
    return entries, int(total or 0)
