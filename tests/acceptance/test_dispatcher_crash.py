"""A real ``hogsend worker`` SIGKILLed while dispatching: nothing lost, no effect doubled.

The test app's consumers count every call on a connection of their own (so a call whose
transaction died with the process is still counted) and record their effect through
the session the dispatcher gives them, idempotently: a ``UNIQUE (event_id, consumer)``
row written with ``ON CONFLICT DO NOTHING``. That is the contract consumers follow.
"""

from __future__ import annotations

import signal
import subprocess
import textwrap
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from hogsend.db.engine import make_sync_engine

pytestmark = pytest.mark.timeout(240)

EVENTS = 500
CONTACTS = 20

APP = textwrap.dedent(
    """
    import asyncio

    import psycopg
    from sqlalchemy import text

    from hogsend import Hogsend
    from hogsend.db.engine import libpq_url
    from hogsend.runtime.dispatcher import add_extra_consumers
    from hogsend.settings import load_settings

    URL = libpq_url(load_settings().database_url)
    _counter = []


    async def count_call(event_id, consumer):
        if not _counter:
            _counter.append(await psycopg.AsyncConnection.connect(URL, autocommit=True))
        await _counter[0].execute(
            "INSERT INTO crash_calls (event_id, consumer) VALUES (%s, %s)", (event_id, consumer)
        )


    class Effect:
        def __init__(self, name):
            self.name = name

        async def consume(self, event, session):
            await count_call(event.event_id, self.name)
            await asyncio.sleep(0.02)  # work in flight when the kill comes
            await session.execute(
                text(
                    "INSERT INTO crash_effects (event_id, consumer, contact_id, outbox_id)"
                    " VALUES (:e, :c, :contact, :o) ON CONFLICT (event_id, consumer) DO NOTHING"
                ),
                {"e": event.event_id, "c": self.name, "contact": event.contact_id,
                 "o": event.outbox_id},
            )


    app = Hogsend(name="crash-test")
    add_extra_consumers(app, [Effect("first"), Effect("second")])
    """
)


IN_FLIGHT = (
    "SELECT count(*) FROM crash_calls c WHERE NOT EXISTS (SELECT 1 FROM crash_effects e"
    " WHERE e.event_id = c.event_id AND e.consumer = c.consumer)"
)


def _prepare(engine: Engine) -> list[int]:
    contacts = [uuid.uuid4() for _ in range(CONTACTS)]
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE TABLE crash_effects (id bigserial PRIMARY KEY, event_id uuid NOT NULL,"
                " consumer text NOT NULL, contact_id uuid NOT NULL, outbox_id bigint NOT NULL,"
                " UNIQUE (event_id, consumer))"
            )
        )
        conn.execute(
            text(
                "CREATE TABLE crash_calls (id bigserial PRIMARY KEY, event_id uuid NOT NULL,"
                " consumer text NOT NULL)"
            )
        )
        ids = []
        for n in range(EVENTS):
            contact = contacts[n % CONTACTS]
            event_id = uuid.uuid4()
            conn.execute(
                text(
                    "INSERT INTO user_events (id, contact_id, user_id, event)"
                    " VALUES (:id, :contact, :key, 'tick')"
                ),
                {"id": event_id, "contact": contact, "key": f"user-{contact}"},
            )
            ids.append(
                conn.execute(
                    text(
                        "INSERT INTO event_outbox (event_id, contact_id, contact_key, event)"
                        " VALUES (:id, :contact, :key, 'tick') RETURNING id"
                    ),
                    {"id": event_id, "contact": contact, "key": f"user-{contact}"},
                ).scalar_one()
            )
    return ids


def _count(engine: Engine, sql: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql)).scalar_one())


def test_a_sigkilled_worker_loses_nothing_and_doubles_nothing(
    database_url: str, tmp_path: Path, harness: Any
) -> None:
    package = tmp_path / "crashapp"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "app.py").write_text(APP)
    engine = make_sync_engine(database_url)
    outbox_ids = _prepare(engine)

    def start(worker_id: str) -> subprocess.Popen[bytes]:
        env = harness.clean_env(
            HOGSEND_ENV="test",
            HOGSEND_APP="crashapp.app:app",
            HOGSEND_DATABASE_URL=database_url,
            HOGSEND_WORKER_ID=worker_id,
            HOGSEND_LOG_FORMAT="json",
            HOGSEND_DISPATCHER_BATCH_SIZE="20",
            HOGSEND_DISPATCHER_CONCURRENCY="4",
            HOGSEND_DISPATCHER_POLL_SECONDS="0.05",
            HOGSEND_DISPATCHER_LEASE_SECONDS="2",
        )
        log = (tmp_path / f"{worker_id}.log").open("ab")
        return subprocess.Popen(
            [*harness.hogsend_command(), "worker"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    first = start("crash-a")
    second: subprocess.Popen[bytes] | None = None
    try:
        deadline = time.monotonic() + 90
        while _count(engine, "SELECT count(*) FROM crash_effects") < 2 * EVENTS // 4:
            assert first.poll() is None, (tmp_path / "crash-a.log").read_text()
            assert time.monotonic() < deadline, "the worker processed too little in time"
            time.sleep(0.02)
        # Effects commit in batches, so the count moves at commits: wait until a call is
        # in flight (recorded, its effect not committed) and kill it there.
        while not _count(engine, IN_FLIGHT):
            assert first.poll() is None, (tmp_path / "crash-a.log").read_text()
            assert time.monotonic() < deadline, "no call was ever in flight"
            time.sleep(0.005)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        done_at_kill = _count(
            engine, "SELECT count(*) FROM event_outbox WHERE processed_at IS NOT NULL"
        )
        assert done_at_kill < EVENTS, "the kill came too late to interrupt anything"

        # Another worker (another id) takes over once crash-a's leases expire.
        second = start("crash-b")
        deadline = time.monotonic() + 120
        while (
            _count(engine, "SELECT count(*) FROM event_outbox WHERE processed_at IS NOT NULL")
            < EVENTS
        ):
            assert second.poll() is None, (tmp_path / "crash-b.log").read_text()
            assert time.monotonic() < deadline, "the events were not all processed in time"
            time.sleep(0.05)
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, (tmp_path / "crash-b.log").read_text()
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    with engine.connect() as conn:
        dead = conn.execute(text("SELECT count(*) FROM event_outbox WHERE dead_at IS NOT NULL"))
        assert dead.scalar_one() == 0
        effects = conn.execute(
            text("SELECT consumer, contact_id, outbox_id FROM crash_effects ORDER BY id")
        ).all()
        calls = conn.execute(
            text(
                "SELECT event_id, consumer, count(*) AS n FROM crash_calls"
                " GROUP BY event_id, consumer"
            )
        ).all()
        taken_over = conn.execute(
            text("SELECT count(*) FROM event_outbox WHERE claimed_by = 'crash-b'")
        ).scalar_one()
    engine.dispose()

    # Exactly one effect per event and consumer: none lost, none doubled.
    assert len(effects) == 2 * EVENTS
    for consumer in ("first", "second"):
        assert sorted(e.outbox_id for e in effects if e.consumer == consumer) == outbox_ids
    # Every (event, consumer) was called at least once, and the kill interrupted some
    # calls mid-way: those were delivered again, and still left a single effect.
    assert len(calls) == 2 * EVENTS
    assert taken_over >= EVENTS - done_at_kill
    # Each contact's effects happened in the order of its events, across the restart.
    seen: dict[tuple[str, uuid.UUID], list[int]] = defaultdict(list)
    for effect in effects:
        seen[(effect.consumer, effect.contact_id)].append(effect.outbox_id)
    for sequence in seen.values():
        assert sequence == sorted(sequence)
