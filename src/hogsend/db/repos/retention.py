"""Rows that only matter for a while: webhook receipts and finished DBOS workflows.

Both grow with traffic and are never read once old: a provider stops retrying a webhook
within days, and a journey run or campaign keeps its history in hogsend's own tables
(``journey_states``, ``journey_logs``, ``email_sends``, ``campaigns``), not in the DBOS
rows that drove it. The workflows listed here are the *finished* ones only: a parked run
is ``CANCELLED`` and a running one ``PENDING`` or ``ENQUEUED``; neither is ever listed.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_PRUNE_RECEIPTS = text(
    """
    DELETE FROM webhook_receipts WHERE ctid = ANY(ARRAY(
        SELECT ctid FROM webhook_receipts WHERE received_at < :before LIMIT :lim))
    """
)


async def prune_receipts(session: AsyncSession, *, before: datetime, limit: int) -> int:
    """Delete up to ``limit`` webhook receipts received before ``before``; how many."""
    result = await session.execute(_PRUNE_RECEIPTS, {"before": before, "lim": limit})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def finished_workflows(
    session: AsyncSession, *, dbos_schema: str, before_ms: int, limit: int
) -> list[str]:
    """Ids of up to ``limit`` workflows that succeeded or failed before ``before_ms``.

    ``completed_at`` is DBOS's completion time in epoch milliseconds (indexed where set).
    """
    rows = await session.execute(
        text(
            f"SELECT workflow_uuid FROM {dbos_schema}.workflow_status"
            " WHERE completed_at < :before AND status IN ('SUCCESS', 'ERROR')"
            " ORDER BY completed_at LIMIT :lim"
        ),
        {"before": before_ms, "lim": limit},
    )
    return [r.workflow_uuid for r in rows]
