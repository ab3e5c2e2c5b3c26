"""/v1/admin/buckets: buckets, their members, the enable switch, manual members, preview.

Reads need ``admin:read``; changes need ``admin:write`` and are audited. Buckets are
defined in code; the API reads them from the app and keeps only their admin state
(the enable override, in ``bucket_configs``) and their memberships.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, hogsend_of
from hogsend.api.errors import problem_responses
from hogsend.api.routes.transactions import invalid_cursor, invalid_field
from hogsend.api.schemas.buckets import (
    BucketList,
    BucketOut,
    BucketPatch,
    BucketReactionOut,
    ContactMemberships,
    MemberAdd,
    MemberPage,
    MemberQuery,
    MemberRemoved,
    MembershipOut,
    PreviewContact,
    PreviewOut,
    PreviewQuery,
    TransitionOut,
)
from hogsend.core.buckets import Membership
from hogsend.core.conditions import InvalidCondition, condition_from_dict
from hogsend.core.definitions import BucketDefinition
from hogsend.core.pagination import InvalidCursor
from hogsend.db.repos import buckets as repo
from hogsend.db.repos import contacts
from hogsend.errors import Conflict, NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: buckets"])


def _bucket(request: Request, bucket_id: str) -> BucketDefinition:
    for bucket in hogsend_of(request).buckets:
        if bucket.id == bucket_id:
            return bucket
    raise NotFound(f"bucket {bucket_id!r} is not defined in the app")


def _membership_out(m: Membership) -> MembershipOut:
    return MembershipOut(
        id=m.id,
        bucket_id=m.bucket_id,
        contact_id=m.contact_id,
        user_id=m.contact_key,
        email=m.email,
        status=m.status,
        entered_at=m.entered_at,
        left_at=m.left_at,
        left_reason=m.left_reason,
        epoch=m.entry_count,
        source=m.source,
        max_dwell_at=m.max_dwell_at,
    )


async def _bucket_out(
    session: DbSession,
    bucket: BucketDefinition,
    overrides: dict[str, bool],
    counts: dict[str, int],
) -> BucketOut:
    recent = await repo.recent_transitions(session, bucket.id)
    override = overrides.get(bucket.id)
    return BucketOut(
        id=bucket.id,
        name=bucket.name,
        description=bucket.description,
        kind=bucket.kind,
        criteria=None if bucket.criteria is None else bucket.criteria.to_dict(),
        enabled=bucket.enabled if override is None else override,
        enabled_in_code=bucket.enabled,
        enabled_override=override,
        time_based=bucket.is_time_based,
        min_dwell_seconds=None if bucket.min_dwell is None else bucket.min_dwell.total_seconds(),
        max_dwell_seconds=None if bucket.max_dwell is None else bucket.max_dwell.total_seconds(),
        fast_expiry=bucket.fast_expiry,
        entry_limit=bucket.entry_limit,
        member_count=counts.get(bucket.id, 0),
        reactions=[
            BucketReactionOut(
                kind=r.kind,
                event=r.event,
                journey_id=r.journey_id,
                label=r.label,
                after_seconds=None if r.after is None else r.after.total_seconds(),
                every_seconds=None if r.every is None else r.every.total_seconds(),
            )
            for r in bucket.reactions
        ],
        recent_transitions=[
            TransitionOut(
                event_id=t.event_id,
                kind=t.kind,
                contact_id=t.contact_id,
                user_id=t.contact_key,
                occurred_at=t.occurred_at,
                properties=dict(t.properties),
            )
            for t in recent
        ],
    )


@router.get("/buckets", summary="List buckets", dependencies=[require_scope("admin:read")])
async def list_buckets(request: Request, session: DbSession) -> BucketList:
    """Every bucket of the app with its switch, member count, reactions and latest
    transitions."""
    definitions = hogsend_of(request).buckets
    overrides = await repo.enabled_overrides(session)
    counts = await repo.member_counts(session, [b.id for b in definitions])
    return BucketList(
        buckets=[await _bucket_out(session, b, overrides, counts) for b in definitions]
    )


@router.get(
    "/criteria/preview",
    summary="Preview a criteria",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(422),
)
async def preview_criteria(
    query: Annotated[PreviewQuery, Query()], session: DbSession
) -> PreviewOut:
    """Count the live contacts matching a criteria now, with a sample. ``criteria`` is
    the condition's JSON form (docs/conditions.md), URL-encoded. Nothing is saved. An
    invalid criteria is a 422 naming the bad node."""
    try:
        data = json.loads(query.criteria)
    except ValueError:
        raise invalid_field(("query", "criteria"), "must be a JSON object") from None
    if not isinstance(data, dict):
        raise invalid_field(("query", "criteria"), "must be a JSON object")
    try:
        condition = condition_from_dict(data)
    except InvalidCondition as exc:
        raise invalid_field(("query", "criteria", *exc.path), exc.reason) from None
    count, sample = await repo.preview(
        session, condition, now=datetime.now(UTC), sample=query.sample
    )
    return PreviewOut(
        count=count,
        sample=[
            PreviewContact(contact_id=m.contact_id, user_id=m.external_id, email=m.email)
            for m in sample
        ],
    )


@router.get(
    "/buckets/{id}",
    summary="Read a bucket",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def get_bucket(id: str, request: Request, session: DbSession) -> BucketOut:
    """One bucket, as in the listing. 404 if the app defines no such bucket."""
    bucket = _bucket(request, id)
    overrides = await repo.enabled_overrides(session)
    counts = await repo.member_counts(session, [bucket.id])
    return await _bucket_out(session, bucket, overrides, counts)


@router.patch(
    "/buckets/{id}",
    summary="Enable or disable a bucket",
    responses=problem_responses(404),
)
async def update_bucket(
    id: str,
    body: BucketPatch,
    request: Request,
    change: AdminChange = audited("admin:write", resource="buckets", action="buckets.update"),
) -> BucketOut:
    """Set the enable override (``enabled``: true / false), or remove it (null).

    Every path reads it: a disabled bucket is skipped by the per-event evaluation, the
    sweeps and the manual member routes, from the next event on, on every worker.
    """
    bucket = _bucket(request, id)
    before = await repo.enabled_overrides(change.session)
    await repo.set_enabled(change.session, bucket.id, body.enabled, now=datetime.now(UTC))
    overrides = await repo.enabled_overrides(change.session)
    # The same shape as Studio's switch; "enabled" is the requested override, as before.
    change.detail = {
        "enabled": body.enabled,
        "before": _switch_state(bucket, before),
        "after": _switch_state(bucket, overrides),
    }
    counts = await repo.member_counts(change.session, [bucket.id])
    return await _bucket_out(change.session, bucket, overrides, counts)


@router.get(
    "/buckets/{id}/members",
    summary="List a bucket's members",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def list_members(
    id: str,
    request: Request,
    query: Annotated[MemberQuery, Query()],
    session: DbSession,
) -> MemberPage:
    """Active members (``status=active``) or past stays (``status=left``), newest stay
    first, keyset-paginated with ``cursor``. ``userId`` (any key of the contact) or
    ``contactId`` narrows to one contact; an unknown one gives an empty page."""
    bucket = _bucket(request, id)
    contact_id = query.contact_id
    if query.user_id is not None:
        resolution = await contacts.resolve_by_key(session, query.user_id)
        if resolution is None or (contact_id is not None and contact_id != resolution.contact_id):
            return MemberPage(members=[], next_cursor=None)
        contact_id = resolution.contact_id
    try:
        page = await repo.list_members(
            session,
            bucket.id,
            status=query.status,
            contact_id=contact_id,
            cursor=query.cursor,
            limit=query.limit,
        )
    except InvalidCursor as exc:
        raise invalid_cursor(exc) from None
    return MemberPage(
        members=[_membership_out(m) for m in page.items], next_cursor=page.next_cursor
    )


@router.get(
    "/contacts/{id}/buckets",
    summary="A contact's bucket memberships",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def contact_memberships(id: UUID, session: DbSession) -> ContactMemberships:
    """Every stay (active and past) of one live contact, newest first."""
    if await contacts.get_contact(session, id) is None:
        raise NotFound(f"contact {id} does not exist (or was deleted or merged)")
    return ContactMemberships(
        memberships=[_membership_out(m) for m in await repo.contact_memberships(session, id)]
    )


def _switch_state(bucket: BucketDefinition, overrides: dict[str, bool]) -> dict[str, Any]:
    """A bucket's switch as audited: the effective value and the admin override (or None)."""
    override = overrides.get(bucket.id)
    return {"enabled": bucket.enabled if override is None else override, "override": override}


async def _manual(change: AdminChange, request: Request, bucket_id: str) -> BucketDefinition:
    bucket = _bucket(request, bucket_id)
    if bucket.kind != "manual":
        raise Conflict(
            f"bucket {bucket.id!r} is computed from its criteria; only manual buckets take "
            "members by hand"
        )
    if not await repo.is_enabled(change.session, bucket):
        raise Conflict(f"bucket {bucket.id!r} is disabled")
    return bucket


@router.post(
    "/buckets/{id}/members",
    summary="Add a contact to a manual bucket",
    status_code=201,
    responses=problem_responses(404, 409),
)
async def add_member(
    id: str,
    body: MemberAdd,
    request: Request,
    response: Response,
    change: AdminChange = audited("admin:write", resource="buckets", action="buckets.members.add"),
) -> MembershipOut:
    """Make the contact an active member and emit ``bucket:entered:<id>`` (201). A contact
    already in the bucket is returned as is (200). 409 for a criteria bucket or a
    disabled one, or when the bucket's ``entry_limit`` is used up; 404 for an unknown
    contact."""
    bucket = await _manual(change, request, id)
    session = change.session
    if await contacts.get_contact(session, body.contact_id) is None:
        raise NotFound(f"contact {body.contact_id} does not exist (or was deleted or merged)")
    now = datetime.now(UTC)
    membership, joined = await repo.add_by_hand(session, bucket, body.contact_id, now=now)
    if membership is None:
        raise Conflict(f"the contact has entered bucket {bucket.id!r} as often as allowed")
    change.detail = {
        "contactId": str(body.contact_id),
        "before": {"member": not joined, "epoch": None if joined else membership.entry_count},
        "after": {"member": True, "epoch": membership.entry_count},
    }
    if not joined:
        response.status_code = 200
    return _membership_out(membership)


@router.delete(
    "/buckets/{id}/members/{contact_id}",
    summary="Remove a contact from a manual bucket",
    responses=problem_responses(404, 409),
)
async def remove_member(
    id: str,
    contact_id: UUID,
    request: Request,
    change: AdminChange = audited(
        "admin:write", resource="buckets", action="buckets.members.remove"
    ),
) -> MemberRemoved:
    """End the contact's stay (reason ``manual``) and emit ``bucket:left:<id>``. 404 when
    the contact is not an active member; 409 for a criteria bucket or a disabled one."""
    bucket = await _manual(change, request, id)
    now = datetime.now(UTC)
    left = await repo.remove_by_hand(change.session, bucket, contact_id, now=now)
    if left is None:
        raise NotFound(f"contact {contact_id} is not a member of bucket {bucket.id!r}")
    change.detail = {
        "contactId": str(contact_id),
        "epoch": left.entry_count,
        "before": {"member": True, "epoch": left.entry_count},
        "after": {"member": False, "epoch": None},
    }
    return MemberRemoved(removed=True)
