"""A campaign in test mode: the batch path redirects every recipient, as the single path does.

A real worker (DBOS) sends the campaign through ``Mailer.send_batch`` into the aiosmtpd
sink; with ``HOGSEND_TEST_MODE`` every message goes to the test recipient, names the real
one in a header, and is recorded as ``redirected``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_campaigns import _small_batch_worker, create, finished
from test_emails_api import Env, _env, new_contact

from mail_sink import Sink

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
async def env(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[Env]:
    async for built in _env(
        tmp_path,
        engine,
        database_url,
        sink,
        campaign_poll_seconds=0.1,
        test_mode=True,
        test_mode_recipient="qa@example.com",
    ):
        yield built


async def test_a_test_mode_campaign_redirects_every_recipient(env: Env, ingest_key: str) -> None:
    people = [f"reader{n}@example.com" for n in range(7)]
    for address in people:
        await new_contact(env.engine, address)
    # Small batches, two lanes: several batches go through send_batch's lanes.
    worker = _small_batch_worker(env)
    await worker.start()
    try:
        campaign_id = await create(env, ingest_key, {"list": "newsletter", "template": "news"})
        body = await finished(env, ingest_key, campaign_id)
    finally:
        await worker.stop()

    assert (body["totalRecipients"], body["sentCount"], body["skippedCount"]) == (7, 7, 0)
    assert sorted(str(m["To"]) for m in env.sink.messages) == ["qa@example.com"] * 7
    assert sorted(str(m["X-Hogsend-Original-To"]) for m in env.sink.messages) == people
    assert {str(m["X-Test-Envelope-To"]) for m in env.sink.messages} == {"qa@example.com"}
    async with env.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT to_email, redirected_to, decision, status FROM email_sends "
                    "WHERE campaign_id = :c ORDER BY to_email"
                ),
                {"c": campaign_id},
            )
        ).all()
    assert [tuple(r) for r in rows] == [
        (address, "qa@example.com", "redirected", "sent") for address in people
    ]
