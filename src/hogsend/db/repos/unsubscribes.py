"""A contact's global email unsubscribe (``email_preferences.unsubscribed_all``).

Per-list choices live in ``list_subscriptions`` and are not touched here: resubscribing
globally gives back exactly the list choices the contact had made.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.clock import aware_now

_UNSUBSCRIBE = text(
    """
    INSERT INTO email_preferences AS p
        (contact_id, unsubscribed_all, unsubscribed_at, source, created_at, updated_at)
    VALUES (:id, true, CAST(:now AS timestamptz), :source,
            CAST(:now AS timestamptz), CAST(:now AS timestamptz))
    ON CONFLICT (contact_id) DO UPDATE SET
        unsubscribed_all = true,
        unsubscribed_at = EXCLUDED.unsubscribed_at,
        source = EXCLUDED.source,
        updated_at = EXCLUDED.updated_at
    WHERE NOT p.unsubscribed_all
    RETURNING contact_id
    """
)

_RESUBSCRIBE = text(
    """
    UPDATE email_preferences SET
        unsubscribed_all = false,
        resubscribed_at = CAST(:now AS timestamptz),
        source = :source,
        updated_at = CAST(:now AS timestamptz)
    WHERE contact_id = :id AND unsubscribed_all
    RETURNING contact_id
    """
)


async def set_unsubscribed_all(
    session: AsyncSession,
    contact_id: uuid.UUID,
    unsubscribed: bool,
    *,
    source: str,
    now: datetime | None = None,
) -> bool:
    """Unsubscribe the contact from all non-transactional email, or take that back.

    The caller checks that the contact is live and commits.

    Returns:
        True when the state changed, False when it already was as asked.
    """
    statement = _UNSUBSCRIBE if unsubscribed else _RESUBSCRIBE
    changed = await session.scalar(
        statement, {"id": contact_id, "now": aware_now(now), "source": source}
    )
    return changed is not None
