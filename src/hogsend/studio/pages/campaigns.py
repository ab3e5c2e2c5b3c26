"""Campaigns: the list, the create form, and each campaign's live progress, controls and funnel.

Creating goes through :func:`hogsend.api.routes.campaigns.create_from_body`, the code
``POST /v1/campaigns`` runs; pause, resume and cancel through the repository function
its control routes call. The progress block refreshes itself (htmx) while a campaign
is under way; without JavaScript the page shows the state at load time.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from hogsend.api.routes.campaigns import create_from_body
from hogsend.api.schemas.campaigns import CampaignIn
from hogsend.core.clock import aware_now
from hogsend.db.repos import campaigns as repo
from hogsend.db.repos import funnels
from hogsend.db.tables.campaigns import CAMPAIGN_STATUSES, Campaign
from hogsend.errors import NotFound
from hogsend.studio.charts import FunnelChart, funnel_chart
from hogsend.studio.error_pages import PageError
from hogsend.studio.pages.email import preview
from hogsend.studio.rendering import render
from hogsend.studio.security import record_change, require_admin, require_viewer
from hogsend.studio.state import database, studio_of

PAGE_SIZE = 50
POLL_SECONDS = 2
LIVE = ("queued", "scheduled", "sending")
ACTIONS = ("pause", "resume", "cancel")
_NOTICES = {
    "created": "The campaign is created: a worker starts it when its send time comes.",
    "pause": "Paused: sending stops at the next batch boundary; resume continues from there.",
    "resume": "Resumed: a worker continues with the recipients not reached yet.",
    "cancel": "Cancelled: recipients not reached yet get nothing.",
}


def routes() -> list[BaseRoute]:
    """The Campaigns section's routes, relative to Studio's mount point."""
    return [
        Route("/campaigns", campaign_list, methods=["GET"]),
        Route("/campaigns", create_campaign, methods=["POST"]),
        Route("/campaigns/new", new_campaign, methods=["GET"]),
        Route("/campaigns/preview", template_preview, methods=["GET"]),
        Route("/campaigns/{id}", campaign_page, methods=["GET"]),
        Route("/campaigns/{id}/progress", campaign_progress, methods=["GET"]),
        Route("/campaigns/{id}/{action}", control_campaign, methods=["POST"]),
    ]


def progress_of(campaign: Campaign) -> dict[str, Any]:
    """Counts and the share done, for the progress block."""
    done = campaign.sent_count + campaign.skipped_count + campaign.failed_count
    total = campaign.total_recipients
    return {
        "done": done,
        "pending": max(total - done, 0),
        "share": None if total == 0 else done / total,
        "live": campaign.status in LIVE,
        "skip_reasons": sorted((campaign.skip_reasons or {}).items()),
    }


def funnel_of(funnel: funnels.CampaignFunnel) -> FunnelChart:
    """The campaign's funnel as a chart: audience → sent → delivered → opened → clicked."""
    return funnel_chart(
        [
            ("Audience", funnel.audience),
            ("Sent", funnel.sent),
            ("Delivered", funnel.delivered),
            ("Opened", funnel.opened),
            ("Clicked", funnel.clicked),
        ],
        title="Funnel (messages reaching each stage)",
    )


# ------------------------------------------------------------------------------ list


async def campaign_list(request: Request) -> Response:
    """Campaigns newest first with status and counts; ``?status=`` narrows it down."""
    params = request.query_params
    status = params.get("status", "")
    if status not in CAMPAIGN_STATUSES:
        status = ""
    try:
        page = max(1, int(params.get("page", "1")))
    except ValueError:
        page = 1
    async with database(request) as db:
        me = await require_viewer(request, db)
        rows, total = await repo.list_campaigns(
            db, status=status or None, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE
        )
    return render(
        request,
        "campaigns.html",
        title="Campaigns",
        current="campaigns",
        campaigns=[(c, progress_of(c)) for c in rows],
        total=total,
        status=status,
        statuses=CAMPAIGN_STATUSES,
        page=page,
        pages=max(1, -(-total // PAGE_SIZE)),
        can_create=me.user.is_admin,
    )


# -------------------------------------------------------------------------- create


def _form_values(form: FormData | None, defaults: dict[str, str]) -> dict[str, str]:
    fields = (
        "name",
        "audience",
        "list",
        "bucket",
        "template",
        "subject",
        "send_at",
        "local_time",
        "throttle",
        "props",
    )
    if form is None:
        return {f: defaults.get(f, "") for f in fields}
    return {f: str(form.get(f) or "").strip() for f in fields}


def _new_page(
    request: Request,
    values: dict[str, str],
    *,
    errors: list[str] | None = None,
    status_code: int = 200,
) -> Response:
    app = studio_of(request).app
    registry = app.templates
    templates = sorted(registry.keys()) if registry is not None else []
    chosen = values.get("template") or (templates[0] if templates else "")
    values = {**values, "template": chosen}
    rendered, problem = None, None
    if registry is not None and chosen in templates:
        rendered, problem = preview(registry, chosen)
    return render(
        request,
        "campaign_new.html",
        status_code=status_code,
        title="New campaign",
        current="campaigns",
        values=values,
        errors=errors or [],
        lists=[(item.id, item.name) for item in app.lists],
        buckets=[(item.id, item.name) for item in app.buckets],
        templates=templates,
        rendered=rendered,
        problem=problem,
        preview_key=chosen,
        example_props=registry.preview_props(chosen) if rendered and registry else {},
    )


async def new_campaign(request: Request) -> Response:
    """The create form (admins); ``?template=`` picks the template shown in the preview."""
    async with database(request) as db:
        me = await require_viewer(request, db)
    if not me.user.is_admin:
        raise PageError(403, "Your role is viewer: you can look at campaigns but not create one.")
    return _new_page(request, _form_values(None, dict(request.query_params)))


async def template_preview(request: Request) -> Response:
    """The preview block for ``?template=`` (what the form's template select swaps in)."""
    async with database(request) as db:
        await require_viewer(request, db)
    registry = studio_of(request).app.templates
    key = request.query_params.get("template", "")
    if registry is None or key not in registry.keys():  # noqa: SIM118 (a registry is no dict)
        raise PageError(404, f"There is no template {key!r}.")
    rendered, problem = preview(registry, key)
    return render(
        request,
        "campaign_preview.html",
        title="Preview",
        rendered=rendered,
        problem=problem,
        preview_key=key,
        example_props=registry.preview_props(key),
    )


def body_of(values: dict[str, str]) -> dict[str, Any]:
    """The ``POST /v1/campaigns`` body the form's values stand for.

    Raises:
        ValueError: a value the form itself cannot turn into JSON (props, throttle).
    """
    body: dict[str, Any] = {"template": values["template"]}
    if values["name"]:
        body["name"] = values["name"]
    kind = values["audience"]
    if kind == "list":
        body["list"] = values["list"]
    elif kind == "bucket":
        body["bucket"] = values["bucket"]
    if values["subject"]:
        body["subject"] = values["subject"]
    if values["send_at"]:
        # <input type="datetime-local"> has no zone: the form says it is UTC.
        at = values["send_at"]
        body["sendAt"] = (at + ":00" if len(at) == 16 else at) + "+00:00"
    if values["local_time"]:
        body["localTime"] = values["local_time"]
    if values["throttle"]:
        try:
            body["throttle"] = float(values["throttle"])
        except ValueError:
            raise ValueError("throttle: must be a number of messages per second") from None
    if values["props"]:
        try:
            props = json.loads(values["props"])
        except ValueError:
            raise ValueError("props: must be a JSON object") from None
        if not isinstance(props, dict):
            raise ValueError("props: must be a JSON object")
        body["props"] = props
    return body


def _messages(errors: list[Any]) -> list[str]:
    out = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body",))
        out.append(f"{where or 'form'}: {error.get('msg')}")
    return out


async def create_campaign(request: Request) -> Response:
    """POST: create a campaign through the same function as ``POST /v1/campaigns``."""
    async with database(request) as db:
        me, form = await require_admin(request, db)
    values = _form_values(form, {})
    try:
        body = CampaignIn.model_validate(body_of(values))
    except ValidationError as exc:
        return _new_page(request, values, errors=_messages(list(exc.errors())), status_code=422)
    except ValueError as exc:
        errors = [str(exc)]
        return _new_page(request, values, errors=errors, status_code=422)
    studio = studio_of(request)
    try:
        campaign = await create_from_body(
            studio.app,
            studio.sessionmaker(),
            body,
            actor=f"studio:{me.user.email}",
            actor_user_id=me.user.id,
            ip_address=request.client.host if request.client else None,
            request_id=getattr(request.state, "request_id", None),
        )
    except RequestValidationError as exc:
        return _new_page(request, values, errors=_messages(list(exc.errors())), status_code=422)
    except NotFound as exc:
        return _new_page(request, values, errors=[str(exc)], status_code=422)
    return RedirectResponse(studio.url(f"/campaigns/{campaign.id}?notice=created"), 303)


# ------------------------------------------------------------------------ one campaign


def _campaign_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(str(request.path_params["id"]))
    except ValueError:
        raise PageError(404, "That is not a campaign id.") from None


async def _load(request: Request) -> tuple[Campaign, funnels.CampaignFunnel, bool]:
    campaign_id = _campaign_id(request)
    async with database(request) as db:
        me = await require_viewer(request, db)
        campaign = await repo.get_campaign(db, campaign_id)
        if campaign is None:
            raise PageError(404, f"Campaign {campaign_id} does not exist.")
        funnel = await funnels.campaign_funnel(db, campaign.id)
    assert funnel is not None  # the campaign exists: it was just read
    return campaign, funnel, me.user.is_admin


def _controls(campaign: Campaign) -> list[str]:
    return [a for a in ACTIONS if campaign.status in repo.CONTROL_FROM[a]]


async def campaign_page(request: Request) -> Response:
    """One campaign: what, to whom, when; live progress; controls; funnel."""
    campaign, funnel, is_admin = await _load(request)
    return render(
        request,
        "campaign.html",
        title=campaign.name,
        current="campaigns",
        campaign=campaign,
        progress=progress_of(campaign),
        funnel=funnel,
        chart=funnel_of(funnel),
        controls=_controls(campaign) if is_admin else [],
        poll_seconds=POLL_SECONDS,
        notice=_NOTICES.get(request.query_params.get("notice", "")),
    )


async def campaign_progress(request: Request) -> Response:
    """Just the progress block (what the page's poll swaps in)."""
    campaign, funnel, _ = await _load(request)
    return render(
        request,
        "campaign_progress.html",
        title=campaign.name,
        campaign=campaign,
        progress=progress_of(campaign),
        funnel=funnel,
        poll_seconds=POLL_SECONDS,
    )


async def control_campaign(request: Request) -> Response:
    """POST pause, resume or cancel, through the function the API's control routes use."""
    async with database(request) as db:
        me, _ = await require_admin(request, db)
        campaign_id = _campaign_id(request)
        action = str(request.path_params["action"])
        if action not in ACTIONS:
            raise PageError(404, "A campaign can be paused, resumed or cancelled.")
        before = await repo.status_of(db, campaign_id)
        campaign, changed = await repo.control(db, campaign_id, action, aware_now())
        if campaign is None:
            raise PageError(404, f"Campaign {campaign_id} does not exist.")
        if not changed:
            raise PageError(409, f"Cannot {action} a campaign that is {campaign.status}.")
        await record_change(
            request,
            db,
            me,
            action=f"campaigns.{action}",
            resource="campaigns",
            resource_id=str(campaign_id),
            detail={
                "status": campaign.status,
                "before": {"status": before},
                "after": {"status": campaign.status},
            },
        )
        await db.commit()
    target = studio_of(request).url(f"/campaigns/{campaign_id}?notice={action}")
    return RedirectResponse(target, 303)
