"""/v1/admin/journeys: journeys with their runs per status, runs, step logs, cancel, switch.

Reads need ``admin:read``; cancelling a run and switching a journey need ``admin:write``
and are audited. A cancel marks the run ``exited`` (reason ``admin``) in the request's
transaction; the workers' exit sweep then wakes the workflow so it ends at once, and
from that commit on the run sends nothing more.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, hogsend_of
from hogsend.api.errors import problem_responses
from hogsend.api.routes.transactions import invalid_cursor
from hogsend.api.schemas.journeys import (
    JourneyList,
    JourneyOut,
    JourneyRunDetail,
    JourneyRunPage,
    JourneyRunQuery,
    JourneySwitch,
    run_out,
    step_out,
)
from hogsend.core.enrollment import spec_event
from hogsend.core.pagination import InvalidCursor
from hogsend.core.reactions import all_journeys
from hogsend.db.repos import journeys
from hogsend.errors import Conflict, NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: journeys"])


@router.get(
    "/journeys",
    summary="List journeys with their runs per status",
    dependencies=[require_scope("admin:read")],
)
async def list_journeys(session: DbSession, request: Request) -> JourneyList:
    """Every journey the app defines, its effective enable switch and how many runs it
    has in each status."""
    app = hogsend_of(request)
    overrides = await journeys.enabled_overrides(session)
    counts = await journeys.status_counts(session)
    return JourneyList(
        journeys=[
            JourneyOut(
                id=j.id,
                name=j.name,
                description=j.description,
                trigger=spec_event(j.trigger),
                entry_limit=j.entry_limit,
                enabled=overrides.get(j.id, j.enabled),
                enabled_in_code=j.enabled,
                enabled_override=overrides.get(j.id),
                counts=counts.get(j.id, {}),
            )
            for j in all_journeys(app.journeys, app.buckets)
        ]
    )


@router.get(
    "/journeys/runs",
    summary="Page journey runs",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(400),
)
async def list_runs(
    session: DbSession, query: Annotated[JourneyRunQuery, Query()]
) -> JourneyRunPage:
    """Runs newest first, filtered by journey, status or contact; pass `nextCursor` back
    as `cursor` for the next page."""
    try:
        page = await journeys.page_runs(
            session,
            journey_id=query.journey_id,
            status=query.status,
            contact_id=query.contact_id,
            limit=query.limit,
            cursor=query.cursor,
        )
    except InvalidCursor as exc:
        raise invalid_cursor(exc) from None
    return JourneyRunPage(runs=[run_out(r) for r in page.items], next_cursor=page.next_cursor)


@router.get(
    "/journeys/runs/{id}",
    summary="Read one run and its step log",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def get_run(id: UUID, session: DbSession) -> JourneyRunDetail:
    """The run and every step it took, in order, with timings."""
    run = await journeys.get_run(session, id)
    if run is None:
        raise NotFound(f"journey run {id} does not exist")
    steps = await journeys.run_log(session, id)
    return JourneyRunDetail(**run_out(run).model_dump(), steps=[step_out(s) for s in steps])


@router.post(
    "/journeys/runs/{id}/cancel",
    summary="Cancel a run",
    responses=problem_responses(404, 409),
)
async def cancel_run(
    id: UUID,
    change: AdminChange = audited(
        "admin:write", resource="journey-runs", action="journey-runs.cancel"
    ),
) -> JourneyRunDetail:
    """End a running run now (status `exited`, reason `admin`), even mid-sleep or
    mid-wait; nothing more is sent. 409 when the run has already ended."""
    run = await journeys.get_run(change.session, id)
    if run is None:
        raise NotFound(f"journey run {id} does not exist")
    ended = await journeys.exit_runs(change.session, reason="admin", state_ids=[id])
    if not ended:
        raise Conflict(f"journey run {id} already ended ({run.status})")
    change.detail = {
        "journeyId": run.journey_id,
        "workflowId": run.workflow_id,
        "before": {"status": run.status},
        "after": {"status": "exited", "exitReason": "admin"},
    }
    after = await journeys.get_run(change.session, id)
    assert after is not None
    steps = await journeys.run_log(change.session, id)
    return JourneyRunDetail(**run_out(after).model_dump(), steps=[step_out(s) for s in steps])


@router.put(
    "/journeys/{id}/enabled",
    summary="Enable or disable a journey",
    responses=problem_responses(404),
)
async def switch_journey(
    id: str,
    body: JourneySwitch,
    request: Request,
    change: AdminChange = audited("admin:write", resource="journeys", action="journeys.switch"),
) -> JourneyOut:
    """Override the code's `enabled` (null clears the override). A disabled journey
    starts no new runs (each refused trigger is logged); running ones continue."""
    app = hogsend_of(request)
    definition = next((j for j in all_journeys(app.journeys, app.buckets) if j.id == id), None)
    if definition is None:
        raise NotFound(f"journey {id!r} is not defined by the app")
    overrides = await journeys.enabled_overrides(change.session)
    before = {"enabled": overrides.get(id, definition.enabled), "override": overrides.get(id)}
    await journeys.set_enabled(change.session, id, body.enabled, by=change.principal.name)
    after = {
        "enabled": definition.enabled if body.enabled is None else body.enabled,
        "override": body.enabled,
    }
    # The same shape as Studio's switch; "enabled" is the requested override, as before.
    change.detail = {"enabled": body.enabled, "before": before, "after": after}
    counts = await journeys.status_counts(change.session)
    return JourneyOut(
        id=definition.id,
        name=definition.name,
        description=definition.description,
        trigger=spec_event(definition.trigger),
        entry_limit=definition.entry_limit,
        enabled=definition.enabled if body.enabled is None else body.enabled,
        enabled_in_code=definition.enabled,
        enabled_override=body.enabled,
        counts=counts.get(id, {}),
    )
