"""Delivering a fired alert: an email through the mailer, or a signed webhook POST.

Email goes through :class:`~hogsend.channels.mailer.Mailer` like any transactional
message (template from the rule's ``channelConfig.template``, decision row and all)
with an idempotency key per notification, so a retried evaluation cannot mail twice.
Webhooks are signed the Standard Webhooks way (``webhook-id``, ``webhook-timestamp``,
``webhook-signature``: see :mod:`hogsend.core.webhook_signatures`), so the receiver
can check the body came from this install and drop replays by id.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import httpx

from hogsend.channels.mailer import Mailer, SendRequest
from hogsend.core.webhook_signatures import sign

WEBHOOK_TIMEOUT_SECONDS = 10.0
USER_AGENT = "hogsend-alerts"


class AlertDeliveryError(Exception):
    """A notification that did not reach its channel (the history row keeps the reason)."""


def webhook_body(payload: dict[str, Any]) -> bytes:
    """The exact bytes posted (and signed): compact JSON with sorted keys."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()


async def post_webhook(
    client: httpx.AsyncClient,
    *,
    url: str,
    secret: str,
    delivery_id: str,
    payload: dict[str, Any],
    now: datetime,
) -> None:
    """POST ``payload`` to ``url`` signed with ``secret``.

    Raises:
        AlertDeliveryError: a network error or a non-2xx answer.
    """
    body = webhook_body(payload)
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": delivery_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign(secret, msg_id=delivery_id, timestamp=now, body=body),
    }
    try:
        response = await client.post(
            url, content=body, headers=headers, timeout=WEBHOOK_TIMEOUT_SECONDS
        )
    except httpx.HTTPError as exc:
        raise AlertDeliveryError(f"webhook request failed: {type(exc).__name__}: {exc}") from exc
    if not 200 <= response.status_code < 300:
        raise AlertDeliveryError(f"webhook answered HTTP {response.status_code}")


async def send_email(
    mailer: Mailer | None,
    *,
    to: str,
    template: str,
    delivery_id: str,
    payload: dict[str, Any],
) -> str:
    """Mail ``payload`` to ``to`` with ``template``; returns the mailer's decision.

    Raises:
        AlertDeliveryError: no mailer (the app has no templates), or the mailer did not
            send (suppressed address, provider error ...).
    """
    if mailer is None:
        raise AlertDeliveryError("email alerts need an app with templates (no mailer)")
    try:
        outcome = await mailer.send(
            SendRequest(
                template=template,
                to_email=to,
                props={"alert": payload},
                subject=str(payload["subject"]),
                kind="transactional",
                category="alerts",
                skip_preference_check=True,
                idempotency_key=f"hogsend-alert:{delivery_id}",
            )
        )
    except Exception as exc:
        raise AlertDeliveryError(f"{type(exc).__name__}: {exc}") from exc
    if outcome.decision not in ("sent", "redirected", "duplicate"):
        raise AlertDeliveryError(f"the mailer decided {outcome.decision!r}")
    return str(outcome.decision)
