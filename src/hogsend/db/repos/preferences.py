"""Email preferences: a contact's global unsubscribe, its list choices, and list audiences.

The mailer's ``unsubscribed`` gate reads the same two tables by contact
(``email_preferences.unsubscribed_all`` and ``list_subscriptions``), so whatever is
written here is what the next send obeys. List choices themselves are written by
:func:`hogsend.db.repos.contacts.set_list_subscriptions` (one statement, shared with
ingest). Functions take the caller's session and never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.clock import aware_now
from hogsend.core.definitions import ListDefinition


@dataclass(frozen=True, slots=True, kw_only=True)
class PreferenceState:
    """A contact's stored preferences.

    Attributes:
        unsubscribed_all: the contact opted out of all non-transactional email.
        unsubscribed_at: when it last did.
        resubscribed_at: when it last took that back.
        source: who wrote the global choice last.
        choices: explicit choice per list or category id (no entry: the list's default).
    """

    unsubscribed_all: bool = False
    unsubscribed_at: datetime | None = None
    resubscribed_at: datetime | None = None
    source: str | None = None
    choices: dict[str, bool] = field(default_factory=dict)


async def read_state(session: AsyncSession, contact_id: uuid.UUID) -> PreferenceState:
    """The contact's global choice and list choices (defaults when it never chose)."""
    row = (
        await session.execute(
            text(
                "SELECT unsubscribed_all, unsubscribed_at, resubscribed_at, source"
                " FROM email_preferences WHERE contact_id = :c"
            ),
            {"c": contact_id},
        )
    ).first()
    choices = {
        r.list_id: r.subscribed
        for r in await session.execute(
            text("SELECT list_id, subscribed FROM list_subscriptions WHERE contact_id = :c"),
            {"c": contact_id},
        )
    }
    if row is None:
        return PreferenceState(choices=choices)
    return PreferenceState(
        unsubscribed_all=row.unsubscribed_all,
        unsubscribed_at=row.unsubscribed_at,
        resubscribed_at=row.resubscribed_at,
        source=row.source,
        choices=choices,
    )


_UNSUBSCRIBE_ALL = text(
    """
    INSERT INTO email_preferences AS p (contact_id, unsubscribed_all, unsubscribed_at, source,
                                        created_at, updated_at)
    VALUES (:c, true, CAST(:now AS timestamptz), :source, CAST(:now AS timestamptz),
            CAST(:now AS timestamptz))
    ON CONFLICT (contact_id) DO UPDATE SET
        unsubscribed_all = true,
        unsubscribed_at = EXCLUDED.unsubscribed_at,
        source = EXCLUDED.source,
        updated_at = EXCLUDED.updated_at
    WHERE NOT p.unsubscribed_all
    RETURNING contact_id
    """
)

_RESUBSCRIBE_ALL = text(
    """
    UPDATE email_preferences SET
        unsubscribed_all = false,
        resubscribed_at = CAST(:now AS timestamptz),
        source = :source,
        updated_at = CAST(:now AS timestamptz)
    WHERE contact_id = :c AND unsubscribed_all
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
    """Record (``True``) or take back (``False``) a global unsubscribe; whether it changed.

    Idempotent: repeating the current choice writes nothing, so the first time and
    source stay. Taking back an unsubscribe that was never made writes no row. List
    choices are untouched either way.
    """
    statement = _UNSUBSCRIBE_ALL if unsubscribed else _RESUBSCRIBE_ALL
    changed = await session.scalar(
        statement, {"c": contact_id, "now": aware_now(now), "source": source}
    )
    return changed is not None


_ELIGIBLE = """
    SELECT c.id FROM contacts c
    WHERE c.deleted_at IS NULL AND c.email IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM email_preferences p
                      WHERE p.contact_id = c.id AND p.unsubscribed_all)
      AND NOT EXISTS (SELECT 1 FROM email_suppressions s
                      WHERE lower(s.email) = lower(c.email) AND s.suppressed)
"""

_ELIGIBLE_COUNT = text(f"SELECT count(*) FROM ({_ELIGIBLE}) e")

_CHOICE_COUNTS = text(
    f"""
    SELECT l.list_id,
           count(*) FILTER (WHERE l.subscribed) AS yes,
           count(*) FILTER (WHERE NOT l.subscribed) AS no
    FROM ({_ELIGIBLE}) e JOIN list_subscriptions l ON l.contact_id = e.id
    WHERE l.list_id = ANY(CAST(:ids AS text[]))
    GROUP BY l.list_id
    """
)


async def subscriber_counts(
    session: AsyncSession, lists: Sequence[ListDefinition]
) -> dict[str, int]:
    """Per list, the live contacts a send to it would reach now.

    A contact counts when it has an address, has not unsubscribed from everything, its
    address is not suppressed, and the polarity rule says it is subscribed: a
    ``default_opt_in`` list counts everyone without an explicit unsubscribe, any other
    list only explicit subscribers. Two statements, whatever the number of lists.
    """
    if not lists:
        return {}
    eligible = int(await session.scalar(_ELIGIBLE_COUNT) or 0)
    counted = {
        row.list_id: (int(row.yes), int(row.no))
        for row in await session.execute(_CHOICE_COUNTS, {"ids": [item.id for item in lists]})
    }
    counts: dict[str, int] = {}
    for item in lists:
        yes, no = counted.get(item.id, (0, 0))
        counts[item.id] = eligible - no if item.default_opt_in else yes
    return counts
