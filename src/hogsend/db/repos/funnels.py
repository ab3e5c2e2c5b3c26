"""Funnels: how far journey runs and campaign recipients got, counted from the real rows.

A journey funnel counts *runs* (enrolled → got a message → opened → clicked → ended);
a campaign funnel counts *recipients* (audience snapshot → sent → delivered → opened →
clicked, and how many bounced, complained or unsubscribed after their message). Each
funnel is one statement, so the steps agree with each other even while sends go on.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

# A send "went out" when the provider took it (test-mode redirects included).
WENT_OUT = "decision IN ('sent', 'redirected')"
DELIVERED = "(delivered_at IS NOT NULL OR opened_at IS NOT NULL OR clicked_at IS NOT NULL)"
BOUNCED = "(bounced_at IS NOT NULL OR status = 'bounced')"
COMPLAINED = "(complained_at IS NOT NULL OR status = 'complained')"


@dataclass(frozen=True, slots=True, kw_only=True)
class JourneyFunnel:
    """Runs of one journey that reached each step (runs started in the window).

    ``sent``, ``opened`` and ``clicked`` count runs with at least one such message;
    ``messages`` counts the messages themselves.
    """

    journey_id: str
    enrolled: int
    sent: int
    opened: int
    clicked: int
    completed: int
    exited: int
    failed: int
    running: int
    messages: int


_JOURNEY_FUNNEL = text(
    f"""
    WITH runs AS (
        SELECT id, status FROM journey_states
        WHERE journey_id = :journey AND deleted_at IS NULL
          AND (CAST(:since AS timestamptz) IS NULL OR created_at >= CAST(:since AS timestamptz))
          AND (CAST(:until AS timestamptz) IS NULL OR created_at <= CAST(:until AS timestamptz))
    ), mail AS (
        SELECT s.journey_state_id AS run,
               count(*) AS messages,
               bool_or(s.opened_at IS NOT NULL) AS opened,
               bool_or(s.clicked_at IS NOT NULL) AS clicked
        FROM email_sends s JOIN runs r ON r.id = s.journey_state_id
        WHERE s.{WENT_OUT}
        GROUP BY s.journey_state_id
    )
    SELECT count(*) AS enrolled,
           count(m.run) AS sent,
           count(*) FILTER (WHERE m.opened) AS opened,
           count(*) FILTER (WHERE m.clicked) AS clicked,
           count(*) FILTER (WHERE r.status = 'completed') AS completed,
           count(*) FILTER (WHERE r.status = 'exited') AS exited,
           count(*) FILTER (WHERE r.status = 'failed') AS failed,
           count(*) FILTER (WHERE r.status IN ('enrolled', 'active', 'waiting')) AS running,
           coalesce(sum(m.messages), 0) AS messages
    FROM runs r LEFT JOIN mail m ON m.run = r.id
    """
)


async def journey_funnel(
    session: AsyncSession,
    journey_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> JourneyFunnel:
    """The funnel of the runs of ``journey_id`` started between ``since`` and ``until``."""
    row = (
        await session.execute(
            _JOURNEY_FUNNEL, {"journey": journey_id, "since": since, "until": until}
        )
    ).one()
    return JourneyFunnel(journey_id=journey_id, **{k: int(v) for k, v in row._mapping.items()})


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignFunnel:
    """What became of one campaign's recipients.

    ``audience`` is the snapshot size; ``sent`` the messages the provider took;
    ``delivered``/``opened``/``clicked``/``bounced``/``complained`` count those messages
    with that outcome; ``unsubscribed`` counts recipients who opted out (of everything or
    of the message's list) at or after their message went out. ``skipped`` maps the
    mailer's decision to the recipients it stopped.
    """

    campaign_id: uuid.UUID
    name: str
    status: str
    template_key: str
    audience: int
    pending: int
    sent: int
    delivered: int
    opened: int
    clicked: int
    bounced: int
    complained: int
    unsubscribed: int
    failed: int
    skipped: dict[str, int] = field(default_factory=dict)


_CAMPAIGN_FUNNEL = text(
    f"""
    WITH c AS (
        SELECT id, name, status, template_key, audience_kind, audience->>'id' AS list_id,
               skip_reasons, failed_count
        FROM campaigns WHERE id = :id
    ), r AS (
        SELECT count(*) AS audience, count(*) FILTER (WHERE status = 'pending') AS pending
        FROM campaign_recipients WHERE campaign_id = :id
    ), s AS (
        SELECT e.contact_id, e.category, coalesce(e.sent_at, e.created_at) AS at,
               e.status, e.delivered_at, e.opened_at, e.clicked_at, e.bounced_at,
               e.complained_at
        FROM email_sends e WHERE e.campaign_id = :id AND e.{WENT_OUT}
    ), f AS (
        SELECT count(*) AS sent,
               count(*) FILTER (WHERE {DELIVERED}) AS delivered,
               count(*) FILTER (WHERE opened_at IS NOT NULL) AS opened,
               count(*) FILTER (WHERE clicked_at IS NOT NULL) AS clicked,
               count(*) FILTER (WHERE {BOUNCED}) AS bounced,
               count(*) FILTER (WHERE {COMPLAINED}) AS complained,
               count(DISTINCT s.contact_id) FILTER (WHERE
                   EXISTS (SELECT 1 FROM email_preferences p
                           WHERE p.contact_id = s.contact_id AND p.unsubscribed_all
                             AND p.unsubscribed_at >= s.at)
                   OR EXISTS (SELECT 1 FROM list_subscriptions l, c
                              WHERE l.contact_id = s.contact_id AND NOT l.subscribed
                                AND l.list_id IN (s.category, c.list_id)
                                AND l.unsubscribed_at >= s.at)
               ) AS unsubscribed
        FROM s
    )
    SELECT c.id, c.name, c.status, c.template_key, c.skip_reasons, c.failed_count,
           r.audience, r.pending, f.*
    FROM c, r, f
    """
)


async def campaign_funnel(session: AsyncSession, campaign_id: uuid.UUID) -> CampaignFunnel | None:
    """The funnel of campaign ``campaign_id``, or None when it does not exist."""
    row = (await session.execute(_CAMPAIGN_FUNNEL, {"id": campaign_id})).one_or_none()
    if row is None:
        return None
    skipped: dict[str, Any] = row.skip_reasons or {}
    return CampaignFunnel(
        campaign_id=row.id,
        name=row.name,
        status=row.status,
        template_key=row.template_key,
        audience=int(row.audience),
        pending=int(row.pending),
        sent=int(row.sent),
        delivered=int(row.delivered),
        opened=int(row.opened),
        clicked=int(row.clicked),
        bounced=int(row.bounced),
        complained=int(row.complained),
        unsubscribed=int(row.unsubscribed),
        failed=int(row.failed_count),
        skipped={str(k): int(v) for k, v in sorted(skipped.items())},
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class CampaignSummary:
    """One line of the campaign list: its state and its main counts."""

    id: uuid.UUID
    name: str
    status: str
    template_key: str
    audience_kind: str
    total_recipients: int
    sent: int
    skipped: int
    failed: int
    opened: int
    clicked: int
    send_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    created_at: datetime


_CAMPAIGNS = text(
    f"""
    SELECT c.id, c.name, c.status, c.template_key, c.audience_kind, c.total_recipients,
           c.sent_count AS sent, c.skipped_count AS skipped, c.failed_count AS failed,
           c.send_at, c.started_at, c.completed_at, c.created_at,
           coalesce(e.opened, 0) AS opened, coalesce(e.clicked, 0) AS clicked
    FROM campaigns c
    LEFT JOIN LATERAL (
        SELECT count(*) FILTER (WHERE opened_at IS NOT NULL) AS opened,
               count(*) FILTER (WHERE clicked_at IS NOT NULL) AS clicked
        FROM email_sends WHERE campaign_id = c.id AND {WENT_OUT}
    ) e ON true
    WHERE (CAST(:status AS text) IS NULL OR c.status = CAST(:status AS text))
    ORDER BY c.created_at DESC, c.id DESC
    LIMIT :limit OFFSET :offset
    """
)
_CAMPAIGN_COUNT = text(
    "SELECT count(*) FROM campaigns"
    " WHERE (CAST(:status AS text) IS NULL OR status = CAST(:status AS text))"
)


async def list_campaigns(
    session: AsyncSession, *, status: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[CampaignSummary], int]:
    """Campaigns newest first (optionally of one ``status``) and how many match."""
    params = {"status": status, "limit": limit, "offset": offset}
    rows = await session.execute(_CAMPAIGNS, params)
    total = int((await session.execute(_CAMPAIGN_COUNT, params)).scalar_one())
    return [CampaignSummary(**dict(row._mapping)) for row in rows], total
