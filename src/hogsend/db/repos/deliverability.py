"""Deliverability: per-template outcomes, the daily sent/bounce/complaint trend, window rates.

A message counts as *sent* when the provider took it (decision ``sent`` or
``redirected``); delivered, opened, clicked, bounced and complained count those
messages with that outcome, by timestamp or status (providers report either).
Daily series are zero-filled by ``generate_series`` in the same statement.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.repos.funnels import BOUNCED, COMPLAINED, DELIVERED, WENT_OUT


def ratio(part: int, whole: int) -> float | None:
    """``part / whole`` rounded to 4 places; None when ``whole`` is 0."""
    return round(part / whole, 4) if whole else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcomes:
    """Counts of messages that went out, and what became of them."""

    sent: int
    delivered: int
    opened: int
    clicked: int
    bounced: int
    complained: int

    @property
    def delivery_rate(self) -> float | None:
        """Delivered share of sent."""
        return ratio(self.delivered, self.sent)

    @property
    def open_rate(self) -> float | None:
        """Opened share of delivered (of sent when no delivery was reported)."""
        return ratio(self.opened, self.delivered or self.sent)

    @property
    def click_rate(self) -> float | None:
        """Clicked share of delivered (of sent when no delivery was reported)."""
        return ratio(self.clicked, self.delivered or self.sent)

    @property
    def bounce_rate(self) -> float | None:
        """Bounced share of sent."""
        return ratio(self.bounced, self.sent)

    @property
    def complaint_rate(self) -> float | None:
        """Complained share of sent."""
        return ratio(self.complained, self.sent)


_COUNTS = f"""
    count(*) AS sent,
    count(*) FILTER (WHERE {DELIVERED}) AS delivered,
    count(*) FILTER (WHERE opened_at IS NOT NULL) AS opened,
    count(*) FILTER (WHERE clicked_at IS NOT NULL) AS clicked,
    count(*) FILTER (WHERE {BOUNCED}) AS bounced,
    count(*) FILTER (WHERE {COMPLAINED}) AS complained
"""

_WINDOW = (
    "(CAST(:since AS timestamptz) IS NULL OR created_at >= CAST(:since AS timestamptz))"
    " AND (CAST(:until AS timestamptz) IS NULL OR created_at <= CAST(:until AS timestamptz))"
)


def _outcomes(row: object) -> Outcomes:
    m = row._mapping  # type: ignore[attr-defined]
    return Outcomes(
        sent=int(m["sent"]),
        delivered=int(m["delivered"]),
        opened=int(m["opened"]),
        clicked=int(m["clicked"]),
        bounced=int(m["bounced"]),
        complained=int(m["complained"]),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateStats:
    """Outcomes of one template's messages, and what the mailer's gates stopped."""

    template_key: str
    outcomes: Outcomes
    gated: int


_TEMPLATES = text(
    f"""
    SELECT template_key,
           count(*) FILTER (WHERE {WENT_OUT}) AS sent,
           count(*) FILTER (WHERE {WENT_OUT} AND {DELIVERED}) AS delivered,
           count(*) FILTER (WHERE {WENT_OUT} AND opened_at IS NOT NULL) AS opened,
           count(*) FILTER (WHERE {WENT_OUT} AND clicked_at IS NOT NULL) AS clicked,
           count(*) FILTER (WHERE {WENT_OUT} AND {BOUNCED}) AS bounced,
           count(*) FILTER (WHERE {WENT_OUT} AND {COMPLAINED}) AS complained,
           count(*) FILTER (WHERE status = 'skipped') AS gated
    FROM email_sends
    WHERE template_key IS NOT NULL AND {_WINDOW}
      AND (CAST(:template AS text) IS NULL OR template_key = CAST(:template AS text))
    GROUP BY template_key
    ORDER BY 2 DESC, template_key
    """
)


async def template_stats(
    session: AsyncSession,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    template: str | None = None,
) -> list[TemplateStats]:
    """Per template key, the outcomes of its messages sent in the window, most sent first."""
    rows = await session.execute(_TEMPLATES, {"since": since, "until": until, "template": template})
    return [
        TemplateStats(template_key=row.template_key, outcomes=_outcomes(row), gated=int(row.gated))
        for row in rows
    ]


@dataclass(frozen=True, slots=True, kw_only=True)
class TrendPoint:
    """One UTC day of the deliverability trend."""

    day: date
    outcomes: Outcomes


_TREND = text(
    f"""
    SELECT d.day::date AS day,
           coalesce(c.sent, 0) AS sent, coalesce(c.delivered, 0) AS delivered,
           coalesce(c.opened, 0) AS opened, coalesce(c.clicked, 0) AS clicked,
           coalesce(c.bounced, 0) AS bounced, coalesce(c.complained, 0) AS complained
    FROM generate_series(CAST(:first AS date), CAST(:last AS date), interval '1 day') AS d(day)
    LEFT JOIN (
        SELECT (created_at AT TIME ZONE 'UTC')::date AS day, {_COUNTS}
        FROM email_sends
        WHERE {WENT_OUT} AND created_at >= CAST(:start AS timestamptz)
        GROUP BY 1
    ) AS c ON c.day = d.day::date
    ORDER BY 1
    """
)


async def daily_trend(session: AsyncSession, *, start: datetime, days: int) -> list[TrendPoint]:
    """Sent, bounced, complained (and the rest) per UTC day from ``start``'s day, ``days`` long."""
    if days < 1:
        raise ValueError("days must be at least 1")
    first = start.date()
    params = {
        "start": start,
        "first": first,
        "last": date.fromordinal(first.toordinal() + days - 1),
    }
    rows = await session.execute(_TREND, params)
    return [TrendPoint(day=row.day, outcomes=_outcomes(row)) for row in rows]


_SINCE = text(f"SELECT {_COUNTS} FROM email_sends WHERE {WENT_OUT} AND created_at >= :since")


async def outcomes_since(session: AsyncSession, since: datetime) -> Outcomes:
    """Outcomes of every message sent since ``since`` (alert rules read their rates here)."""
    return _outcomes((await session.execute(_SINCE, {"since": since})).one())
