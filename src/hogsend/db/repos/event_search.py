"""Searching the event log: by a part of the name, the contact's email, a property value.

The admin event listing (``events.list_events``) filters by exact name and contact id;
search is for a person who remembers only part of a name or a property value.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True, kw_only=True)
class FoundEvent:
    """One matching event and the contact it belongs to."""

    id: uuid.UUID
    name: str
    contact_id: uuid.UUID | None
    contact_key: str
    email: str | None
    properties: dict[str, Any]
    source: str | None
    occurred_at: datetime


_SEARCH = text(
    """
    SELECT e.id, e.event AS name, e.contact_id, e.user_id AS contact_key, c.email,
           e.properties, e.source, e.occurred_at
    FROM user_events e
    LEFT JOIN contacts c ON c.id = e.contact_id
    WHERE (CAST(:name AS text) IS NULL OR e.event ILIKE CAST(:name AS text) ESCAPE '\\')
      AND (CAST(:email AS text) IS NULL OR lower(c.email) = lower(CAST(:email AS text)))
      AND (CAST(:props AS jsonb) IS NULL OR e.properties @> CAST(:props AS jsonb))
      AND (CAST(:since AS timestamptz) IS NULL OR e.occurred_at >= CAST(:since AS timestamptz))
      AND (CAST(:until AS timestamptz) IS NULL OR e.occurred_at <= CAST(:until AS timestamptz))
    ORDER BY e.occurred_at DESC, e.id DESC
    LIMIT :limit OFFSET :offset
    """
)


def _like(fragment: str) -> str:
    escaped = fragment.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


async def search(
    session: AsyncSession,
    *,
    name: str | None = None,
    email: str | None = None,
    properties: dict[str, Any] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[FoundEvent], bool]:
    """Events newest first matching every given filter, and whether more follow.

    Args:
        name: a case-insensitive part of the event name.
        email: the contact's email (case-insensitive, exact).
        properties: key/value pairs the event's properties must contain.
        since: occurred at or after.
        until: occurred at or before.
        limit: page size.
        offset: rows to skip.
    """
    rows = await session.execute(
        _SEARCH,
        {
            "name": None if not name else _like(name),
            "email": email or None,
            "props": None if not properties else json.dumps(properties),
            "since": since,
            "until": until,
            "limit": limit + 1,
            "offset": offset,
        },
    )
    found = [FoundEvent(**{**dict(r._mapping), "properties": r.properties or {}}) for r in rows]
    return found[:limit], len(found) > limit
