"""A sender SIGKILLed between the provider accepting a message and the commit of ``sent``.

The sender is a separate process running the real mailer against real Postgres and a
real provider endpoint served by this test process: an aiosmtpd sink, or a Resend
stand-in that treats ``Idempotency-Key`` as Resend documents it (same key and body:
the first answer again, nothing sent; same key, other body: 409
``invalid_idempotent_request``). The first run's provider is wrapped (in the child's own
script, not in hogsend) so that it writes a marker and hangs right after the provider
accepted; the test then SIGKILLs it, restarts the sender with the same idempotency key,
and looks at what arrived.

What this proves, and docs/email.md ("Delivery guarantees") promises:

* nothing is lost: the message arrives at least once;
* SMTP, which has no idempotency key, may deliver it twice — both copies carry the same
  ``Message-ID`` (derived from the key), so receivers can drop the repeat;
* Resend receives the key and delivers exactly once.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hogsend.db.engine import make_sync_engine
from live_server import live_server
from mail_sink import Sink

pytestmark = pytest.mark.timeout(180)

KEY = "order-1042:receipt"

SENDER = textwrap.dedent(
    """
    import asyncio
    import json
    import sys
    import uuid
    from pathlib import Path

    from hogsend import Hogsend
    from hogsend.channels.email import build_provider
    from hogsend.channels.mailer import Mailer, SendRequest
    from hogsend.db.engine import make_async_engine
    from hogsend.settings import Settings

    config = json.loads(sys.argv[1])


    class PauseAfterAccept:
        # The real provider; once it has accepted, say so and wait for the SIGKILL.

        def __init__(self, inner, marker):
            self.inner = inner
            self.name = inner.name
            self.marker = Path(marker)

        async def send(self, message):
            result = await self.inner.send(message)
            # Written aside and renamed: the test polls for the marker and reads it at once.
            partial = self.marker.with_suffix(".partial")
            partial.write_text(result.message_id)
            partial.replace(self.marker)
            await asyncio.sleep(3600)

        async def aclose(self):
            await self.inner.aclose()


    async def main():
        settings = Settings(env="test", secret_key="k" * 40, **config["settings"])
        engine = make_async_engine(settings.database_url)
        provider = build_provider(settings, engine)
        if config["pause_marker"]:
            provider = PauseAfterAccept(provider, config["pause_marker"])
        mailer = Mailer(Hogsend(templates=config["templates"]), settings, engine, provider)
        outcome = await mailer.send(
            SendRequest(
                template="receipt",
                contact_id=uuid.UUID(config["contact_id"]),
                props={"amount": "42.00"},
                idempotency_key=config["key"],
            )
        )
        print(json.dumps({"decision": outcome.decision, "send_id": str(outcome.send_id)}))
        await provider.aclose()
        await engine.dispose()


    asyncio.run(main())
    """
)


# --------------------------------------------------------------------------- providers


@dataclass
class ResendStandIn:
    """POST /emails with Idempotency-Key handled as Resend documents it."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    deliveries: list[dict[str, Any]] = field(default_factory=list)
    keys: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)

    async def emails(self, request: Request) -> JSONResponse:
        raw = await request.body()
        body = json.loads(raw)
        key = request.headers.get("idempotency-key")
        self.requests.append({"key": key, "body": body})
        digest = hashlib.sha256(raw).hexdigest()
        if key is not None and key in self.keys:
            seen_digest, answer = self.keys[key]
            if seen_digest == digest:
                return JSONResponse(answer)
            return JSONResponse(
                {
                    "name": "invalid_idempotent_request",
                    "message": "Same idempotency key used with a different request payload.",
                    "statusCode": 409,
                },
                status_code=409,
            )
        answer = {"id": f"re_{uuid.uuid4().hex}"}
        self.deliveries.append({"id": answer["id"], "body": body})
        if key is not None:
            self.keys[key] = (digest, answer)
        return JSONResponse(answer)


@pytest.fixture
def resend() -> Iterator[tuple[ResendStandIn, str]]:
    stand_in = ResendStandIn()
    app = Starlette(routes=[Route("/emails", stand_in.emails, methods=["POST"])])
    with live_server(app) as base:
        yield stand_in, base


# --------------------------------------------------------------------------- the sender


@dataclass
class Sender:
    """Runs the sender script in a subprocess, against one provider."""

    script: Path
    base: dict[str, Any]
    env: dict[str, str]
    cwd: Path

    def _config(self, marker: Path | None) -> str:
        return json.dumps({**self.base, "pause_marker": str(marker) if marker else None})

    def start_and_kill_after_accept(self, marker: Path) -> str:
        """Run until the provider accepted, SIGKILL it there; the provider's message id."""
        proc = subprocess.Popen(
            [sys.executable, str(self.script), self._config(marker)],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 60
            while not marker.exists():
                if proc.poll() is not None:
                    _, err = proc.communicate()
                    pytest.fail(f"the sender exited with {proc.returncode}:\n{err.decode()}")
                assert time.monotonic() < deadline, "the provider never accepted"
                time.sleep(0.02)
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(10) == -signal.SIGKILL
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        return marker.read_text()

    def run(self) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, str(self.script), self._config(None)],
            cwd=self.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


@pytest.fixture
def db(database_url: str) -> Iterator[Engine]:
    engine = make_sync_engine(database_url)
    yield engine
    engine.dispose()


def _prepare(db: Engine, tmp_path: Path) -> tuple[Path, Path, str]:
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "receipt.html").write_text(
        "{#---\nsubject: Your receipt\ncategory: transactional\n---#}\n"
        "<p>We received {{ amount }} EUR. Thank you!</p>\n"
    )
    script = tmp_path / "sender.py"
    script.write_text(SENDER)
    with db.begin() as conn:
        contact_id = conn.execute(
            text("INSERT INTO contacts (email) VALUES ('buyer@example.com') RETURNING id")
        ).scalar_one()
    return templates, script, str(contact_id)


def _rows(db: Engine) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT id, decision, status, idempotency_key, provider_message_id,"
                " decision_detail, last_error FROM email_sends ORDER BY created_at"
            )
        )
        return [dict(row._mapping) for row in rows]


def _sender(
    harness: Any, database_url: str, tmp_path: Path, db: Engine, settings: dict[str, Any]
) -> Sender:
    templates, script, contact_id = _prepare(db, tmp_path)
    base = {
        "settings": {"database_url": database_url, **settings},
        "templates": str(templates),
        "contact_id": contact_id,
        "key": KEY,
    }
    return Sender(script, base, harness.clean_env(), harness.REPO)


def _assert_interrupted_then_sent(db: Engine, second: dict[str, Any]) -> list[dict[str, Any]]:
    rows = _rows(db)
    assert [r["decision"] for r in rows] == ["provider_error", "sent"]
    interrupted, sent = rows
    assert interrupted["decision_detail"]["interrupted"] is True
    assert interrupted["last_error"] == "interrupted: the attempt never finished"
    assert interrupted["idempotency_key"] is None
    assert (str(sent["id"]), sent["idempotency_key"]) == (second["send_id"], KEY)
    return rows


def test_smtp_is_at_least_once_with_one_message_id(
    harness: Any, database_url: str, tmp_path: Path, db: Engine, sink: tuple[Sink, int]
) -> None:
    handler, port = sink
    sender = _sender(
        harness,
        database_url,
        tmp_path,
        db,
        {
            "email_provider": "smtp",
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_tls": "none",
        },
    )
    message_id = sender.start_and_kill_after_accept(tmp_path / "accepted")
    # The sink has the message; the database never heard of it going out.
    assert len(handler.messages) == 1
    [row] = _rows(db)
    assert (row["decision"], row["status"], row["idempotency_key"]) == ("queued", "queued", KEY)

    second = sender.run()
    assert second["decision"] == "sent"
    interrupted, sent = _assert_interrupted_then_sent(db, second)
    # At least once: SMTP has no key, so the restart delivered a second copy ...
    assert len(handler.messages) == 2
    first_copy, second_copy = handler.messages
    # ... with the same Message-ID, derived from the idempotency key.
    assert first_copy["Message-ID"] == second_copy["Message-ID"] == message_id
    assert sent["provider_message_id"] == message_id
    assert first_copy["X-Hogsend-Send-Id"] == str(interrupted["id"])
    assert second_copy["X-Hogsend-Send-Id"] == str(sent["id"])

    # Once recorded, the key is spent: a third run sends nothing.
    third = sender.run()
    assert third["decision"] == "duplicate"
    assert len(handler.messages) == 2


def test_resend_delivers_exactly_once(
    harness: Any,
    database_url: str,
    tmp_path: Path,
    db: Engine,
    resend: tuple[ResendStandIn, str],
) -> None:
    stand_in, base_url = resend
    sender = _sender(
        harness,
        database_url,
        tmp_path,
        db,
        {
            "email_provider": "resend",
            "resend_api_key": "re_test_key",
            "resend_base_url": base_url,
        },
    )
    resend_id = sender.start_and_kill_after_accept(tmp_path / "accepted")
    assert [d["id"] for d in stand_in.deliveries] == [resend_id]
    [row] = _rows(db)
    assert row["decision"] == "queued"

    second = sender.run()
    assert second["decision"] == "sent"
    _, sent = _assert_interrupted_then_sent(db, second)
    # Both attempts carried the key; Resend delivered once.
    assert [r["key"] for r in stand_in.requests] == [KEY, KEY]
    assert len(stand_in.deliveries) == 1
    # The retry's body differs (its own X-Hogsend-Send-Id), so Resend refuses it with 409
    # invalid_idempotent_request instead of repeating the first answer: the mailer
    # records the send as gone out, without an id of its own.
    detail = sent["decision_detail"]
    assert detail["providerDuplicate"] is True
    assert "invalid_idempotent_request" in detail["providerAnswer"]
    assert sent["provider_message_id"] is None

    third = sender.run()
    assert third["decision"] == "duplicate"
    assert len(stand_in.requests) == 2
    assert len(stand_in.deliveries) == 1
