"""Tracked links carry no foreign key to their send (migration 0016).

Writing a link no longer runs the key's check (a query on ``email_sends`` and a
``FOR KEY SHARE`` lock on the send's row, one more WAL record per link); the statement
that deletes sends that never reached a provider deletes their links itself.
"""

from __future__ import annotations

import uuid
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hogsend.db import migrate
from hogsend.db.engine import libpq_url
from hogsend.db.repos import sends
from send_rows import queued_row


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


async def test_links_leave_the_send_row_unlocked(engine: AsyncEngine) -> None:
    contact_id = await _contact(engine)
    batch_send, single_send = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        await sends.insert_attempts(
            conn,
            [_queued(batch_send, contact_id, 1), _queued(single_send, contact_id, 2)],
            links=[(uuid.uuid4(), batch_send, f"https://example.com/{n}") for n in range(3)],
        )
    # The single-send path writes its links in a transaction of their own.
    async with AsyncSession(engine) as session, session.begin():
        await sends.insert_links_fast(
            session, single_send, [uuid.uuid4()], ["https://example.com/single"]
        )
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT id, xmax::text AS xmax, (SELECT count(*) FROM tracked_links l"
                    " WHERE l.email_send_id = s.id) AS links FROM email_sends s"
                )
            )
        ).all()
        keys = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
                " AND conrelid = 'tracked_links'::regclass"
                " AND confrelid = 'email_sends'::regclass"
            )
        )
    # A foreign key check would have locked each send row (its xmax, the locker).
    assert {(r.id, r.xmax, r.links) for r in rows} == {
        (batch_send, "0", 3),
        (single_send, "0", 1),
    }
    assert keys == 0


async def test_abandoning_a_send_that_never_started_deletes_its_links(
    engine: AsyncEngine,
) -> None:
    contact_id = await _contact(engine)
    never, started = uuid.uuid4(), uuid.uuid4()
    async with engine.begin() as conn:
        await sends.insert_attempts(
            conn,
            [_queued(never, contact_id, 1), _queued(started, contact_id, 2)],
            links=[
                (uuid.uuid4(), never, "https://example.com/a"),
                (uuid.uuid4(), started, "https://example.com/b"),
            ],
            marked=[never],
        )
    async with engine.connect() as conn:
        await sends.abandon_many(conn, [never, started])
        await conn.commit()
        left = (
            await conn.execute(
                text(
                    "SELECT s.id, s.decision, l.original_url FROM email_sends s"
                    " LEFT JOIN tracked_links l ON l.email_send_id = s.id"
                )
            )
        ).all()
        links = await conn.scalar(text("SELECT count(*) FROM tracked_links"))
    # The marked row never reached a provider: gone with its link. The other was in
    # flight: closed as interrupted, its link kept (a delivered copy may carry it).
    assert [(r.id, r.decision, r.original_url) for r in left] == [
        (started, "provider_error", "https://example.com/b")
    ]
    assert links == 1


def test_the_migration_drops_the_key_and_its_downgrade_restores_it(
    empty_database_url: str,
) -> None:
    migrate.upgrade(empty_database_url)
    with psycopg.connect(libpq_url(empty_database_url), autocommit=True) as conn:
        send = conn.execute(
            "INSERT INTO email_sends (to_email, from_email, status, decision)"
            " VALUES ('a@example.com', 'f@example.com', 'sent', 'sent') RETURNING id"
        ).fetchone()
        assert send is not None
        conn.execute(
            "INSERT INTO tracked_links (email_send_id, original_url) VALUES (%s, 'https://k')",
            (send[0],),
        )
        # Without the key a link can name a send that does not exist...
        conn.execute(
            "INSERT INTO tracked_links (email_send_id, original_url) VALUES (%s, 'https://o')",
            (uuid.uuid4(),),
        )
        # ... which the downgrade removes before it puts the key (and its cascade) back.
        migrate.downgrade(empty_database_url, "0015_email_send_side_tables")
        kept = conn.execute("SELECT original_url FROM tracked_links").fetchall()
        assert kept == [("https://k",)]
        conn.execute("DELETE FROM email_sends")
        assert conn.execute("SELECT count(*) FROM tracked_links").fetchone() == (0,)
        migrate.upgrade(empty_database_url)
        keys = conn.execute(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
            " AND conrelid = 'tracked_links'::regclass"
        ).fetchone()
        assert keys == (0,)
