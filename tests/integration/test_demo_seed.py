"""``hogsend dev --seed-demo``'s data on a real Postgres: every kind the Studio pages show.

Journey runs in every status with step logs, bucket memberships (active and left),
sends with every final decision, engagement, a finished and a running campaign whose
counters agree with their recipients, and a dead letter that a retry really re-queues.
Seeding again inserts nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hogsend.app import Hogsend, load_app
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import (
    campaigns,
    dead_letter_decisions,
    dead_letters,
    demo,
    demo_activity,
    funnels,
)
from hogsend.db.tables.email import SEND_DECISIONS
from hogsend.db.tables.journeys import JOURNEY_STATUSES

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def quickstart() -> Hogsend:
    return load_app("examples.quickstart.app:app", search=(REPO,))


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def seeded(engine: AsyncEngine) -> demo.SeedResult:
    async with make_sessionmaker(engine)() as session, session.begin():
        return await demo.seed(session, now=NOW)


async def _rows(session: AsyncSession, sql: str, **params: Any) -> list[dict[str, Any]]:
    return [dict(r._mapping) for r in await session.execute(text(sql), params)]


async def test_journey_runs_in_every_status_with_their_logs(
    engine: AsyncEngine, seeded: demo.SeedResult
) -> None:
    assert seeded.journey_runs == 200
    async with make_sessionmaker(engine)() as session:
        statuses = {
            r["status"]: r["n"]
            for r in await _rows(
                session, "SELECT status, count(*) AS n FROM journey_states GROUP BY status"
            )
        }
        orphans = await session.scalar(
            text(
                "SELECT count(*) FROM journey_states s WHERE NOT EXISTS"
                " (SELECT 1 FROM journey_logs l WHERE l.journey_state_id = s.id)"
            )
        )
        finished = await _rows(
            session,
            "SELECT s.status, array_agg(l.action ORDER BY l.id) AS actions FROM journey_states s"
            " JOIN journey_logs l ON l.journey_state_id = s.id"
            " WHERE s.status IN ('completed', 'failed', 'exited') GROUP BY s.id, s.status",
        )
        unsafe = await session.scalar(
            text(
                "SELECT count(*) FROM journey_states WHERE waiting_for_event IS NOT NULL"
                " OR coalesce((context->>'parked')::boolean, false)"
            )
        )
    assert set(statuses) == set(JOURNEY_STATUSES), statuses
    assert statuses["completed"] > statuses["failed"]
    assert orphans == 0
    for run in finished:
        assert run["actions"][0] == "enrolled"
        assert run["actions"][-1] == {"completed": "completed", "failed": "failed"}.get(
            run["status"], "exited"
        )
    assert unsafe == 0  # no worker would try to wake or message these history rows


async def test_bucket_memberships_active_and_left(
    engine: AsyncEngine, seeded: demo.SeedResult
) -> None:
    assert seeded.memberships > 0
    async with make_sessionmaker(engine)() as session:
        rows = await _rows(
            session,
            "SELECT bucket_id, status, count(*) AS n FROM bucket_memberships"
            " GROUP BY bucket_id, status",
        )
        vip_plans = await _rows(
            session,
            "SELECT DISTINCT c.properties->>'plan' AS plan FROM bucket_memberships m"
            " JOIN contacts c ON c.id = m.contact_id WHERE m.bucket_id = 'vip-customers'",
        )
    by = {(r["bucket_id"], r["status"]): r["n"] for r in rows}
    assert by.get(("vip-customers", "active"), 0) > 0
    assert by.get(("power-users", "active"), 0) + by.get(("power-users", "left"), 0) > 0
    assert any(status == "left" for _, status in by)
    assert by.get(("lapsed", "active"), 0) > 0
    assert [r["plan"] for r in vip_plans] == ["enterprise"]


async def test_sends_cover_every_final_decision_and_engagement(
    engine: AsyncEngine, seeded: demo.SeedResult
) -> None:
    async with make_sessionmaker(engine)() as session:
        decisions = {
            r["decision"] for r in await _rows(session, "SELECT DISTINCT decision FROM email_sends")
        }
        engaged = (
            await _rows(
                session,
                "SELECT count(opened_at) AS opened, count(clicked_at) AS clicked"
                " FROM email_sends WHERE campaign_id IS NOT NULL",
            )
        )[0]
    # ``queued`` is the moment between decision and hand-off, never history
    assert decisions == set(SEND_DECISIONS) - {"queued"}
    assert engaged["opened"] > 0
    assert engaged["clicked"] > 0


async def test_a_finished_and_a_running_campaign_with_consistent_counts(
    engine: AsyncEngine, seeded: demo.SeedResult
) -> None:
    assert seeded.campaigns == 2
    async with make_sessionmaker(engine)() as session:
        finished = await campaigns.get_campaign(session, demo_activity.FINISHED_CAMPAIGN)
        running = await campaigns.get_campaign(session, demo_activity.RUNNING_CAMPAIGN)
        assert finished is not None
        assert running is not None
        assert finished.status == "sent"
        assert running.status == "sending"
        for campaign in (finished, running):
            counted = await campaigns.recipient_statuses(session, campaign.id)
            assert campaign.total_recipients == sum(counted.values()) > 0
            assert campaign.sent_count == counted.get("sent", 0)
            assert campaign.skipped_count == counted.get("skipped", 0)
            assert sum(campaign.skip_reasons.values()) == campaign.skipped_count
        assert (await campaigns.recipient_statuses(session, finished.id)).get("pending") is None
        assert (await campaigns.recipient_statuses(session, running.id))["pending"] > 0
        funnel = await funnels.campaign_funnel(session, finished.id)
        assert funnel is not None
        sends = await _rows(
            session,
            "SELECT decision, delivered_at, opened_at, clicked_at FROM email_sends"
            " WHERE campaign_id = :c",
            c=finished.id,
        )
    went = [s for s in sends if s["decision"] in ("sent", "redirected")]
    assert funnel.audience == finished.total_recipients
    assert funnel.sent == len(went) == finished.sent_count
    # A message opened or clicked was delivered, whether or not a delivery event came.
    assert funnel.delivered == sum(
        1 for s in went if s["delivered_at"] or s["opened_at"] or s["clicked_at"]
    )
    assert funnel.opened == sum(1 for s in went if s["opened_at"] is not None) > 0
    assert funnel.clicked == sum(1 for s in went if s["clicked_at"] is not None) > 0
    assert funnel.audience >= funnel.sent >= funnel.delivered >= funnel.opened


async def test_the_dead_letter_is_real_work_a_retry_requeues(
    engine: AsyncEngine, seeded: demo.SeedResult
) -> None:
    assert seeded.dead_letters == 2
    sessions = make_sessionmaker(engine)
    async with sessions() as session:
        entries, total = await dead_letters.list_entries(
            session, status="pending", source="dispatcher"
        )
    assert total == 1
    [entry] = entries
    assert entry.source == "dispatcher"
    async with sessions() as session, session.begin():
        retried = await dead_letter_decisions.retry(session, entry.id)
    async with sessions() as session:
        pending = await session.scalar(
            text(
                "SELECT count(*) FROM event_outbox WHERE id = :id"
                " AND dead_at IS NULL AND processed_at IS NULL AND attempts = 0"
            ),
            {"id": retried.outbox_id},
        )
    assert pending == 1


async def test_seeding_again_inserts_nothing(engine: AsyncEngine, seeded: demo.SeedResult) -> None:
    async with make_sessionmaker(engine)() as session, session.begin():
        again = await demo.seed(session, now=NOW + timedelta(hours=3))
    assert again == demo.SeedResult(contacts=0, events=0, sends=0)


async def test_the_demo_campaigns_props_render_their_template(
    engine: AsyncEngine, seeded: demo.SeedResult
) -> None:
    """The running campaign really sends when a worker continues it: its props must fit."""
    from hogsend.api.previews import stand_in_contact

    app = quickstart()
    assert app.templates is not None
    async with make_sessionmaker(engine)() as session:
        for campaign_id in (demo_activity.FINISHED_CAMPAIGN, demo_activity.RUNNING_CAMPAIGN):
            campaign = await campaigns.get_campaign(session, campaign_id)
            assert campaign is not None
            rendered = app.templates.render(
                campaign.template_key,
                contact=stand_in_contact("a@example.com"),
                props=campaign.props,
                extra={"unsubscribe_url": "https://x/u", "preferences_url": "https://x/p"},
            )
            assert campaign.props["title"] in rendered.html


async def test_the_diverged_demo_run_is_a_journey_dead_letter_a_retry_restarts(
    engine: AsyncEngine, seeded: demo.SeedResult
) -> None:
    sessions = make_sessionmaker(engine)
    async with sessions() as session:
        entries, _ = await dead_letters.list_entries(session, status="pending", source="journey")
    [entry] = entries
    assert entry.payload["journeyId"] == "welcome"
    assert entry.payload["trigger"]["name"] == "signed_up"
    async with sessions() as session:
        [failed] = await _rows(
            session, "SELECT * FROM journey_states WHERE id = :id", id=entry.payload["runId"]
        )
    assert failed["status"] == "failed"
    assert failed["error_message"] == entry.error
    async with sessions() as session, session.begin():
        retried = await dead_letter_decisions.retry(session, entry.id, journey_ids={"welcome"})
    async with sessions() as session:
        [run] = await _rows(
            session, "SELECT * FROM journey_states WHERE id = :id", id=retried.run_id
        )
        [after] = await _rows(
            session, "SELECT status FROM dead_letter_queue WHERE id = :id", id=entry.id
        )
    # Waits for a worker to start it (hogsend dev's does).
    assert run["status"] == "enrolled"
    assert run["contact_id"] == failed["contact_id"]
    assert run["context"]["retry"]["of"] == str(failed["id"])
    assert run["workflow_id"] == f"{failed['workflow_id']}:retry:{entry.id}"
    assert after["status"] == "retried"
