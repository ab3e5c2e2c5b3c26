"""The overview: contacts, activity per day, email engagement, workers and dispatcher."""

from __future__ import annotations

from datetime import timedelta

from starlette.requests import Request
from starlette.responses import Response

from hogsend.db.repos import dead_letters, outbox, reporting
from hogsend.db.repos.workers import list_workers
from hogsend.studio.charts import bar_chart
from hogsend.studio.rendering import render
from hogsend.studio.security import require_viewer
from hogsend.studio.state import database, studio_of

RANGES = (7, 30, 90)
DEFAULT_RANGE = 30


async def overview(request: Request) -> Response:
    """Numbers over the last 7, 30 or 90 days (``?days=``), and the engine's health."""
    settings = studio_of(request).settings
    try:
        days = int(request.query_params.get("days", DEFAULT_RANGE))
    except ValueError:
        days = DEFAULT_RANGE
    if days not in RANGES:
        days = DEFAULT_RANGE
    async with database(request) as db:
        await require_viewer(request, db)
        contacts = await reporting.live_contacts(db)
        events = await reporting.events_per_day(db, days=days)
        sends = await reporting.sends_per_day(db, days=days)
        engagement = await reporting.email_engagement(db, since=reporting.period_start(days))
        dispatcher = await outbox.stats(db)
        workers = await list_workers(
            db, stale_after=timedelta(seconds=settings.worker_stale_seconds)
        )
        _, pending_dead_letters = await dead_letters.list_entries(db, status="pending", limit=1)
    lagging = dispatcher.lag_seconds > settings.dispatcher_lag_threshold_seconds
    return render(
        request,
        "overview.html",
        title="Overview",
        current="overview",
        days=days,
        ranges=RANGES,
        contacts=contacts,
        events_chart=bar_chart(
            [(p.day, p.count) for p in events], title="Events per day", y_label="events"
        ),
        sends_chart=bar_chart(
            [(p.day, p.count) for p in sends], title="Emails sent per day", y_label="emails"
        ),
        engagement=engagement,
        dispatcher=dispatcher,
        lagging=lagging,
        lag_threshold=settings.dispatcher_lag_threshold_seconds,
        workers=workers,
        workers_alive=sum(1 for w in workers if w.alive),
        pending_dead_letters=pending_dead_letters,
    )
