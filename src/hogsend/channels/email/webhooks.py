"""Reading providers' webhook bodies into delivery reports. No I/O.

- **Resend** (``POST /v1/webhooks/resend``): ``{"type": "email.bounced", "created_at":
  ..., "data": {"email_id", "to": [...], "bounce": {"type", "subType", "message"}}}``.
  Bounce ``type`` ``Permanent`` is a hard bounce; ``Transient`` and ``Undetermined``
  (or none) are soft, except the sub-types that are about the message rather than the
  address (``MessageTooLarge``, ``ContentRejected``, ``AttachmentRejected``).

The generic webhook (``POST /v1/webhooks/generic``) has a flat body of our own, which
its API schema validates and turns into a
:class:`~hogsend.core.delivery_reports.DeliveryReport` directly.

Only delivered, bounced, complained and delivery-delayed reports are acted on; sent,
opened, clicked and every other type are ``ignored`` (hogsend tracks opens and clicks
itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hogsend.core.delivery_reports import EVENT_KINDS, DeliveryReport
from hogsend.core.suppression import BounceClass
from hogsend.errors import HogsendError

# Transient sub-types that say the message was refused, not that the mailbox is failing.
_MESSAGE_SUBTYPES = frozenset({"messagetoolarge", "contentrejected", "attachmentrejected"})
_MAX_TEXT = 1000


class WebhookPayloadError(HogsendError, ValueError):
    """A signed webhook body that is not the provider's documented shape.

    ``field`` names the offending field as a path (``data.to``).
    """

    code = "webhook-payload"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def classify_resend_bounce(bounce_type: str | None, sub_type: str | None) -> BounceClass:
    """Hard for ``Permanent``; for anything else soft, unless the sub-type blames the message."""
    if (bounce_type or "").strip().lower() == "permanent":
        return "hard"
    if (sub_type or "").strip().lower() in _MESSAGE_SUBTYPES:
        return "message"
    return "soft"


def _text(value: object, field: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise WebhookPayloadError(field, "must be a string")
    if "\x00" in value:
        raise WebhookPayloadError(field, "must not contain NUL characters")
    return value[:_MAX_TEXT] or None


def _instant(value: object, field: str) -> datetime | None:
    text = _text(value, field)
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise WebhookPayloadError(field, "must be an ISO 8601 date-time") from None
    if parsed.utcoffset() is None:
        raise WebhookPayloadError(field, "must carry a UTC offset")
    return parsed


def _first_recipient(value: object) -> str | None:
    if isinstance(value, list):
        if not value:
            return None
        return _text(value[0], "data.to[0]")
    return _text(value, "data.to")


def parse_resend(payload: Mapping[str, Any]) -> DeliveryReport:
    """The report in a Resend webhook body (already JSON-decoded).

    Raises:
        WebhookPayloadError: ``type`` is missing, or a field the report needs is malformed.
    """
    event_type = _text(payload.get("type"), "type")
    if event_type is None:
        raise WebhookPayloadError("type", "is required")
    kind = EVENT_KINDS.get(event_type, "ignored")
    if kind == "ignored":
        return DeliveryReport(kind=kind, event_type=event_type)
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise WebhookPayloadError("data", "must be an object")
    bounce_class: BounceClass | None = None
    bounce_type = sub_type = reason = None
    if kind == "bounced":
        bounce = data.get("bounce")
        if bounce is not None and not isinstance(bounce, Mapping):
            raise WebhookPayloadError("data.bounce", "must be an object")
        bounce = bounce or {}
        bounce_type = _text(bounce.get("type"), "data.bounce.type")
        sub_type = _text(bounce.get("subType"), "data.bounce.subType")
        reason = _text(bounce.get("message"), "data.bounce.message")
        bounce_class = classify_resend_bounce(bounce_type, sub_type)
    occurred = _instant(payload.get("created_at"), "created_at") or _instant(
        data.get("created_at"), "data.created_at"
    )
    return DeliveryReport(
        kind=kind,
        event_type=event_type,
        message_id=_text(data.get("email_id"), "data.email_id"),
        email=_first_recipient(data.get("to")),
        bounce=bounce_class,
        bounce_type=bounce_type,
        bounce_sub_type=sub_type,
        reason=reason,
        occurred_at=occurred,
    )
