"""The waker's set-based wake (hogsend.runtime.due_wake): a due group's waits are closed,
their ``journey.woke`` steps recorded and their workflows resumed in the claim's
transaction, all or nothing; a run it cannot wake that way still wakes through DBOS.

The claims here use a clock two hours ahead, so a run sleeping one hour is due for them
and not for the worker's own waker (which reads the real clock).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_journeys import Env, _env

from hogsend import Contact, JourneyContext, define_journey
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import journeys as repo
from hogsend.runtime import due_wake
from hogsend.runtime.queues import JOURNEYS
from mail_sink import Sink

pytestmark = pytest.mark.timeout(120)


@define_journey(id="it-due-hour", name="Due hour", trigger="due.hour", entry_limit="unlimited")
async def due_hour(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.sleep(timedelta(hours=1))
    await ctx.log("after", at=ctx.now().isoformat())


@define_journey(id="it-due-wait", name="Due wait", trigger="due.wait", entry_limit="unlimited")
async def due_wait(contact: Contact, ctx: JourneyContext) -> None:
    got = await ctx.wait_for_event("due.never", timeout=timedelta(hours=1))
    await ctx.log("after", got=got is not None)


@define_journey(id="it-due-short", name="Due short", trigger="due.short", entry_limit="unlimited")
async def due_short(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.sleep(timedelta(seconds=3))
    await ctx.log("after")


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
        [due_hour, due_wait, due_short],
        journey_park_after_seconds=1.0,
    ):
        yield built


async def _parked(env: Env, journey: str, count: int) -> list[dict[str, Any]]:
    async def parked() -> list[dict[str, Any]] | None:
        runs = await env.runs(journey)
        ready = [r for r in runs if r["status"] == "waiting" and r["context"].get("parked")]
        return ready if len(ready) == count else None

    runs: list[dict[str, Any]] = await env.until(parked)
    return runs


async def _steps(env: Env, workflow_id: str) -> list[tuple[int, str]]:
    rows = await env.rows(
        "SELECT function_id, function_name FROM dbos.operation_outputs WHERE workflow_uuid = :w"
        " ORDER BY function_id",
        w=workflow_id,
    )
    return [(r["function_id"], r["function_name"]) for r in rows]


async def _dbos_status(env: Env, workflow_id: str) -> str:
    [row] = await env.rows(
        "SELECT status FROM dbos.workflow_status WHERE workflow_uuid = :w", w=workflow_id
    )
    return str(row["status"])


async def _wake_round(env: Env, now: datetime, *, commit: bool) -> list[str]:
    """One round of what ParkWaker does, at ``now``; returns what is left for DBOS."""
    waking = due_wake.install(JOURNEYS.name)
    assert waking is not None
    sessions = make_sessionmaker(env.engine)
    async with sessions() as session:
        await session.begin()
        due = await repo.claim_due_parked(session, now=now)
        assert due
        rest = await waking.wake(session, due, now)
        if commit:
            await session.commit()
        else:
            await session.rollback()
    return rest


async def test_a_due_group_is_woken_in_one_transaction_or_not_at_all(env: Env) -> None:
    for user in ("ga", "gb"):
        await env.event("due.hour", user)
    await env.event("due.wait", "gc")
    runs = await _parked(env, "it-due-hour", 2) + await _parked(env, "it-due-wait", 1)
    before = {r["workflow_id"]: await _steps(env, r["workflow_id"]) for r in runs}
    for steps in before.values():
        assert steps[-1][1] == "journey.park"
    later = datetime.now(UTC) + timedelta(hours=2)

    # Rolled back after every write: the group stays parked, as a crash would leave it.
    assert await _wake_round(env, later, commit=False) == []
    for run in runs:
        [row] = await env.rows("SELECT * FROM journey_states WHERE id = :s", s=run["id"])
        assert row["status"] == "waiting"
        assert row["context"]["parked"] is True
        assert row["context"]["wakeEnd"]["step"] == row["current_step"]
        assert await _steps(env, run["workflow_id"]) == before[run["workflow_id"]]
        assert await _dbos_status(env, run["workflow_id"]) == "CANCELLED"
    woken = due_wake.install(JOURNEYS.name).woken  # type: ignore[union-attr]

    # Committed: every wait closed and logged, every woke step recorded right after the
    # park step, every workflow resumed; the runs replay it and go on once.
    assert await _wake_round(env, later, commit=True) == []
    assert due_wake.install(JOURNEYS.name).woken - woken == 3  # type: ignore[union-attr]

    async def completed() -> bool:
        states = [(await env.runs(j)) for j in ("it-due-hour", "it-due-wait")]
        return all(r["status"] == "completed" for rs in states for r in rs)

    await env.until(completed)
    for run in runs:
        steps = await _steps(env, run["workflow_id"])
        park_id = before[run["workflow_id"]][-1][0]
        assert (park_id + 1, "journey.woke") in steps
        logs = await env.rows(
            "SELECT action, step, detail, finished_at FROM journey_logs"
            " WHERE journey_state_id = :s AND action IN ('sleep', 'wait_for_event', 'log')"
            " ORDER BY id",
            s=run["id"],
        )
        assert [r["action"] for r in logs] in (["sleep", "log"], ["wait_for_event", "log"])
        assert logs[0]["step"] == run["current_step"]
        # The wait ended at the waker's clock, which the body's ctx.now() reads too.
        assert logs[0]["finished_at"] == later
        if logs[0]["action"] == "sleep":
            assert logs[0]["detail"] == {"until": run["next_wake_at"].isoformat()}
            assert logs[1]["detail"]["at"] == later.isoformat()
        else:
            assert logs[0]["detail"]["outcome"] == "timeout"
            assert logs[1]["detail"]["got"] is False
        [after] = await env.rows("SELECT context FROM journey_states WHERE id = :s", s=run["id"])
        assert "parked" not in after["context"]
        assert "wakeEnd" not in after["context"]


async def test_a_run_parked_without_its_wait_end_wakes_through_dbos(env: Env) -> None:
    await env.event("due.short", "old")
    [run] = await _parked(env, "it-due-short", 1)
    # As a run parked by older code: no wakeEnd in its row.
    async with env.engine.begin() as conn:
        await conn.execute(
            text("UPDATE journey_states SET context = context - 'wakeEnd' WHERE id = :s"),
            {"s": run["id"]},
        )
    waking = due_wake.install(JOURNEYS.name)
    assert waking is not None
    woken = waking.woken

    async def completed() -> bool:
        return (await env.runs("it-due-short"))[0]["status"] == "completed"

    await env.until(completed)
    # The worker's own waker left it to DBOS's resume; its body closed the wait.
    assert waking.woken == woken
    names = [name for _, name in await _steps(env, run["workflow_id"])]
    assert names[names.index("journey.park") + 1] == "journey.woke"
    logs = await env.rows(
        "SELECT action FROM journey_logs WHERE journey_state_id = :s"
        " AND action IN ('sleep', 'log') ORDER BY id",
        s=run["id"],
    )
    assert [r["action"] for r in logs] == ["sleep", "log"]


async def test_a_short_sleep_is_woken_by_the_worker_set_based(env: Env) -> None:
    waking = due_wake.install(JOURNEYS.name)
    assert waking is not None
    woken = waking.woken
    await env.event("due.short", "new")
    [run] = await _parked(env, "it-due-short", 1)

    async def completed() -> bool:
        return (await env.runs("it-due-short"))[0]["status"] == "completed"

    await env.until(completed)
    assert waking.woken - woken == 1
    logs = await env.rows(
        "SELECT action FROM journey_logs WHERE journey_state_id = :s"
        " AND action IN ('sleep', 'log') ORDER BY id",
        s=run["id"],
    )
    assert [r["action"] for r in logs] == ["sleep", "log"]
