"""The mailer's lanes keep sending while outcomes are committed.

Real Postgres and a real aiosmtpd sink. An outcome's commit is held up by another
transaction's table lock (``event_outbox``, which every ``email.sent`` event writes to,
and nothing before the provider call does): the lane sends its next message meanwhile,
and waits only before a third, so at most two of a lane's messages are ever between
"accepted" and "recorded".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy import text
from tests.integration.test_mailer import (
    Env,
    FetchAll,
    env,  # noqa: F401 - fixture
    new_contact,
    news,
)

TIMEOUT = 30.0


async def _until(check: Callable[[], bool], what: str) -> None:
    """Poll ``check()`` (sync) until true; fail after ``TIMEOUT`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not check():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_lane_sends_its_next_message_while_its_outcome_commits(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
) -> None:
    people = [await new_contact(env.engine, f"lane{n}@example.com") for n in range(5)]
    requests = [news(c, idempotency_key=f"pipe:{c}") for c in people]
    async with env.engine.connect() as blocker:
        # Held until released below: every outcome commit (it inserts the email.sent
        # event's outbox row) waits for it; decisions and provider calls do not.
        await blocker.execute(text("BEGIN"))
        await blocker.execute(text("LOCK TABLE event_outbox IN EXCLUSIVE MODE"))
        batch = asyncio.ensure_future(env.mailer.send_batch(requests, concurrency=1))
        await _until(lambda: len(env.sink.messages) >= 2 or batch.done(), "two messages")
        assert not batch.done()
        # The second message went out with the first outcome still uncommitted; the
        # lane then waits for that commit before a third (the window stays bounded).
        await asyncio.sleep(0.3)
        assert len(env.sink.messages) == 2
        rows = await fetch_all("SELECT decision FROM email_sends")
        assert [r["decision"] for r in rows] == ["queued"] * 5  # no outcome recorded yet
        await blocker.execute(text("ROLLBACK"))
    outcomes = await asyncio.wait_for(batch, TIMEOUT)
    assert [getattr(o, "decision", o) for o in outcomes] == ["sent"] * 5
    rows = await fetch_all("SELECT decision, decision_detail FROM email_sends")
    assert [r["decision"] for r in rows] == ["sent"] * 5
    assert not any("ahead" in r["decision_detail"] for r in rows)
    events = await fetch_all("SELECT count(*) AS n FROM user_events WHERE event = 'email.sent'")
    assert events[0]["n"] == 5
    assert sorted(m["To"] for m in env.sink.messages) == sorted(
        f"lane{n}@example.com" for n in range(5)
    )
