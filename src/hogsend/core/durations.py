"""Durations are plain :class:`datetime.timedelta` values; these build them readably."""

from __future__ import annotations

from datetime import timedelta


def seconds(n: float) -> timedelta:
    """``n`` seconds."""
    return timedelta(seconds=n)


def minutes(n: float) -> timedelta:
    """``n`` minutes."""
    return timedelta(minutes=n)


def hours(n: float) -> timedelta:
    """``n`` hours."""
    return timedelta(hours=n)


def days(n: float) -> timedelta:
    """``n`` days of 24 hours."""
    return timedelta(days=n)


def weeks(n: float) -> timedelta:
    """``n`` weeks of 7 days."""
    return timedelta(weeks=n)
