"""Rate-limit counters in Postgres: one row per (bucket, fixed window).

The counting statement is a single ``INSERT .. ON CONFLICT DO UPDATE .. WHERE hits <
limit RETURNING hits``: the row lock taken by the upsert serialises concurrent requests
of one bucket, and a request arriving when the window is full matches the ``WHERE``
with no row to update, so it returns nothing and is not counted. A client that keeps
hammering while limited therefore gets its full budget back when the window turns.

Both statements run on a psycopg connection: counting happens on every API request.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

_HIT = """
INSERT INTO rate_limit_counters AS c (bucket, window_start, hits)
VALUES (%(bucket)s, %(window_start)s, 1)
ON CONFLICT (bucket, window_start) DO UPDATE
SET hits = c.hits + 1
WHERE c.hits < %(limit)s
RETURNING hits
"""

_PRUNE = "DELETE FROM rate_limit_counters WHERE window_start < %(before)s"


async def hit(
    conn: psycopg.AsyncConnection[Any], *, bucket: str, window_start: datetime, limit: int
) -> int | None:
    """Count one request in ``bucket``'s window if it has room.

    Returns:
        The window's hits including this one, or None when the window was already full
        (the request is rejected and nothing is written).
    """
    cursor = await conn.execute(
        _HIT, {"bucket": bucket, "window_start": window_start, "limit": limit}
    )
    row = await cursor.fetchone()
    return None if row is None else int(row[0])


async def prune(conn: psycopg.AsyncConnection[Any], *, before: datetime) -> int:
    """Delete counters of windows that started before ``before``; returns how many."""
    cursor = await conn.execute(_PRUNE, {"before": before})
    return cursor.rowcount
