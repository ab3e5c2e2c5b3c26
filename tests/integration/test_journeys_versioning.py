"""Editing a journey while runs are parked: a run whose recorded steps no longer match
the code fails loudly into the dead-letter queue, naming the step that diverged; an edit
after the point where runs wait lets them finish."""

from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
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
from sqlalchemy.ext.asyncio import AsyncEngine
from test_emails_api import settings_for

from hogsend import Hogsend
from hogsend.api.app import create_api

pytestmark = pytest.mark.timeout(480)

WORKER = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import timedelta

    from hogsend import Hogsend, define_journey
    from hogsend.runtime.worker import Worker
    from hogsend.settings import load_settings

    V2 = sys.argv[2] == "v2"


    @define_journey(id="edited-before", name="Edited before the wait", trigger="v.before")
    async def edited_before(contact, ctx):
        await ctx.send_email(template="welcome")
        if V2:
            await ctx.log("a step added before the wait")
        await ctx.sleep(timedelta(seconds=4))
        await ctx.send_email(template="nudge")


    @define_journey(id="edited-after", name="Edited after the wait", trigger="v.after")
    async def edited_after(contact, ctx):
        await ctx.send_email(template="welcome")
        await ctx.sleep(timedelta(seconds=4))
        if V2:
            await ctx.log("a step added after the wait")
        await ctx.send_email(template="nudge")


    @define_journey(
        id="patched", name="Edited with a patch", trigger="v.patched", entry_limit="unlimited"
    )
    async def patched(contact, ctx):
        await ctx.send_email(template="welcome")
        if V2 and await ctx.patched("log-before-the-wait"):
            await ctx.log("new path")
        await ctx.sleep(timedelta(seconds=4))
        await ctx.send_email(template="nudge")


    app = Hogsend(journeys=[edited_before, edited_after, patched], templates=sys.argv[1])
    asyncio.run(Worker(app, load_settings()).run())
    """
)


@pytest.fixture
def sink() -> Iterator[tuple[HoldingSink, int]]:
    yield from holding_sink()


async def test_an_edit_before_the_wait_lands_in_the_dlq_an_edit_after_it_is_safe(
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
    api = create_api(Hogsend(), settings_for(database_url, port), engine=engine)
    key = await mint_key("ingest", "admin:read")
    auth = {"Authorization": f"Bearer {key}"}

    async def start(version: str) -> Any:
        return await start_worker(
            script,
            [str(directory), version],
            database_url,
            port,
            log=tmp_path / f"worker-{version}.log",
            HOGSEND_JOURNEY_PARK_AFTER_SECONDS="1",
        )

    async def runs() -> dict[str, dict[str, Any]]:
        found = await rows(engine, "SELECT * FROM journey_states")
        return {r["user_id"]: r for r in found}

    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        v1 = await start("v1")
        try:
            await post_event(client, key, "v.before", "ola")
            await post_event(client, key, "v.after", "pia")
            await post_event(client, key, "v.patched", "quinn")

            async def both_parked() -> bool:
                found = await runs()
                return len(found) == 3 and all(
                    r["status"] == "waiting" and r["context"].get("parked") for r in found.values()
                )

            await until(both_parked)
        finally:
            await stop_worker(v1)
        assert sorted(subjects(handler)) == ["Welcome"] * 3

        # The same install (same pinned application version), new code.
        v2 = await start("v2")
        try:
            # A run that starts under the new code takes the patched path.
            await post_event(client, key, "v.patched", "rae")

            async def both_ended() -> dict[str, dict[str, Any]] | None:
                found = await runs()
                ended = all(r["status"] in ("completed", "failed") for r in found.values())
                return found if ended and len(found) == 4 else None

            ended = await until(both_ended)
        finally:
            await stop_worker(v2)

        after, before = ended["pia"], ended["ola"]
        assert after["status"] == "completed"
        assert subjects(handler, to="pia@example.com") == ["Welcome", "Try it"]
        assert before["status"] == "failed"
        assert subjects(handler, to="ola@example.com") == ["Welcome"]  # nothing after
        assert "journey.log 2:log" in before["error_message"]
        assert "journey.clock" in before["error_message"]

        # The patch: the run parked under v1 kept the old path, the new run took the new one.
        for user, expected in (("quinn", []), ("rae", ["new path"])):
            assert ended[user]["status"] == "completed", user
            assert subjects(handler, to=f"{user}@example.com") == ["Welcome", "Try it"]
            logged = await rows(
                engine,
                "SELECT detail FROM journey_logs WHERE journey_state_id = :s AND action = 'log'",
                s=ended[user]["id"],
            )
            assert [r["detail"]["message"] for r in logged] == expected, user

        listed = await client.get("/v1/admin/dlq", params={"source": "journey"}, headers=auth)
        assert listed.status_code == 200, listed.text
        [entry] = listed.json()["entries"]
        assert entry["sourceId"] == before["workflow_id"]
        assert entry["status"] == "pending"
        assert entry["payload"]["journeyId"] == "edited-before"
        assert entry["payload"]["runId"] == str(before["id"])
        assert entry["payload"]["applicationVersion"] == "hogsend-1"
        diverged = entry["payload"]["divergedAt"]
        assert diverged["expected"] == "journey.log 2:log"
        assert diverged["recorded"] == "journey.clock"
        run = await client.get(f"/v1/admin/journeys/runs/{before['id']}", headers=auth)
        assert run.json()["status"] == "failed"
        assert [s["action"] for s in run.json()["steps"]][-1] == "failed"

    versions = await rows(
        engine,
        "SELECT DISTINCT w.application_version, w.status FROM dbos.workflow_status w"
        " JOIN journey_states s ON s.workflow_id = w.workflow_uuid ORDER BY w.status",
    )
    assert versions == [
        {"application_version": "hogsend-1", "status": "ERROR"},
        {"application_version": "hogsend-1", "status": "SUCCESS"},
    ]  # one pinned version across both deploys
    await api.state.driver_pool.close()
