"""/v1/campaigns: broadcast one template to a list, a bucket or a criteria audience.

Creating a campaign writes its row and answers 202 at once; a worker's campaign
scheduler starts the durable run when ``sendAt`` is due (see
:mod:`hogsend.runtime.campaigns` and docs/campaigns.md). Create, read and list need the
``ingest`` scope (the data-plane contract); pause, resume and cancel are operator
actions and need ``admin:write``. Every change is audited.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Path, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, hogsend_of, sessionmaker_of
from hogsend.api.errors import problem_responses
from hogsend.api.previews import find_template, render_or_422, stand_in_contact
from hogsend.api.routes.transactions import invalid_field
from hogsend.api.schemas.campaigns import (
    CampaignAccepted,
    CampaignIn,
    CampaignOut,
    CampaignPage,
    CampaignQuery,
    campaign_out,
)
from hogsend.app import Hogsend
from hogsend.core.clock import aware_now
from hogsend.core.conditions.codec import condition_from_dict
from hogsend.core.conditions.model import InvalidCondition
from hogsend.core.ingest import MAX_IDEMPOTENCY_KEY_LENGTH
from hogsend.db.repos import audit
from hogsend.db.repos import campaigns as repo
from hogsend.db.repos.api_keys import Principal
from hogsend.db.tables.campaigns import Campaign
from hogsend.errors import Conflict, NotFound

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])

CampaignId = Annotated[UUID, Path(description="The campaign id.")]


def _audience(app: Hogsend, body: CampaignIn) -> tuple[str, dict[str, object], str]:
    """(kind, stored audience, default name); 422 unless exactly one is given, 404 unknown."""
    given = [
        k
        for k, v in (("list", body.list_), ("bucket", body.bucket), ("criteria", body.criteria))
        if v is not None
    ]
    if len(given) != 1:
        raise invalid_field(("body",), "exactly one of list, bucket or criteria is required")
    if body.list_ is not None:
        if body.list_ not in {item.id for item in app.lists}:
            raise NotFound(f"Unknown list: {body.list_}")
        return "list", {"id": body.list_}, f"Campaign to list {body.list_}"
    if body.bucket is not None:
        if body.bucket not in {item.id for item in app.buckets}:
            raise NotFound(f"Unknown bucket: {body.bucket}")
        return "bucket", {"id": body.bucket}, f"Campaign to bucket {body.bucket}"
    try:
        condition_from_dict(body.criteria)
    except InvalidCondition as exc:
        raise invalid_field(("body", "criteria", *exc.path), exc.reason) from None
    return "criteria", {"criteria": body.criteria}, "Campaign to criteria"


async def create_from_body(
    app: Hogsend,
    sessionmaker: async_sessionmaker[AsyncSession],
    body: CampaignIn,
    *,
    actor: str,
    actor_key_id: UUID | None = None,
    actor_user_id: UUID | None = None,
    idempotency_key: str | None = None,
    ip_address: str | None = None,
    request_id: str | None = None,
) -> Campaign:
    """Validate ``body`` against the app, create the campaign and audit it.

    The one path every campaign is created by (``POST /v1/campaigns`` and Studio's form).

    Raises:
        RequestValidationError: a field is wrong (no audience, props the template refuses).
        NotFound: the list or bucket is unknown.
    """
    kind, audience, default_name = _audience(app, body)
    registry = app.templates
    template = find_template(registry, body.template, ("body", "template"))
    assert registry is not None
    render_or_422(
        registry,
        template.key,
        contact=stand_in_contact("preview@example.com"),
        props=body.props,
        subject=body.subject,
        marketing=True,
        location=("body", "props"),
    )
    now = aware_now()
    async with sessionmaker() as session, session.begin():
        campaign, created = await repo.create_campaign(
            session,
            name=body.name or default_name,
            status="scheduled" if body.send_at is not None and body.send_at > now else "queued",
            audience_kind=kind,
            audience=audience,
            template_key=template.key,
            props=body.props,
            from_email=body.from_,
            subject=body.subject,
            send_at=body.send_at,
            local_time=body.local_time,
            throttle_per_second=body.throttle,
            idempotency_key=idempotency_key or body.idempotency_key,
            created_by=actor,
        )
        if created:
            await audit.record(
                session,
                actor=actor,
                actor_key_id=actor_key_id,
                actor_user_id=actor_user_id,
                action="campaigns.create",
                resource="campaigns",
                resource_id=str(campaign.id),
                detail={
                    "audienceKind": kind,
                    "template": template.key,
                    "before": None,
                    "after": {"status": campaign.status},
                },
                ip_address=ip_address,
                request_id=request_id,
            )
    return campaign


@router.post(
    "",
    status_code=202,
    summary="Create a broadcast campaign",
    responses=problem_responses(404),
)
async def create_campaign(
    body: CampaignIn,
    request: Request,
    principal: Principal = require_scope("ingest"),
    idempotency_key_header: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            min_length=1,
            max_length=MAX_IDEMPOTENCY_KEY_LENGTH,
            description="Wins over the body's `idempotencyKey`.",
        ),
    ] = None,
) -> CampaignAccepted:
    """Create a campaign and return at once (202) with its id; a worker sends it.

    The audience is snapshotted when the send starts (`sendAt`, default now). A
    repeated idempotency key returns the campaign it created, with its current status,
    and creates nothing.
    """
    campaign = await create_from_body(
        hogsend_of(request),
        sessionmaker_of(request),
        body,
        actor=principal.name,
        actor_key_id=principal.key_id,
        idempotency_key=idempotency_key_header,
        ip_address=request.client.host if request.client else None,
        request_id=getattr(request.state, "request_id", None),
    )
    return CampaignAccepted(campaign_id=campaign.id, status=campaign.status)


@router.get("", summary="List campaigns", dependencies=[require_scope("ingest")])
async def list_campaigns(
    query: Annotated[CampaignQuery, Query()], session: DbSession
) -> CampaignPage:
    """Campaigns newest first, with their counts; `status` narrows it down."""
    rows, total = await repo.list_campaigns(
        session, status=query.status, limit=query.limit, offset=query.offset
    )
    return CampaignPage(
        campaigns=[campaign_out(r) for r in rows],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )


@router.get(
    "/{id}",
    summary="Get a campaign",
    responses=problem_responses(404),
    dependencies=[require_scope("ingest")],
)
async def get_campaign(id: CampaignId, session: DbSession) -> CampaignOut:
    """Status, audience size, live counts (sent, skipped by reason, failed) and times."""
    campaign = await repo.get_campaign(session, id)
    if campaign is None:
        raise NotFound(f"Unknown campaign: {id}")
    return campaign_out(campaign)


async def _control(change: AdminChange, campaign_id: UUID, action: str) -> CampaignOut:
    before = await repo.status_of(change.session, campaign_id)
    campaign, changed = await repo.control(change.session, campaign_id, action, aware_now())
    if campaign is None:
        raise NotFound(f"Unknown campaign: {campaign_id}")
    if not changed:
        raise Conflict(f"cannot {action} a campaign that is {campaign.status}")
    change.detail = {
        "status": campaign.status,
        "before": {"status": before},
        "after": {"status": campaign.status},
    }
    return campaign_out(campaign)


@router.post("/{id}/pause", summary="Pause a campaign", responses=problem_responses(404, 409))
async def pause_campaign(
    id: CampaignId,
    change: AdminChange = audited("admin:write", resource="campaigns", action="campaigns.pause"),
) -> CampaignOut:
    """Stop sending at the next batch boundary; `resume` continues where it stopped."""
    return await _control(change, id, "pause")


@router.post("/{id}/resume", summary="Resume a campaign", responses=problem_responses(404, 409))
async def resume_campaign(
    id: CampaignId,
    change: AdminChange = audited("admin:write", resource="campaigns", action="campaigns.resume"),
) -> CampaignOut:
    """Continue a paused campaign with the recipients it has not reached yet."""
    return await _control(change, id, "resume")


@router.post("/{id}/cancel", summary="Cancel a campaign", responses=problem_responses(404, 409))
async def cancel_campaign(
    id: CampaignId,
    change: AdminChange = audited("admin:write", resource="campaigns", action="campaigns.cancel"),
) -> CampaignOut:
    """Stop for good at the next batch boundary; recipients not reached get nothing."""
    return await _control(change, id, "cancel")
