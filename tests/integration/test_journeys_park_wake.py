"""Waking a due parked run: the ``journey.woke`` step skips the receive when nothing is
pending, and still reads an event, or ends on an exit, that raced the waker's claim.

The waker's claim is done by hand here (the row unparked, the workflow resumed later), so
that the delivery or the exit lands exactly between the claim and the resume.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dbos import DBOS
from sqlalchemy import Engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_journeys import Env, _env, _subjects

from hogsend import Contact, JourneyContext, define_journey
from hogsend.runtime import replay
from hogsend.runtime.queues import JOURNEYS
from mail_sink import Sink

pytestmark = pytest.mark.timeout(120)


@define_journey(
    id="it-wake-wait",
    name="Wake wait",
    trigger="wake.wait",
    entry_limit="unlimited",
)
async def wake_wait(contact: Contact, ctx: JourneyContext) -> None:
    got = await ctx.wait_for_event("wake.event", timeout=timedelta(seconds=3))
    await ctx.log("woke", got=None if got is None else got.properties.get("n"))
    await ctx.send_email(template="nudge")


@define_journey(
    id="it-wake-sleep",
    name="Wake sleep",
    trigger="wake.sleep",
    entry_limit="unlimited",
    exit_on=["wake.stop"],
)
async def wake_sleep(contact: Contact, ctx: JourneyContext) -> None:
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
        [wake_wait, wake_sleep],
        journey_park_after_seconds=1.0,
    ):
        yield built


async def _parked(env: Env, journey: str) -> dict[str, Any]:
    async def parked() -> dict[str, Any] | None:
        runs = await env.runs(journey)
        if runs and runs[0]["status"] == "waiting" and runs[0]["context"].get("parked"):
            return runs[0]
        return None

    run: dict[str, Any] = await env.until(parked)
    return run


async def _claim(env: Env, run: dict[str, Any]) -> None:
    """What the waker's claim does to the row (its resume comes later, by hand)."""
    async with env.engine.begin() as conn:
        await conn.execute(
            text("UPDATE journey_states SET context = context - 'parked' WHERE id = :id"),
            {"id": run["id"]},
        )


async def _past(deadline: datetime) -> None:
    await asyncio.sleep(max((deadline - datetime.now(UTC)).total_seconds(), 0) + 0.3)


async def _steps(env: Env, workflow_id: str) -> list[str]:
    rows = await env.rows(
        "SELECT function_name FROM dbos.operation_outputs WHERE workflow_uuid = :w"
        " ORDER BY function_id",
        w=workflow_id,
    )
    return [r["function_name"] for r in rows]


async def _steps_at_park(env: Env, workflow_id: str) -> list[str]:
    """The run's steps up to its park step, once that is recorded: DBOS writes a step's
    record after the step returns, so the row can read parked a moment before the
    record exists."""

    async def recorded() -> list[str] | None:
        steps = await _steps(env, workflow_id)
        if "journey.park" not in steps:
            return None
        return steps[: steps.index("journey.park") + 1]

    steps: list[str] = await env.until(recorded)
    return steps


async def test_a_due_sleep_wakes_through_one_step_without_a_receive(env: Env) -> None:
    await env.event("wake.sleep", "sid")
    run = await _parked(env, "it-wake-sleep")

    async def completed() -> bool:
        return (await env.runs("it-wake-sleep"))[0]["status"] == "completed"

    await env.until(completed)
    steps = await _steps(env, run["workflow_id"])
    after_park = steps[steps.index("journey.park") + 1 :]
    # One step ends the wait: no clock step, no DBOS.recv (nor its timeout's sleep), no
    # closing move and log steps; the next step is the body's send (completion is a
    # plain write after the body, not a step).
    assert after_park[0] == "journey.woke"
    assert after_park[1:] == [
        "journey.clock",
        "journey.send_email 2:send_email:nudge",
    ]
    # ...and the wait's closing was written: the run moved on, the sleep is logged.
    [slept] = await env.rows(
        "SELECT step, detail FROM journey_logs WHERE journey_state_id = :s AND action = 'sleep'",
        s=run["id"],
    )
    assert slept["step"] == "1:sleep"
    assert slept["detail"]["until"] == run["next_wake_at"].isoformat()
    assert _subjects(env.sink) == ["Try it"]


async def test_an_event_delivered_between_the_claim_and_the_resume_is_read(env: Env) -> None:
    await env.event("wake.wait", "wes")
    run = await _parked(env, "it-wake-wait")
    await _claim(env, run)
    # The dispatcher finds the run waiting but no longer parked: it flags the message
    # pending and sends it, and leaves the resume to whoever claimed the run.
    await env.event("wake.event", "wes", n=5)

    async def pending() -> bool:
        return bool((await env.runs("it-wake-wait"))[0]["context"].get("pending"))

    await env.until(pending)
    await _past(run["next_wake_at"])  # due: the timeout passed too
    await DBOS.resume_workflows_async([run["workflow_id"]], queue_name=JOURNEYS.name)

    async def completed() -> bool:
        return (await env.runs("it-wake-wait"))[0]["status"] == "completed"

    await env.until(completed)
    [woke] = await env.rows(
        "SELECT detail FROM journey_logs WHERE journey_state_id = :s AND action = 'log'",
        s=run["id"],
    )
    assert woke["detail"]["got"] == 5
    assert _subjects(env.sink) == ["Try it"]


async def test_an_exit_between_the_claim_and_the_resume_ends_the_run_unsent(env: Env) -> None:
    await env.event("wake.sleep", "xia")
    run = await _parked(env, "it-wake-sleep")
    await _claim(env, run)
    await env.event("wake.stop", "xia")

    async def exited() -> bool:
        return (await env.runs("it-wake-sleep"))[0]["status"] == "exited"

    await env.until(exited)
    await _past(run["next_wake_at"])
    await DBOS.resume_workflows_async([run["workflow_id"]], queue_name=JOURNEYS.name)
    await env.until(
        lambda: env.rows(
            "SELECT 1 FROM dbos.workflow_status WHERE workflow_uuid = :w AND status = 'SUCCESS'",
            w=run["workflow_id"],
        )
    )
    [after] = await env.runs("it-wake-sleep")
    assert after["status"] == "exited"
    assert after["exit_reason"] == "exit_on:wake.stop"
    await asyncio.sleep(0.5)
    assert _subjects(env.sink) == []
    assert "journey.woke" in await _steps(env, run["workflow_id"])


async def test_a_parked_wait_that_times_out_closes_in_the_woke_step(env: Env) -> None:
    await env.event("wake.wait", "tim")
    run = await _parked(env, "it-wake-wait")

    async def completed() -> bool:
        return (await env.runs("it-wake-wait"))[0]["status"] == "completed"

    await env.until(completed)
    [after] = await env.runs("it-wake-wait")
    assert after["context"].get("wait") is None
    assert not after["context"].get("pending")
    logs = await env.rows(
        "SELECT action, step, detail FROM journey_logs WHERE journey_state_id = :s"
        " AND action IN ('wait_for_event', 'log') ORDER BY id",
        s=run["id"],
    )
    assert [(r["action"], r["step"]) for r in logs] == [
        ("wait_for_event", "1:wait_for_event:wake.event"),
        ("log", "2:log"),
    ]
    assert logs[0]["detail"]["outcome"] == "timeout"
    assert logs[1]["detail"]["got"] is None
    steps = await _steps(env, run["workflow_id"])
    assert steps[steps.index("journey.park") + 1] == "journey.woke"
    assert "journey.move 1:wait_for_event:wake.event" not in steps[steps.index("journey.park") :]
    assert _subjects(env.sink) == ["Try it"]


async def test_a_resumed_run_reads_its_recorded_steps_in_one_check(env: Env) -> None:
    await env.event("wake.sleep", "rep")
    run = await _parked(env, "it-wake-sleep")
    recorded = replay.installed()  # by the run's first execution
    assert recorded is not None
    before_park = await _steps_at_park(env, run["workflow_id"])
    served, new = recorded.served, recorded.new
    checked: list[int] = []
    original = recorded.check

    def counting(workflow_id: str, function_id: int, *args: Any, **kwargs: Any) -> Any:
        if workflow_id == run["workflow_id"]:
            checked.append(function_id)
        return original(workflow_id, function_id, *args, **kwargs)

    recorded.check = counting
    statements: list[str] = []

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        statements.append(sql)

    event.listen(Engine, "before_cursor_execute", statement)

    async def completed() -> bool:
        return (await env.runs("it-wake-sleep"))[0]["status"] == "completed"

    try:
        await env.until(completed)
    finally:
        recorded.check = original
        event.remove(Engine, "before_cursor_execute", statement)
    # A replay goes on without the begin statement (its first execution began the run).
    assert any("INSERT INTO journey_logs" in sql for sql in statements)
    assert not any("current_step = 'start'" in sql for sql in statements)
    # The replay read every record as it began: each recorded step was answered from
    # memory, and so was each new one (no step checked against the database), and
    # nothing is left held once the body returned. The woke step was recorded by the
    # waker as it resumed the run (hogsend.runtime.due_wake): a recorded step too.
    steps = await _steps(env, run["workflow_id"])
    assert steps[len(before_park)] == "journey.woke"
    assert recorded.served - served == len(before_park) + 1
    assert recorded.new - new == len(steps) - len(before_park) - 1
    assert checked == []
    assert run["workflow_id"] not in recorded._records
    assert steps[: len(before_park)] == before_park
    assert _subjects(env.sink) == ["Try it"]


async def test_a_resumed_run_replays_its_recorded_steps_without_dbos_step_calls(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    await env.event("wake.sleep", "fast")
    run = await _parked(env, "it-wake-sleep")
    before_park = await _steps_at_park(env, run["workflow_id"])
    called: list[str] = []
    original = DBOS.run_step_async

    async def counting(options: Any, func: Any, *args: Any, **kwargs: Any) -> Any:
        if DBOS.workflow_id == run["workflow_id"]:
            called.append(options["name"])
        return await original(options, func, *args, **kwargs)

    monkeypatch.setattr(DBOS, "run_step_async", staticmethod(counting))

    async def completed() -> bool:
        return (await env.runs("it-wake-sleep"))[0]["status"] == "completed"

    await env.until(completed)
    steps = await _steps(env, run["workflow_id"])
    # The recorded steps (those before the park, and the waker's journey.woke) were
    # answered from the run's records; only the new ones ran through DBOS, once each.
    assert steps[: len(before_park)] == before_park
    assert steps[len(before_park)] == "journey.woke"
    new = [s for s in steps[len(before_park) + 1 :] if s.startswith("journey.")]
    assert new
    assert called == new
    assert _subjects(env.sink) == ["Try it"]
