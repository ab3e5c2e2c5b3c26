"""The plan of a campaign's record of a batch (``campaigns.record_results``) on real Postgres.

The record moves a batch's recipients out of ``pending``: it must find them by the
primary key, not hash every recipient of the campaign, or its cost per batch grows with
the audience.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
from psycopg.sql import SQL, Literal

from hogsend.db.engine import libpq_url
from hogsend.db.repos import campaigns

RECIPIENTS = 5000
BATCH = 500


def _inlined(statement: str, params: dict[str, Any]) -> SQL:
    """``statement`` (SQLAlchemy ``:name`` parameters) with ``params`` as literals."""
    sql = statement
    for name in sorted(params, key=len, reverse=True):  # ``:id`` never eats ``:ids``
        literal = Literal(params[name]).as_string(None)
        sql = sql.replace(f":{name}", literal.replace("%", "%%"))
    return SQL(sql)  # type: ignore[arg-type]


def test_recording_a_batch_probes_its_recipients_by_key(database_url: str) -> None:
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        found = conn.execute(
            "INSERT INTO campaigns (name, status, audience_kind, audience, template_key)"
            " VALUES ('c', 'sending', 'list', '{}', 't') RETURNING id"
        ).fetchone()
        assert found is not None
        campaign_id = found[0]
        conn.execute(
            "INSERT INTO campaign_recipients (campaign_id, contact_id, email, send_at)"
            " SELECT %s, gen_random_uuid(), 'u' || g || '@example.com', now()"
            " FROM generate_series(1, %s) g",
            (campaign_id, RECIPIENTS),
        )
        conn.execute("VACUUM ANALYZE campaign_recipients")
        batch = [
            row[0]
            for row in conn.execute(
                "SELECT contact_id FROM campaign_recipients ORDER BY contact_id LIMIT %s",
                (BATCH,),
            )
        ]
        params = {
            "id": campaign_id,
            "now": "2026-01-01T00:00:00+00:00",
            "contacts": [str(c) for c in batch],
            "statuses": ["sent"] * BATCH,
            "reasons": [None] * BATCH,
            "sends": [str(uuid.uuid4()) for _ in batch],
            "cursor": json.dumps({"lastContactId": str(batch[-1])}),
        }
        statement = _inlined(campaigns._RECORD.text, params)
        conn.execute("BEGIN")
        try:
            plan = "\n".join(row[0] for row in conn.execute(SQL("EXPLAIN (ANALYZE) ") + statement))
        finally:
            conn.execute("ROLLBACK")
    assert "Seq Scan on campaign_recipients" not in plan, plan
    assert "pk_campaign_recipients" in plan, plan
    # The recipients it read are the batch's, not the campaign's.
    [scan] = [line for line in plan.splitlines() if "pk_campaign_recipients" in line]
    assert f"rows={BATCH}" in scan, plan
