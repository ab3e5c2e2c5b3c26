"""The current time as repositories take it: an explicit aware instant, or now in UTC."""

from __future__ import annotations

from datetime import UTC, datetime


def aware_now(now: datetime | None = None) -> datetime:
    """``now`` if given (it must be timezone-aware), else the current UTC time.

    Raises:
        ValueError: ``now`` is naive.
    """
    if now is None:
        return datetime.now(UTC)
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return now
