"""Durable journeys: enrollment throughput against bare DBOS, trigger latency, parking.

One embedded Postgres (durable commits), a fresh database per part, and every worker in
a process of its own (its RSS is its own). Events go in as ingest writes them
(``user_events`` + ``event_outbox`` rows, loaded with COPY, or one transaction each
with ``NOTIFY hogsend_outbox`` for the latency part) and a real ``hogsend`` worker
(DBOS launched, dispatcher, park waker) takes them from there.

* ``bare``: the ceiling. A process launched exactly like a worker's DBOS (same
  configuration, same ``journeys`` queue) enqueues ``ENROLLS`` one-step async workflows
  and runs them; workflows/s from the first enqueue to the last completion.
  The same with three steps (``bare_three_steps``): a run of the one-step journey
  takes three (start, the body's step, completed), so that ratio is reported too.
* ``enroll``: ``ENROLLS`` ``bench.enroll`` events (one contact each) into a running
  worker whose journey does one step (``ctx.log``). Per run: the dispatcher's guards
  and enrollment transaction, the enqueue, the start step, the log step, the completed
  step. Enrollments/s from the COPY commit to the last ``completed_at``; the ratio to
  ``bare`` (target >= 0.5). Per enrollment (``per_enrollment``): the worker's CPU ms
  (read from outside) and its round trips to Postgres (counted inside: statements,
  savepoints included, commits, rollbacks, pool checkouts; hogsend's engine and DBOS's
  apart), with what an idle worker spends in the same time (its pollers) taken out.
  These hold on a shared machine where the rates do not; ``bare`` reports its CPU ms
  per workflow too.
* ``latency``: ``LATENCY_RATE`` events/s for ``LATENCY_SECONDS``, one transaction each
  with NOTIFY, after ``LATENCY_WARMUP_SECONDS`` of the same events that the fresh worker
  handles first and that are reported apart (``warmup``), not counted; per event, the
  time from its commit (``received_at``) to its workflow's
  dequeue (``dequeued_ms``) and to its first body step done (``first_step_ms``, the
  ``ctx.log`` row). p50/p99 (target p99 of the first step < 250 ms). ``stages_ms``
  splits it per run: the event's commit to the enrollment of its run (``dispatch``: the
  dispatcher finding and claiming it; the run row's ``created_at`` is the enrollment's
  clock), the enrollment to the workflow's dequeue (``queue``: the rest of the
  dispatcher's transaction, then the DBOS queue's polling) and the dequeue to the first
  body step done (``run``). ``slowest`` lists those stages for the five slowest events,
  with when each was sent (``at_s``), to tell periodic stalls from a backlog.
* ``parked``: ``PARKED`` runs of a journey that ``sleep_until`` a time carried by its
  trigger event: ``PARKED - WAKE`` due in ten days, then ``WAKE`` due together a little
  after they can all have parked (the worker parks waits longer than
  ``PARK_AFTER_SECONDS``, so that group parks too). Measured: the worker's RSS with
  every run parked (target < 300 MB) and its live asyncio tasks, a graceful restart,
  then SIGKILL and a new worker process: time until it is started, and its RSS; then
  the time from the due instant until all ``WAKE`` runs completed (target < 60 s), with
  the wake's CPU time in the worker(s) and database transactions per woken run (both
  hold on a shared machine), the same net of what the idle worker and database spend
  in the wake's time (``wake_per_run_net_of_idle``, the idle rates read for
  ``WAKE_IDLE_SECONDS`` with every run parked, before the due instant; round trips
  split hogsend's and DBOS's), and a check that no run logged its step twice.

  How 100,000 parked runs are made in minutes: ``SAMPLE`` of them (split between the
  two groups) go through the real path (events, dispatcher, enrollment, workflow, the
  park step, the cancel), the rest are **clones** of those. A clone copies every row
  the real path wrote for a run of its group (``user_events``, ``event_outbox``,
  ``journey_states``, ``journey_logs``, and DBOS's ``workflow_status``,
  ``workflow_input`` and ``operation_outputs``) with the ids changed to its own contact,
  run, trigger event and workflow (the deterministic enrollment id), through DBOS's
  serializer for its inputs and step outputs. Its parked state is therefore the one the
  real path leaves, byte for byte but for the ids: a real DBOS workflow, ``CANCELLED``
  with its recorded steps, that the waker resumes and replays like any other. The
  report says how many real-path runs were in the woken group and that they all
  completed (``woke_real_path``). ``--sample`` sets how many go through the real path.
  ``--wake-workers N`` wakes the due group with N worker processes.

Run with ``python -m bench journeys`` (the defaults below) or pick counts:
``python -m bench journeys --enrolls 2000 --parked 20000 --wake 5000 --sample 600``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing as mp
import os
import signal
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psutil
import psycopg
from psycopg.types.json import Jsonb

from bench._database import embedded_server, migrated
from bench._server_cpu import postgres_cpu_reader
from hogsend import Contact, Hogsend, JourneyContext, define_journey
from hogsend.cli.serving import tune_garbage_collector
from hogsend.db.engine import libpq_url
from hogsend.runtime import event_loop

ENROLLS = 3_000
LATENCY_RATE = 20
LATENCY_SECONDS = 15.0
PARKED = 100_000
WAKE = 10_000
SAMPLE = 600
TARGET_RATIO = 0.5
TARGET_P99_MS = 250
TARGET_RSS_MB = 300
TARGET_WAKE_S = 60
WORKER_ID = "bench-journeys"
PARK_AFTER_SECONDS = 20.0
WAKE_IDLE_SECONDS = 15.0
"""How long the wake part reads the idle worker's pollers (their rate is noisy under load)."""


@define_journey(
    id="bench-one-step", name="One step", trigger="bench.enroll", entry_limit="unlimited"
)
async def one_step(contact: Contact, ctx: JourneyContext) -> None:
    """The smallest journey: one durable step."""
    await ctx.log("step")


@define_journey(id="bench-parked", name="Parked", trigger="bench.park", entry_limit="unlimited")
async def sleeper(contact: Contact, ctx: JourneyContext) -> None:
    """Sleep until the trigger's ``dueAt`` (parked when that is far), then one step."""
    await ctx.sleep_until(datetime.fromisoformat(ctx.trigger_event.properties["dueAt"]))
    await ctx.log("woke")


app = Hogsend(name="bench-journeys", journeys=[one_step, sleeper])


# -- the processes ------------------------------------------------------------------------


def _settings(url: str) -> Any:
    from hogsend.settings import Settings

    return Settings(
        env="test",
        database_url=url,
        secret_key="b" * 40,
        public_url="https://mail.example.test",
        worker_id=WORKER_ID,
        log_level="warning",
        # The wake group falls due a minute or two after it is created: park it anyway.
        journey_park_after_seconds=PARK_AFTER_SECONDS,
    )


def _rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


class _RoundTrips:
    """Counts a process's trips to Postgres through SQLAlchemy, hogsend's and DBOS's apart.

    A trip is a statement (savepoints included), a commit, a rollback, or a pooled
    connection's checkout. (hogsend's engine pinged on every checkout; it now pings only
    a connection idle 2 s or more, so under load its checkouts are counted but are mostly
    no trip: the count is kept as it was, to compare.) The ``BEGIN`` psycopg sends before
    a transaction's first statement is one more, counted with the commit.
    """

    def __init__(self, ours: Any) -> None:
        from sqlalchemy import event
        from sqlalchemy.engine import Engine
        from sqlalchemy.pool import Pool

        self.ours = ours.sync_engine.pool
        self.counts: dict[str, int] = {}
        event.listen(Engine, "before_cursor_execute", self._statement)
        event.listen(Engine, "commit", self._commit)
        event.listen(Engine, "rollback", self._rollback)
        event.listen(Pool, "checkout", self._checkout)

    def _add(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    def _who(self, pool: Any) -> str:
        return "hogsend" if pool is self.ours else "dbos"

    def _statement(self, conn: Any, *_: Any) -> None:
        self._add(f"{self._who(conn.engine.pool)}.statements")

    def _commit(self, conn: Any) -> None:
        self._add(f"{self._who(conn.engine.pool)}.commits")

    def _rollback(self, conn: Any) -> None:
        self._add(f"{self._who(conn.engine.pool)}.rollbacks")

    def _checkout(self, dbapi_conn: Any, record: Any, proxy: Any) -> None:
        self._add(f"{self._who(proxy._pool)}.checkouts")

    def snapshot(self) -> dict[str, int]:
        return dict(self.counts)


async def _worker(url: str, out: Any, stop: Any, snap: Any = None) -> None:
    from hogsend.runtime.worker import Worker

    started = time.perf_counter()
    worker = Worker(app, _settings(url), drain_seconds=1)
    await worker.start()
    # The collector as `hogsend worker` tunes it once its worker started.
    tune_garbage_collector(api=False)
    trips = _RoundTrips(worker.engine)
    out.put({"started_s": round(time.perf_counter() - started, 2), "rss_mb": _rss_mb()})
    if snap is not None:
        threading.Thread(target=_answer_snapshots, args=(snap, out, trips), daemon=True).start()
    await asyncio.to_thread(stop.wait)
    # Asked for a report: RSS and live tasks now (the parked runs hold none).
    out.put({"rss_mb": _rss_mb(), "tasks": len(asyncio.all_tasks()), "trips": trips.snapshot()})
    await worker.stop()


def _answer_snapshots(snap: Any, out: Any, trips: _RoundTrips) -> None:
    while True:
        snap.wait()
        snap.clear()
        out.put({"trips": trips.snapshot()})


def _worker_main(url: str, out: Any, stop: Any, snap: Any = None) -> None:
    # On the event loop `hogsend worker` runs (uvloop), as the bare ceiling below.
    event_loop.run(_worker(url, out, stop, snap))


class WorkerProcess:
    """A worker in a spawned process; ``report()`` asks it for RSS and live tasks."""

    def __init__(self, url: str) -> None:
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.stop_flag = ctx.Event()
        self.snap_flag = ctx.Event()
        self.spawned = time.perf_counter()
        self.process = ctx.Process(
            target=_worker_main, args=(url, self.out, self.stop_flag, self.snap_flag)
        )
        self.process.start()
        self.started: dict[str, Any] = self.out.get(timeout=600)
        self.ready_s = round(time.perf_counter() - self.spawned, 2)

    @property
    def rss_mb(self) -> float:
        """The process's RSS now, read from outside."""
        return round(psutil.Process(self.process.pid).memory_info().rss / 2**20, 1)

    def usage(self) -> dict[str, Any]:
        """The worker's CPU seconds so far (read from outside) and its round trips."""
        self.snap_flag.set()
        trips: dict[str, int] = self.out.get(timeout=60)["trips"]
        times = psutil.Process(self.process.pid).cpu_times()
        return {"cpu_s": times.user + times.system, "trips": trips, "wall": time.perf_counter()}

    def stop(self) -> dict[str, Any]:
        """Stop gracefully; returns the last report (RSS and live asyncio tasks)."""
        self.stop_flag.set()
        report: dict[str, Any] = self.out.get(timeout=120)
        self.process.join(120)
        return report

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        assert self.process.pid is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.join(30)


async def _bare(url: str, count: int, steps: int) -> dict[str, Any]:
    from dbos import DBOS

    from hogsend.runtime.dbos_setup import destroy_dbos, launch_dbos
    from hogsend.runtime.queues import JOURNEYS, declare_queues

    workflows: list[Any] = []

    def register() -> None:
        async def noop(n: int) -> int:
            return n

        async def bare_steps(n: int) -> int:
            for _ in range(steps):
                n = int(await DBOS.run_step_async({"name": "bench.step"}, noop, n))
            return n

        workflows.append(DBOS.workflow(name="bench.bare")(bare_steps))

    launch_dbos(_settings(url), url, registrations=[register])
    await declare_queues()
    tune_garbage_collector(api=False)  # as the worker measured against it
    cpu = time.process_time()
    started = time.perf_counter()
    for n in range(count):
        await DBOS.enqueue_workflow_async(JOURNEYS.name, workflows[0], n)
    enqueued = time.perf_counter() - started
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FILTER (WHERE status = 'SUCCESS'), max(updated_at)"
                " FROM dbos.workflow_status WHERE name = 'bench.bare'"
            ).fetchone()
            assert row is not None
            if row[0] >= count:
                break
            await asyncio.sleep(0.2)
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    destroy_dbos()
    return {
        "workflows": count,
        "steps": steps,
        "enqueue_s": round(enqueued, 2),
        "elapsed_s": round(elapsed, 2),
        "per_s": round(count / elapsed, 1),
        # This process's CPU per workflow (enqueue and run), idle polling included.
        "cpu_ms_per_workflow": round(cpu * 1000 / count, 2),
    }


def _bare_main(url: str, count: int, steps: int, out: Any) -> None:
    out.put(event_loop.run(_bare(url, count, steps)))


def _in_process(target: Any, *args: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    process = ctx.Process(target=target, args=(*args, out))
    process.start()
    result: dict[str, Any] = out.get(timeout=3600)
    process.join(60)
    return result


# -- loading events --------------------------------------------------------------------------


def _contacts(url: str, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    copy_sql = "COPY contacts (id, external_id) FROM STDIN"
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for contact in ids:
            copy.write_row((contact, f"user-{contact}"))
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE contacts")
    return ids


def _copy_events(
    url: str, contacts: Sequence[uuid.UUID], name: str, properties: dict[str, Any]
) -> float:
    """One event per contact, as ingest stores them, in one COPY; returns the commit time."""
    props = json.dumps(properties)
    events = [(uuid.uuid4(), contact) for contact in contacts]
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY user_events (id, contact_id, user_id, event, properties) FROM STDIN"
        ) as copy:
            for event_id, contact in events:
                copy.write_row((event_id, contact, f"user-{contact}", name, props))
        with cur.copy(
            "COPY event_outbox (event_id, contact_id, contact_key, event) FROM STDIN"
        ) as copy:
            for event_id, contact in events:
                copy.write_row((event_id, contact, f"user-{contact}", name))
        conn.commit()
        committed = time.time()
        conn.execute("SELECT pg_notify('hogsend_outbox', '')")
        conn.commit()
    return committed


def _count(url: str, sql: str, *params: Any) -> Any:
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


def _wait(url: str, sql: str, target: int, *params: Any, timeout: float = 7200) -> float:
    """Poll ``sql`` (a count) until it reaches ``target``; returns the wall time then."""
    deadline = time.time() + timeout
    # One connection for the whole wait: a new one every poll cost the database a
    # backend's start each time, counted in the part's Postgres CPU.
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        while time.time() < deadline:
            row = conn.execute(sql, params).fetchone()
            assert row is not None
            if row[0] >= target:
                return time.time()
            time.sleep(0.25)
    raise TimeoutError(f"{sql!r} did not reach {target} in {timeout} s")


# -- the parts ------------------------------------------------------------------------------


def _enroll_part(url: str, count: int) -> dict[str, Any]:
    contacts = _contacts(url, count)
    worker = WorkerProcess(url)
    try:
        idle = _idle_usage(worker)
        before = worker.usage()
        committed = _copy_events(url, contacts, "bench.enroll", {})
        _wait(
            url,
            "SELECT count(*) FROM journey_states WHERE journey_id = 'bench-one-step'"
            " AND status = 'completed'",
            count,
        )
        cost = _per_operation(before, worker.usage(), count, idle)
        last, enrolled, first_start, last_start = (
            float(x)
            for x in _count(
                url,
                "SELECT extract(epoch FROM max(s.completed_at)),"
                " extract(epoch FROM max(s.created_at)),"
                " extract(epoch FROM min(l.started_at)), extract(epoch FROM max(l.started_at))"
                " FROM journey_states s JOIN journey_logs l ON l.journey_state_id = s.id"
                " AND l.action = 'log' WHERE s.journey_id = 'bench-one-step'",
            )
        )
        rss = worker.rss_mb
    finally:
        worker.stop()
    elapsed = last - committed
    return {
        "enrollments": count,
        "elapsed_s": round(elapsed, 2),
        "per_s": round(count / elapsed, 1),
        # Where the time goes: the dispatcher's enrollments (rows inserted) and the
        # workflows' start steps, each from its first to its last.
        "dispatched_per_s": round(count / max(enrolled - committed, 1e-3), 1),
        "started_per_s": round(count / max(last_start - first_start, 1e-3), 1),
        "worker_rss_mb": rss,
        "per_enrollment": cost,
    }


IDLE_SECONDS = 3.0


def _idle_usage(worker: WorkerProcess, seconds: float = IDLE_SECONDS) -> dict[str, Any]:
    """What an idle worker spends per second (its pollers), to subtract from a part's cost."""
    first = worker.usage()
    time.sleep(seconds)
    last = worker.usage()
    return {
        "cpu_s": (last["cpu_s"] - first["cpu_s"]) / seconds,
        "trips": {k: (v - first["trips"].get(k, 0)) / seconds for k, v in last["trips"].items()},
    }


def _per_operation(
    before: dict[str, Any], after: dict[str, Any], count: int, idle: dict[str, Any]
) -> dict[str, Any]:
    """CPU ms and round trips per operation between two usages, the idle pollers' share
    (their rate times the time between the usages) taken out."""
    span = after["wall"] - before["wall"]
    trips = {
        k: round((v - before["trips"].get(k, 0) - idle["trips"].get(k, 0) * span) / count, 2)
        for k, v in sorted(after["trips"].items())
    }
    total = sum(trips.values())
    raw_cpu = (after["cpu_s"] - before["cpu_s"]) / count
    raw_trips = sum(after["trips"].values()) - sum(before["trips"].values())
    cpu = raw_cpu - idle["cpu_s"] * span / count
    return {
        "cpu_ms": round(cpu * 1000, 2),
        "round_trips": round(total, 1),
        # The same with the idle pollers' share left in (their rate varies with load).
        "cpu_ms_with_idle": round(raw_cpu * 1000, 2),
        "round_trips_with_idle": round(raw_trips / count, 1),
        "by_kind": trips,
        "idle_round_trips_per_s": round(sum(idle["trips"].values()), 1),
        "idle_cpu_ms_per_s": round(idle["cpu_s"] * 1000, 1),
    }


LATENCY_WARMUP_SECONDS = 2.0
"""Events offered (at the bench's rate) to a freshly started worker before measuring:
its first runs pay one-time costs (pools filling, first queue polls, lazy imports)."""


def _offer(url: str, contacts: list[uuid.UUID], rate: int) -> None:
    """Store one ``bench.enroll`` event per contact at ``rate`` a second, as ingest does."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        started = time.perf_counter()
        for n, contact in enumerate(contacts):
            due = started + n / rate
            time.sleep(max(due - time.perf_counter(), 0))
            with conn.transaction():
                conn.execute(
                    "WITH e AS (INSERT INTO user_events (contact_id, user_id, event)"
                    " VALUES (%(c)s, %(k)s, 'bench.enroll') RETURNING id, contact_id)"
                    " INSERT INTO event_outbox (event_id, contact_id, contact_key, event)"
                    " SELECT id, contact_id, %(k)s, 'bench.enroll' FROM e",
                    {"c": contact, "k": f"user-{contact}"},
                )
                conn.execute("SELECT pg_notify('hogsend_outbox', '')")


def _first_step_rows(url: str, since: float) -> list[tuple[Any, ...]]:
    """(dequeued ms, first step done ms) of the runs whose event was stored after ``since``."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        return conn.execute(
            "SELECT w.started_at_epoch_ms - extract(epoch FROM e.received_at) * 1000,"
            " extract(epoch FROM l.finished_at - e.received_at) * 1000"
            " FROM journey_logs l JOIN journey_states s ON s.id = l.journey_state_id"
            " JOIN user_events e ON e.id = s.trigger_event_id"
            " JOIN dbos.workflow_status w ON w.workflow_uuid = s.workflow_id"
            " WHERE l.action = 'log' AND s.journey_id = 'bench-one-step'"
            " AND e.received_at >= to_timestamp(%s)",
            (since,),
        ).fetchall()


def _latency_part(url: str, rate: int, seconds: float) -> dict[str, Any]:
    total = int(rate * seconds)
    warmup = max(int(rate * LATENCY_WARMUP_SECONDS), 1)
    contacts = _contacts(url, warmup + total)
    done_sql = (
        "SELECT count(*) FROM journey_states WHERE journey_id = 'bench-one-step'"
        " AND status = 'completed'"
    )
    worker = WorkerProcess(url)
    try:
        cold_since = _count(url, "SELECT extract(epoch FROM now())")
        _offer(url, contacts[:warmup], rate)
        _wait(url, done_sql, warmup, timeout=600)
        cold = sorted(float(r[1]) for r in _first_step_rows(url, float(cold_since)))
        since = float(_count(url, "SELECT extract(epoch FROM now())"))
        _offer(url, contacts[warmup:], rate)
        _wait(url, done_sql, warmup + total, timeout=600)
        rows = _first_step_rows(url, since)
        stages = _latency_stages(url, since)
    finally:
        worker.stop()
    dequeued_ms = sorted(float(r[0]) for r in rows)
    first_ms = sorted(float(r[1]) for r in rows)

    def pct(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 1)

    return {
        "events": total,
        "rate_per_s": rate,
        # The worker's first events, offered before measuring (see LATENCY_WARMUP_SECONDS).
        "warmup": {
            "events": warmup,
            "first_step_ms": {"p50": pct(cold, 0.5), "max": round(max(cold), 1)},
        },
        "dequeued_ms": {"p50": pct(dequeued_ms, 0.5), "p99": pct(dequeued_ms, 0.99)},
        "first_step_ms": {
            "p50": pct(first_ms, 0.5),
            "p99": pct(first_ms, 0.99),
            "max": round(max(first_ms), 1),
            "mean": round(statistics.fmean(first_ms), 1),
        },
        "stages_ms": stages,
    }


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _latency_stages(url: str, since: float) -> dict[str, Any]:
    """Where an event's way to its first step goes, per run (p50/p99 of each stage, and
    the stages of the five slowest): the event's commit to its run's enrollment
    (dispatcher), the enrollment to the workflow's dequeue (the dispatcher's commit, then
    the DBOS queue), the dequeue to the body's first step done."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM s.created_at - e.received_at) * 1000,"
            " w.started_at_epoch_ms - extract(epoch FROM s.created_at) * 1000,"
            " extract(epoch FROM l.finished_at) * 1000 - w.started_at_epoch_ms,"
            " extract(epoch FROM e.received_at)"
            " FROM journey_states s JOIN user_events e ON e.id = s.trigger_event_id"
            " JOIN dbos.workflow_status w ON w.workflow_uuid = s.workflow_id"
            " JOIN journey_logs l ON l.journey_state_id = s.id AND l.action = 'log'"
            " WHERE s.journey_id = 'bench-one-step' AND e.received_at >= to_timestamp(%s)",
            (since,),
        ).fetchall()
    names = ("dispatch", "queue", "run")
    stages: dict[str, Any] = {
        name: {
            "p50": _pct([float(r[i]) for r in rows], 0.5),
            "p99": _pct([float(r[i]) for r in rows], 0.99),
        }
        for i, name in enumerate(names)
    }
    first_sent = min(float(r[3]) for r in rows)
    slowest = sorted(rows, key=lambda r: -sum(float(x) for x in r[:3]))[:5]
    stages["slowest"] = [
        {"at_s": round(float(r[3]) - first_sent, 2)}
        | {name: round(float(r[i]), 1) for i, name in enumerate(names)}
        for r in slowest
    ]
    return stages


_PARKED_SQL = (
    "SELECT count(*) FROM journey_states WHERE journey_id = 'bench-parked'"
    " AND status = 'waiting' AND coalesce((context->>'parked')::boolean, false)"
)


def _wake_worker_main(url: str, worker_id: str, out: Any, stop: Any) -> None:
    """A further worker (its own worker id) that shares the wake-up of the due group."""
    global WORKER_ID
    WORKER_ID = worker_id
    _worker_main(url, out, stop)


class WakeWorker(WorkerProcess):
    """One more worker process, as a deployment adds to wake more runs per second."""

    def __init__(self, url: str, worker_id: str) -> None:
        ctx = mp.get_context("spawn")
        self.out = ctx.Queue()
        self.stop_flag = ctx.Event()
        self.spawned = time.perf_counter()
        self.process = ctx.Process(
            target=_wake_worker_main, args=(url, worker_id, self.out, self.stop_flag)
        )
        self.process.start()
        self.started = self.out.get(timeout=600)
        self.ready_s = round(time.perf_counter() - self.spawned, 2)


def _parked_ids(url: str, due: datetime | None = None) -> list[uuid.UUID]:
    """The parked runs of ``bench-parked`` (those due at ``due`` when given)."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        rows = conn.execute(
            _PARKED_SQL.replace("count(*)", "id")
            + ("" if due is None else " AND next_wake_at = %s"),
            () if due is None else (due,),
        ).fetchall()
    return [r[0] for r in rows]


def _db_transactions(url: str) -> int:
    """Transactions committed or rolled back in the database so far (all sessions)."""
    return int(
        _count(
            url,
            "SELECT xact_commit + xact_rollback FROM pg_stat_database"
            " WHERE datname = current_database()",
        )
    )


def _park_group(
    url: str,
    contacts: Sequence[uuid.UUID],
    sample: int,
    due: datetime,
    already: int,
) -> tuple[float, float]:
    """Park a run for each contact, due at ``due``: ``sample`` through the real path
    (events, dispatcher, workflow, park), the rest cloned from those; returns the
    real path's and the cloning's runs per second."""
    began = time.time()
    _copy_events(url, contacts[:sample], "bench.park", {"dueAt": due.isoformat()})
    _wait(url, _PARKED_SQL, already + sample)
    real_rate = sample / (time.time() - began)
    clone_rate = 0.0
    if len(contacts) > sample:
        clone_rate = _clone_parked(url, _parked_ids(url, due), contacts[sample:], due)
    return real_rate, clone_rate


def _parked_part(
    url: str,
    parked: int,
    wake: int,
    sample: int,
    wake_workers: int = 1,
    db_cpu: Callable[[], float] | None = None,
) -> dict[str, Any]:
    far = parked - wake
    # The real path parks ``sample`` runs, split between the groups; the rest are clones.
    sample_wake = min(wake, max(1, sample // 2))
    sample_far = min(far, max(1, sample - sample_wake))
    contacts = _contacts(url, parked)
    worker = WorkerProcess(url)
    result: dict[str, Any] = {
        "parked": parked,
        "wake": wake,
        "real_path": {"far": sample_far, "wake": sample_wake},
    }
    sampler = _PeakSampler(worker.process.pid)
    try:
        began = time.time()
        real_rate, clone_rate = 100.0, 5_000.0
        if far:
            real_rate, clone_rate = _park_group(
                url,
                contacts[:far],
                sample_far,
                datetime.now(UTC) + timedelta(days=10),
                0,
            )
            clone_rate = clone_rate or 5_000.0
        # The wake group is due once it can all have parked (three times the time the
        # measured rates say, the machine is shared), plus time for the restarts.
        due = datetime.now(UTC) + timedelta(
            seconds=sample_wake / real_rate * 3 + (wake - sample_wake) / clone_rate * 3 + 90
        )
        real_wake, clone_wake = _park_group(url, contacts[far:], sample_wake, due, far)
        # Every run parked, or (if the estimate fell short) woken already.
        _wait(
            url,
            "SELECT count(*) FROM journey_states WHERE journey_id = 'bench-parked' AND"
            " (status = 'completed' OR (status = 'waiting'"
            " AND coalesce((context->>'parked')::boolean, false)))",
            parked,
        )
        created = time.time() - began
        result["wake_parked_before_due"] = int(_count(url, _PARKED_SQL)) - far
        time.sleep(2)  # let the last parked coroutines unwind
        result["create_s"] = round(created, 1)
        result["create_per_s"] = round(parked / created, 1)
        result["real_path_per_s"] = round(min(real_rate, real_wake), 1)
        result["clone_per_s"] = round(max(clone_rate, clone_wake), 1)
        result["rss_mb_parked"] = worker.rss_mb
        result["peak_rss_mb_creating"] = sampler.stop()
    except BaseException:
        sampler.stop()
        worker.stop()
        raise
    worker_pid = worker.process.pid
    # Live tasks while everything is parked: ask the process (it then stops gracefully),
    # and restart; a SIGKILL and restart are measured right after.
    report = worker.stop()
    result["tasks_parked"] = report["tasks"]
    result["rss_mb_parked_reported"] = report["rss_mb"]
    restarted = WorkerProcess(url)
    result["restart_graceful_s"] = restarted.ready_s
    restarted.kill()
    killed_at = time.perf_counter()
    again = WorkerProcess(url)
    result["restart_after_sigkill_s"] = round(time.perf_counter() - killed_at, 2)
    result["restart_worker_start_s"] = again.started["started_s"]
    result["rss_mb_after_restart"] = again.rss_mb
    assert again.process.pid != worker_pid
    wakers = [again] + [
        WakeWorker(url, f"{WORKER_ID}-{n}") for n in range(2, max(wake_workers, 1) + 1)
    ]
    result["wake_workers"] = len(wakers)
    try:
        remaining = (due - datetime.now(UTC)).total_seconds()
        result["wake_group_due_in_s_after_restart"] = round(remaining, 1)
        # What the worker and the database spend idle (pollers, everything parked), in
        # the same run, so the wake's own cost can be told from it.
        idle_seconds = min(WAKE_IDLE_SECONDS, max(remaining - 5, 1.0))
        time.sleep(max(remaining - 2 - idle_seconds - 1, 0))
        idle_from = _db_transactions(url)
        idle_db_from = db_cpu() if db_cpu else 0.0
        idle = _idle_usage(again, idle_seconds)
        idle_xacts = (_db_transactions(url) - idle_from) / idle_seconds
        idle_db_cpu = ((db_cpu() if db_cpu else 0.0) - idle_db_from) / idle_seconds
        time.sleep(max((due - datetime.now(UTC)).total_seconds() - 1, 0))
        # What the wake costs the worker and the database, whatever else the machine runs.
        processes = [psutil.Process(w.process.pid) for w in wakers]
        cpu_each_before = [sum(p.cpu_times()[:2]) for p in processes]
        cpu_before = sum(cpu_each_before)
        usage_before = again.usage()
        xacts_before = _db_transactions(url)
        db_cpu_before = db_cpu() if db_cpu else 0.0
        _wait(
            url,
            "SELECT count(*) FROM journey_states WHERE journey_id = 'bench-parked'"
            " AND status = 'completed'",
            wake,
            timeout=3600,
        )
        usage_after = again.usage()
        cpu_each = [sum(p.cpu_times()[:2]) for p in processes]
        cpu = sum(cpu_each) - cpu_before
        xacts = _db_transactions(url) - xacts_before
        db_cpu_used = (db_cpu() if db_cpu else 0.0) - db_cpu_before
        span = usage_after["wall"] - usage_before["wall"]
        first, last = (
            float(x)
            for x in _count(
                url,
                "SELECT extract(epoch FROM min(completed_at)),"
                " extract(epoch FROM max(completed_at)) FROM journey_states"
                " WHERE journey_id = 'bench-parked' AND status = 'completed'",
            )
        )
        result["wake_s"] = round(last - due.timestamp(), 1)
        result["wake_first_done_s"] = round(first - due.timestamp(), 2)
        result["wake_per_s"] = round(wake / max(last - due.timestamp(), 1e-3), 1)
        result["wake_worker_cpu_ms_per_run"] = round(cpu * 1000 / wake, 2)
        result["wake_db_transactions_per_run"] = round(xacts / wake, 2)
        if db_cpu is not None:
            # The whole Postgres server's CPU (every backend, the idle pollers' too).
            result["wake_postgres_cpu_ms_per_run"] = round(db_cpu_used * 1000 / wake, 2)
        # The same with what the workers' idle pollers (and the idle database) spend in
        # the wake's time taken out: the wake's own cost, which a loaded machine's longer
        # wake does not inflate. Round trips are the first worker's (counted inside it).
        result["wake_per_run_net_of_idle"] = _per_operation(
            usage_before, usage_after, wake, idle
        ) | {
            "worker_cpu_ms": round((cpu - idle["cpu_s"] * span * len(wakers)) * 1000 / wake, 2),
            "db_transactions": round((xacts - idle_xacts * span) / wake, 2),
            "idle_db_transactions_per_s": round(idle_xacts, 1),
        }
        if db_cpu is not None:
            result["wake_per_run_net_of_idle"] |= {
                "postgres_cpu_ms": round((db_cpu_used - idle_db_cpu * span) * 1000 / wake, 2),
                "idle_postgres_cpu_ms_per_s": round(idle_db_cpu * 1000, 1),
            }
        result["wake_worker_cpu_s_each"] = [
            round(after - before, 2)
            for before, after in zip(cpu_each_before, cpu_each, strict=True)
        ]
        result["rss_mb_after_wake"] = again.rss_mb
        result["still_parked_after_wake"] = int(_count(url, _PARKED_SQL))
        # Exactly once: each woken run logged its step once (the real-path runs too).
        result["woke_twice"] = int(
            _count(
                url,
                "SELECT count(*) FROM (SELECT journey_state_id FROM journey_logs"
                " WHERE journey_id = 'bench-parked' AND action = 'log'"
                " GROUP BY journey_state_id HAVING count(*) > 1) twice",
            )
        )
        result["woke_real_path"] = int(
            _count(
                url,
                "SELECT count(*) FROM journey_states WHERE journey_id = 'bench-parked'"
                " AND status = 'completed' AND contact_id = ANY(%s)",
                list(contacts[far : far + sample_wake]),
            )
        )
    finally:
        for waker in wakers:
            waker.stop()
    return result


# -- parked runs in bulk: clones of runs parked through the real path --------------------------

# Every row the real path writes for one parked run of ``bench-parked`` (found by the
# template's trigger event, run and workflow ids); a clone copies each with the ids changed.
_RUN_ROWS = (
    ("user_events", "id = %(event)s"),
    ("event_outbox", "event_id = %(event)s"),
    ("journey_states", "id = %(state)s"),
    ("journey_logs", "journey_state_id = %(state)s"),
    ("dbos.workflow_status", "workflow_uuid = %(workflow)s"),
    ("dbos.workflow_input", "workflow_uuid = %(workflow)s"),
    ("dbos.operation_outputs", "workflow_uuid = %(workflow)s"),
)
# DBOS's serialized columns (inputs and step outputs), rewritten through the serializer.
_SERIALIZED = {"inputs", "output"}
CLONE_CHUNK = 5_000


class _Template:
    """The rows of one run parked through the real path, and what identifies it."""

    def __init__(self, conn: psycopg.Connection[Any], state_id: uuid.UUID) -> None:
        row = conn.execute(
            "SELECT contact_id, trigger_event_id, workflow_id, next_wake_at"
            " FROM journey_states WHERE id = %s",
            (state_id,),
        ).fetchone()
        assert row is not None
        self.contact, self.event, self.workflow, self.due = row
        self.state = state_id
        keys = {"event": self.event, "state": self.state, "workflow": self.workflow}
        self.tables: list[tuple[str, list[str], list[tuple[Any, ...]]]] = []
        self.json_columns: set[str] = set()
        json_columns = self.json_columns
        for table, where in _RUN_ROWS:
            with conn.cursor() as cur:
                cur.execute(f"SELECT * FROM {table} WHERE {where}", keys)
                assert cur.description is not None
                columns = [c.name for c in cur.description]
                json_columns.update(c.name for c in cur.description if c.type_code in _JSON_OIDS)
                rows = cur.fetchall()
            # Serial ids are the database's to give.
            keep = [i for i, c in enumerate(columns) if not (table in _SERIAL and c == "id")]
            self.tables.append(
                (table, [columns[i] for i in keep], [tuple(r[i] for i in keep) for r in rows])
            )


_SERIAL = {"event_outbox", "journey_logs"}
_JSON_OIDS = {114, 3802}  # json, jsonb
_INVARIANT: set[str] = set()


class _Rewrite:
    """Maps every id of a template run to the clone's (and its due time to the clone's)."""

    def __init__(self, template: _Template, contact: uuid.UUID, due: datetime) -> None:
        self.ids = {
            template.contact: contact,
            template.state: uuid.uuid4(),
            template.event: uuid.uuid4(),
        }
        self.strings = [(str(old), str(new)) for old, new in self.ids.items()]
        self.strings.append((template.due.astimezone(UTC).isoformat(), due.isoformat()))
        self.old_due, self.due = template.due, due

    def value(self, value: Any) -> Any:
        if isinstance(value, uuid.UUID):
            return self.ids.get(value, value)
        if isinstance(value, str):
            for old, new in self.strings:
                value = value.replace(old, new)
            return value
        if isinstance(value, datetime):
            return self.due if value == self.old_due else value
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.value(v) for v in value)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            changes = {
                f.name: self.value(getattr(value, f.name)) for f in dataclasses.fields(value)
            }
            return dataclasses.replace(value, **changes)
        return value

    def column(self, name: str, value: Any, serialization: Any, json: bool) -> Any:
        if value is not None and name in _SERIALIZED and serialization == "py_pickle":
            if value in _INVARIANT:
                return value
            from dbos._serialization import DefaultSerializer

            serializer = DefaultSerializer()
            original = serializer.deserialize(value)
            rewritten = self.value(original)
            if rewritten == original:
                # No id in it (a clock reading, the park flag): the same for every clone.
                _INVARIANT.add(value)
                return value
            return serializer.serialize(rewritten)
        value = self.value(value)
        return Jsonb(value) if json and value is not None else value


def _clone_parked(
    url: str, templates: Sequence[uuid.UUID], contacts: Sequence[uuid.UUID], due: datetime
) -> float:
    """Write a parked run for each of ``contacts``, cloned round-robin from ``templates``
    (runs parked through the real path), due at ``due``; returns the clones per second."""
    started = time.perf_counter()
    with psycopg.connect(libpq_url(url)) as conn:
        loaded = [_Template(conn, state_id) for state_id in templates]
        for begin in range(0, len(contacts), CLONE_CHUNK):
            chunk = contacts[begin : begin + CLONE_CHUNK]
            rewrites = [
                (loaded[n % len(loaded)], _Rewrite(loaded[n % len(loaded)], contact, due))
                for n, contact in enumerate(chunk, start=begin)
            ]
            with conn.cursor() as cur:
                for index, (table, columns, _) in enumerate(loaded[0].tables):
                    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
                    with cur.copy(sql) as copy:
                        for template, rewrite in rewrites:
                            _, _, rows = template.tables[index]
                            for row in rows:
                                serial = dict(zip(columns, row, strict=True)).get(
                                    "serialization", "py_pickle"
                                )
                                copy.write_row(
                                    tuple(
                                        rewrite.column(c, v, serial, c in template.json_columns)
                                        for c, v in zip(columns, row, strict=True)
                                    )
                                )
            conn.commit()
    return len(contacts) / (time.perf_counter() - started)


class _PeakSampler:
    """Samples a process's RSS every half second, from a thread of the driver."""

    def __init__(self, pid: int | None) -> None:
        assert pid is not None
        self.process = psutil.Process(pid)
        self.peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._done.wait(0.5):
            try:
                self.peak = max(self.peak, self.process.memory_info().rss / 2**20)
            except psutil.Error:
                return

    def stop(self) -> float:
        self._done.set()
        self._thread.join(5)
        return round(self.peak, 1)


# -- entry point ------------------------------------------------------------------------------


def _options(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench journeys")
    parser.add_argument("--enrolls", type=int, default=ENROLLS, help="runs for the throughput part")
    parser.add_argument("--latency-rate", type=int, default=LATENCY_RATE, help="events/s offered")
    parser.add_argument("--latency-seconds", type=float, default=LATENCY_SECONDS)
    parser.add_argument("--parked", type=int, default=PARKED, help="parked runs (0 skips)")
    parser.add_argument("--wake", type=int, default=WAKE, help="of those, due together")
    parser.add_argument(
        "--wake-workers",
        type=int,
        default=1,
        help="worker processes sharing the wake-up of the due group",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=SAMPLE,
        help="parked runs made through the real path (the rest are clones of them)",
    )
    parser.add_argument("--skip", action="append", default=[], choices=["throughput", "latency"])
    options = parser.parse_args(list(argv))
    if options.parked and options.wake > options.parked:
        parser.error("--wake cannot exceed --parked")
    return options


def run(argv: Sequence[str] = ()) -> dict[str, Any]:
    """Measure every part (see the module docstring); print the table; return the numbers."""
    options = _options(argv)
    load = os.getloadavg()
    result: dict[str, Any] = {"load_avg_at_start": [round(x, 2) for x in load]}
    with embedded_server() as server:
        if "throughput" not in options.skip:
            bare = _in_process(_bare_main, migrated(server, "bench_bare"), options.enrolls, 1)
            bare3 = _in_process(_bare_main, migrated(server, "bench_bare3"), options.enrolls, 3)
            enroll = _enroll_part(migrated(server, "bench_enroll"), options.enrolls)
            ratio = round(enroll["per_s"] / bare["per_s"], 2)
            result |= {
                "bare": bare,
                "bare_three_steps": bare3,
                "enroll": enroll,
                "ratio": ratio,
                "ratio_to_three_steps": round(enroll["per_s"] / bare3["per_s"], 2),
            }
            print(f"bare DBOS one-step   {bare['per_s']:>8} workflows/s ({options.enrolls:,})")
            print(f"bare DBOS 3 steps    {bare3['per_s']:>8} workflows/s")
            print(f"enrollments          {enroll['per_s']:>8} runs/s completed")
            print(f"ratio                {ratio:>8} (target >= {TARGET_RATIO})")
        if "latency" not in options.skip:
            latency = _latency_part(
                migrated(server, "bench_latency"), options.latency_rate, options.latency_seconds
            )
            result["latency"] = latency
            first = latency["first_step_ms"]
            print(
                f"event -> first step  p50 {first['p50']} ms  p99 {first['p99']} ms "
                f"at {options.latency_rate}/s (target p99 < {TARGET_P99_MS} ms)"
            )
            warm = latency["warmup"]
            print(
                f"  warm-up (a fresh worker's first {warm['events']} events, not counted)"
                f" p50 {warm['first_step_ms']['p50']} ms  max {warm['first_step_ms']['max']} ms"
            )
        if options.parked:
            parked = _parked_part(
                migrated(server, "bench_parked"),
                options.parked,
                options.wake,
                options.sample,
                options.wake_workers,
                postgres_cpu_reader(server),
            )
            result["parked"] = parked
            print(
                f"parked {parked['parked']:,}: created {parked['create_per_s']}/s, "
                f"RSS {parked['rss_mb_parked']} MB, {parked['tasks_parked']} live tasks "
                f"(target < {TARGET_RSS_MB} MB)"
            )
            print(
                f"restart: graceful {parked['restart_graceful_s']} s, after SIGKILL "
                f"{parked['restart_after_sigkill_s']} s, "
                f"RSS {parked['rss_mb_after_restart']} MB"
            )
            print(
                f"wake {parked['wake']:,} due together: {parked['wake_s']} s "
                f"(target < {TARGET_WAKE_S} s)"
            )
    result["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["targets"] = {
        "ratio": TARGET_RATIO,
        "first_step_p99_ms": TARGET_P99_MS,
        "parked_rss_mb": TARGET_RSS_MB,
        "wake_s": TARGET_WAKE_S,
    }
    return result


if __name__ == "__main__":
    import sys

    print(json.dumps(run(sys.argv[1:]), indent=2))
