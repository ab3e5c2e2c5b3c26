"""Audit trail for admin mutations, written in the mutation's own transaction.

An admin route that changes state takes its session from :func:`audited`::

    @router.delete("/api-keys/{id}")
    async def revoke(id: UUID, change: AdminChange = audited("full-admin",
                     resource="api-keys", action="api-keys.revoke")) -> ...:
        await api_keys.revoke_key(change.session, id)

The dependency checks the scope, opens a transaction, hands it to the endpoint, and when
the endpoint returns without raising it appends the ``audit_logs`` row (actor key, action,
resource and id, request id, client address) and commits both together, before the
response is sent. If the endpoint raises, everything rolls back and nothing is audited:
only successful mutations are recorded, and none can be recorded without happening.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.api.auth import require_scope
from hogsend.api.deps import sessionmaker_of
from hogsend.db.repos import audit
from hogsend.db.repos.api_keys import Principal

_WRITE_SCOPES = ("admin:write", "full-admin")


@dataclass(slots=True, kw_only=True)
class AdminChange:
    """What an audited endpoint gets: the transaction, the caller, and the entry to write.

    The endpoint may fill in ``resource_id`` (e.g. the id of what it created) and
    ``detail`` (never secrets) before returning.
    """

    session: AsyncSession
    principal: Principal
    action: str
    resource: str
    resource_id: str | None = None
    detail: dict[str, Any] | None = field(default=None)


def audited(scope: str, *, resource: str, action: str) -> Any:
    """Dependency for admin mutations: scope check + transaction + audit row on success.

    Args:
        scope: ``admin:write`` or ``full-admin``.
        resource: what kind of thing changes (``api-keys``).
        action: ``<resource>.<verb>`` (``api-keys.create``).
    """
    if scope not in _WRITE_SCOPES:
        raise ValueError(f"admin mutations need admin:write or full-admin, not {scope!r}")

    async def admin_change(
        request: Request, principal: Principal = require_scope(scope)
    ) -> AsyncIterator[AdminChange]:
        async with sessionmaker_of(request)() as session:
            path_id = request.path_params.get("id")
            change = AdminChange(
                session=session,
                principal=principal,
                action=action,
                resource=resource,
                resource_id=str(path_id) if path_id is not None else None,
            )
            yield change
            await audit.record(
                session,
                actor=principal.name,
                actor_key_id=principal.key_id,
                action=change.action,
                resource=change.resource,
                resource_id=change.resource_id,
                detail=change.detail,
                ip_address=request.client.host if request.client else None,
                request_id=getattr(request.state, "request_id", None),
            )
            await session.commit()

    admin_change.audit_action = action  # type: ignore[attr-defined]
    return Depends(admin_change, scope="function")


def route_audit_action(route: APIRoute) -> str | None:
    """The audit action a route records, or None if it records none."""
    pending = [route.dependant]
    while pending:
        dependant = pending.pop()
        action = getattr(dependant.call, "audit_action", None)
        if isinstance(action, str):
            return action
        pending.extend(dependant.dependencies)
    return None
