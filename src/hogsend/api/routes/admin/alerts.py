"""/v1/admin/alerts/*: alert rules (CRUD) and their notification history.

Reads need ``admin:read``; creating, changing and deleting rules need ``admin:write``
and are audited with the rule before and after (the webhook secret left out). The
worker-side evaluator (:mod:`hogsend.runtime.alerts`) does the measuring and notifying.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, hogsend_of
from hogsend.api.errors import problem_responses
from hogsend.api.routes.transactions import invalid_field
from hogsend.api.schemas.alerts import (
    AlertDeliveryOut,
    AlertHistoryPage,
    AlertHistoryQuery,
    AlertRuleIn,
    AlertRuleOut,
    AlertRulePage,
    AlertRulePatch,
    ChannelConfig,
    DeletedAlertRule,
)
from hogsend.api.schemas.common import PageQuery
from hogsend.core.webhook_signatures import decode_secret
from hogsend.db.repos import alerts
from hogsend.db.repos.alerts import Rule
from hogsend.errors import NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: alerts"])

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
DEFAULT_TEMPLATE = "alert"


def rule_out(rule: Rule) -> AlertRuleOut:
    """The API shape of a rule (never its webhook secret)."""
    return AlertRuleOut(
        id=rule.id,
        name=rule.name,
        type=rule.type,
        threshold=rule.threshold,
        window_minutes=rule.window_minutes,
        min_volume=rule.min_volume,
        channel=rule.channel,
        channel_config={k: v for k, v in rule.channel_config.items() if k != "secret"},
        enabled=rule.enabled,
        cooldown_minutes=rule.cooldown_minutes,
        firing=rule.firing_since is not None,
        firing_since=rule.firing_since,
        last_fired_at=rule.last_fired_at,
        last_evaluated_at=rule.last_evaluated_at,
        last_value=rule.last_value,
        created_at=rule.created_at,
        updated_at=rule.updated_at,
    )


def _config_error(field: str, message: str) -> RequestValidationError:
    return invalid_field(("body", "channelConfig", field), message)


def channel_config(request: Request, channel: str, config: ChannelConfig) -> dict[str, Any]:
    """The stored config of ``channel``, or a 422 naming the field that is wrong."""
    given = config.model_dump(exclude_none=True)
    if channel == "email":
        extra = given.keys() - {"to", "template"}
        if extra:
            raise _config_error(sorted(extra)[0], "is not an email channel setting")
        if not config.to or not _EMAIL.match(config.to):
            raise _config_error("to", "must be an email address")
        template = config.template or DEFAULT_TEMPLATE
        registry = hogsend_of(request).templates
        known = registry.keys() if registry is not None else frozenset[str]()
        if template not in known:
            raise _config_error("template", f"no template {template!r} in the app")
        return {"to": config.to.strip().lower(), "template": template}
    extra = given.keys() - {"url", "secret"}
    if extra:
        raise _config_error(sorted(extra)[0], "is not a webhook channel setting")
    if not config.url or not re.match(r"^https?://[^\s/]+", config.url):
        raise _config_error("url", "must be an http:// or https:// URL")
    try:
        decode_secret(config.secret or "")
    except ValueError as exc:
        raise _config_error("secret", str(exc)) from None
    return {"url": config.url, "secret": config.secret}


@router.get("/alerts/rules", summary="List alert rules", dependencies=[require_scope("admin:read")])
async def list_rules(session: DbSession, query: Annotated[PageQuery, Query()]) -> AlertRulePage:
    """Rules newest first with their firing state and last evaluation."""
    found, total = await alerts.list_rules(session, limit=query.limit, offset=query.offset)
    return AlertRulePage(
        rules=[rule_out(r) for r in found], total=total, limit=query.limit, offset=query.offset
    )


@router.post(
    "/alerts/rules", status_code=201, summary="Create an alert rule", responses=problem_responses()
)
async def create_rule(
    body: AlertRuleIn,
    request: Request,
    change: AdminChange = audited(
        "admin:write", resource="alert-rules", action="alert-rules.create"
    ),
) -> AlertRuleOut:
    """A rule the workers evaluate every `HOGSEND_ALERT_SWEEP_SECONDS`; it notifies when
    its condition starts holding, again every `cooldownMinutes` while it holds, and once
    when it stops."""
    config = channel_config(request, body.channel, body.channel_config)
    rule = await alerts.create_rule(
        change.session,
        name=body.name,
        type=body.type,
        threshold=body.threshold,
        window_minutes=body.window_minutes,
        min_volume=body.min_volume,
        channel=body.channel,
        channel_config=config,
        cooldown_minutes=body.cooldown_minutes,
        enabled=body.enabled,
    )
    change.resource_id = str(rule.id)
    change.detail = {"before": None, "after": rule.public()}
    return rule_out(rule)


@router.get(
    "/alerts/rules/{id}",
    summary="Read an alert rule",
    dependencies=[require_scope("admin:read")],
    responses=problem_responses(404),
)
async def get_rule(id: UUID, session: DbSession) -> AlertRuleOut:
    """One rule. 404 if unknown."""
    rule = await alerts.get_rule(session, id)
    if rule is None:
        raise NotFound(f"alert rule {id} does not exist")
    return rule_out(rule)


@router.patch(
    "/alerts/rules/{id}", summary="Change an alert rule", responses=problem_responses(404)
)
async def update_rule(
    id: UUID,
    body: AlertRulePatch,
    request: Request,
    change: AdminChange = audited(
        "admin:write", resource="alert-rules", action="alert-rules.update"
    ),
) -> AlertRuleOut:
    """Change the given fields (`type` and `channel` are fixed). Disabling a firing rule
    clears its firing state, so enabling it later fires afresh."""
    before = await alerts.get_rule(change.session, id, lock=True)
    if before is None:
        raise NotFound(f"alert rule {id} does not exist")
    values: dict[str, Any] = {}
    if body.name is not None:
        values["name"] = body.name
    if body.cooldown_minutes is not None:
        values["cooldown_minutes"] = body.cooldown_minutes
    if body.enabled is not None:
        values["enabled"] = body.enabled
        if not body.enabled:
            values["firing_since"] = None
    if body.channel_config is not None:
        values["channel_config"] = channel_config(request, before.channel, body.channel_config)
    if {body.threshold, body.window_minutes, body.min_volume} != {None}:
        values["threshold"] = alerts.threshold_json(
            before.threshold if body.threshold is None else body.threshold,
            before.window_minutes if body.window_minutes is None else body.window_minutes,
            before.min_volume if body.min_volume is None else body.min_volume,
        )
    after = await alerts.update_rule(change.session, id, **values) if values else before
    assert after is not None
    change.detail = {"before": before.public(), "after": after.public()}
    return rule_out(after)


@router.delete(
    "/alerts/rules/{id}", summary="Delete an alert rule", responses=problem_responses(404)
)
async def delete_rule(
    id: UUID,
    change: AdminChange = audited(
        "admin:write", resource="alert-rules", action="alert-rules.delete"
    ),
) -> DeletedAlertRule:
    """Delete the rule and its history. 404 if unknown."""
    before = await alerts.get_rule(change.session, id, lock=True)
    if before is None or not await alerts.delete_rule(change.session, id):
        raise NotFound(f"alert rule {id} does not exist")
    change.detail = {"before": before.public(), "after": None}
    return DeletedAlertRule(deleted=True)


@router.get(
    "/alerts/history",
    summary="List alert notifications",
    dependencies=[require_scope("admin:read")],
)
async def list_history(
    session: DbSession, query: Annotated[AlertHistoryQuery, Query()]
) -> AlertHistoryPage:
    """Notification attempts newest first (of one `ruleId` when given), with the payload
    that was sent and the error of those that failed."""
    found, total = await alerts.history(
        session, rule_id=query.rule_id, limit=query.limit, offset=query.offset
    )
    return AlertHistoryPage(
        history=[
            AlertDeliveryOut(
                id=d.id,
                rule_id=d.rule_id,
                payload=d.payload,
                delivery_status="failed" if d.delivery_status == "failed" else "sent",
                error=d.error,
                created_at=d.created_at,
            )
            for d in found
        ],
        total=total,
        limit=query.limit,
        offset=query.offset,
    )
