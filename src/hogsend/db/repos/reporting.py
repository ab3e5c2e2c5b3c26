"""Numbers for the Studio overview: contacts, activity per day, email engagement.

Days are UTC calendar days. Every series is zero-filled by ``generate_series`` in the
same statement, so a chart gets one point per day without a query per day.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.clock import aware_now


@dataclass(frozen=True, slots=True, kw_only=True)
class DailyCount:
    """How many things happened on one UTC day."""

    day: date
    count: int


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailEngagement:
    """What became of the messages that went out in a period (attempts made in it).

    ``sent`` counts attempts that reached the provider (decision ``sent`` or
    ``redirected``); the others count those of them with that outcome. ``gated`` counts
    attempts a gate stopped (suppressed, unsubscribed, capped ...), by decision.
    """

    sent: int
    delivered: int
    opened: int
    clicked: int
    bounced: int
    complained: int
    gated: dict[str, int]

    def rate(self, count: int) -> float | None:
        """``count`` as a share of ``sent``; None when nothing was sent."""
        return count / self.sent if self.sent else None


def period_start(days: int, now: datetime | None = None) -> datetime:
    """Midnight UTC of the first of the last ``days`` days (today included)."""
    today = aware_now(now).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    return datetime(first.year, first.month, first.day, tzinfo=UTC)


def _series_sql(table: str, column: str, where: str) -> str:
    return f"""
        SELECT d.day::date AS day, coalesce(c.n, 0) AS n
        FROM generate_series(CAST(:first AS date), CAST(:last AS date), interval '1 day')
            AS d(day)
        LEFT JOIN (
            SELECT ({column} AT TIME ZONE 'UTC')::date AS day, count(*) AS n
            FROM {table}
            WHERE {column} >= CAST(:start AS timestamptz) AND {where}
            GROUP BY 1
        ) AS c ON c.day = d.day::date
        ORDER BY 1
    """


_EVENTS_PER_DAY = text(_series_sql("user_events", "occurred_at", "true"))
_SENDS_PER_DAY = text(
    _series_sql("email_sends", "created_at", "decision IN ('sent', 'redirected')")
)


async def _series(
    session: AsyncSession, statement: object, days: int, now: datetime | None
) -> list[DailyCount]:
    if days < 1:
        raise ValueError("days must be at least 1")
    start = period_start(days, now)
    params = {"start": start, "first": start.date(), "last": start.date() + timedelta(days - 1)}
    rows = await session.execute(statement, params)  # type: ignore[call-overload]
    return [DailyCount(day=row.day, count=int(row.n)) for row in rows]


async def events_per_day(
    session: AsyncSession, *, days: int, now: datetime | None = None
) -> list[DailyCount]:
    """Events that occurred on each of the last ``days`` days, oldest first."""
    return await _series(session, _EVENTS_PER_DAY, days, now)


async def sends_per_day(
    session: AsyncSession, *, days: int, now: datetime | None = None
) -> list[DailyCount]:
    """Messages handed to the provider on each of the last ``days`` days, oldest first."""
    return await _series(session, _SENDS_PER_DAY, days, now)


_LIVE_CONTACTS = text("SELECT count(*) FROM contacts WHERE deleted_at IS NULL")

_ENGAGEMENT = text(
    """
    WITH s AS (
        SELECT decision, status, delivered_at, opened_at, clicked_at, bounced_at, complained_at
        FROM email_sends WHERE created_at >= CAST(:since AS timestamptz)
    ), out AS (
        SELECT * FROM s WHERE decision IN ('sent', 'redirected')
    ), gated AS (
        SELECT decision, count(*) AS n FROM s WHERE status = 'skipped' GROUP BY decision
    )
    SELECT
        count(*) AS sent,
        count(*) FILTER (WHERE delivered_at IS NOT NULL OR opened_at IS NOT NULL
                         OR clicked_at IS NOT NULL) AS delivered,
        count(*) FILTER (WHERE opened_at IS NOT NULL) AS opened,
        count(*) FILTER (WHERE clicked_at IS NOT NULL) AS clicked,
        count(*) FILTER (WHERE bounced_at IS NOT NULL OR status = 'bounced') AS bounced,
        count(*) FILTER (WHERE complained_at IS NOT NULL OR status = 'complained') AS complained,
        (SELECT coalesce(jsonb_object_agg(decision, n), '{}'::jsonb) FROM gated) AS gated
    FROM out
    """
)


async def live_contacts(session: AsyncSession) -> int:
    """Contacts that are not deleted, merged away or erased."""
    return int((await session.execute(_LIVE_CONTACTS)).scalar_one())


async def email_engagement(session: AsyncSession, *, since: datetime) -> EmailEngagement:
    """Outcomes of the send attempts made since ``since`` (one statement)."""
    row = (await session.execute(_ENGAGEMENT, {"since": since})).one()
    return EmailEngagement(
        sent=int(row.sent),
        delivered=int(row.delivered),
        opened=int(row.opened),
        clicked=int(row.clicked),
        bounced=int(row.bounced),
        complained=int(row.complained),
        gated={str(k): int(v) for k, v in sorted((row.gated or {}).items())},
    )
