"""Rate-limit counters in Postgres: one row per (bucket, fixed window).

The counting statement is a single ``INSERT .. ON CONFLICT DO UPDATE .. WHERE hits <
limit RETURNING hits``: the row lock taken by the upsert serialises concurrent requests
of one bucket, and a request arriving when the window is full matches the ``WHERE``
with no row to update, so it returns nothing and is not counted. A client that keeps
hammering while limited therefore gets its full budget back when the window turns.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.tables.operations import RateLimitCounter


async def hit(
    session: AsyncSession, *, bucket: str, window_start: datetime, limit: int
) -> int | None:
    """Count one request in ``bucket``'s window if it has room.

    Returns:
        The window's hits including this one, or None when the window was already full
        (the request is rejected and nothing is written).
    """
    upsert = insert(RateLimitCounter).values(bucket=bucket, window_start=window_start, hits=1)
    stmt = upsert.on_conflict_do_update(
        index_elements=[RateLimitCounter.bucket, RateLimitCounter.window_start],
        set_={"hits": RateLimitCounter.hits + 1},
        where=RateLimitCounter.hits < limit,
    ).returning(RateLimitCounter.hits)
    hits: int | None = await session.scalar(stmt)
    return hits


async def prune(session: AsyncSession, *, before: datetime) -> int:
    """Delete counters of windows that started before ``before``; returns how many."""
    result = await session.execute(
        delete(RateLimitCounter).where(RateLimitCounter.window_start < before)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
