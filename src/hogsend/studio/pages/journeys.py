"""Journeys: the list with switches and run counts, a journey's rules, funnel and runs,
and a run's step log with its timings.

Switching a journey and cancelling a run are POSTs with the session's CSRF token, for
admins only; they call the same repository functions as ``/v1/admin/journeys/...`` and
write an audit row (before and after) in the same transaction.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from hogsend.core.conditions.model import EventCondition
from hogsend.core.definitions import JourneyDefinition
from hogsend.core.enrollment import spec_event
from hogsend.core.pagination import InvalidCursor
from hogsend.db.repos import funnels, journeys, reporting
from hogsend.db.tables.journeys import JOURNEY_STATUSES
from hogsend.studio.criteria_text import Line, describe_filter, duration
from hogsend.studio.error_pages import PageError
from hogsend.studio.funnel_chart import funnel_chart
from hogsend.studio.rendering import render
from hogsend.studio.security import record_change, require_admin, require_viewer
from hogsend.studio.state import database, studio_of

PAGE_SIZE = 50
RANGES = (7, 30, 90)
_NOTICES = {
    "enabled": "The journey is enabled: matching events start runs again.",
    "disabled": "The journey is disabled: no new runs start; running ones continue.",
    "code": "The override is cleared: the journey's `enabled` from the code applies.",
    "cancelled": "The run is cancelled (exited, reason admin): it sends nothing more.",
}


def _journey(request: Request, journey_id: str) -> JourneyDefinition:
    for journey in studio_of(request).app.journeys:
        if journey.id == journey_id:
            return journey
    raise PageError(404, f"No journey {journey_id!r} is defined by the app.")


def spec_lines(spec: object) -> tuple[str, list[Line]]:
    """The event a trigger or exit listens to, and its property filter in words."""
    event = spec_event(spec)  # type: ignore[arg-type]
    if isinstance(spec, EventCondition) and spec.where is not None:
        return event, describe_filter(spec.where)
    return event, []


async def journey_list(request: Request) -> Response:
    """Every journey with its switch and its runs per status."""
    app = studio_of(request).app
    async with database(request) as db:
        me = await require_viewer(request, db)
        overrides = await journeys.enabled_overrides(db)
        counts = await journeys.status_counts(db)
    rows = [
        {
            "journey": j,
            "trigger": spec_event(j.trigger),
            "enabled": overrides.get(j.id, j.enabled),
            "override": overrides.get(j.id),
            "counts": counts.get(j.id, {}),
            "total": sum(counts.get(j.id, {}).values()),
        }
        for j in app.journeys
    ]
    return render(
        request,
        "journeys.html",
        title="Journeys",
        current="journeys",
        rows=rows,
        statuses=JOURNEY_STATUSES,
        can_change=me.user.is_admin,
        notice=_NOTICES.get(request.query_params.get("notice", "")),
    )


async def journey_page(request: Request) -> Response:
    """One journey: its rules, its funnel over ``?days=`` and its runs (filterable)."""
    params = request.query_params
    try:
        days = int(params.get("days", "30"))
    except ValueError:
        days = 30
    days = days if days in RANGES else 30
    status = params.get("status", "")
    status = status if status in JOURNEY_STATUSES else ""
    contact = params.get("contact", "").strip()
    try:
        contact_id = uuid.UUID(contact) if contact else None
    except ValueError:
        raise PageError(400, "The contact filter takes a contact id (a UUID).") from None
    cursor = params.get("cursor") or None
    async with database(request) as db:
        me = await require_viewer(request, db)
        journey = _journey(request, str(request.path_params["id"]))
        overrides = await journeys.enabled_overrides(db)
        counts = (await journeys.status_counts(db)).get(journey.id, {})
        funnel = await funnels.journey_funnel(db, journey.id, since=reporting.period_start(days))
        try:
            page = await journeys.page_runs(
                db,
                journey_id=journey.id,
                status=status or None,
                contact_id=contact_id,
                limit=PAGE_SIZE,
                cursor=cursor,
            )
        except InvalidCursor:
            raise PageError(400, "That page link is no longer valid.") from None
    trigger_event, trigger_filter = spec_lines(journey.trigger)
    chart = funnel_chart(
        [
            ("enrolled", funnel.enrolled),
            ("sent", funnel.sent),
            ("opened", funnel.opened),
            ("clicked", funnel.clicked),
            ("completed", funnel.completed),
            ("exited", funnel.exited),
        ],
        title=f"Runs started in the last {days} days, by how far they got",
    )
    return render(
        request,
        "journey.html",
        title=journey.name,
        current="journeys",
        journey=journey,
        enabled=overrides.get(journey.id, journey.enabled),
        override=overrides.get(journey.id),
        counts=counts,
        statuses=JOURNEY_STATUSES,
        trigger_event=trigger_event,
        trigger_filter=trigger_filter,
        exits=[spec_lines(spec) for spec in journey.exit_on],
        entry_period=None if journey.entry_period is None else duration(journey.entry_period),
        suppress=None if journey.suppress is None else duration(journey.suppress),
        numbers=funnel,
        chart=chart,
        days=days,
        ranges=RANGES,
        runs=page.items,
        next_cursor=page.next_cursor,
        filters={"status": status, "contact": contact, "days": days},
        can_change=me.user.is_admin,
        notice=_NOTICES.get(params.get("notice", "")),
    )


async def switch_journey(request: Request) -> Response:
    """POST ``enabled`` = ``on`` / ``off`` / ``code`` (clear the override)."""
    async with database(request) as db:
        me, form = await require_admin(request, db)
        journey = _journey(request, str(request.path_params["id"]))
        choice = form.get("enabled")
        if choice not in ("on", "off", "code"):
            raise PageError(400, "Choose on, off or code.")
        value = None if choice == "code" else choice == "on"
        overrides = await journeys.enabled_overrides(db)
        before = {
            "enabled": overrides.get(journey.id, journey.enabled),
            "override": overrides.get(journey.id),
        }
        await journeys.set_enabled(db, journey.id, value, by=f"studio:{me.user.email}")
        after = {"enabled": journey.enabled if value is None else value, "override": value}
        await record_change(
            request,
            db,
            me,
            action="journeys.switch",
            resource="journeys",
            resource_id=journey.id,
            detail={"before": before, "after": after},
        )
        await db.commit()
    notice = "code" if value is None else "enabled" if value else "disabled"
    back = request.query_params.get("back")
    path = f"/journeys/{journey.id}" if back == "journey" else "/journeys"
    return RedirectResponse(studio_of(request).url(f"{path}?notice={notice}"), 303)


def _run_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(str(request.path_params["id"]))
    except ValueError:
        raise PageError(404, "That is not a journey run id.") from None


async def run_page(request: Request) -> Response:
    """One run: where it is, its step log with timings, and (for admins) cancel."""
    async with database(request) as db:
        me = await require_viewer(request, db)
        run_id = _run_id(request)
        run = await journeys.get_run(db, run_id)
        if run is None:
            raise PageError(404, f"Journey run {run_id} does not exist.")
        steps = await journeys.run_log(db, run_id)
    definition = next((j for j in studio_of(request).app.journeys if j.id == run.journey_id), None)
    ended = run.completed_at or run.exited_at or run.failed_at
    return render(
        request,
        "journey_run.html",
        title=f"Run of {definition.name if definition else run.journey_id}",
        current="journeys",
        run=run,
        journey_name=definition.name if definition else run.journey_id,
        steps=steps,
        took=None if ended is None else _took(ended - run.created_at),
        running=run.status in journeys.RUNNING,
        can_change=me.user.is_admin,
        notice=_NOTICES.get(request.query_params.get("notice", "")),
    )


def _took(span: timedelta) -> str:
    seconds = span.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"


async def cancel_run(request: Request) -> Response:
    """POST: end the run now, as ``POST /v1/admin/journeys/runs/{id}/cancel`` does."""
    async with database(request) as db:
        me, _ = await require_admin(request, db)
        run_id = _run_id(request)
        run = await journeys.get_run(db, run_id)
        if run is None:
            raise PageError(404, f"Journey run {run_id} does not exist.")
        ended = await journeys.exit_runs(db, reason="admin", state_ids=[run_id])
        if not ended:
            raise PageError(409, f"The run already ended ({run.status}).")
        await record_change(
            request,
            db,
            me,
            action="journey-runs.cancel",
            resource="journey-runs",
            resource_id=str(run_id),
            detail={
                "journeyId": run.journey_id,
                "workflowId": run.workflow_id,
                "before": {"status": run.status},
                "after": {"status": "exited", "exitReason": "admin"},
            },
        )
        await db.commit()
    return RedirectResponse(
        studio_of(request).url(f"/journeys/runs/{run_id}?notice=cancelled"), 303
    )
