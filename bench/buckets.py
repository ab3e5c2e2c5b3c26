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
  criteria): every member of every bucket re-evaluated and absence joins over every
  contact who ever had a windowed event.

Linearity: the per-contact cost of each size (ms per 1,000 contacts) side by side.
Run with ``python -m bench buckets``; ``run(sizes=(1_000_000,))`` for the big one.
"""

from __future__ import annotations

import asyncio
import json
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import text

from hogsend import Hogsend, define_bucket, where
from hogsend.core.definitions import BucketDefinition
from hogsend.db import migrate
from hogsend.db.embedded import EmbeddedPostgres
from hogsend.db.engine import libpq_url, make_async_engine
from hogsend.runtime.reconcile import BucketSweeper

SIZES = (25_000, 100_000)
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
CHUNK = 2000
BATCH = 1000
SEED = 7


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


def _generate(url: str, n: int) -> tuple[int, float]:
    """COPY ``n`` contacts and their events; returns (events, seconds)."""
    rng = random.Random(SEED)
    started = time.perf_counter()
    events = 0
    with psycopg.connect(libpq_url(url)) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY contacts (id, external_id, properties) FROM STDIN") as copy:
                ids = []
                for i in range(n):
                    cid = uuid.UUID(int=rng.getrandbits(128), version=4)
                    ids.append(cid)
                    plan = rng.choice(("free", "free", "pro", "team"))
                    # A fifth of the contacts have no external id (email-only / anonymous).
                    ext = None if i % 5 == 0 else f"u{i}"
                    copy.write_row((cid, ext, json.dumps({"plan": plan})))
            with cur.copy(
                "COPY user_events (contact_id, user_id, event, occurred_at) FROM STDIN"
            ) as copy:
                for cid in ids:
                    for _ in range(rng.randint(1, 5)):
                        name = rng.choices(("app.active", "page.view", "purchase"), (5, 3, 1))[0]
                        at = NOW - timedelta(seconds=rng.uniform(0, 60 * 86_400))
                        copy.write_row((cid, str(cid), name, at))
                        events += 1
        conn.execute("ANALYZE")
    return events, time.perf_counter() - started


async def _measure(url: str, n: int) -> dict[str, Any]:
    engine = make_async_engine(url, pool_size=4)
    app = Hogsend(buckets=buckets())
    sweeper = BucketSweeper(app, engine, chunk_size=CHUNK, batch_size=BATCH)
    try:
        backfills: dict[str, dict[str, Any]] = {}
        for bucket in app.buckets:
            started = time.perf_counter()
            report = await sweeper.backfill(bucket, now=NOW)
            took = time.perf_counter() - started
            assert report.completed, report
            backfills[bucket.id] = {
                "seconds": round(took, 2),
                "rows_per_s": round(report.processed / took),
                "members": report.joined,
            }
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
            started = time.perf_counter()
            report = await sweeper.run_once(now=at)
            took = time.perf_counter() - started
            sweeps[label] = {"seconds": round(took, 2), "transitions": dict(report.counts)}
        async with engine.connect() as conn:
            members = await conn.scalar(
                text("SELECT count(*) FROM bucket_memberships WHERE status = 'active'")
            )
    finally:
        await engine.dispose()
    return {"backfill": backfills, "sweeps": sweeps, "active_members": members}


def run(sizes: tuple[int, ...] = SIZES) -> dict[str, Any]:
    """Measure every size; print the table; return the numbers."""
    results: dict[str, Any] = {}
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix="hogsend-bench-") as tmp:
            server = EmbeddedPostgres(Path(tmp), database="postgres")
            server.start()
            try:
                url = server.create_database("bench_buckets")
                migrate.upgrade(url)
                print(f"  {n:,} contacts: generating ...", flush=True)
                events, gen_s = _generate(url, n)
                print(
                    f"  {n:,} contacts, {events:,} events in {gen_s:.1f} s; measuring ...",
                    flush=True,
                )
                measured = asyncio.run(_measure(url, n))
            finally:
                server.stop()
        measured["contacts"] = n
        measured["events"] = events
        results[str(n)] = measured

    print(f"\n10 time-based buckets, chunk {CHUNK}, batch {BATCH}")
    print(
        f"{'contacts':>10}{'backfill rows/s':>17}{'members':>10}{'first sweep s':>15}"
        f"{'steady sweep s':>16}{'full sweep s':>17}{'full ms/1k':>15}"
    )
    for n_s, r in results.items():
        n = int(n_s)
        rows_s = [b["rows_per_s"] for b in r["backfill"].values()]
        mean_rows = round(sum(rows_s) / len(rows_s))
        r["backfill_rows_per_s_mean"] = mean_rows
        steady = r["sweeps"]["steady"]["seconds"]
        full = r["sweeps"]["full"]["seconds"]
        r["full_ms_per_1k_contacts"] = round(full * 1000 / (n / 1000), 2)
        r["steady_ms_per_1k_contacts"] = round(steady * 1000 / (n / 1000), 3)
        print(
            f"{n:>10,}{mean_rows:>17,}{r['active_members']:>10,}"
            f"{r['sweeps']['first']['seconds']:>15}{steady:>16}{full:>17}"
            f"{r['full_ms_per_1k_contacts']:>15}"
        )
    return {"sizes": list(sizes), "chunk": CHUNK, "batch": BATCH, "results": results}
