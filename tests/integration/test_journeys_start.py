"""How a run starts: from its input when it was enrolled with its contact, through the
``journey.start`` step otherwise (a retry; a run recorded before inputs carried the
contact), and a run of the second kind still replays under this code.

Real Postgres, real DBOS (a started worker), events through the HTTP API.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_journeys import Env, _env, _subjects

from hogsend import Contact, JourneyContext, define_journey
from hogsend.core.contact import Event
from hogsend.core.enrollment import enrollment_workflow_id, run_input
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import journeys as repo
from mail_sink import Sink

pytestmark = pytest.mark.timeout(120)


@define_journey(id="it-start-now", name="Start now", trigger="start.now", entry_limit="unlimited")
async def start_now(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.log("began", at=ctx.now().isoformat(), name=contact.properties.get("name"))


@define_journey(
    id="it-start-sleep", name="Start sleep", trigger="start.sleep", entry_limit="unlimited"
)
async def start_sleep(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.sleep(timedelta(seconds=3))
    await ctx.send_email(template="nudge")


@pytest.fixture
async def env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    mint_key: Callable[..., Any],
) -> AsyncIterator[Env]:
    async for built in _env(
        tmp_path,
        engine,
        database_url,
        sink,
        mint_key,
        [start_now, start_sleep],
        journey_park_after_seconds=1.0,
    ):
        yield built


async def _steps(env: Env, workflow_id: str) -> list[str]:
    rows = await env.rows(
        "SELECT function_name FROM dbos.operation_outputs WHERE workflow_uuid = :w"
        " ORDER BY function_id",
        w=workflow_id,
    )
    return [r["function_name"] for r in rows]


async def _ended(env: Env, journey: str) -> dict[str, Any]:
    async def ended() -> dict[str, Any] | None:
        runs = await env.runs(journey)
        return runs[0] if runs and runs[0]["status"] not in repo.RUNNING else None

    run: dict[str, Any] = await env.until(ended)
    return run


async def test_an_enrolled_run_begins_from_its_input_without_a_start_step(env: Env) -> None:
    await env.event("start.now", "ada")
    run = await _ended(env, "it-start-now")
    assert run["status"] == "completed"
    # The body's step is the workflow's first: no journey.start step was recorded.
    assert await _steps(env, run["workflow_id"]) == ["journey.log 1:log"]
    [line] = await env.rows(
        "SELECT detail FROM journey_logs WHERE journey_state_id = :s AND action = 'log'",
        s=run["id"],
    )
    # The contact the body saw is the one enrollment read, and ctx.now() started at
    # the enrollment's clock (the run row's created_at), both from the recorded input.
    assert line["detail"]["name"] == "Ada"
    assert datetime.fromisoformat(line["detail"]["at"]) == run["created_at"]
    [moves] = await env.rows(
        "SELECT array_agg(action ORDER BY id) AS actions FROM journey_logs"
        " WHERE journey_state_id = :s",
        s=run["id"],
    )
    assert moves["actions"] == ["enrolled", "log", "completed"]


async def test_a_run_whose_contact_is_deleted_before_it_begins_exits_unlogged(
    env: Env,
) -> None:
    await env.event("start.other", "gone")
    [contact] = await env.rows("SELECT id, external_id FROM contacts")
    runtime = env.worker.journeys
    assert runtime is not None
    trigger = Event(
        id=uuid.uuid4(),
        name="start.now",
        contact_key=contact["external_id"],
        contact_id=contact["id"],
        occurred_at=datetime.now(UTC),
    )
    async with make_sessionmaker(env.engine)() as session, session.begin():
        workflow_id = await runtime.enroll(
            session,
            start_now,
            contact_id=contact["id"],
            contact_key=contact["external_id"],
            trigger=trigger,
        )
        # A deletion that committed after the enrollment read the contact, without
        # seeing the (uncommitted) run to exit it.
        await session.execute(
            text("UPDATE contacts SET deleted_at = now() WHERE id = :c"), {"c": contact["id"]}
        )
    assert workflow_id is not None
    run = await _ended(env, start_now.id)
    assert (run["status"], run["exit_reason"]) == ("exited", "contact_deleted")
    assert await _steps(env, workflow_id) == []


async def test_a_run_enqueued_without_its_contact_replays_its_start_step(env: Env) -> None:
    """The input decides the path, so a run recorded with a ``journey.start`` step (older
    code, or a retry) parks, wakes by replay and completes once under this code."""
    event_id = await env.event("start.other", "old")
    [contact] = await env.rows("SELECT id, external_id, email FROM contacts")
    runtime = env.worker.journeys
    assert runtime is not None
    state_id = uuid.uuid4()
    workflow_id = enrollment_workflow_id(start_sleep.id, contact["id"], 1)
    now = datetime.now(UTC)
    async with make_sessionmaker(env.engine)() as session, session.begin():
        await repo.insert_run(
            session,
            state_id=state_id,
            journey_id=start_sleep.id,
            workflow_id=workflow_id,
            contact_id=contact["id"],
            user_id=contact["external_id"],
            user_email=contact["email"],
            entry_count=1,
            trigger_event_id=uuid.UUID(event_id),
            context={},
            now=now,
        )
    trigger = {
        "id": event_id,
        "name": "start.other",
        "contactKey": contact["external_id"],
        "contactId": str(contact["id"]),
        "occurredAt": now.isoformat(),
        "properties": {},
        "source": None,
    }
    old_input = run_input(
        workflow_id=workflow_id,
        contact_id=contact["id"],
        user_id=contact["external_id"],
        email=contact["email"],
        ordinal=1,
        trigger=trigger,
    )
    await runtime.start_run(start_sleep, state_id, old_input)

    async def parked() -> bool:
        runs = await env.runs(start_sleep.id)
        return bool(runs) and bool(runs[0]["context"].get("parked"))

    await env.until(parked)
    run = await _ended(env, start_sleep.id)
    assert run["status"] == "completed"
    steps = await _steps(env, workflow_id)
    # Step 0 is the recorded start step; the resumed run replayed it (once) and went on.
    assert steps[0] == "journey.start"
    assert steps.count("journey.start") == 1
    assert steps.count("journey.park") == 1
    assert _subjects(env.sink) == ["Try it"]
