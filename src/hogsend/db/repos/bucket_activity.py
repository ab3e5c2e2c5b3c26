"""Entries into and exits from one bucket per UTC day (the Studio chart and its API)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketDay:
    """How many contacts entered and left the bucket on one day."""

    day: date
    entered: int
    left: int


_PER_DAY = text(
    """
    SELECT d.day::date AS day, coalesce(e.n, 0) AS entered, coalesce(l.n, 0) AS left
    FROM generate_series(CAST(:first AS date), CAST(:last AS date), interval '1 day') AS d(day)
    LEFT JOIN (
        SELECT (entered_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n
        FROM bucket_memberships
        WHERE (CAST(:bucket AS text) IS NULL OR bucket_id = CAST(:bucket AS text))
          AND deleted_at IS NULL AND entered_at >= :start
        GROUP BY 1
    ) e ON e.day = d.day::date
    LEFT JOIN (
        SELECT (left_at AT TIME ZONE 'UTC')::date AS day, count(*) AS n
        FROM bucket_memberships
        WHERE (CAST(:bucket AS text) IS NULL OR bucket_id = CAST(:bucket AS text))
          AND deleted_at IS NULL AND left_at >= :start
        GROUP BY 1
    ) l ON l.day = d.day::date
    ORDER BY 1
    """
)


async def per_day(
    session: AsyncSession, bucket_id: str | None, *, start: datetime, days: int
) -> list[BucketDay]:
    """Entered and left counts for each of ``days`` UTC days from ``start``'s day, of one
    bucket (or of all when ``bucket_id`` is None)."""
    if days < 1:
        raise ValueError("days must be at least 1")
    first = start.date()
    rows = await session.execute(
        _PER_DAY,
        {"bucket": bucket_id, "start": start, "first": first, "last": first + timedelta(days - 1)},
    )
    return [BucketDay(day=r.day, entered=int(r.entered), left=int(r.left)) for r in rows]


_TOTALS = text(
    """
    SELECT bucket_id,
           count(*) FILTER (WHERE entered_at >= :start) AS entered,
           count(*) FILTER (WHERE left_at >= :start) AS left
    FROM bucket_memberships
    WHERE deleted_at IS NULL AND (entered_at >= :start OR left_at >= :start)
    GROUP BY bucket_id
    """
)


async def totals_since(session: AsyncSession, start: datetime) -> dict[str, tuple[int, int]]:
    """Per bucket, how many entered and left since ``start`` (buckets with none left out)."""
    rows = await session.execute(_TOTALS, {"start": start})
    return {r.bucket_id: (int(r.entered), int(r.left)) for r in rows}
