"""Finding contacts by one of their properties (``plan = pro``), keyset-paged.

Key-based search (email, user id, anonymous id, contact id) is
:func:`hogsend.db.repos.contacts.list_contacts`; this adds the property filter Studio
offers next to it. The match is on the property's text form (``properties ->> key``),
so ``49``, ``true`` and ``pro`` all match what a person would type. There is no index
on arbitrary properties: this is a scan of live contacts, fine for an operator's
occasional search, not for a hot path.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.contact import Contact
from hogsend.core.pagination import InvalidCursor, Page, decode_cursor, encode_cursor, page_of
from hogsend.db.repos.contacts import CONTACT_COLUMNS, MAX_PAGE_SIZE, contact_from_row

MAX_PROPERTY_KEY_LENGTH = 200

_BY_PROPERTY = text(
    f"""
    SELECT {CONTACT_COLUMNS} FROM contacts
    WHERE deleted_at IS NULL
      AND properties ->> CAST(:key AS text) = CAST(:value AS text)
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (created_at, id) < (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY created_at DESC, id DESC
    LIMIT :limit
    """
)


async def contacts_with_property(
    session: AsyncSession,
    key: str,
    value: str,
    *,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[Contact]:
    """Live contacts whose property ``key`` reads ``value``, newest first.

    Raises:
        InvalidCursor: ``cursor`` is not one this listing handed out.
        ValueError: an empty or overlong key, or ``limit`` outside 1..500.
    """
    if not key or len(key) > MAX_PROPERTY_KEY_LENGTH:
        raise ValueError(f"a property name has 1 to {MAX_PROPERTY_KEY_LENGTH} characters")
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    after_at: datetime | None = None
    after_id: uuid.UUID | None = None
    if cursor is not None:
        at, ident = decode_cursor(cursor, 2)
        try:
            after_at, after_id = datetime.fromisoformat(at), uuid.UUID(ident)
        except ValueError:
            raise InvalidCursor("cursor is not valid") from None
        if after_at.utcoffset() is None:
            raise InvalidCursor("cursor is not valid")
    rows = await session.execute(
        _BY_PROPERTY,
        {
            "key": key,
            "value": value,
            "after_at": after_at,
            "after_id": after_id,
            "limit": limit + 1,
        },
    )
    found = [contact_from_row(row) for row in rows]
    return page_of(
        found,
        limit,
        lambda c: encode_cursor(c.created_at.isoformat() if c.created_at else "", str(c.id)),
    )
