"""What Studio's overview and contact pages read: demo history, per-day series, rates.

The demo seed is checked for what the pages need to show something real (every gate's
decision, engagement, opt-outs) and for idempotency; the reporting queries are checked
against counts computed independently in Python from the same rows.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import contact_search, demo, preferences, reporting

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def seeded(engine: AsyncEngine) -> demo.SeedResult:
    async with make_sessionmaker(engine)() as session, session.begin():
        return await demo.seed(session, now=NOW)


async def _rows(session: AsyncSession, sql: str, **params: object) -> list[dict[str, object]]:
    return [dict(r._mapping) for r in await session.execute(text(sql), params)]


async def test_demo_seed_has_every_decision_and_is_idempotent(
    engine: AsyncEngine, seeded: demo.SeedResult
) -> None:
    assert seeded.contacts == 200
    assert seeded.sends > 300
    async with make_sessionmaker(engine)() as session:
        decisions = {
            r["decision"]: r["n"]
            for r in await _rows(
                session, "SELECT decision, count(*) AS n FROM email_sends GROUP BY decision"
            )
        }
        engaged = (
            await _rows(
                session,
                "SELECT count(opened_at) AS opened, count(clicked_at) AS clicked,"
                " count(bounced_at) AS bounced, count(complained_at) AS complained"
                " FROM email_sends",
            )
        )[0]
        unsubscribed = await session.scalar(
            text("SELECT count(*) FROM email_preferences WHERE unsubscribed_all")
        )
        suppressed = await session.scalar(
            text("SELECT count(*) FROM email_suppressions WHERE suppressed")
        )
    for decision in ("sent", "suppressed", "unsubscribed", "capped", "deferred", "duplicate"):
        assert decisions.get(decision, 0) > 0, decisions
    assert decisions.get("provider_error", 0) > 0, decisions
    assert all(v > 0 for v in engaged.values()), engaged
    assert unsubscribed
    assert suppressed
    async with make_sessionmaker(engine)() as session, session.begin():
        again = await demo.seed(session, now=NOW + timedelta(hours=3))
    assert again == demo.SeedResult(contacts=0, events=0, sends=0)


async def test_series_and_rates_match_the_rows(
    engine: AsyncEngine, seeded: demo.SeedResult
) -> None:
    async with make_sessionmaker(engine)() as session:
        events = await reporting.events_per_day(session, days=30, now=NOW)
        sends = await reporting.sends_per_day(session, days=7, now=NOW)
        since = reporting.period_start(30, NOW)
        engagement = await reporting.email_engagement(session, since=since)
        event_rows = await _rows(session, "SELECT occurred_at FROM user_events")
        send_rows = await _rows(
            session,
            "SELECT created_at, decision, status, opened_at, clicked_at, bounced_at,"
            " complained_at FROM email_sends",
        )
        live = await reporting.live_contacts(session)
    assert live == 200
    assert len(events) == 30
    assert len(sends) == 7
    assert events[-1].day == NOW.date()
    assert events[0].day == NOW.date() - timedelta(days=29)
    expected = Counter(
        r["occurred_at"].astimezone(UTC).date()  # type: ignore[attr-defined]
        for r in event_rows
        if r["occurred_at"] >= since  # type: ignore[operator]
    )
    assert {p.day: p.count for p in events if p.count} == dict(expected)
    assert sum(p.count for p in events) > 0
    week = reporting.period_start(7, NOW)
    went_out = [r for r in send_rows if r["decision"] in ("sent", "redirected")]
    assert sum(p.count for p in sends) == sum(1 for r in went_out if r["created_at"] >= week)  # type: ignore[operator]
    recent = [r for r in went_out if r["created_at"] >= since]  # type: ignore[operator]
    assert engagement.sent == len(recent) > 0
    assert engagement.opened == sum(1 for r in recent if r["opened_at"] is not None)
    assert engagement.clicked == sum(1 for r in recent if r["clicked_at"] is not None)
    gated = Counter(
        r["decision"]
        for r in send_rows
        if r["status"] == "skipped" and r["created_at"] >= since  # type: ignore[operator]
    )
    assert engagement.gated == dict(sorted(gated.items()))
    assert engagement.rate(engagement.opened) == engagement.opened / engagement.sent


async def test_nothing_sent_means_no_rates(engine: AsyncEngine) -> None:
    async with make_sessionmaker(engine)() as session:
        engagement = await reporting.email_engagement(session, since=NOW)
        flat = await reporting.sends_per_day(session, days=3, now=NOW)
    assert engagement.sent == 0
    assert engagement.rate(0) is None
    assert engagement.gated == {}
    assert [p.count for p in flat] == [0, 0, 0]


async def test_property_search_pages_through_matches(
    engine: AsyncEngine, seeded: demo.SeedResult
) -> None:
    async with make_sessionmaker(engine)() as session:
        expected = await session.scalar(
            text(
                "SELECT count(*) FROM contacts WHERE properties->>'plan' = 'pro'"
                " AND deleted_at IS NULL"
            )
        )
        seen = []
        cursor = None
        while True:
            page = await contact_search.contacts_with_property(
                session, "plan", "pro", cursor=cursor, limit=7
            )
            seen += [c.id for c in page.items]
            assert all(c.properties["plan"] == "pro" for c in page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    assert len(seen) == len(set(seen)) == expected
    assert expected > 7


async def test_global_unsubscribe_round_trip(engine: AsyncEngine, seeded: demo.SeedResult) -> None:
    async with make_sessionmaker(engine)() as session, session.begin():
        contact_id = await session.scalar(
            text("SELECT id FROM contacts WHERE external_id = 'demo-0001'")
        )
        await session.execute(
            text("DELETE FROM email_preferences WHERE contact_id = :c"), {"c": contact_id}
        )
        assert await preferences.set_unsubscribed_all(session, contact_id, True, source="admin")
        assert not await preferences.set_unsubscribed_all(session, contact_id, True, source="admin")
        assert await preferences.set_unsubscribed_all(session, contact_id, False, source="admin")
        assert not await preferences.set_unsubscribed_all(
            session, contact_id, False, source="admin"
        )
        row = (
            await _rows(
                session,
                "SELECT unsubscribed_all, unsubscribed_at, resubscribed_at, source"
                " FROM email_preferences WHERE contact_id = :c",
                c=contact_id,
            )
        )[0]
    assert row["unsubscribed_all"] is False
    assert row["unsubscribed_at"] is not None
    assert row["resubscribed_at"] is not None
    assert row["source"] == "admin"
