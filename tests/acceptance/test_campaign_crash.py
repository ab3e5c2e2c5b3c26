"""A real ``hogsend worker`` SIGKILLed in the middle of a campaign, then restarted.

The worker sends a 150-recipient campaign to an aiosmtpd sink in this process. Once a
third of the messages arrived it is killed with SIGKILL; a worker with the same id
starts, DBOS recovers the campaign's run, and the run continues from its durable
cursor (the recipients still pending).

What this proves (docs/campaigns.md, "Crashes"): every recipient receives the campaign,
each exactly one distinct message, and the campaign's counts match the sink. SMTP has
no idempotency key, so a message the server accepted in the instant before the kill may
arrive a second time; such a copy carries the same ``Message-ID`` (derived from the
recipient's idempotency key) and the test checks that is the only kind of repeat.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from hogsend.db.engine import make_sync_engine
from mail_sink import Sink

pytestmark = pytest.mark.timeout(240)

RECIPIENTS = 150

APP = textwrap.dedent(
    """
    from pathlib import Path

    from hogsend import Hogsend, define_list

    app = Hogsend(
        lists=[define_list(id="newsletter", name="Newsletter", default_opt_in=True)],
        templates=str(Path(__file__).parent / "templates"),
    )
    """
)


def _prepare(engine: Engine) -> uuid.UUID:
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO contacts (email) SELECT 'r' || lpad(n::text, 3, '0') || '@example.com'"
                " FROM generate_series(1, :n) AS n"
            ),
            {"n": RECIPIENTS},
        )
        campaign_id = conn.execute(
            text(
                "INSERT INTO campaigns (name, audience_kind, audience, template_key,"
                " throttle_per_second) VALUES ('crash', 'list', '{\"id\": \"newsletter\"}',"
                " 'news', 40) RETURNING id"
            )
        ).scalar_one()
    assert isinstance(campaign_id, uuid.UUID)
    return campaign_id


def _campaign(engine: Engine, campaign_id: uuid.UUID) -> Any:
    with engine.connect() as conn:
        return conn.execute(
            text("SELECT * FROM campaigns WHERE id = :id"), {"id": campaign_id}
        ).one()


def test_a_sigkilled_worker_resumes_the_campaign_and_each_recipient_gets_one_message(
    database_url: str, tmp_path: Path, harness: Any, sink: tuple[Sink, int]
) -> None:
    handler, port = sink
    package = tmp_path / "campaignapp"
    (package / "templates").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text(APP)
    (package / "templates" / "news.html").write_text(
        "{#---\nsubject: News\ncategory: newsletter\n---#}\n"
        '<p>News</p><a href="{{ unsubscribe_url }}">Unsubscribe</a>\n'
    )
    engine = make_sync_engine(database_url)
    campaign_id = _prepare(engine)

    def start() -> subprocess.Popen[bytes]:
        env = harness.clean_env(
            HOGSEND_ENV="test",
            HOGSEND_APP="campaignapp.app:app",
            HOGSEND_DATABASE_URL=database_url,
            HOGSEND_WORKER_ID="campaign-worker",
            HOGSEND_LOG_FORMAT="json",
            HOGSEND_SECRET_KEY="k" * 40,
            HOGSEND_EMAIL_PROVIDER="smtp",
            HOGSEND_SMTP_HOST="127.0.0.1",
            HOGSEND_SMTP_PORT=str(port),
            HOGSEND_SMTP_TLS="none",
            HOGSEND_CAMPAIGN_POLL_SECONDS="0.1",
        )
        log = (tmp_path / "worker.log").open("ab")
        return subprocess.Popen(
            [*harness.hogsend_command(), "worker"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    first = start()
    second: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 90
        while len(handler.messages) < RECIPIENTS // 3:
            assert first.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "the campaign sent too little in time"
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = len(handler.messages)
        assert at_kill < RECIPIENTS, "the kill came too late to interrupt anything"
        assert _campaign(engine, campaign_id).status == "sending"

        second = start()
        deadline = time.monotonic() + 120
        while _campaign(engine, campaign_id).status != "sent":
            assert second.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "the campaign did not finish in time"
            time.sleep(0.1)
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, (tmp_path / "worker.log").read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    row = _campaign(engine, campaign_id)
    with engine.connect() as conn:
        decisions: dict[str, int] = dict(
            conn.execute(
                text(
                    "SELECT decision, count(*) FROM email_sends WHERE campaign_id = :id"
                    " GROUP BY decision"
                ),
                {"id": campaign_id},
            ).all()
        )
    engine.dispose()

    expected = {f"r{n:03}@example.com" for n in range(1, RECIPIENTS + 1)}
    distinct: dict[str, set[str]] = {}
    for message in handler.messages:
        distinct.setdefault(str(message["To"]), set()).add(str(message["Message-ID"]))
    # Everyone got the campaign, as exactly one distinct message.
    assert set(distinct) == expected
    assert all(len(ids) == 1 for ids in distinct.values())
    copies = Counter(str(m["To"]) for m in handler.messages)
    repeated = [to for to, n in copies.items() if n > 1]
    # Only a message in flight at the kill can arrive twice (at most the sends in flight).
    assert len(repeated) <= 8, repeated
    assert (row.total_recipients, row.sent_count, row.skipped_count, row.failed_count) == (
        RECIPIENTS,
        RECIPIENTS,
        0,
        0,
    )
    # One ``sent`` row per recipient. The restart's second attempts at recipients already
    # recorded as sent are ``duplicate``; an attempt the kill interrupted mid-send is
    # closed as ``provider_error`` (interrupted) and taken over with the same key.
    assert decisions["sent"] == RECIPIENTS
    assert set(decisions) <= {"sent", "duplicate", "provider_error"}
    assert decisions.get("provider_error", 0) <= 8
