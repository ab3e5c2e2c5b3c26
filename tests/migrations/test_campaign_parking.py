"""Migration 0019: a parked campaign survives a downgrade as a waiting one."""

from __future__ import annotations

from sqlalchemy import inspect, text

from hogsend.db import migrate
from hogsend.db.engine import make_sync_engine


def test_downgrade_hands_a_parked_campaign_back_to_the_claim(empty_database_url: str) -> None:
    url = empty_database_url
    migrate.upgrade(url)
    engine = make_sync_engine(url)
    insert = (
        "INSERT INTO campaigns (name, status, audience_kind, audience, template_key, resume_at)"
        " VALUES (:name, 'sending', 'list', '{\"id\": \"news\"}', 'news', :resume_at)"
    )
    with engine.begin() as conn:
        conn.execute(text(insert), {"name": "parked", "resume_at": "2026-06-01T08:59:45Z"})
        conn.execute(text(insert), {"name": "running", "resume_at": None})
    migrate.downgrade(url, "0018_email_send_fillfactor")
    with engine.connect() as conn:
        columns = {c["name"] for c in inspect(conn).get_columns("campaigns")}
        statuses = dict(conn.execute(text("SELECT name, status FROM campaigns")).all())
    assert "resume_at" not in columns
    # Waiting, so the old claim starts its run; the one sending is left as it was.
    assert statuses == {"parked": "queued", "running": "sending"}
    migrate.upgrade(url)
    assert migrate.status(url).in_sync
    engine.dispose()
