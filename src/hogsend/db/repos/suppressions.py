"""Suppressed addresses (``email_suppressions``): reading, changing and listing them.

One row per address, unique on ``lower(email)``, created by the first bounce,
complaint or admin action about it and never keyed on a contact: a suppression applies
to every send to the address, whoever it is for. The rules that change a row are pure
(:mod:`hogsend.core.suppression`); :func:`change` applies one under the same advisory
lock the mailer takes on an address, so a gate check and a suppression cannot interleave.

Functions take the caller's session and never commit.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.pagination import InvalidCursor, Page, decode_cursor, encode_cursor, page_of
from hogsend.core.suppression import AddressHealth, Reason
from hogsend.db.repos.sends import lock_address


@dataclass(frozen=True, slots=True, kw_only=True)
class SuppressionRecord:
    """One address's row: its health plus bookkeeping."""

    id: uuid.UUID
    email: str
    health: AddressHealth
    note: str | None
    created_at: datetime
    updated_at: datetime


def audit_state(record: SuppressionRecord | None) -> dict[str, Any]:
    """An address's row as an audit entry's ``before`` / ``after`` keeps it (JSON-safe).

    An address with no row is recorded as not suppressed, so every entry has both sides.
    """
    if record is None:
        return {"suppressed": False, "reason": None, "suppressedAt": None, "note": None}
    health = record.health
    return {
        "suppressed": health.suppressed,
        "reason": health.reason,
        "suppressedAt": health.suppressed_at.isoformat() if health.suppressed_at else None,
        "note": record.note,
        "bounceCount": health.bounce_count,
        "softBounceStreak": health.soft_bounce_streak,
        "complaintCount": health.complaint_count,
    }


_COLUMNS = (
    "id, email, suppressed, reason, suppressed_at, bounce_count, soft_bounce_streak,"
    " complaint_count, last_bounce_at, last_bounce_type, last_complaint_at, note,"
    " created_at, updated_at"
)


def _record(row: Any) -> SuppressionRecord:
    return SuppressionRecord(
        id=row.id,
        email=row.email,
        health=AddressHealth(
            suppressed=row.suppressed,
            reason=cast("Reason | None", row.reason),
            suppressed_at=row.suppressed_at,
            bounce_count=row.bounce_count,
            soft_bounce_streak=row.soft_bounce_streak,
            complaint_count=row.complaint_count,
            last_bounce_at=row.last_bounce_at,
            last_bounce_type=row.last_bounce_type,
            last_complaint_at=row.last_complaint_at,
        ),
        note=row.note,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def get(
    session: AsyncSession, email: str, *, for_update: bool = False
) -> SuppressionRecord | None:
    """The row of ``email`` (compared case-insensitively), if the address has one."""
    lock = " FOR UPDATE" if for_update else ""
    row = (
        await session.execute(
            text(f"SELECT {_COLUMNS} FROM email_suppressions WHERE lower(email) = lower(:e){lock}"),
            {"e": email},
        )
    ).first()
    return _record(row) if row is not None else None


_UPDATE = text(
    f"""
    UPDATE email_suppressions SET
        suppressed = :suppressed, reason = :reason, suppressed_at = :suppressed_at,
        bounce_count = :bounce_count, soft_bounce_streak = :soft_bounce_streak,
        complaint_count = :complaint_count, last_bounce_at = :last_bounce_at,
        last_bounce_type = :last_bounce_type, last_complaint_at = :last_complaint_at,
        note = CASE WHEN :set_note THEN :note ELSE note END, updated_at = now()
    WHERE id = :id
    RETURNING {_COLUMNS}
    """
)

_INSERT_BLANK = text(
    f"""
    INSERT INTO email_suppressions (email) VALUES (:e)
    ON CONFLICT (lower(email)) DO NOTHING
    RETURNING {_COLUMNS}
    """
)


async def change(
    session: AsyncSession,
    email: str,
    rule: Callable[[AddressHealth], AddressHealth],
    *,
    create: bool = True,
    note: str | None = None,
) -> tuple[SuppressionRecord | None, SuppressionRecord | None]:
    """Apply ``rule`` to the health of ``email``; return the row before and after.

    Args:
        email: a normalised address (stored as given the first time).
        rule: the new health from the current one (a function of core.suppression).
        create: create the row when the address has none (False: leave it absent).
        note: replaces the row's note when given.

    Returns:
        ``(before, after)``: ``before`` is None when the row was created; both are None
        when there was no row and ``create`` is False. Nothing is written when the rule
        changes nothing and no note is given.
    """
    await lock_address(session, email)
    before = await get(session, email, for_update=True)
    current = before
    if current is None:
        if not create:
            return None, None
        row = (await session.execute(_INSERT_BLANK, {"e": email})).first()
        # Only an import (which takes no address lock) can have inserted it meanwhile.
        current = _record(row) if row is not None else await get(session, email, for_update=True)
        assert current is not None
    health = rule(current.health)
    if health == current.health and note is None and before is not None:
        return before, before
    row = (
        await session.execute(
            _UPDATE,
            {
                "id": current.id,
                "suppressed": health.suppressed,
                "reason": health.reason,
                "suppressed_at": health.suppressed_at,
                "bounce_count": health.bounce_count,
                "soft_bounce_streak": health.soft_bounce_streak,
                "complaint_count": health.complaint_count,
                "last_bounce_at": health.last_bounce_at,
                "last_bounce_type": health.last_bounce_type,
                "last_complaint_at": health.last_complaint_at,
                "set_note": note is not None,
                "note": note,
            },
        )
    ).first()
    return before, _record(row)


# --------------------------------------------------------------------------- import


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportRow:
    """One valid line of an import: a normalised address, its reason and an optional note."""

    email: str
    reason: Reason
    note: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportOutcome:
    """What an import changed.

    Attributes:
        suppressed: addresses that were not suppressed and now are.
        already_suppressed: addresses that were suppressed before (left unchanged).
        duplicates: rows naming an address an earlier row of the same import named.
    """

    suppressed: int
    already_suppressed: int
    duplicates: int


# One statement for the whole file: the first row per address wins; an address that is
# already suppressed keeps its reason, time and note.
_IMPORT = text(
    """
    WITH v AS (
        SELECT DISTINCT ON (lower(email)) email, reason, note
        FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(ord int, email text, reason text,
                                                           note text)
        ORDER BY lower(email), ord
    ), up AS (
        INSERT INTO email_suppressions AS s (email, suppressed, reason, suppressed_at, note)
        SELECT email, true, reason, CAST(:now AS timestamptz), note FROM v
        ON CONFLICT (lower(email)) DO UPDATE SET
            suppressed = true,
            reason = excluded.reason,
            suppressed_at = excluded.suppressed_at,
            note = coalesce(excluded.note, s.note),
            updated_at = now()
        WHERE NOT s.suppressed
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM v) AS distinct_rows, (SELECT count(*) FROM up) AS changed
    """
)


async def import_rows(
    session: AsyncSession, rows: Sequence[ImportRow], *, now: datetime
) -> ImportOutcome:
    """Suppress every address of ``rows`` in one set-based statement."""
    if not rows:
        return ImportOutcome(suppressed=0, already_suppressed=0, duplicates=0)
    payload = json.dumps(
        [
            {"ord": i, "email": row.email, "reason": row.reason, "note": row.note}
            for i, row in enumerate(rows)
        ]
    )
    result = (await session.execute(_IMPORT, {"rows": payload, "now": now})).one()
    distinct, changed = int(result.distinct_rows), int(result.changed)
    return ImportOutcome(
        suppressed=changed,
        already_suppressed=distinct - changed,
        duplicates=len(rows) - distinct,
    )


# --------------------------------------------------------------------------- listing


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _cursor(record: SuppressionRecord) -> str:
    return encode_cursor(record.created_at.isoformat(), str(record.id))


async def list_suppressions(
    session: AsyncSession,
    *,
    suppressed: bool | None = True,
    reason: Reason | None = None,
    search: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[SuppressionRecord]:
    """Address rows, newest first.

    Args:
        suppressed: True (default) only suppressed addresses; False only addresses with
            bounces or complaints on record that are not suppressed; None both.
        reason: only this reason.
        search: a part of the address (case-insensitive; ``%`` and ``_`` are literal).
        cursor: ``next_cursor`` of the previous page.
        limit: page size.

    Raises:
        InvalidCursor: ``cursor`` is not one this listing handed out.
    """
    where = ["true"]
    params: dict[str, Any] = {"limit": limit + 1}
    if suppressed is not None:
        where.append("suppressed = :suppressed")
        params["suppressed"] = suppressed
    if reason is not None:
        where.append("reason = :reason")
        params["reason"] = reason
    if search:
        where.append("email ILIKE :pattern")
        params["pattern"] = f"%{_escape_like(search)}%"
    if cursor is not None:
        at, last_id = decode_cursor(cursor, 2)
        try:
            params["at"] = datetime.fromisoformat(at)
            params["id"] = uuid.UUID(last_id)
        except ValueError:
            raise InvalidCursor("cursor is not valid") from None
        if params["at"].utcoffset() is None:
            raise InvalidCursor("cursor is not valid")
        where.append("(created_at, id) < (:at, :id)")
    rows = await session.execute(
        text(
            f"SELECT {_COLUMNS} FROM email_suppressions WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT :limit"
        ),
        params,
    )
    return page_of([_record(row) for row in rows], limit, _cursor)
