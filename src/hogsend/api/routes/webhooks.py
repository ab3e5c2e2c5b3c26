"""Provider webhooks: delivery, bounce and complaint reports coming back in.

``POST /v1/webhooks/resend`` takes Resend's Svix-signed webhooks;
``POST /v1/webhooks/generic`` takes a flat report of our own, signed the same way (the
Standard Webhooks scheme), for SMTP setups and other providers. Neither uses an API
key: the signature is the authentication, checked on the raw body before anything is
parsed. A missing, malformed, stale or wrong signature, or no secret configured, is a
401 and nothing is written. A verified delivery is acted on in one transaction (see
:mod:`hogsend.db.repos.deliveries`); its delivery id makes a redelivery a no-op.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import structlog
from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import SecretStr, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.api.deps import settings_of
from hogsend.api.errors import problem_responses
from hogsend.api.routes.transactions import in_transaction, invalid_field
from hogsend.api.schemas.webhooks import GenericReport, WebhookAck
from hogsend.channels.email.webhooks import WebhookPayloadError, parse_resend
from hogsend.core.clock import aware_now
from hogsend.core.delivery_reports import EVENT_KINDS, DeliveryReport
from hogsend.core.webhook_signatures import (
    WebhookVerificationError,
    decode_secret,
    signed_headers,
    verify,
)
from hogsend.db.repos import deliveries
from hogsend.errors import BadRequest, Unauthorized
from hogsend.settings import Settings

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])

_log = structlog.get_logger("hogsend.webhooks")


def _signature_parameters(prefix: str) -> list[dict[str, Any]]:
    described = {
        "id": "The delivery's unique id; a redelivery repeats it.",
        "timestamp": "Unix seconds when it was signed; refused when too far from now.",
        "signature": "Space-separated `v1,<base64 HMAC-SHA256>` signatures.",
    }
    return [
        {
            "name": f"{prefix}-{part}",
            "in": "header",
            "required": True,
            "description": text,
            "schema": {"type": "string"},
        }
        for part, text in described.items()
    ]


_RESEND_BODY = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "type": {"type": "string", "description": "`email.bounced`, `email.delivered` ..."},
        "created_at": {"type": "string"},
        "data": {"type": "object"},
    },
}


def _openapi(parameters: list[dict[str, Any]], body: dict[str, Any]) -> dict[str, Any]:
    return {
        "parameters": parameters,
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
    }


async def _verified(request: Request, secret: SecretStr | None, setting: str) -> tuple[str, bytes]:
    """The delivery id and the raw body, once the signature checks out."""
    settings: Settings = settings_of(request)
    if secret is None:
        raise Unauthorized(f"{setting} is not set: this webhook cannot verify signatures")
    body = await request.body()
    try:
        signed = signed_headers(request.headers)
        delivery_id = verify(
            decode_secret(secret.get_secret_value()),
            signed,
            body,
            now=aware_now(),
            tolerance=timedelta(seconds=settings.webhook_tolerance_seconds),
        )
    except WebhookVerificationError as exc:
        _log.warning("webhook refused", path=request.url.path, reason=str(exc))
        raise Unauthorized(f"Webhook verification failed: {exc}") from None
    return delivery_id, body


async def _act(
    request: Request, *, source: str, provider: str | None, delivery_id: str, report: DeliveryReport
) -> WebhookAck:
    settings: Settings = settings_of(request)
    now = aware_now()

    async def work(session: AsyncSession) -> deliveries.ReportOutcome:
        return await deliveries.record_report(
            session,
            source=source,
            provider=provider,
            delivery_id=delivery_id,
            report=report,
            soft_bounce_threshold=settings.soft_bounce_threshold,
            now=now,
        )

    outcome = await in_transaction(request, work)
    return WebhookAck(
        duplicate=outcome.duplicate,
        ignored=outcome.ignored,
        type=report.event_type,
        send_id=outcome.send_id,
        email=outcome.email,
        suppressed=outcome.suppressed,
        event_id=outcome.event_id,
    )


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("Malformed JSON in request body") from None
    if not isinstance(payload, dict):
        raise invalid_field(("body",), "must be a JSON object")
    return payload


@router.post(
    "/resend",
    summary="Receive Resend's delivery webhooks",
    responses=problem_responses(401),
    openapi_extra=_openapi(_signature_parameters("svix"), _RESEND_BODY),
)
async def resend_webhook(request: Request) -> WebhookAck:
    """Point Resend's webhook at this URL with its signing secret in
    `HOGSEND_RESEND_WEBHOOK_SECRET`. Acts on `email.delivered`, `email.bounced` (hard on
    `Permanent`, otherwise soft), `email.complained` and `email.delivery_delayed`
    (recorded only); other types are acknowledged and ignored. Matches the send by
    Resend's email id and always updates the recipient address's suppression state.
    Needs no API key: the Svix signature (`svix-id`, `svix-timestamp`, `svix-signature`)
    is checked instead, and a bad or missing one is a 401 with nothing written."""
    settings: Settings = settings_of(request)
    delivery_id, body = await _verified(
        request, settings.resend_webhook_secret, "HOGSEND_RESEND_WEBHOOK_SECRET"
    )
    payload = _json_object(body)
    try:
        report = parse_resend(payload)
    except WebhookPayloadError as exc:
        raise invalid_field(("body", *exc.field.split(".")), exc.message) from None
    return await _act(
        request, source="resend", provider="resend", delivery_id=delivery_id, report=report
    )


def _generic_report(body: bytes) -> GenericReport:
    try:
        return GenericReport.model_validate_json(body)
    except ValidationError as exc:
        errors: list[dict[str, Any]] = []
        for err in exc.errors():
            located = dict(err)
            located["loc"] = ("body", *err["loc"])
            errors.append(located)
        raise RequestValidationError(errors) from None


@router.post(
    "/generic",
    summary="Receive delivery reports from any provider",
    responses=problem_responses(401),
    openapi_extra=_openapi(
        _signature_parameters("webhook"),
        GenericReport.model_json_schema(by_alias=True, mode="validation"),
    ),
)
async def generic_webhook(request: Request) -> WebhookAck:
    """For SMTP setups and providers without a built-in webhook: POST one report per
    delivery, bounce or complaint, signed with the secret in
    `HOGSEND_GENERIC_WEBHOOK_SECRET` the Standard Webhooks way (`webhook-id`,
    `webhook-timestamp`, `webhook-signature`; `svix-*` names are accepted too).
    `email.bounced` needs `bounceType`; every report needs `email`, `sendId` or
    `messageId`. A bad or missing signature is a 401 with nothing written."""
    settings: Settings = settings_of(request)
    delivery_id, body = await _verified(
        request, settings.generic_webhook_secret, "HOGSEND_GENERIC_WEBHOOK_SECRET"
    )
    parsed = _generic_report(body)
    if parsed.email is None and parsed.send_id is None and parsed.message_id is None:
        raise invalid_field(("body", "email"), "give email, sendId or messageId")
    if parsed.type == "email.bounced" and parsed.bounce_type is None:
        raise invalid_field(("body", "bounceType"), "is required for email.bounced")
    report = DeliveryReport(
        kind=EVENT_KINDS[parsed.type],
        event_type=parsed.type,
        message_id=parsed.message_id,
        send_id=str(parsed.send_id) if parsed.send_id is not None else None,
        email=parsed.email,
        bounce=parsed.bounce_type if parsed.type == "email.bounced" else None,
        reason=parsed.reason,
        occurred_at=parsed.occurred_at,
    )
    return await _act(
        request, source="generic", provider=parsed.provider, delivery_id=delivery_id, report=report
    )
