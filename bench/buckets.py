"""Bucket backfill and reconcile at scale: rows/s of a backfill, seconds per sweep.

One embedded Postgres per population size, contacts and their events generated with
``COPY``: every contact has a plan property and ~3 events (``app.active``,
``page.view``, ``purchase``) spread over the last 60 days. Ten time-based buckets
(dormancy, activity, frequency, lapsed buyers ...). For each size:

* **backfill** (c): each bucket's silent backfill from nothing, chunk by chunk, with
  the worker's chunk size; rows/s = contacts looked at per second;
* **steady sweep** (b): sweeps one minute apart: members and join candidates are only
  the contacts with an event that crossed a window edge since the previous complete
  sweep (``bucket_configs.reconciled_at``; ``first`` is the sweep right after the
  backfills, ``steady`` the next);
* **full sweep**: the sweep without a watermark (none completed yet for the current
  criteria): every member of every bucket and every contact who ever had a windowed
  event are candidates; one set-based read per pass finds the ones to evaluate.

Linearity: the per-contact cost of each size (ms per 1,000 contacts) side by side.
Run with ``python -m bench buckets``; ``--sizes=100000,1000000`` for the big one,
``--skip=latency`` or ``--skip=sweep`` for one part, ``--rate=`` / ``--seconds=`` for the
latency run's offered load, ``--warmup=`` for the seconds of the same load offered first
(default 2) whose latencies are reported apart: a freshly started worker's first events
pay one-time costs (opening its pool's connections, preparing statements per
connection). The latency run also reports the worker's and Postgres's CPU ms and the
SQL statements per dispatched event, for the measured part only: on a shared machine
those survive the load, the percentiles do not.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import random
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import text

from bench._database import embedded_server, migrated, migrated_database
from bench._server_cpu import postgres_cpu_reader
from hogsend import Hogsend, define_bucket, where
from hogsend.core.definitions import BucketDefinition
from hogsend.db.embedded import EmbeddedPostgres
from hogsend.db.engine import libpq_url, make_async_engine
from hogsend.runtime.reconcile import BucketSweeper

if TYPE_CHECKING:
    from multiprocessing.synchronize import Event as MpEvent

SIZES = (100_000,)
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
CHUNK = 2000
BATCH = 1000
SEED = 7
LATENCY_RATE = 200  # events per second offered
LATENCY_SECONDS = 30.0
LATENCY_WARMUP_SECONDS = 2.0  # of the same load, before the measured part (reported apart)
LATENCY_CONTACTS = 20_000
LATENCY_PRODUCERS = 4


def buckets() -> list[BucketDefinition]:
    """The ten time-based buckets every size is measured with."""
    active, view, buy = "app.active", "page.view", "purchase"
    return (
        [
            define_bucket(
                id=f"dormant-{d}d",
                name=f"Dormant {d} days",
                criteria=where.all(
                    where.event(active).exists(), where.event(active).within(d * DAY).not_exists()
                ),
            )
            for d in (7, 14, 30)
        ]
        + [
            define_bucket(
                id=f"active-{d}d",
                name=f"Active within {d} days",
                criteria=where.event(active).within(d * DAY).exists(),
            )
            for d in (1, 7, 30)
        ]
        + [
            define_bucket(
                id="viewer",
                name="Viewed twice this week",
                criteria=where.event(view).within(7 * DAY).at_least(2),
            ),
            define_bucket(
                id="recent-buyer",
                name="Bought this month",
                criteria=where.event(buy).within(30 * DAY).exists(),
            ),
            define_bucket(
                id="lapsed-buyer",
                name="Bought before, not this month",
                criteria=where.all(
                    where.event(buy).exists(), where.event(buy).within(30 * DAY).not_exists()
                ),
            ),
            define_bucket(
                id="pro-idle",
                name="Pro plan, idle this week",
                criteria=where.all(
                    where.property("plan").equals("pro"),
                    where.event(active).within(7 * DAY).not_exists(),
                ),
            ),
        ]
    )


def _generate(url: str, n: int, *, now: datetime = NOW) -> tuple[int, float]:
    """COPY ``n`` contacts and their events (over the 60 days before ``now``); returns
    (events, seconds).

    Rows are written as COPY text in large blocks (``write_row`` per row costs several
    microseconds of Python each, which at 4M rows was most of the set-up time).
    """
    rng = random.Random(SEED)
    started = time.perf_counter()
    events = 0
    plans = ('{"plan": "free"}', '{"plan": "free"}', '{"plan": "pro"}', '{"plan": "team"}')
    names = ("app.active",) * 5 + ("page.view",) * 3 + ("purchase",)
    span = 60 * 86_400_000_000  # microseconds
    base = int(now.timestamp() * 1_000_000)
    ids: list[str] = []
    with psycopg.connect(libpq_url(url)) as conn:
        # Secondary indexes are built once after the load rather than maintained row by
        # row (random uuids make every insert a random index page): several times faster.
        indexes = conn.execute(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i"
            " WHERE i.tablename IN ('contacts', 'user_events') AND NOT EXISTS"
            " (SELECT 1 FROM pg_constraint k WHERE k.conname = i.indexname)"
        ).fetchall()
        for name, _ in indexes:
            conn.execute(f'DROP INDEX "{name}"')
        with conn.cursor() as cur:
            with cur.copy("COPY contacts (id, external_id, properties) FROM STDIN") as copy:
                block: list[str] = []
                for i in range(n):
                    cid = str(uuid.UUID(int=rng.getrandbits(128), version=4))
                    ids.append(cid)
                    # A fifth of the contacts have no external id (email-only / anonymous).
                    ext = "\\N" if i % 5 == 0 else f"u{i}"
                    block.append(f"{cid}\t{ext}\t{plans[rng.randrange(4)]}\n")
                    if len(block) == 50_000:
                        copy.write("".join(block))
                        block = []
                copy.write("".join(block))
            with cur.copy(
                "COPY user_events (contact_id, user_id, event, occurred_at) FROM STDIN"
            ) as copy:
                block = []
                for cid in ids:
                    for _ in range(rng.randint(1, 5)):
                        # A timezone-aware datetime prints as a literal COPY parses.
                        at = datetime.fromtimestamp((base - rng.randrange(span)) / 1e6, UTC)
                        block.append(f"{cid}\t{cid}\t{names[rng.randrange(9)]}\t{at}\n")
                        events += 1
                    if len(block) >= 50_000:
                        copy.write("".join(block))
                        block = []
                copy.write("".join(block))
        conn.execute("SET maintenance_work_mem = '256MB'")
        for _, definition in indexes:
            conn.execute(definition)
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE contacts")
        conn.execute("VACUUM ANALYZE user_events")
    return events, time.perf_counter() - started


async def _measure(url: str, n: int, server_cpu: Callable[[], float]) -> dict[str, Any]:
    engine = make_async_engine(url, pool_size=4)
    app = Hogsend(buckets=buckets())
    sweeper = BucketSweeper(app, engine, chunk_size=CHUNK, batch_size=BATCH)
    try:
        backfills: dict[str, dict[str, Any]] = {}
        for bucket in app.buckets:
            started, cpu, db_cpu = time.perf_counter(), time.process_time(), server_cpu()
            report = await sweeper.backfill(bucket, now=NOW)
            took = time.perf_counter() - started
            assert report.completed, report
            backfills[bucket.id] = {
                "seconds": round(took, 2),
                "rows_per_s": round(report.processed / took),
                "members": report.joined,
                # This process's CPU per contact: survives a loaded machine better.
                "python_cpu_us_per_row": round(
                    (time.process_time() - cpu) * 1e6 / max(report.processed, 1), 1
                ),
                "postgres_cpu_us_per_row": round(
                    (server_cpu() - db_cpu) * 1e6 / max(report.processed, 1), 1
                ),
            }
            print(f"    backfill {bucket.id}: {backfills[bucket.id]}", flush=True)
        sweeps = {}
        for label, at in (
            ("first", NOW + timedelta(minutes=1)),
            ("steady", NOW + timedelta(minutes=2)),
            ("full", NOW + timedelta(minutes=3)),
        ):
            if label == "full":
                # As after a crash before any sweep completed: no watermark, so every member
                # and every candidate is looked at.
                async with engine.begin() as conn:
                    await conn.execute(text("UPDATE bucket_configs SET reconciled_at = NULL"))
            started, cpu, db_cpu = time.perf_counter(), time.process_time(), server_cpu()
            swept = await sweeper.run_once(now=at)
            took = time.perf_counter() - started
            sweeps[label] = {
                "seconds": round(took, 2),
                "python_cpu_s": round(time.process_time() - cpu, 2),
                "postgres_cpu_s": round(server_cpu() - db_cpu, 2),
                "transitions": dict(swept.counts),
            }
            print(f"    sweep {label}: {sweeps[label]}", flush=True)
        async with engine.connect() as conn:
            members = await conn.scalar(
                text("SELECT count(*) FROM bucket_memberships WHERE status = 'active'")
            )
    finally:
        await engine.dispose()
    return {"backfill": backfills, "sweeps": sweeps, "active_members": members}


def _load() -> list[float]:
    """The machine's 1/5/15-minute load averages (other work competing for the cores)."""
    return [round(x, 2) for x in os.getloadavg()]


def run(sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    """Measure every size (each on a fresh server: generated once, then backfilled and
    swept); print the sizes side by side with their cost per 1,000 contacts; return the
    numbers."""
    results: dict[str, Any] = {}
    for n in sizes:
        load_before = _load()
        with migrated_database("bench_buckets") as (server, url):
            print(f"  {n:,} contacts: generating ...", flush=True)
            events, gen_s = _generate(url, n)
            print(
                f"  {n:,} contacts, {events:,} events in {gen_s:.1f} s; measuring ...",
                flush=True,
            )
            measured = asyncio.run(_measure(url, n, postgres_cpu_reader(server)))
        measured["contacts"] = n
        measured["events"] = events
        measured["generate_s"] = round(gen_s, 1)
        measured["load_avg_before"] = load_before
        measured["load_avg_after"] = _load()
        results[str(n)] = measured

    for n_s, r in results.items():
        n = int(n_s)
        rows_s = [b["rows_per_s"] for b in r["backfill"].values()]
        r["backfill_rows_per_s_mean"] = round(sum(rows_s) / len(rows_s))
        backfill_s = sum(b["seconds"] for b in r["backfill"].values())
        # Cost per 1,000 contacts: equal figures across sizes mean the cost grows linearly.
        r["ms_per_1k_contacts"] = {
            "backfill_all": round(backfill_s * 1000 / (n / 1000), 1),
            **{
                label: round(sweep["seconds"] * 1000 / (n / 1000), 3)
                for label, sweep in r["sweeps"].items()
            },
            # CPU (ours and Postgres's) rather than wall-clock: what a busy machine keeps.
            **{
                f"{label}_cpu": round(
                    (sweep["python_cpu_s"] + sweep["postgres_cpu_s"]) * 1000 / (n / 1000), 3
                )
                for label, sweep in r["sweeps"].items()
            },
        }
    print(
        f"\n10 time-based buckets, chunk {CHUNK}, batch {BATCH}, {os.cpu_count()} cores;"
        " ms per 1,000 contacts in brackets"
    )
    print(
        f"{'contacts':>10}{'load before':>13}{'backfill rows/s':>17}{'members':>10}"
        f"{'first sweep s':>20}{'steady sweep s':>20}{'full sweep s':>22}"
    )
    for n_s, r in results.items():
        per_1k = r["ms_per_1k_contacts"]
        cells = [
            f"{r['sweeps'][label]['seconds']} [{per_1k[label]}]"
            for label in ("first", "steady", "full")
        ]
        print(
            f"{int(n_s):>10,}{r['load_avg_before'][0]:>13}{r['backfill_rows_per_s_mean']:>17,}"
            f"{r['active_members']:>10,}{cells[0]:>20}{cells[1]:>20}{cells[2]:>22}"
        )
    linearity: dict[str, Any] = {}
    if len(results) > 1:
        # Growth of the per-contact cost from the smallest size to the largest (1.0: linear).
        small, large = results[str(min(sizes))], results[str(max(sizes))]
        linearity = {
            key: round(large["ms_per_1k_contacts"][key] / small["ms_per_1k_contacts"][key], 2)
            for key in small["ms_per_1k_contacts"]
            if small["ms_per_1k_contacts"][key]
        }
        print(f"per-contact cost, {max(sizes):,} vs {min(sizes):,} contacts: {linearity}")
    return {
        "sizes": list(sizes),
        "chunk": CHUNK,
        "batch": BATCH,
        "results": results,
        "linearity": linearity,
    }


# -- (a) event -> transition latency through the real dispatcher ------------------------


@contextmanager
def _server(*, commit_timestamps: bool = False) -> Iterator[EmbeddedPostgres]:
    """A fresh embedded Postgres with durable commits; optionally recording commit times
    (``track_commit_timestamp``, which needs a restart to take effect)."""
    with embedded_server() as server:
        if commit_timestamps:
            with psycopg.connect(libpq_url(server.url), autocommit=True) as conn:
                conn.execute("ALTER SYSTEM SET track_commit_timestamp = on")
            server.stop()
            server.start()
        yield server


def _latency_child(
    url: str, overrides: dict[str, Any], ready: MpEvent, mark: MpEvent, stop: MpEvent, out: Any
) -> None:
    asyncio.run(_latency_worker(url, overrides, ready, mark, stop, out))


async def _latency_worker(
    url: str, overrides: dict[str, Any], ready: MpEvent, mark: MpEvent, stop: MpEvent, out: Any
) -> None:
    """A worker's dispatcher with the app's consumers (bucket membership for ten
    buckets), listening for NOTIFY like a deployed worker. Puts on ``out`` its CPU
    seconds and SQL statements from ``mark`` (the end of the warm-up) to ``stop``: the
    measured load's cost, which survives a loaded machine."""
    from sqlalchemy import event as sa_event

    from hogsend.logs import configure_logging
    from hogsend.runtime.dispatcher import Dispatcher, build_consumers
    from hogsend.settings import Settings

    settings = Settings(
        env="test",
        database_url=url,
        worker_id="bench-latency",
        log_level="warning",
        log_format="json",
        **overrides,
    )
    configure_logging(settings)
    engine = make_async_engine(url, pool_size=settings.dispatcher_concurrency + 2)
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
    dispatcher = Dispatcher(engine, settings, build_consumers(Hogsend(buckets=buckets())))
    await dispatcher.start()
    while not dispatcher.listening:  # noqa: ASYNC110 - a flag, polled briefly
        await asyncio.sleep(0.01)
    ready.set()
    await asyncio.to_thread(mark.wait)
    cpu, statements = time.process_time(), 0
    await asyncio.to_thread(stop.wait)
    out.put({"cpu_s": time.process_time() - cpu, "statements": statements})
    await dispatcher.stop()
    await engine.dispose()


async def _offer(url: str, *, rate: float, seconds: float, contacts: int, seed: int = 0) -> int:
    """Ingest events through the API's one-round-trip path at ``rate`` per second, one
    transaction each, waking dispatchers with the API's NOTIFY throttle."""
    from hogsend.core.identity import Identity
    from hogsend.core.ingest import EventInput
    from hogsend.db.repos.events import ingest_event_fast
    from hogsend.db.repos.outbox import NotifyThrottle

    throttle = NotifyThrottle()
    per_producer = rate / LATENCY_PRODUCERS
    names = ("app.active", "page.view", "purchase")
    started = time.perf_counter()

    async def produce(slot: int) -> int:
        rng = random.Random(seed * LATENCY_PRODUCERS + slot)
        async with await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True) as conn:
            n = 0
            while True:
                due = n / per_producer
                if due >= seconds:
                    return n
                pause = started + due - time.perf_counter()
                if pause > 0:
                    await asyncio.sleep(pause)
                # Contacts with an external id (every fifth one has none).
                index = rng.randrange(contacts // 5) * 5 + rng.randint(1, 4)
                item = EventInput(
                    name=rng.choices(names, (5, 3, 1))[0],
                    identity=Identity(user_id=f"u{index}"),
                )
                result = await ingest_event_fast(conn, item, notify=throttle.due())
                assert result is not None, item
                assert result.status == "stored", result
                n += 1

    counts = await asyncio.gather(*(produce(slot) for slot in range(LATENCY_PRODUCERS)))
    return sum(counts)


# Commit to commit: the event's ingest transaction, and the dispatcher transaction that
# marked it processed together with its membership writes and transition events (an
# outbox row is rewritten by nothing else while its dispatcher runs; transition events
# are inserted, never updated; consumers run in savepoints, so a transition's xmin is a
# subtransaction of the dispatcher's, with the same commit timestamp).
_LATENCIES = """
SELECT extract(epoch FROM pg_xact_commit_timestamp(o.xmin)
                          - pg_xact_commit_timestamp(e.xmin)) AS seconds,
       EXISTS (SELECT 1 FROM user_events t
               WHERE t.contact_id = o.contact_id AND t.source = 'bucket'
                 AND pg_xact_commit_timestamp(t.xmin)
                     = pg_xact_commit_timestamp(o.xmin)) AS transition
FROM event_outbox o JOIN user_events e ON e.id = o.event_id
WHERE o.processed_at IS NOT NULL AND e.source = 'api' AND o.id > %(after)s
"""


# The two stages of the same span: waiting in the outbox (ingest commit -> the start of
# the claim that took the row; ``claimed_at`` is the claim transaction's ``now()`` and
# stays on the row once processed), then processing (claim -> the commit above).
_STAGES = """
SELECT extract(epoch FROM o.claimed_at - pg_xact_commit_timestamp(e.xmin)),
       extract(epoch FROM pg_xact_commit_timestamp(o.xmin) - o.claimed_at)
FROM event_outbox o JOIN user_events e ON e.id = o.event_id
WHERE o.processed_at IS NOT NULL AND e.source = 'api' AND o.id > %(after)s
"""


def _percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    values = sorted(values)
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(values[int(0.99 * (len(values) - 1))] * 1000, 1),
        "max_ms": round(values[-1] * 1000, 1),
    }


def _drained(conn: psycopg.Connection[Any], timeout: float) -> int:
    """Wait until the outbox has nothing left to process; returns what is left (0)."""
    deadline = time.monotonic() + timeout
    left = -1
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(*) FROM event_outbox WHERE processed_at IS NULL AND dead_at IS NULL"
        ).fetchone()
        left = int(row[0]) if row is not None else -1
        if left == 0:
            break
        time.sleep(0.1)
    return left


def _latency(
    server: EmbeddedPostgres,
    url: str,
    overrides: dict[str, Any],
    *,
    rate: float,
    seconds: float,
    warmup: float,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    ready, mark, stop, out = ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
    proc = ctx.Process(target=_latency_child, args=(url, overrides, ready, mark, stop, out))
    proc.start()
    server_cpu = postgres_cpu_reader(server)
    try:
        if not ready.wait(120):
            raise RuntimeError("the dispatcher process did not start")
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            warmed = 0
            if warmup > 0:
                # A freshly started worker's first events pay one-time costs (its pool's
                # connections, statements prepared per connection): offered and timed
                # like the others, reported apart.
                warmed = asyncio.run(
                    _offer(url, rate=rate, seconds=warmup, contacts=LATENCY_CONTACTS, seed=1)
                )
                _drained(conn, 120)
            row = conn.execute("SELECT coalesce(max(id), 0) FROM event_outbox").fetchone()
            boundary = int(row[0]) if row is not None else 0
            mark.set()
            db_cpu = server_cpu()
            offered = asyncio.run(
                _offer(url, rate=rate, seconds=seconds, contacts=LATENCY_CONTACTS)
            )
            # Not 0: the backlog did not drain in time (a machine too loaded for the
            # rate); the percentiles and per-event costs then leave out what waited.
            left = _drained(conn, 120)
            db_cpu = server_cpu() - db_cpu
            # Read while the dispatcher runs: stopping it releases (rewrites) its rows.
            rows = conn.execute(_LATENCIES, {"after": boundary}).fetchall()
            stages = conn.execute(_STAGES, {"after": boundary}).fetchall()
            warm_rows = conn.execute(
                _LATENCIES.replace("o.id >", "o.id <="), {"after": boundary}
            ).fetchall()
            transitions = conn.execute(
                "SELECT count(*) FROM user_events e JOIN event_outbox o ON o.event_id = e.id"
                " WHERE e.source = 'bucket' AND o.id > %(after)s",
                {"after": boundary},
            ).fetchone()
            # Events the dispatcher handled: the offered ones and the transitions.
            handled = conn.execute(
                "SELECT count(*) FROM event_outbox WHERE processed_at IS NOT NULL"
                " AND id > %(after)s",
                {"after": boundary},
            ).fetchone()
    finally:
        mark.set()
        stop.set()
        cost = out.get(timeout=60) if proc.is_alive() else {}
        proc.join(60)
    every = [float(r[0]) for r in rows]
    n_handled = int(handled[0]) if handled else 0
    moved = [float(r[0]) for r in rows if r[1]]
    return {
        "offered_events": offered,
        "offered_per_s": rate,
        "pending_at_end": left,
        "transition_events": int(transitions[0]) if transitions else 0,
        "all_events": _percentiles(every),
        "events_with_a_transition": _percentiles(moved),
        "stage_queued": _percentiles([float(r[0]) for r in stages]),
        "stage_processing": _percentiles([float(r[1]) for r in stages]),
        "warmup_seconds": warmup,
        "warmup_events": _percentiles([float(r[0]) for r in warm_rows]) if warmed else {"n": 0},
        "dispatched_events": n_handled,
        "worker_cpu_ms_per_event": round(cost.get("cpu_s", 0) * 1000 / max(n_handled, 1), 2),
        "postgres_cpu_ms_per_event": round(db_cpu * 1000 / max(n_handled, 1), 2),
        # Per offered (API) event: its own dispatch and that of the transitions it caused.
        "worker_cpu_ms_per_offered_event": round(cost.get("cpu_s", 0) * 1000 / max(offered, 1), 2),
        "postgres_cpu_ms_per_offered_event": round(db_cpu * 1000 / max(offered, 1), 2),
        "statements_per_event": round(cost.get("statements", 0) / max(n_handled, 1), 2),
    }


def measure_latency(
    settings_variants: dict[str, dict[str, Any]],
    *,
    rate: float = LATENCY_RATE,
    seconds: float = LATENCY_SECONDS,
    warmup: float = LATENCY_WARMUP_SECONDS,
) -> dict[str, Any]:
    """(a): event commit -> commit of the dispatcher transaction that applied its
    membership changes, per dispatcher configuration, each on a fresh database, after
    ``warmup`` seconds of the same load whose figures are reported apart."""
    out: dict[str, Any] = {}
    for label, overrides in settings_variants.items():
        with _server(commit_timestamps=True) as server:
            url = migrated(server, "bench_latency")
            _generate(url, LATENCY_CONTACTS, now=datetime.now(UTC))
            asyncio.run(_backfill_all(url))
            print(
                f"  latency [{label}]: {rate:g} events/s for {seconds:g} s"
                f" after a {warmup:g} s warm-up"
            )
            got = _latency(server, url, overrides, rate=rate, seconds=seconds, warmup=warmup)
            out[label] = {"settings": overrides, **got}
            got = out[label]
            print(
                f"    all events p50 {got['all_events'].get('p50_ms')} ms,"
                f" p99 {got['all_events'].get('p99_ms')} ms;"
                f" with a transition p50 {got['events_with_a_transition'].get('p50_ms')} ms,"
                f" p99 {got['events_with_a_transition'].get('p99_ms')} ms;"
                f" queued p50 {got['stage_queued'].get('p50_ms')} ms,"
                f" processing p50 {got['stage_processing'].get('p50_ms')} ms;"
                f" worker CPU {got['worker_cpu_ms_per_event']} ms/event,"
                f" Postgres CPU {got['postgres_cpu_ms_per_event']} ms/event,"
                f" {got['statements_per_event']} statements/event"
                f" ({got['dispatched_events']} dispatched);"
                f" warm-up apart: p50 {got['warmup_events'].get('p50_ms')} ms,"
                f" p99 {got['warmup_events'].get('p99_ms')} ms",
                flush=True,
            )
    return out


async def _backfill_all(url: str) -> None:
    engine = make_async_engine(url, pool_size=2)
    app = Hogsend(buckets=buckets())
    sweeper = BucketSweeper(app, engine, chunk_size=CHUNK, batch_size=BATCH)
    try:
        for bucket in app.buckets:
            await sweeper.backfill(bucket)
    finally:
        await engine.dispose()


def main(argv: list[str]) -> dict[str, Any]:
    """``python -m bench buckets [--sizes=100000,1000000] [--skip=latency,sweep]``."""
    parser = argparse.ArgumentParser(prog="bench buckets")
    parser.add_argument(
        "--sizes",
        default=",".join(str(n) for n in SIZES),
        help="contact counts for the backfill and sweep runs, comma-separated",
    )
    parser.add_argument("--skip", default="", help="parts to skip: latency, sweep")
    parser.add_argument(
        "--rate", type=float, default=LATENCY_RATE, help="events/s offered in the latency run"
    )
    parser.add_argument(
        "--seconds", type=float, default=LATENCY_SECONDS, help="length of the latency run"
    )
    parser.add_argument(
        "--warmup",
        type=float,
        default=LATENCY_WARMUP_SECONDS,
        help="seconds of the same load before the latency run, reported apart (0: none)",
    )
    args = parser.parse_args(argv)
    sizes = tuple(int(x) for x in args.sizes.split(",") if x)
    skip = set(filter(None, args.skip.split(",")))
    result: dict[str, Any] = {}
    if "latency" not in skip:
        result["latency"] = measure_latency(
            {
                "default": {},
                "one event per transaction": {"dispatcher_events_per_transaction": 1},
            },
            rate=args.rate,
            seconds=args.seconds,
            warmup=args.warmup,
        )
    if "sweep" not in skip:
        result.update(run(sizes))
    return result
