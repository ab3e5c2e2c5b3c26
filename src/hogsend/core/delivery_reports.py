"""Delivery reports: what a provider says happened to one message, in one shape. No I/O.

Providers' webhooks are parsed into a :class:`DeliveryReport` (Resend's by
:mod:`hogsend.channels.email.webhooks`, the generic webhook's by its API schema); the
database side acts on the report without knowing where it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from hogsend.core.suppression import BounceClass

ReportKind = Literal["delivered", "bounced", "complained", "delayed", "ignored"]

EVENT_KINDS: dict[str, ReportKind] = {
    "email.delivered": "delivered",
    "email.bounced": "bounced",
    "email.complained": "complained",
    "email.delivery_delayed": "delayed",
}
"""Report types acted on, by their type name (Resend's, which the generic webhook shares)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DeliveryReport:
    """One provider report about one message.

    Attributes:
        kind: what happened (``ignored`` for types hogsend does not act on).
        event_type: the provider's type name, as sent.
        message_id: the provider's id of the message (matched to ``email_sends``).
        send_id: hogsend's send id (``X-Hogsend-Send-Id``), when the reporter knows it.
        email: the recipient as reported (not yet normalised).
        bounce: the bounce's class, for a bounce.
        bounce_type: the provider's bounce type (``Permanent``, ``Transient`` ...).
        bounce_sub_type: the provider's sub-type (``General``, ``MailboxFull`` ...).
        reason: the provider's message about it.
        occurred_at: when it happened, per the provider (None: unknown).
    """

    kind: ReportKind
    event_type: str
    message_id: str | None = None
    send_id: str | None = None
    email: str | None = None
    bounce: BounceClass | None = None
    bounce_type: str | None = None
    bounce_sub_type: str | None = None
    reason: str | None = None
    occurred_at: datetime | None = None
