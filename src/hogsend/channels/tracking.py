"""Open and click tracking: preparing a message's HTML, and recording hits as events.

Sending (the mailer's tracking step, between render and the provider):
:func:`tracked_html` rewrites the HTML part's links to signed click URLs and adds the
open pixel; the mailer records the message's URLs as a link set in
``tracked_link_sets`` (once per distinct set: a campaign's messages share one) and
commits that before it calls the provider, so a delivered message never carries a link
hogsend cannot resolve.

Hits (the public ``/t/o/{token}`` and ``/t/c/{token}`` routes): :func:`record_open`
and :func:`record_click` verify the token, lock the send, classify the hit
(:mod:`hogsend.core.bots`), store it and, for a message's first open or click by a
person, ingest ``email.opened`` / ``email.clicked`` through the ordinary event path
with a deterministic idempotency key (``email.opened:<send id>``), so exactly one such
event exists per message however many hits race. Later hits only count. Hits flagged
as bots emit nothing unless ``HOGSEND_TRACK_BOT_EVENTS`` is on.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.bots import BotRules, Hit, Verdict, classify
from hogsend.core.ingest import EventInput
from hogsend.core.tokens import InvalidToken
from hogsend.core.tracking import (
    LinkSet,
    SignedClick,
    TrackedHtml,
    click_url,
    link_id,
    open_url,
    track_html,
    verify_click,
    verify_id,
)
from hogsend.db.repos import events as events_repo
from hogsend.db.repos import outbox
from hogsend.db.repos import tracking as tracking_repo

if TYPE_CHECKING:
    from hogsend.settings import Settings

EMAIL_OPENED = "email.opened"
EMAIL_CLICKED = "email.clicked"
EVENT_SOURCE = "tracking"

UNTRACKED_PATHS = ("/v1/email/", "/t/")
"""Links under these paths of ``HOGSEND_PUBLIC_URL`` are never rewritten: unsubscribe,
preference centre (a scanner must not count as a click on them, and a person's
unsubscribe must not depend on tracking) and tracking URLs themselves."""


def bot_rules(settings: Settings) -> BotRules:
    """The bot rules the settings ask for."""
    return BotRules(click_min_seconds=settings.track_bot_click_seconds)


def tracked_html(
    *,
    settings: Settings,
    secret: bytes,
    send_id: uuid.UUID,
    html: str,
    opens: bool,
    clicks: bool,
) -> TrackedHtml:
    """The HTML to send for ``send_id`` and the links to record before sending it.

    Args:
        opens: add the open pixel.
        clicks: rewrite the http(s) links (except those under :data:`UNTRACKED_PATHS`
            and those marked ``data-hogsend-track="off"``).
    """
    base = settings.public_url
    untracked = tuple(base + path for path in UNTRACKED_PATHS)

    def click_url_of(links: LinkSet, number: int) -> str:
        return click_url(base, send_id, links, number, secret)

    return track_html(
        html,
        click_url_of=click_url_of if clicks else None,
        pixel_url=open_url(base, send_id, secret) if opens else None,
        skip=lambda url: url.startswith(untracked),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class HitOutcome:
    """What one genuine hit did.

    Attributes:
        send_id: the message hit.
        verdict: person or bot, and why.
        event_id: the ``email.opened``/``email.clicked`` event this hit stored (the
            message's first), else None.
        url: for a click, the recorded URL to redirect to.
        stored: False when the message already had ``track_max_hits_per_hour`` hits in
            the last hour: the hit is answered (pixel, redirect) but nothing is written.
    """

    send_id: uuid.UUID
    verdict: Verdict
    event_id: uuid.UUID | None = None
    url: str | None = None
    stored: bool = True


OVER_CAP = Verdict(is_bot=True, reason="over_hourly_cap")
"""The verdict of a hit past the message's hourly cap (never stored, so never counted)."""


def _over_cap(send: tracking_repo.TrackedSend, settings: Settings) -> bool:
    # One forwarded message, script or proxy replaying a URL in a loop must not grow
    # email_opens / link_clicks without bound: past the cap, hits are answered only.
    return send.recent_hits >= settings.track_max_hits_per_hour


def _wants_event(verdict: Verdict, *, first: bool, settings: Settings) -> bool:
    if verdict.is_bot:
        return settings.track_bot_events
    return first


async def _emit(
    session: AsyncSession,
    send: tracking_repo.TrackedSend,
    name: str,
    verdict: Verdict,
    extra: Mapping[str, object],
    notify: outbox.NotifyThrottle | None,
) -> uuid.UUID | None:
    if send.contact_id is None:
        return None  # a message to an address no contact holds: counted, no event
    properties: dict[str, object] = {
        "sendId": str(send.id),
        "templateKey": send.template_key,
        "journeyId": send.journey_id,
        "campaignId": str(send.campaign_id) if send.campaign_id is not None else None,
        **extra,
        "isBot": verdict.is_bot,
        "botReason": verdict.reason,
    }
    result = await events_repo.ingest_event(
        session,
        EventInput(
            name=name,
            contact_id=send.contact_id,
            properties=properties,
            idempotency_key=f"{name}:{send.id}",
            occurred_at=send.now,
            source=EVENT_SOURCE,
        ),
        now=send.now,
    )
    if result.status != "stored":
        return None  # already emitted, or the contact was deleted since
    await outbox.notify_outbox(session, notify)
    return result.event_id


async def record_open(
    session: AsyncSession,
    *,
    settings: Settings,
    secret: bytes,
    token: str,
    method: str,
    user_agent: str | None,
    ip_address: str | None,
    notify: outbox.NotifyThrottle | None = None,
) -> HitOutcome | None:
    """Record a hit on an open pixel; None (and nothing written) for a bad token."""
    try:
        send_id = verify_id("open", token, secret)
    except InvalidToken:
        return None
    send = await tracking_repo.lock_send(session, send_id)
    if send is None:
        return None
    if _over_cap(send, settings):
        return HitOutcome(send_id=send.id, verdict=OVER_CAP, stored=False)
    verdict = classify(
        Hit(
            kind="open",
            method=method,
            user_agent=user_agent,
            at=send.now,
            sent_at=send.sent_at or send.created_at,
        ),
        bot_rules(settings),
    )
    await tracking_repo.add_open(
        session,
        send,
        ip_address=ip_address,
        user_agent=user_agent,
        is_bot=verdict.is_bot,
        bot_reason=verdict.reason,
        proxy=verdict.proxy,
    )
    event_id = None
    if _wants_event(verdict, first=send.opened_at is None, settings=settings):
        event_id = await _emit(session, send, EMAIL_OPENED, verdict, {}, notify)
    return HitOutcome(send_id=send.id, verdict=verdict, event_id=event_id)


async def _clicked(
    session: AsyncSession, signed: SignedClick | uuid.UUID
) -> tuple[uuid.UUID, str, tracking_repo.ClickedLink, frozenset[uuid.UUID]] | None:
    """(send id, URL, the link, every link of the message) a genuine token names.

    None for a set or row that does not exist, or a link number past the set's end.
    """
    if isinstance(signed, uuid.UUID):  # a message sent before link sets (migration 0017)
        row = await tracking_repo.get_link(session, signed)
        if row is None:
            return None
        link = tracking_repo.ClickedLink(id=row.id, tracked_link_id=row.id)
        links = await tracking_repo.message_link_ids(session, row.email_send_id)
        return row.email_send_id, row.original_url, link, links
    urls = await tracking_repo.link_set_urls(session, signed.link_set_id)
    if urls is None or signed.number >= len(urls):
        return None
    send_id = signed.send_id
    link = tracking_repo.ClickedLink(
        id=link_id(send_id, signed.number),
        link_set_id=signed.link_set_id,
        link_number=signed.number,
    )
    links = frozenset(link_id(send_id, number) for number in range(len(urls)))
    return send_id, urls[signed.number], link, links


async def record_click(
    session: AsyncSession,
    *,
    settings: Settings,
    secret: bytes,
    token: str,
    method: str,
    user_agent: str | None,
    ip_address: str | None,
    notify: outbox.NotifyThrottle | None = None,
) -> HitOutcome | None:
    """Record a click; None (and nothing written) for a bad token or an unknown link.

    The outcome's ``url`` is the one recorded for the link at send time: nothing in
    the request can change where a click goes.
    """
    try:
        signed = verify_click(token, secret)
    except InvalidToken:
        return None
    clicked = await _clicked(session, signed)
    if clicked is None:
        return None
    send_id, url, link, message_links = clicked
    send = await tracking_repo.lock_send(session, send_id)
    if send is None:
        return None
    if _over_cap(send, settings):
        return HitOutcome(send_id=send.id, verdict=OVER_CAP, url=url, stored=False)
    rules = bot_rules(settings)
    since = send.now - rules.all_links_span
    recent: tuple[tuple[uuid.UUID, datetime], ...] = ()
    if len(message_links) >= rules.all_links_min:
        recent = await tracking_repo.recent_clicks(session, send.id, since)
    verdict = classify(
        Hit(
            kind="click",
            method=method,
            user_agent=user_agent,
            at=send.now,
            # A row without sent_at is at the provider right now (or was interrupted).
            sent_at=send.sent_at or send.created_at,
            link_id=link.id,
            message_links=message_links,
            recent_clicks=recent,
        ),
        rules,
    )
    if verdict.reason == "all_links":
        await tracking_repo.relabel_burst(session, send.id, since)
    await tracking_repo.add_click(
        session,
        send,
        link,
        ip_address=ip_address,
        user_agent=user_agent,
        is_bot=verdict.is_bot,
        bot_reason=verdict.reason,
    )
    event_id = None
    if _wants_event(verdict, first=send.clicked_at is None, settings=settings):
        extra = {"url": url, "linkId": str(link.id)}
        event_id = await _emit(session, send, EMAIL_CLICKED, verdict, extra, notify)
    return HitOutcome(send_id=send.id, verdict=verdict, event_id=event_id, url=url)
