"""/v1/admin/metrics/* and /v1/admin/event-search: numbers behind Studio (admin:read, GET only).

Every figure is counted from the rows themselves (runs, send attempts, recipients,
memberships) when asked; nothing is pre-aggregated, so a report never disagrees with
the rows an operator can open.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request

from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, hogsend_of, settings_of
from hogsend.api.errors import problem_responses
from hogsend.api.routes.transactions import invalid_field
from hogsend.api.schemas.reporting import (
    BucketActivityOut,
    BucketDayOut,
    CampaignFunnelOut,
    CampaignQuery,
    CampaignSummaryOut,
    CampaignSummaryPage,
    DaysQuery,
    DeliverabilityOut,
    EventSearchPage,
    EventSearchQuery,
    FoundEventOut,
    JourneyFunnelOut,
    OutcomesOut,
    OverviewOut,
    Rates,
    TemplateQuery,
    TemplateStatsList,
    TemplateStatsOut,
    TrendPointOut,
    WindowQuery,
)
from hogsend.db.repos import (
    bucket_activity,
    dead_letters,
    deliverability,
    event_search,
    funnels,
    outbox,
    overview,
    reporting,
)
from hogsend.db.repos import buckets as bucket_repo
from hogsend.db.repos.deliverability import Outcomes
from hogsend.db.repos.workers import list_workers
from hogsend.errors import NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: reporting"])
READ = [require_scope("admin:read")]


def outcomes_out(o: Outcomes) -> OutcomesOut:
    """The API shape of :class:`~hogsend.db.repos.deliverability.Outcomes`."""
    return OutcomesOut(
        sent=o.sent,
        delivered=o.delivered,
        opened=o.opened,
        clicked=o.clicked,
        bounced=o.bounced,
        complained=o.complained,
        rates=Rates(
            delivery_rate=o.delivery_rate,
            open_rate=o.open_rate,
            click_rate=o.click_rate,
            bounce_rate=o.bounce_rate,
            complaint_rate=o.complaint_rate,
        ),
    )


@router.get("/metrics/overview", summary="The engine at a glance", dependencies=READ)
async def metrics_overview(request: Request, session: DbSession) -> OverviewOut:
    """Contacts, running journey runs, bucket memberships, opt-outs, email numbers of the
    last 24 hours, 7 and 30 days, dispatcher lag, live workers and pending dead letters."""
    settings = settings_of(request)
    now = datetime.now(UTC)
    counts = await overview.engine_counts(session)
    last_30 = await deliverability.outcomes_since(session, now - timedelta(days=30))
    last_7 = await deliverability.outcomes_since(session, now - timedelta(days=7))
    last_24h = await deliverability.outcomes_since(session, now - timedelta(hours=24))
    gated = await reporting.email_engagement(session, since=now - timedelta(days=30))
    stats = await outbox.stats(session)
    workers = await list_workers(
        session, stale_after=timedelta(seconds=settings.worker_stale_seconds)
    )
    _, pending_dead = await dead_letters.list_entries(session, status="pending", limit=1)
    return OverviewOut(
        total_contacts=await reporting.live_contacts(session),
        running_journey_runs=counts.running_journey_runs,
        active_buckets=counts.active_buckets,
        bucket_members=counts.bucket_members,
        unsubscribed_contacts=counts.unsubscribed_contacts,
        emails_sent_24h=last_24h.sent,
        emails_sent_7d=last_7.sent,
        emails_30d=outcomes_out(last_30),
        gated_30d=gated.gated,
        dispatcher_lag_seconds=stats.lag_seconds,
        dispatcher_pending=stats.pending,
        workers_alive=sum(1 for w in workers if w.alive),
        pending_dead_letters=pending_dead,
    )


@router.get(
    "/metrics/journeys/{id}/funnel",
    summary="A journey's funnel",
    dependencies=READ,
    responses=problem_responses(404),
)
async def journey_funnel(
    id: str, request: Request, session: DbSession, window: Annotated[WindowQuery, Query()]
) -> JourneyFunnelOut:
    """Runs started in the window: enrolled → sent → opened → clicked, and how they ended
    (completed, exited, failed) or whether they still run. 404 for a journey the app does
    not define."""
    if not any(j.id == id for j in hogsend_of(request).journeys):
        raise NotFound(f"journey {id!r} is not defined by the app")
    f = await funnels.journey_funnel(session, id, since=window.from_, until=window.to)
    return JourneyFunnelOut(
        journey_id=f.journey_id,
        enrolled=f.enrolled,
        sent=f.sent,
        opened=f.opened,
        clicked=f.clicked,
        completed=f.completed,
        exited=f.exited,
        failed=f.failed,
        running=f.running,
        messages=f.messages,
        window=window,
    )


@router.get("/metrics/templates", summary="Outcomes per template", dependencies=READ)
async def template_stats(
    session: DbSession, query: Annotated[TemplateQuery, Query()]
) -> TemplateStatsList:
    """Per template, messages sent in the window (by attempt time) and their outcomes,
    plus the attempts a gate stopped; most sent first."""
    found = await deliverability.template_stats(
        session, since=query.from_, until=query.to, template=query.template
    )
    return TemplateStatsList(
        templates=[
            TemplateStatsOut(
                template_key=t.template_key, outcomes=outcomes_out(t.outcomes), gated=t.gated
            )
            for t in found
        ],
        window=WindowQuery.model_validate({"from": query.from_, "to": query.to}),
    )


@router.get("/metrics/deliverability", summary="Deliverability per day", dependencies=READ)
async def deliverability_trend(
    session: DbSession, query: Annotated[DaysQuery, Query()]
) -> DeliverabilityOut:
    """Sent, delivered, bounced and complained per UTC day over the last `days` days
    (today included), zero-filled, with the period's totals and rates."""
    start = reporting.period_start(query.days)
    points = await deliverability.daily_trend(session, start=start, days=query.days)
    totals = Outcomes(
        **{
            name: sum(getattr(p.outcomes, name) for p in points)
            for name in ("sent", "delivered", "opened", "clicked", "bounced", "complained")
        }
    )
    return DeliverabilityOut(
        days=query.days,
        points=[TrendPointOut(date=p.day, outcomes=outcomes_out(p.outcomes)) for p in points],
        totals=outcomes_out(totals),
    )


@router.get("/metrics/campaigns", summary="Campaigns with their status", dependencies=READ)
async def campaign_list(
    session: DbSession, query: Annotated[CampaignQuery, Query()]
) -> CampaignSummaryPage:
    """Campaigns newest first (optionally of one `status`) with their recipient counts
    and how many messages were opened and clicked."""
    found, total = await funnels.list_campaigns(
        session, status=query.status, limit=query.limit, offset=query.offset
    )
    return CampaignSummaryPage(
        campaigns=[CampaignSummaryOut.model_validate(c, from_attributes=True) for c in found],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


@router.get(
    "/metrics/campaigns/{id}/funnel",
    summary="A campaign's funnel",
    dependencies=READ,
    responses=problem_responses(404),
)
async def campaign_funnel(id: UUID, session: DbSession) -> CampaignFunnelOut:
    """audience → sent → delivered → opened → clicked, with unsubscribed, bounced,
    complained, failed and skipped (by reason). 404 for an unknown campaign."""
    f = await funnels.campaign_funnel(session, id)
    if f is None:
        raise NotFound(f"campaign {id} does not exist")
    return CampaignFunnelOut.model_validate(f, from_attributes=True)


@router.get(
    "/metrics/buckets/{id}",
    summary="A bucket's entries and exits per day",
    dependencies=READ,
    responses=problem_responses(404),
)
async def bucket_trend(
    id: str, request: Request, session: DbSession, query: Annotated[DaysQuery, Query()]
) -> BucketActivityOut:
    """The bucket's current size and its entries and exits per UTC day over the last
    `days` days. 404 for a bucket the app does not define."""
    if not any(b.id == id for b in hogsend_of(request).buckets):
        raise NotFound(f"bucket {id!r} is not defined in the app")
    start = reporting.period_start(query.days)
    days = await bucket_activity.per_day(session, id, start=start, days=query.days)
    return BucketActivityOut(
        bucket_id=id,
        size=await bucket_repo.member_count(session, id),
        points=[BucketDayOut(date=d.day, entered=d.entered, left=d.left) for d in days],
    )


def property_filter(raw: str | None) -> dict[str, Any] | None:
    """``key=value`` as a containment filter; the value is JSON when it parses, else text."""
    if raw is None:
        return None
    key, _, value = raw.partition("=")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    # Postgres text and jsonb hold no NUL character, so nothing stored can contain one.
    if "\x00" in raw or "\\u0000" in json.dumps(parsed):
        raise invalid_field(("query", "property"), "cannot contain a NUL character")
    return {key.strip(): parsed}


@router.get("/event-search", summary="Search events", dependencies=READ)
async def search_events(
    session: DbSession, query: Annotated[EventSearchQuery, Query()]
) -> EventSearchPage:
    """Events newest first whose name contains `q`, of the contact with `email`, whose
    properties contain `property` (`key=value`), in the `from`..`to` window."""
    found, more = await event_search.search(
        session,
        name=query.q,
        email=query.email,
        properties=property_filter(query.property),
        since=query.from_,
        until=query.to,
        limit=query.limit,
        offset=query.offset,
    )
    return EventSearchPage(
        events=[
            FoundEventOut(
                id=e.id,
                name=e.name,
                contact_id=e.contact_id,
                user_id=e.contact_key,
                email=e.email,
                properties=e.properties,
                source=e.source,
                occurred_at=e.occurred_at,
            )
            for e in found
        ],
        limit=query.limit,
        offset=query.offset,
        has_more=more,
    )
