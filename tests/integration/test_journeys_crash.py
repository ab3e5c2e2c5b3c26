"""A worker SIGKILLed while a journey sleeps: a restarted worker finishes the run, and
the email sent before the kill is not sent again."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_emails_api import settings_for

from hogsend import Hogsend
from hogsend.api.app import create_api
from mail_sink import Sink, running_sink

pytestmark = pytest.mark.timeout(180)

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


    app = Hogsend(journeys=[crash_welcome], templates=sys.argv[1])
    asyncio.run(Worker(app, load_settings()).run())
    """
)


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    yield from running_sink()


def _templates(directory: Path) -> Path:
    directory.mkdir()
    (directory / "welcome.html").write_text("{#---\nsubject: Welcome\n---#}\n<p>Hi</p>\n")
    (directory / "nudge.html").write_text("{#---\nsubject: Try it\n---#}\n<p>Nudge</p>\n")
    return directory


async def _start_worker(
    script: Path, templates: Path, database_url: str, port: int
) -> asyncio.subprocess.Process:
    env = {
        **os.environ,
        "HOGSEND_ENV": "test",
        "HOGSEND_DATABASE_URL": database_url,
        "HOGSEND_WORKER_ID": "crash-worker",
        "HOGSEND_EMAIL_PROVIDER": "smtp",
        "HOGSEND_SMTP_HOST": "127.0.0.1",
        "HOGSEND_SMTP_PORT": str(port),
        "HOGSEND_SMTP_TLS": "none",
        "HOGSEND_DISPATCHER_POLL_SECONDS": "0.05",
        "HOGSEND_SECRET_KEY": "x" * 40,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(templates),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def _until(check: Callable[[], Any], seconds: float = 60.0) -> Any:
    for _ in range(int(seconds / 0.1)):
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {check}")


async def test_sigkill_mid_sleep_then_restart_completes_the_run_without_resending(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    mint_key: Callable[..., Any],
) -> None:
    handler, port = sink
    templates = _templates(tmp_path / "templates")
    script = tmp_path / "crash_worker.py"
    script.write_text(WORKER)
    settings = settings_for(database_url, port)
    api = create_api(Hogsend(), settings, engine=engine)
    key = await mint_key("ingest")

    async def run() -> dict[str, Any] | None:
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT * FROM journey_states WHERE journey_id = 'crash-welcome'")
                )
            ).first()
        return None if row is None else dict(row._mapping)

    first = await _start_worker(script, templates, database_url, port)
    try:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post(
                "/v1/events",
                json={"name": "crash.signed_up", "userId": "kim", "email": "kim@example.com"},
                headers={"Authorization": f"Bearer {key}"},
            )
            assert response.status_code == 202, response.text

        async def sleeping() -> bool:
            found = await run()
            return found is not None and found["status"] == "waiting"

        await _until(sleeping)
        assert [str(m["Subject"]) for m in handler.messages] == ["Welcome"]
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert first.returncode == -signal.SIGKILL

    second = await _start_worker(script, templates, database_url, port)
    try:

        async def completed() -> bool:
            found = await run()
            return found is not None and found["status"] == "completed"

        await _until(completed)
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), timeout=60)
    assert [str(m["Subject"]) for m in handler.messages] == ["Welcome", "Try it"]
    async with engine.connect() as conn:
        decisions = (
            await conn.execute(text("SELECT decision FROM email_sends ORDER BY created_at"))
        ).scalars()
        assert list(decisions) == ["sent", "sent"]
    await api.state.driver_pool.close()
