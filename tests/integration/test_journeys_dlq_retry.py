"""Retrying a journey run that diverged into the dead-letter queue.

Real worker processes on DBOS and Postgres, a real SMTP sink: a run parks under v1 of a
journey, v2 inserts an operation before the wait, the replay diverges and the run fails
into the DLQ. A retry (admin API, or the Studio form with its CSRF token) starts a new
run from the beginning under v2 that completes; the welcome the failed run sent is not
sent again (same template at the same operation: the failed run's idempotency key).
"""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from journey_processes import (
    HoldingSink,
    holding_sink,
    post_event,
    rows,
    start_worker,
    stop_worker,
    subjects,
    templates,
    until,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_emails_api import settings_for
from test_studio import ADMIN, add_user, sign_in, token_in

from hogsend import Hogsend, define_journey
from hogsend.api.app import create_api
from hogsend.core.journey_context import JourneyContext
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import dead_letters, enrollments, journeys
from hogsend.studio import mount_studio

pytestmark = pytest.mark.timeout(480)

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import timedelta

    from hogsend import Hogsend, define_journey
    from hogsend.runtime.worker import Worker
    from hogsend.settings import load_settings

    V2 = sys.argv[2] == "v2"


    @define_journey(id="edited", name="Edited while runs wait", trigger="v.signup")
    async def edited(contact, ctx):
        await ctx.send_email(template="welcome")
        if V2:
            await ctx.log("a step added before the wait")
        await ctx.sleep(timedelta(seconds=3))
        await ctx.send_email(template="nudge")


    app = Hogsend(journeys=[edited], templates=sys.argv[1])
    asyncio.run(Worker(app, load_settings()).run())
    """
)


@define_journey(id="edited", name="Edited while runs wait", trigger="v.signup")
async def edited(contact: Any, ctx: JourneyContext) -> None:
    """The API's copy: the admin routes only need to know the journey exists."""


@pytest.fixture
def sink() -> Iterator[tuple[HoldingSink, int]]:
    yield from holding_sink()


async def test_a_diverged_run_is_retried_from_the_api_and_from_studio(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[HoldingSink, int],
    mint_key: Callable[..., Any],
) -> None:
    handler, port = sink
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    directory = templates(tmp_path / "templates")
    settings = settings_for(database_url, port)
    api = create_api(Hogsend(journeys=[edited]), settings, engine=engine)
    mount_studio(api)
    # An install whose code no longer has the journey.
    without = create_api(Hogsend(), settings, engine=engine)
    key = await mint_key("ingest", "admin:read", "admin:write")
    auth = {"Authorization": f"Bearer {key}"}
    reader = {"Authorization": f"Bearer {await mint_key('admin:read')}"}

    async def start(version: str) -> Any:
        return await start_worker(
            script,
            [str(directory), version],
            database_url,
            port,
            log=tmp_path / f"worker-{version}.log",
            HOGSEND_JOURNEY_PARK_AFTER_SECONDS="1",
        )

    async def runs_of(user: str) -> list[dict[str, Any]]:
        return await rows(
            engine,
            "SELECT * FROM journey_states WHERE user_id = :u ORDER BY created_at",
            u=user,
        )

    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        v1 = await start("v1")
        try:
            for user in ("ola", "sam"):
                await post_event(client, key, "v.signup", user)

            async def parked() -> bool:
                found = await rows(engine, "SELECT * FROM journey_states")
                return len(found) == 2 and all(r["context"].get("parked") for r in found)

            await until(parked)
        finally:
            await stop_worker(v1)

        v2 = await start("v2")
        try:

            async def two_entries() -> list[dict[str, Any]] | None:
                listed = await client.get(
                    "/v1/admin/dlq", params={"source": "journey"}, headers=auth
                )
                entries = listed.json()["entries"]
                return entries if len(entries) == 2 else None

            entries = {e["payload"]["userId"]: e for e in await until(two_entries)}
            assert subjects(handler) == ["Welcome", "Welcome"]
            [failed] = await runs_of("ola")
            assert failed["status"] == "failed"
            assert entries["ola"]["payload"]["trigger"]["name"] == "v.signup"

            # -- refused: a read-only key, then code that no longer defines the journey --
            entry_id = entries["ola"]["id"]
            denied = await client.post(f"/v1/admin/dlq/{entry_id}/retry", headers=reader)
            assert denied.status_code == 403
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=without), base_url="http://t"
            ) as old_code:
                gone = await old_code.post(f"/v1/admin/dlq/{entry_id}/retry", headers=auth)
            assert gone.status_code == 409
            assert gone.headers["content-type"].startswith("application/problem+json")
            assert "no longer defined" in gone.json()["detail"]
            assert len(await runs_of("ola")) == 1  # nothing written

            # -- retry through the admin API ----------------------------------------------
            retried = await client.post(f"/v1/admin/dlq/{entry_id}/retry", headers=auth)
            assert retried.status_code == 200, retried.text
            body = retried.json()
            assert body["retried"] is True
            assert body["workflowId"] == f"{failed['workflow_id']}:retry:{entry_id}"
            new_run = body["runId"]

            async def ended(run_id: str) -> dict[str, Any] | None:
                run = (await client.get(f"/v1/admin/journeys/runs/{run_id}", headers=auth)).json()
                return run if run["status"] in ("completed", "failed", "exited") else None

            done = await until(lambda: ended(new_run))
            assert done["status"] == "completed", done
            assert done["retryOf"] == str(failed["id"])
            assert done["entryCount"] == failed["entry_count"]
            sends = [
                (s["step"], s["detail"]["decision"])
                for s in done["steps"]
                if s["action"] == "send_email"
            ]
            # The welcome the failed run sent is a duplicate (its key), the nudge is new.
            assert sends == [("1:send_email:welcome", "duplicate"), ("4:send_email:nudge", "sent")]
            assert [s["action"] for s in done["steps"]][:2] == ["enrolled", "send_email"]
            assert subjects(handler, to="ola@example.com") == ["Welcome", "Try it"]

            old = (await client.get(f"/v1/admin/journeys/runs/{failed['id']}", headers=auth)).json()
            assert old["status"] == "failed"
            assert old["retriedBy"] == new_run
            assert old["steps"][-1]["action"] == "retried"
            entry = (await client.get(f"/v1/admin/dlq/{entry_id}", headers=auth)).json()
            assert entry["status"] == "retried"
            assert entry["retriedAt"] is not None

            for verb in ("retry", "discard"):
                again = await client.post(f"/v1/admin/dlq/{entry_id}/{verb}", headers=auth)
                assert again.status_code == 409, again.text
                assert "already retried" in again.json()["detail"]
            assert len(await runs_of("ola")) == 2

            # -- retry through the Studio form (CSRF token, admin session) ---------------
            sam_entry = entries["sam"]["id"]
            await add_user(engine, *ADMIN, "admin")
            assert (await sign_in(client, *ADMIN)).status_code == 303
            listing = await client.get("/studio/dlq")
            assert listing.status_code == 200
            assert "journey <strong>edited</strong>, run of sam" in listing.text
            page = await client.get(f"/studio/dlq/{sam_entry}")
            assert page.status_code == 200
            assert ">Retry</button>" in page.text
            assert "starts a new run of the journey" in page.text
            token = token_in(page.text)
            forged = await client.post(f"/studio/dlq/{sam_entry}/retry", data={})
            assert forged.status_code == 403
            posted = await client.post(f"/studio/dlq/{sam_entry}/retry", data={"csrf_token": token})
            assert posted.status_code == 303, posted.text
            assert posted.headers["location"].endswith("notice=retried-journey")
            [sam_failed, sam_retry] = await runs_of("sam")
            assert sam_retry["context"]["retry"]["of"] == str(sam_failed["id"])
            sam_done = await until(lambda: ended(str(sam_retry["id"])))
            assert sam_done["status"] == "completed"
            assert subjects(handler, to="sam@example.com") == ["Welcome", "Try it"]
            shown = await client.get(f"/studio/dlq/{sam_entry}")
            assert f"/studio/journeys/runs/{sam_retry['id']}" in shown.text
            run_page = await client.get(f"/studio/journeys/runs/{sam_failed['id']}")
            assert f"/studio/journeys/runs/{sam_retry['id']}" in run_page.text
            again = await client.post(f"/studio/dlq/{sam_entry}/retry", data={"csrf_token": token})
            assert again.status_code == 409
        finally:
            await stop_worker(v2)

        audit = (await client.get("/v1/admin/audit-logs", headers=auth)).json()["logs"]
        retries = {e["resourceId"]: e for e in audit if e["action"] == "dlq.retry"}
        assert set(retries) == {entry_id, sam_entry}
        assert retries[entry_id]["actor"] == "test"
        assert retries[sam_entry]["actor"] == f"studio:{ADMIN[0]}"
        for made, run_id in ((retries[entry_id], new_run), (retries[sam_entry], sam_retry["id"])):
            assert made["detail"]["before"] == {"status": "pending"}
            assert made["detail"]["after"] == {"status": "retried"}
            assert made["detail"]["runId"] == str(run_id)

    await api.state.driver_pool.close()
    await without.state.driver_pool.close()


async def test_a_journey_retry_is_refused_with_409_when_the_run_cannot_start_again(
    engine: AsyncEngine, database_url: str, mint_key: Callable[..., Any]
) -> None:
    """No worker needed: what the retry writes, and what it refuses, in the database."""
    api = create_api(Hogsend(journeys=[edited]), settings_for(database_url, 1), engine=engine)
    key = await mint_key("ingest", "admin:read", "admin:write")
    auth = {"Authorization": f"Bearer {key}"}
    sessions = make_sessionmaker(engine)

    async def failed_run(user: str, trigger_id: uuid.UUID) -> tuple[uuid.UUID, str]:
        """A failed run of ``edited`` that sent the welcome, and its journey entry."""
        [contact] = await rows(engine, "SELECT id FROM contacts WHERE external_id = :u", u=user)
        run_id = uuid.uuid4()
        async with sessions() as session, session.begin():
            await journeys.insert_run(
                session,
                state_id=run_id,
                journey_id="edited",
                workflow_id=f"wf-{user}",
                contact_id=contact["id"],
                user_id=user,
                user_email=None,
                entry_count=1,
                trigger_event_id=trigger_id,
                context={},
            )
            await journeys.add_log(
                session,
                journey_id="edited",
                action="send_email",
                state_id=run_id,
                contact_id=contact["id"],
                user_id=user,
                step="1:send_email:welcome",
                detail={"template": "welcome", "idempotencyKey": f"journey:{run_id}:1"},
                started_at=datetime.now(UTC),
            )
            await journeys.finish(session, run_id, status="failed", error="diverged")
            entry = await dead_letters.add(
                session,
                source="journey",
                source_id=f"wf-{user}",
                payload={"journeyId": "edited", "runId": str(run_id), "userId": user},
                error="diverged",
                attempts=1,
            )
        return run_id, str(entry)

    async def count(sql: str, **params: Any) -> int:
        return len(await rows(engine, sql, **params))

    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        trigger = uuid.UUID(await post_event(client, key, "v.signup", "tia"))
        await post_event(client, key, "v.signup", "uma")
        run_id, entry = await failed_run("tia", trigger)
        _, erased = await failed_run("uma", uuid.uuid4())  # its trigger is not stored

        async def refused(entry_id: str, reason: str) -> None:
            before = await count("SELECT id FROM journey_states")
            answer = await client.post(f"/v1/admin/dlq/{entry_id}/retry", headers=auth)
            assert answer.status_code == 409, answer.text
            assert answer.headers["content-type"].startswith("application/problem+json")
            assert reason in answer.json()["detail"]
            assert await count("SELECT id FROM journey_states") == before
            assert await count(
                "SELECT id FROM dead_letter_queue WHERE id = :e AND status = 'pending'", e=entry_id
            )

        await refused(erased, "no longer stored")

        # The contact runs the journey again already: one running run per contact.
        [tia] = await rows(engine, "SELECT id FROM contacts WHERE external_id = 'tia'")
        async with sessions() as session, session.begin():
            await journeys.insert_run(
                session,
                state_id=uuid.uuid4(),
                journey_id="edited",
                workflow_id="wf-tia-again",
                contact_id=tia["id"],
                user_id="tia",
                user_email=None,
                entry_count=2,
                trigger_event_id=None,
                context={},
            )
        await refused(entry, "already has a running run")
        async with engine.begin() as conn:
            await conn.execute(
                text("DELETE FROM journey_states WHERE workflow_id = 'wf-tia-again'")
            )

        missing = await client.post(f"/v1/admin/dlq/{uuid.uuid4()}/retry", headers=auth)
        assert missing.status_code == 404

        done = await client.post(f"/v1/admin/dlq/{entry}/retry", headers=auth)
        assert done.status_code == 200, done.text
        [retry] = await rows(
            engine, "SELECT * FROM journey_states WHERE id = :id", id=done.json()["runId"]
        )
        # No worker: it waits, enrolled, for one to start its workflow.
        assert retry["status"] == "enrolled"
        assert retry["context"]["retry"]["trigger"]["id"] == str(trigger)  # read from the log
        assert retry["context"]["retry"]["sends"] == {
            "1": {"template": "welcome", "key": f"journey:{run_id}:1"}
        }
        # The retry takes no entry: the next enrollment is still the contact's second; and
        # a redelivered trigger finds the original run, not the retry sharing its event.
        async with sessions() as session:
            facts = await enrollments.read_facts(session, tia["id"], "edited", trigger)
        assert (facts.prior.count, facts.prior.live) == (1, True)
        assert facts.existing is not None
        assert facts.existing.id == run_id

        # The contact is deleted: nothing to run for.
        val_trigger = uuid.UUID(await post_event(client, key, "v.signup", "val"))
        _, val_entry = await failed_run("val", val_trigger)
        deleted = await client.request(
            "DELETE", "/v1/contacts", json={"userId": "val"}, headers=auth
        )
        assert deleted.status_code == 200, deleted.text
        await refused(val_entry, "deleted or merged")
    await api.state.driver_pool.close()
