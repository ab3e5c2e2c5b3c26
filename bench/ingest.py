"""Ingest throughput: our event endpoints against the ceilings of the same machine.

One embedded Postgres, one fresh database, one run. Scenarios, each served by uvicorn
in a subprocess of its own (one at a time, so they do not compete for cores):

* ``insert``: a plain FastAPI endpoint parsing a small JSON body and doing one
  ``INSERT`` into ``user_events`` from a psycopg pool (10 connections): the ceiling for
  single requests;
* ``events``: our ``POST /v1/events`` (API key, scope, rate-limit count, contact
  resolution, event + outbox row, one transaction), each request with its own
  ``Idempotency-Key``; ``events-nokey`` the same without keys;
* ``copy``: raw ``COPY`` of the same event rows into ``user_events`` from this process,
  500 rows per transaction over 4 connections: the ceiling in events/s the ratios use
  (``copy-1conn``, the same over one connection, is shown for scale);
* ``batch``: our ``POST /v1/events/batch`` with 500 events per request;
* ``segment``: ``POST /segment/v1/batch`` with 500 ``track`` messages per request
  (HTTP Basic write key, ``messageId`` on every message, as Segment clients send).

Same setup for every HTTP scenario: ``uvicorn`` (uvloop, httptools) with ``API_WORKERS``
processes, the garbage collector tuned as ``hogsend serve`` tunes it, the same embedded
Postgres (the test server: ``fsync`` and ``synchronous_commit`` off). Every write, ours
and the ceilings', commits with the server's configured durability: the ceiling and
``COPY`` use the server default, our single-event path resets its connection to it
(``SET LOCAL synchronous_commit TO DEFAULT``), our batch path uses it as is.

Dispatcher (no consumers registered, one worker process, settings as ``hogsend worker``
sets them): ``dispatcher-drain`` drains the outbox rows the scenarios above stored
(real rows of our endpoints) for ~10 s and reports rows/s; ``events+dispatcher`` repeats
the ``events`` load on a fresh database with the dispatcher running next to the API and
samples the lag (age of the oldest pending outbox row, as ``/v1/health`` reports it)
and the backlog every 100 ms.

Load: 50 keep-alive connections from this process (a separate process from the
server), ~10 s each after a 1 s warm-up, with the minimal asyncio HTTP/1.1 client of
``bench/auth.py`` extended to POST pre-built bodies (httpx would measure itself).
Every request is distinct: users are drawn from a pool of 20,000, and idempotency keys
and message ids are never repeated (``wrapped`` reports a connection that ran out of
distinct bodies and repeated one). Run with ``python -m bench ingest``;
``python -m bench ingest --single`` runs only the single-event part (``insert``,
``events``, ``events-nokey``, in that order on one fresh database, as in the full run).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import multiprocessing as mp
import os
import statistics
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import psutil
import psycopg
from fastapi import FastAPI
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, Field

from bench.auth import _percentile, _serve
from hogsend.cli.serving import tune_garbage_collector
from hogsend.db.engine import libpq_url, make_async_engine, make_sessionmaker
from hogsend.db.repos import api_keys
from hogsend.settings import load_settings
from hogsend.testing.postgres import TestPostgres

DURATION_S = 10.0
WARMUP_S = 1.0
CONCURRENCY = 50
BATCH_SIZE = 500
USERS = 20_000
COPY_CONNECTIONS = 4
API_WORKERS = 1
SINGLE_BODIES_PER_CONNECTION = 1200
BATCH_BODIES_PER_CONNECTION = 14


# --------------------------------------------------------------------------- ceiling app


class _PlainEvent(BaseModel):
    name: str = Field(min_length=1)
    user_id: str = Field(alias="userId")
    event_properties: dict[str, Any] = Field(default_factory=dict, alias="eventProperties")


_INSERT = (
    "INSERT INTO user_events (contact_id, user_id, event, properties)"
    " VALUES (gen_random_uuid(), %s, %s, %s) RETURNING id"
)


def insert_api() -> FastAPI:
    """The single-request ceiling: parse a body, one INSERT, answer 202."""
    url = libpq_url(load_settings().database_url or "")
    pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
        url, min_size=2, max_size=10, kwargs={"autocommit": True}, open=False
    )

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        await pool.open()
        try:
            yield
        finally:
            await pool.close()

    api = FastAPI(lifespan=lifespan)

    @api.get("/ready")
    async def ready() -> dict[str, bool]:
        return {"ok": True}

    @api.post("/events", status_code=202)
    async def store(body: _PlainEvent) -> dict[str, str]:
        async with pool.connection() as conn:
            cursor = await conn.execute(
                _INSERT, (body.user_id, body.name, json.dumps(body.event_properties))
            )
            row = await cursor.fetchone()
        assert row is not None
        return {"eventId": str(row[0])}

    tune_garbage_collector()
    return api


# --------------------------------------------------------------------------- load


def _request(host: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _worker(
    host: str,
    port: int,
    requests: list[bytes],
    start: int,
    deadline: float,
    expect: int,
    latencies: list[float],
) -> tuple[int, int]:
    """Send ``requests`` (from ``start``, cycling) until ``deadline``; returns (errors, sent)."""
    reader, writer = await asyncio.open_connection(host, port)
    errors = sent = 0
    try:
        for index in itertools.count(start):
            if time.perf_counter() >= deadline:
                break
            started = time.perf_counter()
            writer.write(requests[index % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            sent += 1
            if status == expect:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
    finally:
        writer.close()
    return errors, sent


async def _drive(
    base: str, per_connection: list[list[bytes]], expect: int, seconds: float, offsets: list[int]
) -> dict[str, Any]:
    host, port = base.removeprefix("http://").split(":")
    latencies: list[float] = []
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    outcomes = await asyncio.gather(
        *(
            _worker(host, int(port), requests, offsets[i], deadline, expect, latencies)
            for i, requests in enumerate(per_connection)
        )
    )
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    for i, (_, sent) in enumerate(outcomes):
        offsets[i] += sent
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": sum(e for e, _ in outcomes),
        "seconds": round(wall, 2),
        "req_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "client_cpu": round(cpu / wall, 2),
        "wrapped": any(offsets[i] > len(requests) for i, requests in enumerate(per_connection)),
    }


_PGDATA: list[str] = []  # the data directory of the run's Postgres, once started


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by the API server (uvicorn children) and by Postgres.

    What the machine's other load does not change much, unlike req/s: with the
    requests counted, the CPU each request cost the API process and the database.
    """
    api = pg = 0.0
    for proc in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "uvicorn" in " ".join(proc.cmdline()):
                times = proc.cpu_times()
                api += times.user + times.system
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] != "postgres" or not _PGDATA:
            continue
        with contextlib.suppress(psutil.Error):
            command = proc.cmdline()
            if proc.cwd() == _PGDATA[0] or _PGDATA[0] in " ".join(command):
                times = proc.cpu_times()
                pg += times.user + times.system
                if "-D" in command:
                    # The postmaster: what its exited children (backends closed during
                    # the window) used, which the live processes' sum no longer holds.
                    pg += times.children_user + times.children_system
    return api, pg


async def _load(
    base: str,
    probe: tuple[str, bytes, dict[str, str]],
    per_connection: list[list[bytes]],
    expect: int,
    events_per_request: int = 1,
) -> dict[str, Any]:
    path, body, headers = probe
    async with httpx.AsyncClient() as client:
        response = await client.post(
            base + path, content=body, headers={**headers, "Content-Type": "application/json"}
        )
        if response.status_code != expect:
            raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:500]}")
    offsets = [0] * len(per_connection)
    await _drive(base, per_connection, expect, WARMUP_S, offsets)
    api_before, pg_before = _cpu_seconds()
    result = await _drive(base, per_connection, expect, DURATION_S, offsets)
    api_after, pg_after = _cpu_seconds()
    events = max(result["requests"] * events_per_request, 1)
    result["api_cpu_ms_per_event"] = round((api_after - api_before) * 1000 / events, 4)
    result["pg_cpu_ms_per_event"] = round((pg_after - pg_before) * 1000 / events, 4)
    return result


# --------------------------------------------------------------------------- bodies


def _event(serial: int, *, key: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "page_viewed",
        "userId": f"user-{(serial * 7919) % USERS}",
        "eventProperties": {"path": f"/docs/{serial % 50}", "ms": serial % 997, "ref": "bench"},
    }
    if key:
        body["idempotencyKey"] = f"e-{serial}"
    return body


def _single_bodies(
    host: str, headers: dict[str, str], *, key: bool, path: str
) -> list[list[bytes]]:
    serial = itertools.count()
    per_connection = []
    for _ in range(CONCURRENCY):
        requests = []
        for _ in range(SINGLE_BODIES_PER_CONNECTION):
            n = next(serial)
            event = _event(n, key=False)
            extra = {"Idempotency-Key": f"single-{n}"} if key else {}
            requests.append(_request(host, path, json.dumps(event).encode(), {**headers, **extra}))
        per_connection.append(requests)
    return per_connection


def _batch_bodies(host: str, headers: dict[str, str], kind: str) -> list[list[bytes]]:
    serial = itertools.count(10_000_000)
    per_connection = []
    for _ in range(CONCURRENCY):
        requests = []
        for _ in range(BATCH_BODIES_PER_CONNECTION):
            events = [_event(next(serial), key=True) for _ in range(BATCH_SIZE)]
            if kind == "batch":
                body: dict[str, Any] = {"events": events}
                path = "/v1/events/batch"
            else:
                body = {
                    "batch": [
                        {
                            "type": "track",
                            "event": e["name"],
                            "userId": e["userId"],
                            "properties": e["eventProperties"],
                            "messageId": e["idempotencyKey"],
                            "timestamp": "2026-01-31T12:00:00Z",
                            "context": {"library": {"name": "bench", "version": "1"}},
                        }
                        for e in events
                    ],
                    "sentAt": "2026-01-31T12:00:01Z",
                }
                path = "/segment/v1/batch"
            requests.append(_request(host, path, json.dumps(body).encode(), headers))
        per_connection.append(requests)
    return per_connection


# --------------------------------------------------------------------------- COPY ceiling


def _copy_rows(serial: itertools.count[int]) -> list[tuple[Any, ...]]:
    rows = []
    for _ in range(BATCH_SIZE):
        event = _event(next(serial), key=True)
        rows.append(
            (
                uuid.uuid4(),
                event["userId"],
                event["name"],
                json.dumps(event["eventProperties"]),
                event["idempotencyKey"],
                "copy",
            )
        )
    return rows


async def _copy_stream(
    url: str, serial: itertools.count[int], deadline: float, latencies: list[float]
) -> int:
    copied = 0
    async with await psycopg.AsyncConnection.connect(url) as conn:
        while time.perf_counter() < deadline:
            rows = _copy_rows(serial)
            started = time.perf_counter()
            async with (
                conn.transaction(),
                conn.cursor() as cursor,
                cursor.copy(
                    "COPY user_events (contact_id, user_id, event, properties, idempotency_key,"
                    " source) FROM STDIN"
                ) as copy,
            ):
                for row in rows:
                    await copy.write_row(row)
            latencies.append(time.perf_counter() - started)
            copied += len(rows)
    return copied


async def _copy_ceiling(url: str, connections: int, first_serial: int) -> dict[str, Any]:
    serial = itertools.count(first_serial)
    conninfo = libpq_url(url)
    for seconds, keep in ((WARMUP_S, False), (DURATION_S, True)):
        latencies: list[float] = []
        started = time.perf_counter()
        copied = await asyncio.gather(
            *(
                _copy_stream(conninfo, serial, started + seconds, latencies)
                for _ in range(connections)
            )
        )
        wall = time.perf_counter() - started
        if keep:
            latencies.sort()
            return {
                "requests": len(latencies),
                "events": sum(copied),
                "seconds": round(wall, 2),
                "req_per_s": round(len(latencies) / wall, 1),
                "events_per_s": round(sum(copied) / wall, 1),
                "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
                "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
                "connections": connections,
            }
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------- dispatcher

_PENDING_SQL = "processed_at IS NULL AND dead_at IS NULL"
_LAG_SQL = (
    "SELECT count(*), coalesce(extract(epoch FROM now() - min(created_at)), 0)"
    f" FROM event_outbox WHERE {_PENDING_SQL}"
)


def _dispatcher_child(url: str, ready: Any, stop: Any) -> None:
    asyncio.run(_dispatcher_main(url, ready, stop))


async def _dispatcher_main(url: str, ready: Any, stop: Any) -> None:
    """One dispatcher with no consumers, as a worker runs it, until ``stop`` is set."""
    from hogsend.db.engine import make_async_engine
    from hogsend.logs import configure_logging
    from hogsend.runtime.dispatcher import Dispatcher
    from hogsend.settings import Settings

    settings = Settings(
        env="test",
        database_url=url,
        worker_id="bench-dispatcher",
        log_level="warning",
        log_format="json",
    )
    configure_logging(settings)
    engine = make_async_engine(url, pool_size=settings.dispatcher_concurrency + 2)
    dispatcher = Dispatcher(engine, settings, [])
    await dispatcher.start()
    while settings.dispatcher_listen and not dispatcher.listening:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    ready.set()
    await asyncio.to_thread(stop.wait)
    await dispatcher.stop()
    await engine.dispose()


@contextlib.contextmanager
def _dispatcher(url: str) -> Any:
    """A dispatcher process (no consumers) running for the ``with`` block."""
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_dispatcher_child, args=(url, ready, stop))
    proc.start()
    try:
        if not ready.wait(120):
            raise RuntimeError("the dispatcher process did not start")
        yield
    finally:
        stop.set()
        proc.join(60)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _processed(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM event_outbox WHERE processed_at IS NOT NULL"
    ).fetchone()
    return int(row[0]) if row else 0


def _dispatcher_drain(url: str) -> dict[str, Any]:
    """Rows/s the dispatcher processes from the outbox the scenarios left, ~DURATION_S."""
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        row = conn.execute(f"SELECT count(*) FROM event_outbox WHERE {_PENDING_SQL}").fetchone()
        pending = int(row[0]) if row else 0
        with _dispatcher(url):
            before, started = _processed(conn), time.perf_counter()
            while time.perf_counter() - started < DURATION_S:
                time.sleep(0.1)
            done, wall = _processed(conn) - before, time.perf_counter() - started
    return {
        "pending_at_start": pending,
        "rows": done,
        "seconds": round(wall, 2),
        "rows_per_s": round(done / wall, 1),
        "drained": done >= pending,
    }


def _lag_under_load(url: str, run_load: Any) -> dict[str, Any]:
    """Run ``run_load()`` with a dispatcher alongside; sample lag and backlog meanwhile."""
    samples: list[tuple[int, float]] = []
    sampling = threading.Event()

    def sample() -> None:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            while not sampling.is_set():
                row = conn.execute(_LAG_SQL).fetchone()
                if row is not None:
                    samples.append((int(row[0]), float(row[1])))
                time.sleep(0.1)

    with _dispatcher(url), psycopg.connect(libpq_url(url), autocommit=True) as conn:
        sampler = threading.Thread(target=sample)
        sampler.start()
        before, started = _processed(conn), time.perf_counter()
        try:
            load = run_load()
        finally:
            wall = time.perf_counter() - started
            processed = _processed(conn) - before
            sampling.set()
            sampler.join()
        # The rest of the backlog, drained after the load stopped.
        settled = time.perf_counter()
        while time.perf_counter() - settled < 60:
            row = conn.execute(f"SELECT count(*) FROM event_outbox WHERE {_PENDING_SQL}").fetchone()
            if row is None or int(row[0]) == 0:
                break
            time.sleep(0.05)
        drain_s = time.perf_counter() - settled
    lags = sorted(age for _, age in samples)
    return {
        **load,
        "dispatched_per_s": round(processed / wall, 1),
        "lag_p50_ms": round(statistics.median(lags) * 1000, 1) if lags else None,
        "lag_p99_ms": round(_percentile(lags, 0.99) * 1000, 1) if lags else None,
        "lag_max_ms": round(lags[-1] * 1000, 1) if lags else None,
        "max_backlog": max((n for n, _ in samples), default=0),
        "drain_after_s": round(drain_s, 2),
    }


# --------------------------------------------------------------------------- run


async def _mint(url: str) -> str:
    engine = make_async_engine(url)
    try:
        async with make_sessionmaker(engine)() as session:
            _, raw = await api_keys.create_key(session, name="bench", scopes=["ingest"])
            await session.commit()
    finally:
        await engine.dispose()
    return raw


def run(*, single_only: bool = False) -> dict[str, Any]:
    """Measure every scenario (or the single-event ones); print a table; return the numbers."""
    load_before = os.getloadavg()
    server = TestPostgres()
    server.start()
    _PGDATA[:] = [str(server.server.pgdata)]
    results: dict[str, dict[str, Any]] = {}
    try:
        url = server.fresh_database()
        key = asyncio.run(_mint(url))
        bearer = {"Authorization": f"Bearer {key}"}
        basic = {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}
        env = {
            "HOGSEND_ENV": "test",
            "HOGSEND_DATABASE_URL": url,
            "HOGSEND_LOG_FORMAT": "json",
            "HOGSEND_LOG_LEVEL": "info",
            "HOGSEND_RATE_LIMIT_DATA_PLANE": str(10**9),  # counted, never reached
            # The hot path's driver pool is half the SQL pool: 20 gives it the same 10
            # connections the bare-INSERT ceiling has, so both sides get equal resources.
            "HOGSEND_DB_POOL_SIZE": "20",
        }
        host = "127.0.0.1"
        with _serve("bench.ingest:insert_api", env, "/ready", workers=API_WORKERS) as base:
            bodies = _single_bodies(host, {}, key=False, path="/events")
            probe: tuple[str, bytes, dict[str, str]] = (
                "/events",
                json.dumps(_event(-1, key=False)).encode(),
                {},
            )
            results["insert"] = asyncio.run(_load(base, probe, bodies, 202))
        for name, with_key in (("events", True), ("events-nokey", False)):
            with _serve("bench.apps:hogsend_api", env, "/v1/ready", workers=API_WORKERS) as base:
                bodies = _single_bodies(host, bearer, key=with_key, path="/v1/events")
                probe = ("/v1/events", json.dumps(_event(-2, key=False)).encode(), bearer)
                results[name] = asyncio.run(_load(base, probe, bodies, 202))
            results[name]["events_per_s"] = results[name]["req_per_s"]
        results["insert"]["events_per_s"] = results["insert"]["req_per_s"]
        if single_only:
            return _report(load_before, results)
        results["copy"] = asyncio.run(_copy_ceiling(url, COPY_CONNECTIONS, 50_000_000))
        results["copy-1conn"] = asyncio.run(_copy_ceiling(url, 1, 90_000_000))
        for name, headers in (("batch", bearer), ("segment", basic)):
            with _serve("bench.apps:hogsend_api", env, "/v1/ready", workers=API_WORKERS) as base:
                bodies = _batch_bodies(host, headers, name)
                path = "/v1/events/batch" if name == "batch" else "/segment/v1/batch"
                empty = b'{"events": []}' if name == "batch" else b'{"batch": []}'
                results[name] = asyncio.run(
                    _load(base, (path, empty, headers), bodies, 200, BATCH_SIZE)
                )
            results[name]["events_per_s"] = round(results[name]["req_per_s"] * BATCH_SIZE, 1)
        results["dispatcher-drain"] = _dispatcher_drain(url)
        # The events load again, on a fresh database, with the dispatcher running.
        lag_url = server.fresh_database()
        lag_key = asyncio.run(_mint(lag_url))
        lag_bearer = {"Authorization": f"Bearer {lag_key}"}
        lag_env = {**env, "HOGSEND_DATABASE_URL": lag_url}
        with _serve("bench.apps:hogsend_api", lag_env, "/v1/ready", workers=API_WORKERS) as base:
            bodies = _single_bodies(host, lag_bearer, key=True, path="/v1/events")
            probe = ("/v1/events", json.dumps(_event(-3, key=False)).encode(), lag_bearer)
            results["events+dispatcher"] = _lag_under_load(
                lag_url, lambda: asyncio.run(_load(base, probe, bodies, 202))
            )
        results["events+dispatcher"]["events_per_s"] = results["events+dispatcher"]["req_per_s"]
    finally:
        server.stop()
    return _report(load_before, results)


def _report(load_before: tuple[float, float, float], results: dict[str, Any]) -> dict[str, Any]:
    """Print the table of ``results`` and return what to keep (a partial run included)."""
    header = (
        f"{'scenario':<18}{'req/s':>9}{'events/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}"
        f"{'API CPU ms/ev':>15}{'PG CPU ms/ev':>14}"
    )
    print(header)
    for name, r in results.items():
        if "req_per_s" not in r:
            continue
        print(
            f"{name:<18}{r['req_per_s']:>9}{r['events_per_s']:>11}{r['p50_ms']:>9}"
            f"{r['p99_ms']:>9}{r.get('errors', 0):>8}"
            f"{r.get('api_cpu_ms_per_event', '-'):>15}{r.get('pg_cpu_ms_per_event', '-'):>14}"
        )
    drain = results.get("dispatcher-drain")
    if drain is not None:
        print(
            f"dispatcher, no consumers: {drain['rows_per_s']} rows/s draining"
            f" {drain['pending_at_start']} stored rows ({drain['rows']} in {drain['seconds']} s)"
        )
    under = results.get("events+dispatcher")
    if under is not None:
        print(
            f"under the events load ({under['req_per_s']} req/s): dispatched"
            f" {under['dispatched_per_s']} rows/s, lag p50 {under['lag_p50_ms']} ms,"
            f" p99 {under['lag_p99_ms']} ms, max {under['lag_max_ms']} ms,"
            f" backlog max {under['max_backlog']}, drained {under['drain_after_s']} s after"
        )
    ratios = {
        name: round(results[ours]["events_per_s"] / results[ceiling]["events_per_s"], 3)
        for name, ours, ceiling in (
            ("events_to_insert", "events", "insert"),
            ("events_nokey_to_insert", "events-nokey", "insert"),
            ("batch_to_copy", "batch", "copy"),
            ("segment_to_copy", "segment", "copy"),
        )
        if ours in results and ceiling in results
    }
    for name, value in ratios.items():
        print(f"ratio {name}: {value:.2f}")
    return {
        "concurrency": CONCURRENCY,
        "duration_s": DURATION_S,
        "batch_size": BATCH_SIZE,
        "users": USERS,
        "server": f"uvicorn (uvloop, httptools), {API_WORKERS} process(es) per scenario",
        "postgres": "embedded, same machine; fsync and synchronous_commit off for every writer",
        "targets": {"events_to_insert": 0.7, "batch_to_copy": 0.25},
        # Other processes share the cores: req/s move with this, CPU ms per event hardly.
        "load_average_1min": {
            "before": round(load_before[0], 2),
            "after": round(os.getloadavg()[0], 2),
        },
        "results": results,
        "ratios": ratios,
    }


def main(argv: Sequence[str]) -> dict[str, Any]:
    """``python -m bench ingest [--single]``."""
    parser = argparse.ArgumentParser(prog="python -m bench ingest")
    parser.add_argument(
        "--single",
        action="store_true",
        help="only the single-event scenarios (insert, events, events-nokey)",
    )
    options = parser.parse_args(argv)
    return run(single_only=options.single)
