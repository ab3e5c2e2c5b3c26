"""Provider message ids and "decided ahead" marks live in narrow tables (migration 0015).

A batch send updates its ``email_sends`` row once (the outcome), and that update changes
no indexed column, so on a page with room Postgres keeps it on the row's page ("HOT", no
index entry written); the mark is a row of ``email_send_marks``; a delivery report still
finds the send by the provider's message id, with or without the provider's name.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from hogsend.db import migrate
from hogsend.db.engine import libpq_url
from hogsend.db.repos import deliveries, sends
from send_rows import queued_row


async def _contact(engine: AsyncEngine, n: int) -> uuid.UUID:
    async with engine.begin() as conn:
        found = await conn.scalar(
            text("INSERT INTO contacts (email, external_id) VALUES (:e, :x) RETURNING id"),
            {"e": f"u{n}@example.com", "x": f"u{n}"},
        )
    assert isinstance(found, uuid.UUID)
    return found


def _queued(send_id: uuid.UUID, contact_id: uuid.UUID, n: int) -> dict[str, Any]:
    """A decision row as the batch path writes it ahead of its provider call."""
    return queued_row(
        send_id,
        contact_id,
        user_id=f"u{n}",
        to_email=f"u{n}@example.com",
        key=f"test:{send_id}",
        category="news",
    )


async def _updates(conn: AsyncConnection) -> tuple[int, int]:
    """``email_sends`` rows updated, and HOT-updated, in ``conn``'s open transaction."""
    row = (
        await conn.execute(
            text(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables"
                " WHERE relname = 'email_sends'"
            )
        )
    ).one()
    return int(row[0]), int(row[1])


async def _marks(conn: AsyncConnection) -> int:
    return int(await conn.scalar(text("SELECT count(*) FROM email_send_marks")) or 0)


async def test_batch_outcomes_stay_on_the_page_and_record_the_message_ids(
    engine: AsyncEngine,
) -> None:
    contacts = [await _contact(engine, n) for n in range(3)]
    ids = [uuid.uuid4() for _ in contacts]
    async with engine.connect() as conn, conn.begin():
        await sends.insert_attempts(
            conn,
            [_queued(i, c, n) for n, (i, c) in enumerate(zip(ids, contacts, strict=True))],
            marked=ids,
        )
        assert await _marks(conn) == 3
        now = datetime.now(UTC)
        # The lanes' commits: the "started" marks come off, then the outcomes.
        await sends.finish_and_log(conn, [], [], now=now, notify=False, starts=ids)
        assert await _marks(conn) == 0
        outcomes = [
            {
                "id": str(i),
                "decision": "sent",
                "detail": None,
                "attempts": 1,
                "provider": "smtp",
                "message_id": f"<{i}@example.com>",
                "error": None,
                "subject": None,
            }
            for i in ids
        ]
        await sends.finish_and_log(conn, outcomes, [], now=now, notify=False)
        updated, hot = await _updates(conn)
        details = (await conn.execute(text("SELECT decision_detail FROM email_sends"))).all()
    # One update per send, the outcome, on the row's page; the mark was never in the row.
    assert (updated, hot) == (3, 3)
    assert [d[0] for d in details] == [None, None, None]
    async with AsyncSession(engine) as session:
        for send_id in ids:
            named = await deliveries.find_send(
                session, provider="smtp", message_id=f"<{send_id}@example.com>"
            )
            alone = await deliveries.find_send(
                session, provider=None, message_id=f"<{send_id}@example.com>"
            )
            assert named is not None
            assert alone is not None
            assert named.id == alone.id == send_id
            assert named.provider_message_id == f"<{send_id}@example.com>"
        other = await deliveries.find_send(
            session, provider="resend", message_id=f"<{ids[0]}@example.com>"
        )
        assert other is None


async def test_a_sent_rows_detail_leaves_out_its_columns_and_reads_back_whole(
    engine: AsyncEngine,
) -> None:
    contacts = [await _contact(engine, n) for n in range(3)]
    ids = [uuid.uuid4() for _ in contacts]
    detail = {"gate": "sent", "provider": "smtp", "providerCalls": 2, "waitedSeconds": 0.5}
    outcomes = [
        {"decision": "sent", "detail": detail, "attempts": 2, "provider": "smtp"},
        # Not what the row's columns say (a provider named differently): stored whole.
        {"decision": "sent", "detail": detail, "attempts": 2, "provider": "resend"},
        {
            "decision": "provider_error",
            "detail": {"gate": "provider_error", "provider": "smtp", "providerCalls": 1},
            "attempts": 1,
            "provider": "smtp",
        },
    ]
    async with engine.connect() as conn, conn.begin():
        await sends.insert_attempts(
            conn, [_queued(i, c, n) for n, (i, c) in enumerate(zip(ids, contacts, strict=True))]
        )
        await sends.finish_and_log(
            conn,
            [
                {"id": i, "message_id": None, "error": None, "subject": None, **outcome}
                for i, outcome in zip(ids, outcomes, strict=True)
            ],
            [],
            now=datetime.now(UTC),
            notify=False,
        )
        stored = {
            row.id: row.decision_detail
            for row in await conn.execute(text("SELECT id, decision_detail FROM email_sends"))
        }
    assert stored[ids[0]] == {"waitedSeconds": 0.5}
    assert stored[ids[1]] == detail
    assert stored[ids[2]] == outcomes[2]["detail"]
    # What the admin API, explain and Studio read: the detail as the mailer wrote it.
    async with AsyncSession(engine) as session:
        for send_id, outcome in zip(ids, outcomes, strict=True):
            record = await sends.get_send(session, send_id)
            assert record is not None
            assert record.detail == outcome["detail"]
        first = await sends.get_send(session, ids[0])
        [listed] = (await sends.list_sends(session, contacts[0])).items
    # In jsonb's own key order (by length, then bytes), as the whole detail was stored.
    assert first is not None
    assert first.detail is not None
    assert list(first.detail) == ["gate", "provider", "providerCalls", "waitedSeconds"]
    assert listed.detail == detail


async def _single_outcome(
    engine: AsyncEngine, contact_id: uuid.UUID, key: str, outcome: dict[str, Any]
) -> tuple[uuid.UUID, tuple[int, int]]:
    """An attempt of the lone-send path for contact ``u1``, as ``Mailer.send`` runs it: its
    facts read with its locks, its ``queued`` row committed, then ``outcome`` recorded.

    Returns its id and the ``email_sends`` rows updated, and HOT-updated, meanwhile.
    """
    send_id = uuid.uuid4()
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        before = await _flushed_updates(conn)
        await sends.begin_and_read_attempt(
            conn,
            key=key,
            contact_id=contact_id,
            email=None,
            list_id=None,
            journey_id=None,
            since=datetime.now(UTC),
        )
        row = {**_queued(send_id, contact_id, 1), "key": key, "handoff": None}
        await sends.write_attempt(conn, row, durable=False)
        await sends.finish_attempt(
            conn,
            {"id": str(send_id), "detail": None, "error": None, "subject": None, **outcome},
            None,
            now=datetime.now(UTC),
            notify=False,
            unlock=key,
        )
        after = await _flushed_updates(conn)
    return send_id, (after[0] - before[0], after[1] - before[1])


async def _flushed_updates(conn: AsyncConnection) -> tuple[int, int]:
    """``email_sends`` rows updated, and HOT-updated, by committed transactions so far
    (``conn`` autocommit; its own counts flushed first)."""
    await conn.execute(text("SELECT pg_stat_force_next_flush()"))
    await conn.execute(text("SELECT pg_stat_clear_snapshot()"))
    row = (
        await conn.execute(
            text(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                " WHERE relname = 'email_sends'"
            )
        )
    ).one()
    return int(row[0]), int(row[1])


async def test_a_single_outcome_stays_on_the_page_and_records_the_message_id(
    engine: AsyncEngine,
) -> None:
    contact_id = await _contact(engine, 1)
    sent = {"decision": "sent", "attempts": 1, "provider": "resend", "message_id": "re_123"}
    send_id, updates = await _single_outcome(engine, contact_id, "single:1", sent)
    assert updates == (1, 1)
    async with AsyncSession(engine) as session:
        found = await deliveries.find_send(session, provider="resend", message_id="re_123")
        assert found is not None
        assert found.id == send_id
    # A failed outcome has no message id: nothing to look up.
    failed = {"decision": "provider_error", "attempts": 1, "provider": "resend", "message_id": None}
    await _single_outcome(engine, contact_id, "single:2", failed)
    async with AsyncSession(engine) as session:
        count = await session.scalar(text("SELECT count(*) FROM email_send_messages"))
    assert count == 1


def test_the_migration_copies_existing_message_ids(empty_database_url: str) -> None:
    migrate.upgrade(empty_database_url, "0014_email_send_indexes")
    with psycopg.connect(libpq_url(empty_database_url), autocommit=True) as conn:
        sent = conn.execute(
            "INSERT INTO email_sends (to_email, from_email, status, decision, provider,"
            " provider_message_id) VALUES ('a@example.com', 'f@example.com', 'sent', 'sent',"
            " 'smtp', '<m1@example.com>') RETURNING id"
        ).fetchone()
        conn.execute(
            "INSERT INTO email_sends (to_email, from_email, status, decision)"
            " VALUES ('b@example.com', 'f@example.com', 'skipped', 'suppressed')"
        )
        migrate.upgrade(empty_database_url)
        rows = conn.execute(
            "SELECT message_id, provider, email_send_id FROM email_send_messages"
        ).fetchall()
        assert sent is not None
        assert rows == [("<m1@example.com>", "smtp", sent[0])]
        migrate.downgrade(empty_database_url, "0014_email_send_indexes")
        index = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'uq_email_sends_provider_message_id'"
        ).fetchone()
        assert index is not None


async def test_a_rounds_outcomes_stay_on_the_page_of_a_whole_chunk(engine: AsyncEngine) -> None:
    # A campaign writes a chunk's decision rows in one statement, so they fill pages up
    # to the fillfactor; its lanes then record a round of outcomes (8 by default) in one
    # statement, each row growing by its detail and message id. The pages must keep
    # room for that round (migration 0018): a version that cannot stay writes an entry
    # in every index of the table.
    ids = [uuid.uuid4() for _ in range(40)]
    async with engine.connect() as conn, conn.begin():
        await sends.insert_attempts(
            conn, [_queued(i, uuid.uuid4(), n) for n, i in enumerate(ids)], marked=ids
        )
        round_ = ids[:8]
        outcomes = [
            {
                "id": str(i),
                "decision": "sent",
                "detail": {
                    "gate": "sent",
                    "provider": "smtp",
                    "providerCalls": 1,
                    "waitedSeconds": 0.0,
                },
                "attempts": 1,
                "provider": "smtp",
                "message_id": f"<{i}@mail.example.com>",
                "error": None,
                "subject": "Hello",
            }
            for i in round_
        ]
        await sends.finish_and_log(
            conn, outcomes, [], now=datetime.now(UTC), notify=False, starts=round_
        )
        assert await _updates(conn) == (8, 8)
