"""The dead-letter queue: work that failed past its retries, waiting for an operator.

An entry is ``pending`` until someone decides: ``retried`` (its work was put back in
line; if it fails for good again, a new entry is written) or ``discarded``. Both
decisions are final for the entry.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.tables.operations import DeadLetter

STATUSES = ("pending", "retried", "discarded")


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterEntry:
    """One parked piece of work."""

    id: uuid.UUID
    source: str
    source_id: str | None
    payload: dict[str, Any]
    error: str
    attempts: int
    status: str
    retried_at: datetime | None
    resolved_at: datetime | None
    created_at: datetime
    updated_at: datetime


def _entry(row: DeadLetter) -> DeadLetterEntry:
    return DeadLetterEntry(
        id=row.id,
        source=row.source,
        source_id=row.source_id,
        payload=row.payload,
        error=row.error,
        attempts=row.attempts,
        status=row.status,
        retried_at=row.retried_at,
        resolved_at=row.resolved_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def add(
    session: AsyncSession,
    *,
    source: str,
    source_id: str | None,
    payload: dict[str, Any],
    error: str,
    attempts: int,
) -> uuid.UUID:
    """Park a failed piece of work; run it in the transaction that gave up on it."""
    entry_id: uuid.UUID | None = await session.scalar(
        insert(DeadLetter)
        .values(source=source, source_id=source_id, payload=payload, error=error, attempts=attempts)
        .returning(DeadLetter.id)
    )
    assert entry_id is not None
    return entry_id


async def list_entries(
    session: AsyncSession,
    *,
    source: str | None = None,
    status: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[DeadLetterEntry], int]:
    """Entries newest first matching every given filter, and how many match in all."""
    where = []
    if source is not None:
        where.append(DeadLetter.source == source)
    if status is not None:
        where.append(DeadLetter.status == status)
    total = await session.scalar(select(func.count()).select_from(DeadLetter).where(*where))
    rows = await session.scalars(
        select(DeadLetter)
        .where(*where)
        .order_by(DeadLetter.created_at.desc(), DeadLetter.id.desc())
        .limit(limit)
        .offset(offset)
    )
    return [_entry(row) for row in rows], int(total or 0)


async def get(
    session: AsyncSession, entry_id: uuid.UUID, *, for_update: bool = False
) -> DeadLetterEntry | None:
    """One entry; ``for_update`` locks it until the transaction ends (decisions race)."""
    query = select(DeadLetter).where(DeadLetter.id == entry_id)
    if for_update:
        query = query.with_for_update()
    row = await session.scalar(query)
    return None if row is None else _entry(row)


async def resolve(session: AsyncSession, entry_id: uuid.UUID, *, status: str) -> DeadLetterEntry:
    """Record the decision on a pending entry (``retried`` or ``discarded``)."""
    if status not in ("retried", "discarded"):
        raise ValueError(f"an entry is resolved as retried or discarded, not {status!r}")
    now = func.now()
    values: dict[str, Any] = {"status": status, "resolved_at": now, "updated_at": now}
    if status == "retried":
        values["retried_at"] = now
    row = await session.scalar(
        update(DeadLetter)
        .where(DeadLetter.id == entry_id)
        .values(**values)
        .returning(DeadLetter)
        .execution_options(populate_existing=True)
    )
    assert row is not None
    return _entry(row)
