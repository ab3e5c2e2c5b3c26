"""The courier delivering hand-offs: woken by NOTIFY in a real worker, SIGKILLed mid-send,
a template gone by delivery time, a delivery failing in an unexpected way."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from test_emails_api import Env, _env, bearer, send_rows

from hogsend.channels.email import OutgoingEmail, ProviderResult
from hogsend.channels.mailer import Mailer
from hogsend.runtime.courier import Courier
from hogsend.runtime.worker import Worker
from mail_sink import Sink

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def env(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[Env]:
    async for built in _env(tmp_path, engine, database_url, sink):
        yield built


RESET = {"to": "kill@example.com", "template": "password-reset", "props": {"link": "https://x"}}


async def until(predicate: Callable[[], bool], seconds: float = 20.0) -> None:
    """Wait (polling) until ``predicate()`` holds or ``seconds`` pass."""
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)


async def queue_reset(env: Env, key: str, headers: dict[str, str] | None = None) -> str:
    response = await env.client.post(
        "/v1/emails", json=RESET, headers=bearer(key) | (headers or {})
    )
    assert response.json()["status"] == "queued", response.text
    return str(response.json()["emailSendId"])


async def test_a_worker_delivers_a_hand_off_when_notified(
    env: Env, database_url: str, ingest_key: str
) -> None:
    # A poll far longer than the test: only the hand-off's NOTIFY can wake the courier.
    settings = env.settings.model_copy(
        update={"email_queue_poll_seconds": 300, "worker_id": "courier-worker"}
    )
    worker = Worker(env.app, settings)
    await worker.start()
    try:
        courier = worker.courier
        assert courier is not None
        await until(lambda: courier.listening)
        await queue_reset(env, ingest_key)
        await until(lambda: bool(env.sink.messages))
    finally:
        await worker.stop()
    assert [m["To"] for m in env.sink.messages] == ["kill@example.com"]
    [row] = await send_rows(env.engine)
    assert row["decision"] == "sent"
    assert row["handoff"] is None


KILLED_COURIER = textwrap.dedent(
    """
    import asyncio, os, signal, sys

    from hogsend import Hogsend
    from hogsend.channels.email import SmtpProvider
    from hogsend.channels.mailer import Mailer
    from hogsend.db.engine import make_async_engine
    from hogsend.runtime.courier import Courier
    from hogsend.settings import Settings

    url, port, templates = sys.argv[1], int(sys.argv[2]), sys.argv[3]


    class DiesAfterAccept:
        name = "smtp"

        def __init__(self, inner):
            self.inner = inner

        async def send(self, message):
            result = await self.inner.send(message)
            os.kill(os.getpid(), signal.SIGKILL)  # accepted, not yet recorded
            return result

        async def aclose(self):
            await self.inner.aclose()


    async def main():
        engine = make_async_engine(url)
        provider = DiesAfterAccept(SmtpProvider(host="127.0.0.1", port=port, tls="none"))
        mailer = Mailer(Hogsend(templates=templates), Settings(env="test", database_url=url),
                        engine, provider)
        await Courier(mailer, poll_seconds=0.1, concurrency=1, listen=False).run_once()


    asyncio.run(main())
    """
)


async def test_sigkill_between_provider_accept_and_record_resends_with_the_same_key(
    env: Env, ingest_key: str, database_url: str, tmp_path: Path
) -> None:
    send_id = await queue_reset(env, ingest_key, {"Idempotency-Key": "receipt-order-9"})
    script = tmp_path / "killed_courier.py"
    script.write_text(KILLED_COURIER)
    port = env.settings.smtp_port
    assert env.app.templates is not None
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        database_url,
        str(port),
        str(env.app.templates.directory),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == -9, output.decode()
    assert len(env.sink.messages) == 1  # the provider had it
    [row] = await send_rows(env.engine)
    assert row["decision"] == "queued"  # but the row never heard
    assert row["handoff"] is not None
    assert row["idempotency_key"] == "receipt-order-9"

    # a repeat meanwhile is a duplicate of the waiting send, not a second one
    again = await env.client.post(
        "/v1/emails",
        json=RESET,
        headers=bearer(ingest_key) | {"Idempotency-Key": "receipt-order-9"},
    )
    assert again.json()["emailSendId"] == send_id
    assert again.json()["duplicate"] is True

    # the next courier round delivers again, with the same key: at least once
    assert await env.deliver() == 1
    first, second = env.sink.messages
    assert first["Message-ID"] == second["Message-ID"]  # one message to de-duplicating MTAs
    rows = {str(r["id"]): r for r in await send_rows(env.engine)}
    assert rows[send_id]["decision"] == "sent"
    assert rows[send_id]["idempotency_key"] == "receipt-order-9"
    assert await env.deliver() == 0


async def test_a_template_gone_by_delivery_time_is_a_render_error(
    env: Env, ingest_key: str
) -> None:
    await queue_reset(env, ingest_key)
    assert env.app.templates is not None
    (env.app.templates.directory / "password-reset.html").unlink()
    env.app.templates.refresh()
    assert await env.deliver() == 1  # handled: recorded, not retried
    [row] = await send_rows(env.engine)
    assert row["decision"] == "provider_error"
    assert row["decision_detail"]["stage"] == "render"
    assert row["handoff"] is None
    assert env.sink.messages == []
    assert await env.deliver() == 0


class Exploding:
    """A provider failing in a way no provider should (a bug): not a ProviderError."""

    name = "exploding"

    def __init__(self) -> None:
        self.calls = 0

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        self.calls += 1
        raise RuntimeError("bug in a provider")

    async def aclose(self) -> None:
        return None


async def test_an_unexpected_failure_is_held_back_and_kept_waiting(
    env: Env, ingest_key: str, caplog: Any
) -> None:
    await queue_reset(env, ingest_key)
    provider = Exploding()
    courier = Courier(
        Mailer(env.app, env.settings, env.engine, provider),
        poll_seconds=60,
        concurrency=2,
        listen=False,
    )
    assert await courier.run_once() == 0
    assert await courier.run_once() == 0  # held back: not tried again at once
    assert provider.calls == 1
    [row] = await send_rows(env.engine)
    assert row["decision"] == "queued"
    assert row["handoff"] is not None  # still waiting: another worker (or later) delivers it
    assert await env.deliver() == 1
    assert len(env.sink.messages) == 1
