"""The plans behind the mailer's writes and the reads of ``email_sends`` after migration 0014.

0014 dropped three indexes no query used and made the run and campaign ones partial;
these tests show, with EXPLAIN on real Postgres, that every query those indexes or their
neighbours serve still finds an index, and that recording outcomes probes
``email_sends`` and ``contacts`` by key instead of reading them whole.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from psycopg.sql import SQL, Literal

from hogsend.db.engine import libpq_url, make_async_engine
from hogsend.db.repos import funnels, sends

ROWS = 3000


@pytest.fixture
def conn(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A database with ``ROWS`` contacts, a campaign, a run and a send to each contact."""
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        campaign = conn.execute(
            "INSERT INTO campaigns (name, status, audience_kind, audience, template_key)"
            " VALUES ('c', 'sent', 'list', '{}', 't') RETURNING id"
        ).fetchone()
        assert campaign is not None
        conn.execute(
            "INSERT INTO contacts (email, external_id, created_at)"
            " SELECT 'u' || g || '@example.com', 'u' || g, now() - g * interval '1 minute'"
            " FROM generate_series(1, %s) g",
            (ROWS,),
        )
        # A tenth of the sends belong to the campaign; the rest have no campaign or run.
        conn.execute(
            "INSERT INTO email_sends (contact_id, user_id, to_email, from_email, template_key,"
            " status, decision, kind, campaign_id, idempotency_key)"
            " SELECT id, external_id, email, 'f@example.com', 't', 'queued', 'queued',"
            " 'campaign', CASE WHEN row_number() OVER () %% 10 = 0 THEN %s END, 'k:' || id"
            " FROM contacts",
            (campaign[0],),
        )
        conn.execute("VACUUM ANALYZE contacts, email_sends")
        yield conn


def _plan(conn: psycopg.Connection[Any], statement: str, params: dict[str, Any]) -> str:
    """EXPLAIN of ``statement`` (SQLAlchemy ``:name`` parameters) with ``params`` inlined."""
    sql = statement
    # Longest names first, so ``:ids`` never eats the start of ``:idsx``.
    for name in sorted(params, key=len, reverse=True):
        sql = sql.replace(f":{name}", "{" + name + "}")
    composed = SQL(sql).format(**{name: Literal(value) for name, value in params.items()})
    rows = conn.execute(SQL("EXPLAIN (COSTS OFF) ") + composed).fetchall()
    return "\n".join(row[0] for row in rows)


def _forced_plan(conn: psycopg.Connection[Any], statement: str, params: dict[str, Any]) -> str:
    """The plan with sequential scans priced out: an index that can serve it shows up."""
    conn.execute("SET enable_seqscan = off")
    try:
        return _plan(conn, statement, params)
    finally:
        conn.execute("RESET enable_seqscan")


def test_outcomes_probe_sends_and_contacts_by_key(conn: psycopg.Connection[Any]) -> None:
    # Three outcomes, as a group commit writes them: the planner takes the JSON rows for
    # a hundred, which on a table this size made a hash join over the whole table.
    picked = conn.execute(
        "SELECT id, contact_id FROM email_sends ORDER BY created_at LIMIT 3"
    ).fetchall()
    rows = [
        {
            "id": str(send_id),
            "decision": "sent",
            "ok": True,
            "detail": None,
            "attempts": 1,
            "provider": "smtp",
            "message_id": f"<{send_id}@example.com>",
            "error": None,
            "subject": "Hi",
        }
        for send_id, _ in picked
    ]
    events = [
        {
            "id": str(uuid.uuid4()),
            "contact_id": str(contact_id),
            "name": "email.sent",
            "properties": {},
            "key": f"email.sent:{send_id}",
            "source": "hogsend",
            "occurred_at": "2026-01-01T00:00:00+00:00",
        }
        for send_id, contact_id in picked
    ]
    plan = _plan(
        conn,
        # Prepared on the driver: psycopg's %(name)s placeholders, as _plan's :name ones.
        re.sub(r"%\((\w+)\)s", r":\1", sends._FINISH_AND_LOG.decode()),
        {
            "rows": json.dumps(rows),
            "events": json.dumps(events),
            "now": datetime(2026, 1, 1, tzinfo=UTC),
            "notify": False,
            "starts": "{}",
        },
    )
    assert "Seq Scan on email_sends" not in plan, plan
    assert "Seq Scan on contacts" not in plan, plan
    assert "pk_email_sends" in plan, plan
    assert "pk_contacts" in plan, plan


def test_partial_campaign_and_run_indexes_serve_their_lookups(
    conn: psycopg.Connection[Any],
) -> None:
    campaign = conn.execute("SELECT id FROM campaigns").fetchone()
    assert campaign is not None
    funnel = _forced_plan(conn, funnels._CAMPAIGN_FUNNEL.text, {"id": campaign[0]})
    assert "ix_email_sends_campaign_id" in funnel, funnel
    # The journey funnel joins its runs to their sends: the join proves the predicate.
    journey = _forced_plan(
        conn,
        funnels._JOURNEY_FUNNEL.text,
        {"journey": "welcome", "since": None, "until": None},
    )
    assert "ix_email_sends_journey_state_id" in journey, journey
    # What ON DELETE SET NULL of a run or a campaign looks up.
    for column in ("journey_state_id", "campaign_id"):
        lookup = _forced_plan(
            conn, f"SELECT id FROM email_sends WHERE {column} = :v", {"v": uuid.uuid4()}
        )
        assert f"ix_email_sends_{column}" in lookup, lookup


def test_gate_and_listing_reads_still_use_an_index(conn: psycopg.Connection[Any]) -> None:
    contact = conn.execute("SELECT contact_id, to_email FROM email_sends LIMIT 1").fetchone()
    assert contact is not None
    facts = _forced_plan(
        conn,
        sends._FACTS.text,
        {
            "k": "k:none",
            "c": contact[0],
            "e": contact[1].upper(),
            "l": None,
            "j": "welcome",
            "since": datetime(2026, 1, 1, tzinfo=UTC),
            "d": list(sends.OUTGOING),
            "exempt": list(sends.CAP_EXEMPT_KINDS),
        },
    )
    assert "Seq Scan on email_sends" not in facts, facts
    # The frequency cap's count, by lower-cased address.
    assert "ix_email_sends_lower_to_email_created_at" in facts, facts
    assert "uq_email_sends_idempotency_key" in facts, facts
    listing = _forced_plan(
        conn,
        "SELECT id FROM email_sends WHERE contact_id = :c AND template_key = :t"
        " ORDER BY created_at DESC, id DESC LIMIT 51",
        {"c": contact[0], "t": "t"},
    )
    assert "ix_email_sends_contact_id_created_at" in listing, listing
    report = _forced_plan(
        conn,
        "SELECT count(*) FROM email_sends WHERE created_at >= :since AND status = 'skipped'",
        {"since": datetime(2026, 1, 1, tzinfo=UTC)},
    )
    assert "ix_email_sends_created_at" in report, report


async def test_one_attempt_reads_its_facts_with_plans_made_once(
    conn: psycopg.Connection[Any], database_url: str
) -> None:
    """A batch of one (a lone ``Mailer.send``: a journey step, a transactional request)
    reads what a batch reads, with statements Postgres plans once per connection.

    The batch statements take arrays; their generic plan assumes ten elements, so for
    one Postgres made a custom plan on every call (about 0.4 ms of planning against
    0.04 of execution for the facts).
    """
    rows = conn.execute(
        "SELECT idempotency_key, contact_id FROM email_sends ORDER BY created_at LIMIT 3"
    ).fetchall()
    since = datetime(2000, 1, 1, tzinfo=UTC)
    queries = [
        sends.FactsQuery(
            idempotency_key=key, contact_id=contact, email=None, list_id=None, journey_id=None
        )
        for key, contact in rows
    ]
    engine = make_async_engine(database_url, pool_size=1)
    try:
        async with engine.connect() as batch_conn:
            await batch_conn.execution_options(isolation_level="AUTOCOMMIT")
            together = await sends.begin_and_read_batch(batch_conn, queries, since=since)
            await sends.end_transaction(batch_conn, commit=False)
        async with engine.connect() as one_conn:
            await one_conn.execution_options(isolation_level="AUTOCOMMIT")
            for round_ in range(8):
                index = round_ % len(queries)
                query = queries[index]
                key = f"plans:{round_}"
                found, facts = await sends.begin_and_read_batch(
                    one_conn, [query], keys=[key], since=since
                )
                # Committed (nothing was written): psycopg drops its prepared statements
                # at a rollback.
                await sends.end_transaction(one_conn, commit=True)
                await sends.unlock_keys(one_conn, [key])
                assert facts == [together[1][index]]
                assert facts[0].key_holder is not None
                assert facts[0].recent_sends == 1
                assert found.keys() == {query.contact_id}
                assert dict(found[query.contact_id]._mapping) == dict(
                    together[0][query.contact_id]._mapping
                )
            result = await one_conn.exec_driver_sql(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            )
            plans = result.all()
    finally:
        await engine.dispose()
    assert plans
    # Postgres tries five custom plans, then keeps the generic one whenever it costs
    # no more: so at most five plans per statement over eight calls.
    replanned = [(statement, custom) for statement, _generic, custom in plans if custom > 5]
    assert replanned == []
