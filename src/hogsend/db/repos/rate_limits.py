"""Rate-limit counters in Postgres: one row per (bucket, fixed window).

The counting statement is a single ``INSERT .. ON CONFLICT DO UPDATE .. WHERE hits + n
<= limit RETURNING hits``, counting ``n`` requests all or nothing: the row lock taken by
the upsert serialises concurrent takes of one bucket, and a take that does not fit
matches the ``WHERE`` with no row to update, so it returns nothing and is not counted. A
client that keeps hammering while limited therefore gets its full budget back when the
window turns. API processes take a few hits ahead and spend them without a round trip
(see :class:`hogsend.api.ratelimit.PostgresRateLimiter`); ``n = 1`` counts one request.

The statements run on a psycopg connection: counting happens on the API's hot path.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import psycopg

_TAKE = """
INSERT INTO rate_limit_counters AS c (bucket, window_start, hits)
VALUES (%(bucket)s, %(window_start)s, %(n)s)
ON CONFLICT (bucket, window_start) DO UPDATE
SET hits = c.hits + %(n)s
WHERE c.hits + %(n)s <= %(limit)s
RETURNING hits
"""

_PRUNE = "DELETE FROM rate_limit_counters WHERE window_start < %(before)s"


async def take(
    conn: psycopg.AsyncConnection[Any],
    *,
    bucket: str,
    window_start: datetime,
    n: int,
    limit: int,
) -> int | None:
    """Count ``n`` requests in ``bucket``'s window if all of them fit (``1 <= n <= limit``).

    Returns:
        The window's hits including these, or None when fewer than ``n`` were left
        (nothing is written).
    """
    if not 1 <= n <= limit:
        raise ValueError(f"n must be between 1 and the limit ({limit}), not {n}")
    cursor = await conn.execute(
        _TAKE, {"bucket": bucket, "window_start": window_start, "n": n, "limit": limit}
    )
    row = await cursor.fetchone()
    return None if row is None else int(row[0])


async def prune(conn: psycopg.AsyncConnection[Any], *, before: datetime) -> int:
    """Delete counters of windows that started before ``before``; returns how many."""
    cursor = await conn.execute(_PRUNE, {"before": before})
    return cursor.rowcount
