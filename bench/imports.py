"""Contact import: rows per second of a CSV import, against COPY into contacts.

One embedded Postgres with durable commits. The CSV has ``email,userId,plan,city`` for
``--rows`` distinct people (1,000,000 by default). Measured in one run, side by side:

* **ceiling**: ``COPY`` of the same people straight into ``contacts`` (fresh database):
  no parsing, no validation, no lookup, one transaction;
* **import**: the job as a worker runs it (:func:`hogsend.runtime.imports.import_chunk`
  until done, the function the DBOS step calls): parse and validate each line, COPY the
  chunk into a staging table, look the keys up and insert or patch the contacts
  set-based, advance the durable cursor, one transaction per chunk;
* **re-import**: the first ``--reimport-rows`` lines of the same file again (every row
  now updates its contact, among all the contacts of the first import);
* **row by row**: the previous path (one savepoint and one ``resolve_contact`` per
  line) on the first ``--sample`` rows, for the ratio.

Each part also reports what survives a loaded machine better than rows/s: the importing
process's CPU per row, the Postgres server's CPU per row (all its processes) and the
statements per chunk the engine sent (savepoints included; the chunk's one COPY goes
through the driver and is not counted).

Run with ``python -m bench imports [--rows=1000000] [--sample=500]
[--reimport-rows=100000] [--no-reimport]`` (the row-by-row path runs about 50 times
slower, so its sample stays small; with these defaults a quiet 2-core machine finishes
in about 3 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import psycopg
from sqlalchemy import event as sa_event

from bench._database import embedded_server, migrated
from bench._server_cpu import postgres_cpu_reader
from hogsend import Hogsend
from hogsend.core.contact_imports import ImportRow, prepare
from hogsend.db.engine import libpq_url, make_async_engine, make_sessionmaker
from hogsend.db.repos import imports as repo
from hogsend.runtime import imports as runtime

ROWS = 1_000_000
SAMPLE = 500
REIMPORT_ROWS = 100_000
CITIES = ("Paris", "Lyon", "Berlin", "Lisbon", "Oslo")


def _csv(n: int) -> bytes:
    lines = ["email,userId,plan,city"]
    lines += [
        f"person{i}@example.com,u{i},{'pro' if i % 3 else 'free'},{CITIES[i % 5]}" for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


def _ceiling(url: str, n: int) -> dict[str, Any]:
    started = time.perf_counter()
    copy_sql = "COPY contacts (id, external_id, email, properties) FROM STDIN"
    with (
        psycopg.connect(libpq_url(url)) as conn,
        conn.cursor() as cur,
        cur.copy(copy_sql) as copy,
    ):
        for i in range(n):
            plan = "pro" if i % 3 else "free"
            props = f'{{"plan": "{plan}", "city": "{CITIES[i % 5]}"}}'
            copy.write_row((uuid.uuid4(), f"u{i}", f"person{i}@example.com", props))
    took = time.perf_counter() - started
    return {"rows": n, "seconds": round(took, 2), "rows_per_s": round(n / took)}


async def _import(url: str, body: bytes, server_cpu: Callable[[], float]) -> dict[str, Any]:
    """Create the job as the API does and run it to the end as a worker does."""
    engine = make_async_engine(url, pool_size=2)
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    sa_event.listen(engine.sync_engine, "before_cursor_execute", count)
    app = Hogsend()
    mapping = prepare(body, "csv", {}, frozenset())
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            await repo.create_job(
                session, format="csv", content=body, mapping=mapping, size_bytes=len(body)
            )
            [(job_id, owner)] = await repo.claim_pending(session, datetime.now(UTC), limit=1)
        started = time.perf_counter()
        cpu_before, db_before, statements = time.process_time(), server_cpu(), 0
        chunks = 0
        while (await runtime.import_chunk(engine, app, job_id, owner)).state == "more":
            chunks += 1
        took = time.perf_counter() - started
        cpu = time.process_time() - cpu_before
        db_cpu = server_cpu() - db_before
        ran = statements
        async with make_sessionmaker(engine)() as session:
            job = await repo.get_job(session, job_id)
        assert job is not None
        assert job.status == "completed", (job.status, job.error)
        return {
            "rows": job.processed_rows,
            "failed": job.failed_rows,
            "created": job.created_contacts,
            "updated": job.updated_contacts,
            "chunks": chunks,
            "seconds": round(took, 2),
            "rows_per_s": round(job.processed_rows / took),
            # The importing process's own CPU per row (parse, validate, build the
            # statements): unlike rows/s, it survives a loaded machine.
            "cpu_us_per_row": round(cpu / max(job.processed_rows, 1) * 1e6, 1),
            "postgres_cpu_us_per_row": round(db_cpu / max(job.processed_rows, 1) * 1e6, 1),
            # Round trips, counted by the engine (savepoints included).
            "statements_per_chunk": round(ran / max(chunks, 1), 1),
        }
    finally:
        await engine.dispose()


async def _all_slow(
    session: Any, rows: Sequence[ImportRow], now: Any
) -> tuple[int, int, list[ImportRow]]:
    return 0, 0, list(rows)


def main(argv: list[str]) -> dict[str, Any]:
    """``python -m bench imports [--rows=N] [--sample=N] [--reimport-rows=N]``."""
    parser = argparse.ArgumentParser(prog="bench imports")
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--sample", type=int, default=SAMPLE)
    parser.add_argument("--reimport-rows", type=int, default=REIMPORT_ROWS)
    parser.add_argument("--no-reimport", action="store_true", help="skip importing it twice")
    args = parser.parse_args(argv)
    reimport = 0 if args.no_reimport else min(args.reimport_rows, args.rows)
    return run(args.rows, args.sample, reimport=reimport)


def run(rows: int = ROWS, sample: int = SAMPLE, *, reimport: int = REIMPORT_ROWS) -> dict[str, Any]:
    """Measure; print the table; return the numbers."""
    body = _csv(rows)
    result: dict[str, Any] = {
        "rows": rows,
        "file_bytes": len(body),
        "chunk_rows": runtime.CHUNK_ROWS,
    }
    with embedded_server() as server:
        db_cpu = postgres_cpu_reader(server)
        url = migrated(server, "bench_ceiling")
        result["ceiling_copy"] = _ceiling(url, rows)
        print(f"  COPY ceiling: {result['ceiling_copy']}", flush=True)
        url = migrated(server, "bench_import")
        result["import"] = asyncio.run(_import(url, body, db_cpu))
        print(f"  import: {result['import']}", flush=True)
        if reimport:
            again = body if reimport >= rows else _csv(reimport)
            result["reimport"] = asyncio.run(_import(url, again, db_cpu))
            print(f"  re-import: {result['reimport']}", flush=True)
        url = migrated(server, "bench_row_by_row")
        small = _csv(sample)
        bulk = runtime._import_bulk
        runtime._import_bulk = _all_slow
        try:
            result["row_by_row_sample"] = asyncio.run(_import(url, small, db_cpu))
        finally:
            runtime._import_bulk = bulk
        print(f"  row by row ({sample:,} rows): {result['row_by_row_sample']}", flush=True)
    ceiling = result["ceiling_copy"]["rows_per_s"]
    result["ratio_import_to_copy"] = round(result["import"]["rows_per_s"] / ceiling, 3)
    result["ratio_import_to_row_by_row"] = round(
        result["import"]["rows_per_s"] / result["row_by_row_sample"]["rows_per_s"], 1
    )
    print(
        f"\n{rows:,} rows: import {result['import']['rows_per_s']:,} rows/s,"
        f" re-import {result.get('reimport', {}).get('rows_per_s')} rows/s,"
        f" COPY {ceiling:,} rows/s (ratio {result['ratio_import_to_copy']}),"
        f" row by row {result['row_by_row_sample']['rows_per_s']:,} rows/s"
    )
    return result
