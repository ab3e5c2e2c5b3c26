"""Acting on a provider's delivery report: the send, the address, an event, a receipt.

:func:`record_report` does everything one verified webhook delivery causes, in the
caller's transaction:

1. the receipt (``webhook_receipts``, keyed on the provider's delivery id) is claimed;
   a delivery seen before changes nothing more and is reported as a duplicate;
2. the send is found by the provider's message id (or hogsend's send id);
3. its status and timestamps move forward, never back (a late ``delivered`` does not
   undo ``bounced``; ``complained`` wins over everything);
4. the recipient's address health changes by the rules of
   :mod:`hogsend.core.suppression`, whether or not the send was found and whether or
   not anyone has a contact or preference row for the address;
5. an ``email.delivered`` / ``email.bounced`` / ``email.complained`` event is ingested
   for the send's contact (or the live contact holding the address), with the
   idempotency key ``webhook:<source>:<delivery id>``, so journeys and buckets react.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.delivery_reports import DeliveryReport
from hogsend.core.identity import IdentityError, IdentityKey, normalize_email
from hogsend.core.ingest import EventInput
from hogsend.core.suppression import (
    AddressHealth,
    after_bounce,
    after_complaint,
    after_delivery,
)
from hogsend.db.repos import events, suppressions
from hogsend.db.repos.contacts import lookup_contacts

_log = structlog.get_logger("hogsend.webhooks")

EVENT_SOURCE = "webhook"


@dataclass(frozen=True, slots=True, kw_only=True)
class MatchedSend:
    """The send a report is about."""

    id: uuid.UUID
    contact_id: uuid.UUID | None
    to_email: str
    redirected_to: str | None
    template_key: str | None
    category: str | None
    journey_id: str | None
    campaign_id: uuid.UUID | None
    provider: str | None
    provider_message_id: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ReportOutcome:
    """What one report changed.

    Attributes:
        duplicate: the delivery id was seen before; nothing was changed.
        ignored: a report type hogsend does not act on; nothing was written.
        send_id: the send it was matched to.
        email: the address it was about (normalised), if known.
        suppressed: whether the address is suppressed now (None: no address).
        newly_suppressed: this report suppressed it.
        event_id: the event ingested for the contact, if one was.
    """

    duplicate: bool = False
    ignored: bool = False
    send_id: uuid.UUID | None = None
    email: str | None = None
    suppressed: bool | None = None
    newly_suppressed: bool = False
    event_id: uuid.UUID | None = None


_SEND_COLUMNS = (
    "id, contact_id, to_email, redirected_to, template_key, category, journey_id,"
    " campaign_id, provider, provider_message_id"
)


async def find_send(
    session: AsyncSession,
    *,
    provider: str | None,
    message_id: str | None,
    send_id: str | None = None,
) -> MatchedSend | None:
    """The send a report names: by hogsend's send id, else by the provider's message id.

    Without ``provider`` a message id must name exactly one send (of any provider).
    """
    if send_id is not None:
        try:
            wanted = uuid.UUID(send_id)
        except ValueError:
            wanted = None
        if wanted is not None:
            row = (
                await session.execute(
                    text(f"SELECT {_SEND_COLUMNS} FROM email_sends WHERE id = :id"), {"id": wanted}
                )
            ).first()
            if row is not None:
                return MatchedSend(**row._mapping)
    if message_id is None:
        return None
    if provider is not None:
        rows = (
            await session.execute(
                text(
                    f"SELECT {_SEND_COLUMNS} FROM email_sends WHERE id = ("
                    " SELECT email_send_id FROM email_send_messages"
                    " WHERE message_id = :m AND provider = :p)"
                ),
                {"p": provider, "m": message_id},
            )
        ).all()
    else:
        rows = (
            await session.execute(
                text(
                    f"SELECT {_SEND_COLUMNS} FROM email_sends WHERE id IN ("
                    " SELECT email_send_id FROM email_send_messages"
                    " WHERE message_id = :m LIMIT 2)"
                ),
                {"m": message_id},
            )
        ).all()
    return MatchedSend(**rows[0]._mapping) if len(rows) == 1 else None


_CLAIM = text(
    """
    INSERT INTO webhook_receipts (source, delivery_id, event_type, provider_message_id, email,
                                  email_send_id)
    VALUES (:source, :delivery_id, :event_type, :message_id, :email, :send_id)
    ON CONFLICT (source, delivery_id) DO NOTHING
    RETURNING delivery_id
    """
)

# Statuses only move forward: delivered over queued/sent; bounced over everything but a
# complaint; complained over everything. First timestamps are kept.
_MARK_SEND = text(
    """
    UPDATE email_sends SET
        status = CASE CAST(:kind AS text)
            WHEN 'delivered' THEN CASE WHEN status IN ('queued', 'sent') THEN 'delivered'
                                       ELSE status END
            WHEN 'bounced' THEN CASE WHEN status = 'complained' THEN status ELSE 'bounced' END
            WHEN 'complained' THEN 'complained'
            ELSE status END,
        delivered_at = CASE WHEN :kind = 'delivered' THEN coalesce(delivered_at, :at)
                            ELSE delivered_at END,
        bounced_at = CASE WHEN :kind = 'bounced' THEN coalesce(bounced_at, :at) ELSE bounced_at END,
        bounce_type = CASE WHEN :kind = 'bounced' THEN :bounce_type ELSE bounce_type END,
        bounce_reason = CASE WHEN :kind = 'bounced' THEN :bounce_reason ELSE bounce_reason END,
        complained_at = CASE WHEN :kind = 'complained' THEN coalesce(complained_at, :at)
                             ELSE complained_at END,
        updated_at = now()
    WHERE id = :id AND status NOT IN ('skipped', 'failed')
    """
)


def _address(report: DeliveryReport, send: MatchedSend | None) -> str | None:
    # The reported recipient is where the provider really tried (in test mode that is
    # the redirect address, not the original recipient); the send's is the fallback.
    candidates = [report.email]
    if send is not None:
        candidates += [send.redirected_to, send.to_email]
    for candidate in candidates:
        if not candidate:
            continue
        try:
            return normalize_email(candidate)
        except IdentityError as exc:
            _log.warning("webhook recipient is not a usable address", reason=exc.reason)
    return None


def _event_properties(
    report: DeliveryReport, send: MatchedSend | None, provider: str, email: str | None
) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "provider": provider,
        "messageId": report.message_id or (send.provider_message_id if send else None),
        "email": email,
        "sendId": str(send.id) if send else None,
        "template": send.template_key if send else None,
        "category": send.category if send else None,
        "journeyId": send.journey_id if send else None,
        "campaignId": str(send.campaign_id) if send and send.campaign_id else None,
        "bounceType": report.bounce,
        "bounceProviderType": report.bounce_type,
        "bounceSubType": report.bounce_sub_type,
        "reason": report.reason,
    }
    return {k: v for k, v in properties.items() if v is not None}


async def _contact_for(
    session: AsyncSession, send: MatchedSend | None, email: str | None
) -> uuid.UUID | None:
    if send is not None and send.contact_id is not None:
        return send.contact_id
    if email is None:
        return None
    found = await lookup_contacts(session, [IdentityKey("email", email)])
    contact = found.get(IdentityKey("email", email))
    return contact.id if contact is not None else None


async def record_report(
    session: AsyncSession,
    *,
    source: str,
    provider: str | None,
    delivery_id: str,
    report: DeliveryReport,
    soft_bounce_threshold: int,
    now: datetime,
) -> ReportOutcome:
    """Act on one verified report (see the module docstring); the caller commits.

    Args:
        source: which webhook it came in on (``resend``, ``generic``): the receipt's
            namespace.
        provider: the provider whose message ids the report uses (None: any).
        delivery_id: the provider's id of this delivery (Svix's ``svix-id``).
        report: the parsed report.
        soft_bounce_threshold: soft bounces in a row that suppress an address.
        now: the current instant.
    """
    if report.kind == "ignored":
        return ReportOutcome(ignored=True)
    send = await find_send(
        session, provider=provider, message_id=report.message_id, send_id=report.send_id
    )
    email = _address(report, send)
    claimed = await session.scalar(
        _CLAIM,
        {
            "source": source,
            "delivery_id": delivery_id,
            "event_type": report.event_type,
            "message_id": report.message_id,
            "email": email,
            "send_id": send.id if send else None,
        },
    )
    if claimed is None:
        return ReportOutcome(duplicate=True)
    if report.kind == "delayed":
        return ReportOutcome(send_id=send.id if send else None, email=email)
    at = report.occurred_at or now
    if send is not None:
        await session.execute(
            _MARK_SEND,
            {
                "id": send.id,
                "kind": report.kind,
                "at": at,
                "bounce_type": report.bounce,
                "bounce_reason": report.reason,
            },
        )
    suppressed: bool | None = None
    newly = False
    if email is not None:
        after: suppressions.SuppressionRecord | None
        if report.kind == "delivered":
            _, after = await suppressions.change(session, email, after_delivery, create=False)
            suppressed = after.health.suppressed if after is not None else False
        else:
            if report.kind == "bounced":
                bounce = report.bounce or "soft"

                def rule(health: AddressHealth) -> AddressHealth:
                    return after_bounce(
                        health, bounce, at=at, now=now, threshold=soft_bounce_threshold
                    )
            else:

                def rule(health: AddressHealth) -> AddressHealth:
                    return after_complaint(health, at=at, now=now)

            before, after = await suppressions.change(session, email, rule)
            assert after is not None
            suppressed = after.health.suppressed
            newly = suppressed and not (before is not None and before.health.suppressed)
    event_id = None
    contact_id = await _contact_for(session, send, email)
    if contact_id is not None:
        result = await events.ingest_event(
            session,
            EventInput(
                name=f"email.{report.kind}",
                contact_id=contact_id,
                properties=_event_properties(report, send, provider or source, email),
                idempotency_key=f"webhook:{source}:{delivery_id}",
                occurred_at=report.occurred_at,
                source=EVENT_SOURCE,
            ),
            now=now,
        )
        event_id = result.event_id if result.status != "rejected" else None
    return ReportOutcome(
        send_id=send.id if send else None,
        email=email,
        suppressed=suppressed,
        newly_suppressed=newly,
        event_id=event_id,
    )
