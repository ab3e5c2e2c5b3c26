"""Bucket reactions run as durable journeys: real Postgres, DBOS, worker and SMTP sink.

An event through ``POST /v1/events`` makes the contact join a bucket; the dispatcher
stores ``bucket:entered:<id>``, and the reaction's journey
(``bucket-<id>-on-enter``) enrolls on it and sends through the mailer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_emails_api import settings_for
from test_journeys import Env, _end_running_runs, _templates

from hogsend import Contact, Hogsend, JourneyContext, define_bucket, define_journey, where
from hogsend.api.app import create_api
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import buckets as buckets_repo
from hogsend.errors import DefinitionError
from hogsend.runtime.worker import Worker
from mail_sink import Sink

pytestmark = pytest.mark.timeout(120)

pros = define_bucket(id="it-pros", name="Pro users", criteria=where.property("plan").equals("pro"))


@pros.on_enter()
async def greet_pro(contact: Contact, ctx: JourneyContext) -> None:
    """Welcome to Pro."""
    await ctx.send_email(template="welcome", props={"name": contact.properties.get("name")})
    await ctx.log("bucket", bucketId=ctx.trigger_event.properties["bucketId"])


@pros.on_leave(reason="manual")
async def bye_pro(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="nudge")


@pytest.fixture
async def env(
    tmp_path: Path,
    engine: Any,
    database_url: str,
    sink: tuple[Sink, int],
    mint_key: Callable[..., Any],
) -> AsyncIterator[Env]:
    handler, port = sink
    app = Hogsend(buckets=[pros], templates=_templates(tmp_path / "templates"))
    settings = settings_for(
        database_url, port, worker_id="reactions-it", dispatcher_poll_seconds=0.05
    )
    api = create_api(app, settings, engine=engine)
    worker = Worker(app, settings, engine=engine)
    key = await mint_key("ingest", "admin:read", "admin:write")
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    await worker.start()
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            built = Env(client, handler, engine, worker, key)

            # The sweeper's first backfill is silent (no transition events): let it
            # finish before the tests make contacts join.
            async def backfilled() -> bool:
                rows = await built.rows(
                    "SELECT criteria_hash FROM bucket_configs WHERE bucket_id = 'it-pros'"
                )
                return bool(rows and rows[0]["criteria_hash"] is not None)

            await built.until(backfilled)
            yield built
    finally:
        await _end_running_runs(engine, worker)
        await worker.stop()
        mailer = getattr(api.state, "mailer", None)
        if mailer is not None:
            await mailer.provider.aclose()
        await api.state.driver_pool.close()


def _auth(env: Env) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.key}"}


async def test_joining_a_bucket_runs_its_on_enter_journey_and_sends(env: Env) -> None:
    await env.event("signed.up", "ann", plan="free")
    await env.event("plan.changed", "ann")  # contactProperties carry no plan: no join
    response = await env.client.post(
        "/v1/events",
        json={"name": "plan.changed", "userId": "ann", "contactProperties": {"plan": "pro"}},
        headers=_auth(env),
    )
    assert response.status_code == 202, response.text

    async def completed() -> list[dict[str, Any]]:
        runs = await env.runs("bucket-it-pros-on-enter")
        return runs if runs and runs[0]["status"] == "completed" else []

    [run] = await env.until(completed)
    assert [str(m["Subject"]) for m in env.sink.messages] == ["Welcome"]
    assert env.sink.messages[0]["To"] == "ann@example.com"
    assert run["workflow_id"] == (f"hogsend.journey:bucket-it-pros-on-enter:{run['contact_id']}:1")
    [trigger] = await env.rows(
        "SELECT event AS name, source FROM user_events WHERE id = :i", i=run["trigger_event_id"]
    )
    assert trigger == {"name": "bucket:entered:it-pros", "source": "bucket"}
    log = await env.rows(
        "SELECT action, detail FROM journey_logs WHERE journey_state_id = :s ORDER BY id",
        s=run["id"],
    )
    assert [r["action"] for r in log] == ["enrolled", "send_email", "log", "completed"]
    assert log[2]["detail"]["bucketId"] == "it-pros"
    # The reaction is listed with the journeys, as the journey it runs as.
    listed = await env.client.get("/v1/admin/journeys", headers=_auth(env))
    assert listed.status_code == 200
    ids = {j["id"]: j for j in listed.json()["journeys"]}
    assert ids["bucket-it-pros-on-enter"]["trigger"] == "bucket:entered:it-pros"
    assert ids["bucket-it-pros-on-enter"]["counts"] == {"completed": 1}
    # The leave reaction only takes manual leaves: nothing ran for it.
    assert await env.runs("bucket-it-pros-on-leave") == []


async def test_a_disabled_bucket_runs_no_reaction(env: Env) -> None:
    response = await env.client.patch(
        "/v1/admin/buckets/it-pros", json={"enabled": False}, headers=_auth(env)
    )
    assert response.status_code == 200, response.text
    await env.event("plan.changed", "bob")
    await env.client.post(
        "/v1/events",
        json={"name": "plan.changed", "userId": "bob", "contactProperties": {"plan": "pro"}},
        headers=_auth(env),
    )

    # Once the worker has dispatched both events, nothing was joined, run or sent.
    async def dispatched() -> bool:
        [row] = await env.rows(
            "SELECT count(*) FILTER (WHERE processed_at IS NOT NULL) AS done,"
            " count(*) AS stored FROM event_outbox"
        )
        return bool(row["stored"] == 2 and row["done"] == 2)

    await env.until(dispatched)
    assert await env.rows("SELECT * FROM bucket_memberships") == []
    assert await env.runs("bucket-it-pros-on-enter") == []
    assert env.sink.messages == []


async def test_a_transition_stored_before_the_bucket_was_disabled_is_refused(
    env: Env,
) -> None:
    await env.event("signed.up", "cyd")
    [contact] = await env.rows("SELECT id FROM contacts WHERE external_id = 'cyd'")
    sessions = make_sessionmaker(env.engine)
    now = datetime.now(UTC)
    # One transaction: the join's event is stored and the admin switch flips, so the
    # dispatcher reads the transition with the bucket already off.
    async with sessions() as session, session.begin():
        joined = await buckets_repo.join(session, pros, contact["id"], now=now, source="manual")
        assert joined is not None
        await buckets_repo.emit_transition(session, "entered", joined, now=now)
        await buckets_repo.set_enabled(session, pros.id, False, now=now)

    async def refused() -> list[dict[str, Any]]:
        return await env.rows(
            "SELECT detail FROM journey_logs WHERE journey_id = 'bucket-it-pros-on-enter'"
            " AND action = 'refused'"
        )

    [log] = await env.until(refused)
    assert log["detail"]["reason"] == "bucket_disabled"
    assert log["detail"]["event"] == "bucket:entered:it-pros"
    assert await env.runs("bucket-it-pros-on-enter") == []
    assert env.sink.messages == []


async def test_a_reaction_id_taken_by_a_journey_is_refused_at_launch(
    tmp_path: Path, engine: Any, database_url: str
) -> None:
    clashing = define_bucket(id="vips", name="VIPs", kind="manual")

    @clashing.on_enter()
    async def hello(contact: Contact, ctx: JourneyContext) -> None:
        await ctx.log("hello")

    @define_journey(id="bucket-vips-on-enter", name="Mine", trigger="x")
    async def mine(contact: Contact, ctx: JourneyContext) -> None:
        await ctx.log("mine")

    app = Hogsend(journeys=[mine], buckets=[clashing])
    worker = Worker(app, settings_for(database_url, 25, worker_id=f"clash-{uuid.uuid4()}"))
    with pytest.raises(DefinitionError, match=r"bucket-vips-on-enter .*rename the journey"):
        await worker.start()
    assert not worker.running
    assert [str(p) for p in app.check()] == [
        "journey bucket-vips-on-enter: id also used by a bucket reaction"
    ]
