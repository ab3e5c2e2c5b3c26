"""Parking: a run waiting longer than the threshold holds no coroutine; it is resumed
when due (sleep), when its event comes (wait), and nothing is sent twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from test_journeys import Env, _env, _subjects

from hogsend import Contact, JourneyContext, define_journey
from mail_sink import Sink

pytestmark = pytest.mark.timeout(120)


@define_journey(id="it-parked", name="Parked", trigger="park.me", entry_limit="unlimited")
async def parked(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="welcome")
    await ctx.sleep(timedelta(seconds=3))
    got = await ctx.wait_for_event("park.event", timeout=timedelta(seconds=30))
    await ctx.log("woke", got=None if got is None else got.properties.get("n"))
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
        [parked],
        journey_park_after_seconds=1.0,
    ):
        yield built


def _live_workflow_tasks() -> int:
    # DBOS runs each async workflow (ours and its own internal ones) in such a task.
    return sum(
        1
        for task in asyncio.all_tasks()
        if "_execute_workflow_async" in repr(task.get_coro()) and not task.done()
    )


async def test_a_parked_sleep_and_a_parked_wait_hold_no_task_and_resume(env: Env) -> None:
    baseline = _live_workflow_tasks()
    await env.event("park.me", "pam")

    async def is_parked() -> dict[str, Any] | None:
        runs = await env.runs("it-parked")
        if runs and runs[0]["status"] == "waiting" and runs[0]["context"].get("parked"):
            return runs[0]
        return None

    run = await env.until(is_parked)
    assert run["current_step"] == "2:sleep"
    await asyncio.sleep(0.3)
    assert _live_workflow_tasks() == baseline
    [status] = await env.rows(
        "SELECT status FROM dbos.workflow_status WHERE workflow_uuid = :w", w=run["workflow_id"]
    )
    assert status["status"] == "CANCELLED"  # parked; journey_states says waiting

    # Due after 3 s: the waker resumes it; it then parks again in the 30 s wait.
    async def parked_in_wait() -> dict[str, Any] | None:
        found = await is_parked()
        return found if found and found["waiting_for_event"] == "park.event" else None

    run = await env.until(parked_in_wait)
    await asyncio.sleep(0.3)
    assert _live_workflow_tasks() == baseline
    assert _subjects(env.sink) == ["Welcome"]  # the replay did not send again

    # A run that is not parked does hold a task (the count above can see it). Both runs
    # below hold theirs only while they send (then pam completes and pat parks in its
    # sleep at once), a few milliseconds: look on every turn of the loop, not every
    # 0.1 s as env.until does.
    running_again = asyncio.Event()

    async def watch() -> None:
        while not running_again.is_set():
            if _live_workflow_tasks() > baseline:
                running_again.set()
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    try:
        await env.event("park.event", "pam", n=7)
        await env.event("park.me", "pat")
        await asyncio.wait_for(running_again.wait(), timeout=30)
    finally:
        watcher.cancel()

    async def completed() -> bool:
        runs = await env.runs("it-parked")
        return [r["status"] for r in runs if r["user_id"] == "pam"] == ["completed"]

    await env.until(completed)

    # pat's run holds a task, but its welcome may still be on its way to the sink.
    async def three_received() -> bool:
        return len(env.sink.messages) >= 3

    await env.until(three_received)
    await asyncio.sleep(0.3)  # a fourth (a duplicate) would land in this window too
    recipients = sorted((str(m["To"]), str(m["Subject"])) for m in env.sink.messages)
    assert recipients == [
        ("pam@example.com", "Try it"),
        ("pam@example.com", "Welcome"),
        ("pat@example.com", "Welcome"),
    ]
    [woke] = await env.rows(
        "SELECT detail FROM journey_logs WHERE journey_state_id = :s AND action = 'log'",
        s=run["id"],
    )
    assert woke["detail"]["got"] == 7
