"""Tracked links, open and click hits, and the engagement counters of ``email_sends``.

A message's links are a set in ``tracked_link_sets`` (shared by every message with the
same URLs, written by the mailer: ``hogsend.db.repos.sends``); messages sent before
migration 0017 have a ``tracked_links`` row per link instead, still resolved here.

Functions take the caller's session and never commit. A hit locks its send's row
(:func:`lock_send`) for the rest of its transaction, so hits on one message are
recorded one after another: the first-open and first-click stamps, the counters and
the all-links check each see every earlier hit.

Counters (``email_sends.open_count``/``click_count``, and ``tracked_links.click_count``
for the links that have a row), the ``opened_at``/``clicked_at``/``first_clicked_at``
stamps and the status progression (sent → opened → clicked) count people only; every
hit, people's and bots', is a row of ``email_opens`` or ``link_clicks`` with ``is_bot``
and ``bot_reason``. A shared set keeps no counter (one hot row for a whole campaign):
its links' clicks are counted from ``link_clicks``.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.tracking import link_id


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackedSend:
    """What a hit needs to know about its message, read under the row lock.

    Attributes:
        now: the database's clock for this transaction (every stamp of the hit uses it,
            so "seconds since the send" never mixes two machines' clocks).
    """

    id: uuid.UUID
    contact_id: uuid.UUID | None
    template_key: str | None
    journey_id: str | None
    campaign_id: uuid.UUID | None
    status: str
    sent_at: datetime | None
    created_at: datetime
    opened_at: datetime | None
    clicked_at: datetime | None
    now: datetime
    recent_hits: int
    """Opens and clicks stored for this message in the hour before ``now``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredLink:
    """A ``tracked_links`` row (a message sent before migration 0017): where a click goes."""

    id: uuid.UUID
    email_send_id: uuid.UUID
    original_url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ClickedLink:
    """The link a click is recorded on: its ``tracked_links`` row, or its set and number.

    Attributes:
        id: the link's id (the row's, or ``hogsend.core.tracking.link_id`` of its number).
    """

    id: uuid.UUID
    tracked_link_id: uuid.UUID | None = None
    link_set_id: uuid.UUID | None = None
    link_number: int | None = None


async def lock_send(session: AsyncSession, send_id: uuid.UUID) -> TrackedSend | None:
    """Lock a send's row until the transaction ends; None when there is no such send.

    ``FOR NO KEY UPDATE``: hits on one message queue here, while inserts of rows that
    reference the send (links, clicks, opens) are not blocked by it.
    """
    row = (
        await session.execute(
            text(
                "SELECT id, contact_id, template_key, journey_id, campaign_id, status,"
                " sent_at, created_at, opened_at, clicked_at, now() AS now,"
                " (SELECT count(*) FROM email_opens o WHERE o.email_send_id = s.id"
                "   AND o.opened_at > now() - interval '1 hour')"
                " + (SELECT count(*) FROM link_clicks c WHERE c.email_send_id = s.id"
                "   AND c.clicked_at > now() - interval '1 hour') AS recent_hits"
                " FROM email_sends s WHERE id = :id FOR NO KEY UPDATE OF s"
            ),
            {"id": send_id},
        )
    ).first()
    return None if row is None else TrackedSend(**row._mapping)


async def get_link(session: AsyncSession, link_id: uuid.UUID) -> StoredLink | None:
    """The tracked link ``link_id``, if it exists."""
    row = (
        await session.execute(
            text("SELECT id, email_send_id, original_url FROM tracked_links WHERE id = :id"),
            {"id": link_id},
        )
    ).first()
    return None if row is None else StoredLink(**row._mapping)


async def link_set_urls(session: AsyncSession, link_set_id: uuid.UUID) -> tuple[str, ...] | None:
    """The URLs of a link set in link-number order, if it exists."""
    urls = await session.scalar(
        text("SELECT urls FROM tracked_link_sets WHERE id = :id"), {"id": link_set_id}
    )
    return None if urls is None else tuple(urls)


async def message_link_ids(session: AsyncSession, send_id: uuid.UUID) -> frozenset[uuid.UUID]:
    """Every ``tracked_links`` row of one message (sent before migration 0017)."""
    rows = await session.execute(
        text("SELECT id FROM tracked_links WHERE email_send_id = :s"), {"s": send_id}
    )
    return frozenset(row.id for row in rows)


async def recent_clicks(
    session: AsyncSession, send_id: uuid.UUID, since: datetime
) -> tuple[tuple[uuid.UUID, datetime], ...]:
    """(link id, when) of the message's clicks since ``since``, people's and bots'."""
    rows = await session.execute(
        text(
            "SELECT tracked_link_id, link_number, clicked_at FROM link_clicks"
            " WHERE email_send_id = :s AND clicked_at >= :since"
        ),
        {"s": send_id, "since": since},
    )
    return tuple(
        (row.tracked_link_id or link_id(send_id, row.link_number), row.clicked_at) for row in rows
    )


async def add_open(
    session: AsyncSession,
    send: TrackedSend,
    *,
    ip_address: str | None,
    user_agent: str | None,
    is_bot: bool,
    bot_reason: str | None,
    proxy: str | None,
) -> None:
    """Record one pixel hit; a person's also counts, stamps ``opened_at`` and moves status."""
    await session.execute(
        text(
            "INSERT INTO email_opens (email_send_id, ip_address, user_agent, is_bot, bot_reason,"
            " proxy, opened_at) VALUES (:s, :ip, :ua, :bot, :reason, :proxy, :at)"
        ),
        {
            "s": send.id,
            "ip": ip_address,
            "ua": user_agent,
            "bot": is_bot,
            "reason": bot_reason,
            "proxy": proxy,
            "at": send.now,
        },
    )
    if is_bot:
        return
    await session.execute(
        text(
            """
            UPDATE email_sends SET
                open_count = open_count + 1,
                opened_at = coalesce(opened_at, :at),
                status = CASE WHEN status IN ('sent', 'delivered') THEN 'opened' ELSE status END,
                updated_at = :at
            WHERE id = :s
            """
        ),
        {"s": send.id, "at": send.now},
    )


async def add_click(
    session: AsyncSession,
    send: TrackedSend,
    link: ClickedLink,
    *,
    ip_address: str | None,
    user_agent: str | None,
    is_bot: bool,
    bot_reason: str | None,
) -> None:
    """Record one click; a person's also counts on the send (and a link's row), moves status."""
    await session.execute(
        text(
            "INSERT INTO link_clicks (tracked_link_id, link_set_id, link_number, email_send_id,"
            " ip_address, user_agent, is_bot, bot_reason, clicked_at)"
            " VALUES (:l, :set, :n, :s, :ip, :ua, :bot, :reason, :at)"
        ),
        {
            "l": link.tracked_link_id,
            "set": link.link_set_id,
            "n": link.link_number,
            "s": send.id,
            "ip": ip_address,
            "ua": user_agent,
            "bot": is_bot,
            "reason": bot_reason,
            "at": send.now,
        },
    )
    if is_bot:
        return
    if link.tracked_link_id is not None:
        await session.execute(
            text(
                "UPDATE tracked_links SET click_count = click_count + 1,"
                " first_clicked_at = coalesce(first_clicked_at, :at), updated_at = :at"
                " WHERE id = :l"
            ),
            {"l": link.tracked_link_id, "at": send.now},
        )
    await session.execute(
        text(
            """
            UPDATE email_sends SET
                click_count = click_count + 1,
                clicked_at = coalesce(clicked_at, :at),
                status = CASE WHEN status IN ('sent', 'delivered', 'opened') THEN 'clicked'
                              ELSE status END,
                updated_at = :at
            WHERE id = :s
            """
        ),
        {"s": send.id, "at": send.now},
    )


# The clicks of a burst that were counted as people's before the burst was complete:
# flag them and take them off the counters (the first-click stamp and event stay).
_RELABEL_BURST = text(
    """
    WITH relabelled AS (
        UPDATE link_clicks SET is_bot = true, bot_reason = 'all_links'
        WHERE email_send_id = :s AND NOT is_bot AND clicked_at >= :since
        RETURNING tracked_link_id
    ), per_link AS (
        SELECT tracked_link_id, count(*) AS n FROM relabelled GROUP BY tracked_link_id
    ), links AS (
        UPDATE tracked_links t SET click_count = greatest(t.click_count - p.n, 0)
        FROM per_link p WHERE t.id = p.tracked_link_id
        RETURNING t.id
    )
    UPDATE email_sends
    SET click_count = greatest(click_count - (SELECT count(*) FROM relabelled), 0)
    WHERE id = :s
    RETURNING (SELECT count(*) FROM relabelled) AS n, (SELECT count(*) FROM links) AS links
    """
)


async def relabel_burst(session: AsyncSession, send_id: uuid.UUID, since: datetime) -> int:
    """Flag the message's people-counted clicks since ``since`` as ``all_links``; how many."""
    row = (await session.execute(_RELABEL_BURST, {"s": send_id, "since": since})).first()
    return 0 if row is None else int(row.n)
