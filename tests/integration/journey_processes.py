"""Shared pieces of the tests that run journeys in real worker processes and kill them.

A worker is ``python <script> <templates> [args...]`` with its settings in the
environment; the test process serves the API (ASGI, in-process) and the SMTP sink.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from aiosmtpd.controller import Controller
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from mail_sink import Sink, free_port


@dataclass
class HoldingSink(Sink):
    """A sink that can hold the first message with subject ``hold_subject`` in DATA.

    While held, the sender is mid-send (the message is out, no answer yet). Released,
    the sink refuses it with a 451 (it was never queued), as a server does that loses
    the client before it accepted the message; later copies are accepted.
    """

    hold_subject: str | None = None
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        if self.hold_subject is not None and not self.arrived.is_set():
            parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
            if str(parsed["Subject"]) == self.hold_subject:
                self.arrived.set()
                # Set by the test's thread: wait for it off the sink's event loop.
                await asyncio.to_thread(self.release.wait, 120)
                return "451 4.3.0 the client went away before the message was queued"
        return await super().handle_DATA(server, session, envelope)


def holding_sink() -> Iterator[tuple[HoldingSink, int]]:
    """A :class:`HoldingSink` on a free port while the generator is alive."""
    handler = HoldingSink()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        handler.release.set()
        controller.stop()


def templates(directory: Path) -> Path:
    """The two templates every worker script sends."""
    directory.mkdir()
    (directory / "welcome.html").write_text("{#---\nsubject: Welcome\n---#}\n<p>Hi</p>\n")
    (directory / "nudge.html").write_text("{#---\nsubject: Try it\n---#}\n<p>Nudge</p>\n")
    return directory


async def start_worker(
    script: Path,
    args: list[str],
    database_url: str,
    port: int,
    *,
    worker_id: str = "crash-worker",
    log: Path | None = None,
    **env: str,
) -> asyncio.subprocess.Process:
    """Start ``script`` as a worker process (stderr into ``log`` when given)."""
    environment = {
        **os.environ,
        "HOGSEND_ENV": "test",
        "HOGSEND_DATABASE_URL": database_url,
        "HOGSEND_WORKER_ID": worker_id,
        "HOGSEND_EMAIL_PROVIDER": "smtp",
        "HOGSEND_SMTP_HOST": "127.0.0.1",
        "HOGSEND_SMTP_PORT": str(port),
        "HOGSEND_SMTP_TLS": "none",
        "HOGSEND_MAILER_RETRY_BASE_SECONDS": "0",
        "HOGSEND_DISPATCHER_POLL_SECONDS": "0.05",
        "HOGSEND_SECRET_KEY": "x" * 40,
        **env,
    }
    stderr = log.open("ab") if log is not None else None
    try:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            str(script),
            *args,
            env=environment,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr if stderr is not None else asyncio.subprocess.DEVNULL,
        )
    finally:
        if stderr is not None:
            stderr.close()


async def stop_worker(process: asyncio.subprocess.Process) -> None:
    """SIGTERM and wait (a graceful stop); SIGKILL if it hangs."""
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), timeout=60)
    except TimeoutError:
        process.kill()
        await process.wait()


async def kill_worker(process: asyncio.subprocess.Process) -> None:
    """SIGKILL: no cleanup of any kind runs in the worker."""
    if process.returncode is not None:
        return
    process.kill()
    await process.wait()


async def until(check: Callable[[], Any], seconds: float = 180.0) -> Any:
    """Poll ``check`` (async) every 0.1 s until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {seconds} s waiting for {check}")


async def post_event(
    client: httpx.AsyncClient, key: str, name: str, user: str, **properties: Any
) -> str:
    """``POST /v1/events`` for ``user``; returns the event id."""
    response = await client.post(
        "/v1/events",
        json={
            "name": name,
            "userId": user,
            "email": f"{user}@example.com",
            "eventProperties": properties,
        },
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 202, response.text
    return str(response.json()["eventId"])


async def rows(engine: AsyncEngine, sql: str, **params: Any) -> list[dict[str, Any]]:
    """Every row of ``sql`` as a dict."""
    async with engine.connect() as conn:
        result = await conn.execute(text(sql), params)
        return [dict(r._mapping) for r in result]


def subjects(sink: Sink, to: str | None = None) -> list[str]:
    """Subjects the sink accepted, in order (only those to ``to`` when given)."""
    return [
        str(m["Subject"]) for m in sink.messages if to is None or to in str(m["X-Test-Envelope-To"])
    ]
