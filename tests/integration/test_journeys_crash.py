"""A worker SIGKILLed mid-sleep, mid-wait and mid-send: a restarted worker finishes each
run, and every step's side effect (a message in the SMTP sink) happens exactly once."""

from __future__ import annotations

import asyncio
import signal
import textwrap
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from journey_processes import (
    HoldingSink,
    holding_sink,
    kill_worker,
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


    @define_journey(id="crash-welcome", name="Crash", trigger="crash.signed_up")
    async def crash_welcome(contact, ctx):
        await ctx.send_email(template="welcome")
        await ctx.sleep(timedelta(seconds=4))
        await ctx.send_email(template="nudge")


    @define_journey(id="crash-wait", name="Crash wait", trigger="crash.waits")
    async def crash_wait(contact, ctx):
        await ctx.send_email(template="welcome")
        got = await ctx.wait_for_event("crash.used", timeout=timedelta(seconds=90))
        if got is not None:
            await ctx.send_email(template="nudge")


    @define_journey(id="crash-send", name="Crash send", trigger="crash.sends")
    async def crash_send(contact, ctx):
        await ctx.send_email(template="nudge")
        await ctx.log("after the send")


    app = Hogsend(journeys=[crash_welcome, crash_wait, crash_send], templates=sys.argv[1])
    asyncio.run(Worker(app, load_settings()).run())
    """
)


@dataclass
class Crash:
    sink: HoldingSink
    engine: AsyncEngine
    client: httpx.AsyncClient
    key: str
    script: Path
    templates: Path
    database_url: str
    port: int
    log: Path

    async def start(self) -> asyncio.subprocess.Process:
        return await start_worker(
            self.script, [str(self.templates)], self.database_url, self.port, log=self.log
        )

    async def run(self, journey: str) -> dict[str, Any] | None:
        found = await rows(
            self.engine, "SELECT * FROM journey_states WHERE journey_id = :j", j=journey
        )
        return found[0] if found else None

    async def status_is(self, journey: str, status: str) -> bool:
        found = await self.run(journey)
        return found is not None and found["status"] == status


@pytest.fixture
def sink() -> Iterator[tuple[HoldingSink, int]]:
    yield from holding_sink()


@pytest.fixture
async def crash(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[HoldingSink, int],
    mint_key: Callable[..., Any],
) -> AsyncIterator[Crash]:
    handler, port = sink
    script = tmp_path / "crash_worker.py"
    script.write_text(WORKER)
    api = create_api(Hogsend(), settings_for(database_url, port), engine=engine)
    key = await mint_key("ingest")
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield Crash(
            handler,
            engine,
            client,
            key,
            script,
            templates(tmp_path / "templates"),
            database_url,
            port,
            tmp_path / "worker.log",
        )
    await api.state.driver_pool.close()


async def _decisions(engine: AsyncEngine) -> list[str]:
    found = await rows(engine, "SELECT decision FROM email_sends ORDER BY created_at")
    return [r["decision"] for r in found]


async def test_sigkill_mid_sleep_then_restart_completes_the_run_without_resending(
    crash: Crash,
) -> None:
    first = await crash.start()
    try:
        await post_event(crash.client, crash.key, "crash.signed_up", "kim")
        await until(lambda: crash.status_is("crash-welcome", "waiting"))
        assert subjects(crash.sink) == ["Welcome"]
    finally:
        await kill_worker(first)
    assert first.returncode == -signal.SIGKILL

    second = await crash.start()
    try:
        await until(lambda: crash.status_is("crash-welcome", "completed"))
    finally:
        await stop_worker(second)
    assert subjects(crash.sink) == ["Welcome", "Try it"]
    assert await _decisions(crash.engine) == ["sent", "sent"]


async def test_sigkill_mid_wait_the_event_arrives_while_down_and_the_restart_delivers_it(
    crash: Crash,
) -> None:
    first = await crash.start()
    try:
        await post_event(crash.client, crash.key, "crash.waits", "lou")

        async def waiting() -> bool:
            found = await crash.run("crash-wait")
            return found is not None and found["waiting_for_event"] == "crash.used"

        await until(waiting)
        assert subjects(crash.sink) == ["Welcome"]
    finally:
        await kill_worker(first)
    assert first.returncode == -signal.SIGKILL
    # Stored while no worker runs: the restarted worker's dispatcher delivers it to the
    # recovered run's wait.
    await post_event(crash.client, crash.key, "crash.used", "lou")

    second = await crash.start()
    try:
        await until(lambda: crash.status_is("crash-wait", "completed"))
    finally:
        await stop_worker(second)
    assert subjects(crash.sink) == ["Welcome", "Try it"]
    assert await _decisions(crash.engine) == ["sent", "sent"]
    run = await crash.run("crash-wait")
    assert run is not None
    [wait] = await rows(
        crash.engine,
        "SELECT detail FROM journey_logs WHERE journey_state_id = :s AND action = 'wait_for_event'",
        s=run["id"],
    )
    assert wait["detail"]["outcome"] == "event"


async def test_sigkill_mid_send_then_restart_sends_the_message_once(crash: Crash) -> None:
    crash.sink.hold_subject = "Try it"
    first = await crash.start()
    try:
        await post_event(crash.client, crash.key, "crash.sends", "mia")

        async def in_flight() -> bool:
            return crash.sink.arrived.is_set()

        await until(in_flight)
        # The provider call is out; the attempt's row says queued, its step is unrecorded.
        assert await _decisions(crash.engine) == ["queued"]
    finally:
        await kill_worker(first)
    assert first.returncode == -signal.SIGKILL
    crash.sink.release.set()  # the server never queued the copy the dead worker sent

    second = await crash.start()
    try:
        await until(lambda: crash.status_is("crash-send", "completed"))
    finally:
        await stop_worker(second)
    assert subjects(crash.sink) == ["Try it"]
    # The interrupted attempt is closed as such; the recovered step sent with the same key.
    assert await _decisions(crash.engine) == ["provider_error", "sent"]
    [interrupted] = await rows(
        crash.engine, "SELECT decision_detail FROM email_sends WHERE decision = 'provider_error'"
    )
    assert interrupted["decision_detail"]["interrupted"] is True
    run = await crash.run("crash-send")
    assert run is not None
    actions = await rows(
        crash.engine,
        "SELECT action FROM journey_logs WHERE journey_state_id = :s ORDER BY id",
        s=run["id"],
    )
    assert [a["action"] for a in actions] == ["enrolled", "send_email", "log", "completed"]
