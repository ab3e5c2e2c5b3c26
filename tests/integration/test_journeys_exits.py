"""An exit at every await point of a journey: nothing happens after it, the run ends
``exited`` with the reason, and the completion that follows never overwrites it.

Each journey below exits itself right before one of its operations, the way an admin
cancel committed at that instant does (the row is marked ``exited``; the exit sweep
signals the workflow). Another test exits a run while its send is in flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import pytest
from journey_processes import HoldingSink, holding_sink
from sqlalchemy.ext.asyncio import AsyncEngine
from test_journeys import Env, _env

from hogsend import Contact, JourneyContext, define_journey
from hogsend.core.definitions import JourneyDefinition
from hogsend.db.repos import journeys as journeys_repo
from hogsend.runtime.journeys import DurableJourneyContext

pytestmark = pytest.mark.timeout(180)

# Each point is "right before this operation"; "end" is after the last one.
POINTS = (
    "send_email",
    "sleep",
    "sleep_until",
    "wait_for_event",
    "enroll",
    "history",
    "log",
    "variant",
    "final_send",
    "end",
)
# What each operation leaves in the step log when it runs (history reads log nothing).
LOGGED = {
    "send_email": "send_email",
    "sleep": "sleep",
    "sleep_until": "sleep",
    "wait_for_event": "wait_for_event",
    "enroll": "enroll",
    "log": "log",
    "variant": "variant",
    "final_send": "send_email",
}


async def _exit_now(ctx: DurableJourneyContext) -> None:
    async with ctx.runtime.sessions() as session, session.begin():
        await journeys_repo.exit_runs(session, reason="admin", state_ids=[ctx.state_id])


def _exiting_at(point: str) -> JourneyDefinition:
    @define_journey(
        id=f"exit-at-{point.replace('_', '-')}",
        name=f"Exit at {point}",
        trigger=f"exit.{point}",
        entry_limit="unlimited",
    )
    async def body(contact: Contact, ctx: JourneyContext) -> None:
        durable = cast(DurableJourneyContext, ctx)

        async def here(name: str) -> None:
            if name == point:

                async def exit_now() -> None:
                    await _exit_now(durable)

                await durable.step("test.exit", exit_now)

        await here("send_email")
        await ctx.send_email(template="welcome")
        await here("sleep")
        await ctx.sleep(timedelta(milliseconds=100))
        await here("sleep_until")
        await ctx.sleep_until(ctx.now() + timedelta(milliseconds=100))
        await here("wait_for_event")
        await ctx.wait_for_event("exit.never", timeout=timedelta(milliseconds=100))
        await here("enroll")
        await ctx.enroll("exit-target", contact)
        await here("history")
        await ctx.history.count("exit.anything")
        await here("log")
        await ctx.log("logged")
        await here("variant")
        await ctx.variant("exit-test", ["a", "b"])
        await here("final_send")
        await ctx.send_email(template="nudge")
        await here("end")

    return body


@define_journey(id="exit-target", name="Target", trigger="exit.target", entry_limit="unlimited")
async def target(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.log("enrolled by another journey")


@define_journey(id="exit-mid-send", name="Mid send", trigger="exit.mid_send")
async def mid_send(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="welcome")
    await ctx.send_email(template="nudge")


@pytest.fixture
def sink() -> Iterator[tuple[HoldingSink, int]]:
    yield from holding_sink()


@pytest.fixture
async def env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[HoldingSink, int],
    mint_key: Callable[..., Any],
) -> AsyncIterator[Env]:
    journeys = [_exiting_at(p) for p in POINTS] + [target, mid_send]
    async for built in _env(tmp_path, engine, database_url, sink, mint_key, journeys):  # type: ignore[arg-type]
        yield built


def _sent_to(env: Env, user: str) -> list[str]:
    return [
        str(m["Subject"])
        for m in env.sink.messages
        if f"{user}@example.com" in str(m["X-Test-Envelope-To"])
    ]


async def test_an_exit_before_each_await_point_stops_the_run_there(env: Env) -> None:
    for point in POINTS:
        await env.event(f"exit.{point}", f"u-{point}")

    async def all_ended() -> list[dict[str, Any]]:
        runs = await env.rows(
            "SELECT * FROM journey_states WHERE journey_id LIKE 'exit-at-%'"
            " AND status NOT IN ('enrolled','active','waiting')"
        )
        return runs if len(runs) == len(POINTS) else []

    runs = {r["user_id"]: r for r in await env.until(all_ended, seconds=60)}
    # Every workflow ended (none hangs in a wait), then nothing more may happen.
    await env.until(
        lambda: _all_workflows_ended(env, [r["workflow_id"] for r in runs.values()]),
        seconds=30,
    )
    await asyncio.sleep(0.5)
    for index, point in enumerate(POINTS):
        run = runs[f"u-{point}"]
        assert (point, run["status"], run["exit_reason"]) == (point, "exited", "admin")
        done = POINTS[:index]
        expected_mail = (["Welcome"] if "send_email" in done else []) + (
            ["Try it"] if "final_send" in done else []
        )
        assert _sent_to(env, f"u-{point}") == expected_mail, point
        log = await env.rows(
            "SELECT action FROM journey_logs WHERE journey_state_id = :s ORDER BY id",
            s=run["id"],
        )
        actions = [r["action"] for r in log]
        expected = ["enrolled", *(LOGGED[p] for p in done if p in LOGGED), "exited"]
        assert actions == expected, point
        enrolled_target = await env.rows(
            "SELECT 1 FROM journey_states WHERE journey_id = 'exit-target' AND contact_id = :c",
            c=run["contact_id"],
        )
        assert bool(enrolled_target) == ("enroll" in done), point
        sends = await env.rows(
            "SELECT created_at FROM email_sends WHERE journey_state_id = :s", s=run["id"]
        )
        assert all(s["created_at"] <= run["exited_at"] for s in sends), point


async def _all_workflows_ended(env: Env, workflow_ids: list[str]) -> bool:
    found = await env.rows(
        "SELECT status FROM dbos.workflow_status WHERE workflow_uuid = ANY(:w)", w=workflow_ids
    )
    return len(found) == len(workflow_ids) and all(r["status"] == "SUCCESS" for r in found)


async def test_an_exit_during_a_send_waits_for_it_and_nothing_follows(env: Env) -> None:
    sink = cast(HoldingSink, env.sink)
    sink.hold_subject = "Welcome"
    await env.event("exit.mid_send", "sam")

    async def in_flight() -> bool:
        return sink.arrived.is_set()

    await env.until(in_flight)
    [run] = await env.runs("exit-mid-send")
    cancel = asyncio.create_task(
        env.client.post(
            f"/v1/admin/journeys/runs/{run['id']}/cancel",
            headers={"Authorization": f"Bearer {env.key}"},
        )
    )
    await asyncio.sleep(0.5)
    # The send holds the run's row: the cancel waits for the send to finish.
    assert not cancel.done()
    sink.release.set()  # the held copy is refused (451); the mailer's retry goes through
    response = await asyncio.wait_for(cancel, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "exited"
    await env.until(lambda: _all_workflows_ended(env, [run["workflow_id"]]), seconds=15)
    await asyncio.sleep(0.3)
    assert _sent_to(env, "sam") == ["Welcome"]  # the send in flight counts; no nudge
    [after] = await env.runs("exit-mid-send")
    assert (after["status"], after["exit_reason"]) == ("exited", "admin")
