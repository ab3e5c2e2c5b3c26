"""What the mailer writes for a message's tracked links (migrations 0016 and 0017).

A message's links are a content-addressed set stored once for every message with the
same URLs (no row per link per message, no foreign key check on the send); the
statement that deletes sends that never reached a provider still deletes the
per-message links of messages sent before link sets.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hogsend.core.tracking import link_set
from hogsend.db import migrate
from hogsend.db.engine import libpq_url
from hogsend.db.repos import sends
from send_rows import queued_row

CAMPAIGN = link_set(("https://example.com/0", "https://example.com/1", "https://example.com/2"))


async def _contact(engine: AsyncEngine) -> uuid.UUID:
    async with engine.begin() as conn:
        found = await conn.scalar(
            text(
                "INSERT INTO contacts (email, external_id)"
                " VALUES ('l@example.com', 'l') RETURNING id"
            )
        )
    assert isinstance(found, uuid.UUID)
    return found


def _queued(send_id: uuid.UUID, contact_id: uuid.UUID, n: int) -> dict[str, Any]:
    """A decision row as the batch path writes it ahead of its provider call."""
    return queued_row(send_id, contact_id, user_id="l", to_email="l@example.com", key=f"links:{n}")


async def _sets(engine: AsyncEngine) -> dict[uuid.UUID, list[str]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT id, urls FROM tracked_link_sets"))
        return {row.id: row.urls for row in rows}


async def test_a_link_set_is_stored_once_and_leaves_the_send_rows_alone(
    engine: AsyncEngine,
) -> None:
    contact_id = await _contact(engine)
    first, second, single = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        await sends.insert_attempts(
            conn, [_queued(first, contact_id, 1), _queued(second, contact_id, 2)], [CAMPAIGN]
        )
    # The same set again (the next batch of the campaign), and through the single path.
    async with engine.begin() as conn:
        await sends.insert_attempts(conn, [_queued(single, contact_id, 3)], [CAMPAIGN])
    other = link_set(("https://example.com/single",))
    for links in (CAMPAIGN, other, other):
        async with AsyncSession(engine) as session, session.begin():
            await sends.insert_link_set_fast(session, links)
    assert await _sets(engine) == {CAMPAIGN.id: list(CAMPAIGN.urls), other.id: list(other.urls)}
    async with engine.connect() as conn:
        locked = (await conn.execute(text("SELECT id, xmax::text AS xmax FROM email_sends"))).all()
        per_message = await conn.scalar(text("SELECT count(*) FROM tracked_links"))
    assert {(r.id, r.xmax) for r in locked} == {(first, "0"), (second, "0"), (single, "0")}
    assert per_message == 0


async def test_abandoning_a_send_that_never_started_deletes_its_old_links(
    engine: AsyncEngine,
) -> None:
    contact_id = await _contact(engine)
    never, started = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        await sends.insert_attempts(
            conn,
            [_queued(never, contact_id, 1), _queued(started, contact_id, 2)],
            [CAMPAIGN],
            marked=[never],
        )
        # Rows per message, as the mailer wrote them before link sets.
        for send_id, url in ((never, "https://example.com/a"), (started, "https://example.com/b")):
            await conn.execute(
                text("INSERT INTO tracked_links (email_send_id, original_url) VALUES (:s, :u)"),
                {"s": send_id, "u": url},
            )
    async with AsyncSession(engine) as session, session.begin():
        for send_id in (never, started):
            await sends.abandon(session, send_id)
    async with engine.connect() as conn:
        left = (
            await conn.execute(
                text(
                    "SELECT s.id, s.decision, l.original_url FROM email_sends s"
                    " LEFT JOIN tracked_links l ON l.email_send_id = s.id"
                )
            )
        ).all()
    # The marked row never reached a provider: gone with its link. The other was in
    # flight: closed as interrupted, its link kept (a delivered copy may carry it).
    assert [(r.id, r.decision, r.original_url) for r in left] == [
        (started, "provider_error", "https://example.com/b")
    ]
    # The set is shared with other messages: it stays.
    assert list(await _sets(engine)) == [CAMPAIGN.id]


def test_the_migration_keeps_old_links_and_its_downgrade_drops_set_clicks(
    empty_database_url: str,
) -> None:
    migrate.upgrade(empty_database_url, "0016_tracked_link_send_key")
    with psycopg.connect(libpq_url(empty_database_url), autocommit=True) as conn:
        send = conn.execute(
            "INSERT INTO email_sends (to_email, from_email, status, decision)"
            " VALUES ('a@example.com', 'f@example.com', 'sent', 'sent') RETURNING id"
        ).fetchone()
        assert send is not None
        link = conn.execute(
            "INSERT INTO tracked_links (email_send_id, original_url)"
            " VALUES (%s, 'https://k') RETURNING id",
            (send[0],),
        ).fetchone()
        assert link is not None
        conn.execute(
            "INSERT INTO link_clicks (tracked_link_id, email_send_id) VALUES (%s, %s)",
            (link[0], send[0]),
        )
        migrate.upgrade(empty_database_url)
        # The old rows are untouched, and a click names either a row or a set's link.
        assert conn.execute("SELECT original_url FROM tracked_links").fetchall() == [("https://k",)]
        conn.execute(
            "INSERT INTO tracked_link_sets (id, urls) VALUES (%s, %s)",
            (CAMPAIGN.id, list(CAMPAIGN.urls)),
        )
        conn.execute(
            "INSERT INTO link_clicks (link_set_id, link_number, email_send_id) VALUES (%s, 1, %s)",
            (CAMPAIGN.id, send[0]),
        )
        for row, set_id, number in (
            (link[0], CAMPAIGN.id, 1),  # both forms
            (None, CAMPAIGN.id, None),  # a set without a link number
            (None, None, 1),  # neither
        ):
            try:
                conn.execute(
                    "INSERT INTO link_clicks (tracked_link_id, link_set_id, link_number,"
                    " email_send_id) VALUES (%s, %s, %s, %s)",
                    (row, set_id, number, send[0]),
                )
            except psycopg.errors.CheckViolation:
                continue
            raise AssertionError(f"accepted a click naming {(row, set_id, number)}")
        migrate.downgrade(empty_database_url, "0016_tracked_link_send_key")
        kept = conn.execute("SELECT tracked_link_id FROM link_clicks").fetchall()
        assert kept == [(link[0],)]
        migrate.upgrade(empty_database_url)
