"""DBOS's queue poll reads from statements written once (hogsend.runtime.queue_polls):
the same queue and the same latest version as DBOS's own methods, used by the polls."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from dbos._dbos import _get_dbos_instance
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_journeys import Env, _env

from hogsend import Contact, JourneyContext, define_journey
from hogsend.runtime import queue_polls
from hogsend.runtime.queues import ALL_QUEUES, JOURNEYS
from mail_sink import Sink

pytestmark = pytest.mark.timeout(120)


@define_journey(id="it-polls", name="Polls", trigger="polls.go", entry_limit="unlimited")
async def polls(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.log("polled")


@pytest.fixture
async def env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    mint_key: Callable[..., Any],
) -> AsyncIterator[Env]:
    async for built in _env(tmp_path, engine, database_url, sink, mint_key, [polls]):
        yield built


def _settings(queue: Any) -> tuple[Any, ...]:
    return (
        queue.name,
        queue._concurrency,
        queue._worker_concurrency,
        queue._limiter,
        queue._partition_concurrency,
        queue._partition_worker_concurrency,
        queue._partition_limiter,
        queue._polling_interval_sec,
        queue.database_backed_queue,
    )


async def test_queue_polls_read_what_dbos_reads(env: Env) -> None:
    installed = queue_polls.install()
    assert installed is not None
    sys_db = _get_dbos_instance()._sys_db
    # The worker's queue threads poll through the replacement.
    reads, versions = installed.queue_reads, installed.version_reads

    async def polled() -> bool:
        return installed.queue_reads > reads and installed.version_reads > versions

    await env.until(polled)
    # ...and a run started from the journeys queue still completes.
    await env.event("polls.go", "poll")

    async def completed() -> bool:
        runs = await env.runs("it-polls")
        return bool(runs) and runs[0]["status"] == "completed"

    await env.until(completed)
    dbos_class = type(sys_db)
    for spec in ALL_QUEUES:
        ours = sys_db.get_queue(spec.name)
        theirs = dbos_class.get_queue(sys_db, spec.name)
        assert ours is not None
        assert _settings(ours) == _settings(theirs)
    assert sys_db.get_queue("hogsend.queue:no-such-queue") is None
    assert _settings(sys_db.get_queue(JOURNEYS.name))[2] == JOURNEYS.worker_concurrency
    # Versions of this application, of none and of another, newest not always ours:
    # written in a transaction rolled back afterwards (the worker never sees them).
    with sys_db.engine.connect() as conn:
        trans = conn.begin()
        try:
            for n, (app, stamp) in enumerate(
                [(sys_db.app_name, 10), (None, 20), ("another-app", 30), (sys_db.app_name, 5)]
            ):
                conn.execute(
                    text(
                        "INSERT INTO dbos.application_versions (version_id, version_name,"
                        " version_timestamp, created_at, application_name)"
                        " VALUES (:i, :n, :t, :t, :a)"
                    ),
                    {
                        "i": f"it-polls-{n}",
                        "n": f"it-polls-v{n}",
                        "t": 4_000_000_000_000 + stamp,
                        "a": app,
                    },
                )
            for app in (sys_db.app_name, None, "another-app", "unknown-app"):
                ours_row = sys_db._latest_application_version(conn, app)
                theirs_row = dbos_class._latest_application_version(sys_db, conn, app)
                assert ours_row is not None
                assert tuple(ours_row) == tuple(theirs_row)
            assert sys_db._latest_application_version(conn, sys_db.app_name).version_name == (
                "it-polls-v1"
            )
            assert sys_db._latest_application_version(conn, None).version_name == "it-polls-v2"
        finally:
            trans.rollback()
