"""What API-key auth and rate limiting cost per request, against a bare FastAPI ceiling.

Starts the embedded Postgres, then serves in uvicorn subprocesses (one at a time, so
they do not compete for cores):

* ``bare``: a FastAPI app with one trivial route (the ceiling of FastAPI + uvicorn here);
* ``whoami``: hogsend's ``GET /v1/whoami`` with a valid key: request id + access log
  middleware, key lookup by hash (remembered for ``HOGSEND_API_KEY_CACHE_SECONDS``),
  scope check, and the Postgres rate limiter (hits taken in blocks): the default
  configuration;
* ``whoami-memory`` and ``whoami-unlimited``: the same with the in-process limiter and
  with rate limiting off, to split the cost;
* ``whoami-nocache``: the default configuration with the key cache off (one key lookup
  per request).

Each is loaded from this process over 50 keep-alive connections (50 requests in flight,
~10 s after a 1 s warm-up). The load generator is a minimal HTTP/1.1 client on asyncio
streams, not httpx: measured here, httpx's pool saturated its own core at ~170 req/s
with 50 connections (~940 req/s with one client per connection) while the bare server
could do ~4,600, so httpx would have measured itself. httpx still checks each route
answers 200 first. ``client_cpu`` is the share of one core the generator used; near 1.0
would mean the client, not the server, was the bottleneck.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import api_keys
from hogsend.testing.postgres import TestPostgres

DURATION_S = 10.0
WARMUP_S = 1.0
CONCURRENCY = 50
ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def _serve(
    factory: str, env: dict[str, str], ready_path: str, *, workers: int = 1
) -> Iterator[str]:
    """Run ``uvicorn --factory <factory>`` (``workers`` processes); yield its base URL."""
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            factory,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{factory} exited with {process.returncode}")
            try:
                if httpx.get(base + ready_path, timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{factory} did not become ready")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _connection_worker(
    host: str, port: int, request: bytes, deadline: float, latencies: list[float]
) -> int:
    """One keep-alive connection sending ``request`` until ``deadline``; returns errors."""
    reader, writer = await asyncio.open_connection(host, port)
    errors = 0
    try:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if status == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors += 1
    finally:
        writer.close()
    return errors


async def _drive(base: str, path: str, headers: dict[str, str], seconds: float) -> dict[str, Any]:
    host, port = base.removeprefix("http://").split(":")
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    latencies: list[float] = []
    cpu_started = time.process_time()
    started = time.perf_counter()
    deadline = started + seconds
    errors = await asyncio.gather(
        *(
            _connection_worker(host, int(port), request, deadline, latencies)
            for _ in range(CONCURRENCY)
        )
    )
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": sum(errors),
        "seconds": round(wall, 2),
        "req_per_s": round(len(latencies) / wall, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "client_cpu": round(cpu / wall, 2),
    }


def _percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, round(fraction * (len(sorted_values) - 1)))
    return sorted_values[index]


async def _load(base: str, path: str, headers: dict[str, str]) -> dict[str, Any]:
    # httpx checks the route answers as expected; the load itself uses raw connections.
    async with httpx.AsyncClient() as client:
        probe = await client.get(base + path, headers=headers)
        probe.raise_for_status()
    await _drive(base, path, headers, WARMUP_S)
    return await _drive(base, path, headers, DURATION_S)


async def _mint(url: str) -> str:
    engine = make_async_engine(url)
    try:
        async with make_sessionmaker(engine)() as session:
            _, raw = await api_keys.create_key(session, name="bench", scopes=["read"])
            await session.commit()
    finally:
        await engine.dispose()
    return raw


def run() -> dict[str, Any]:
    """Measure every scenario; print a table; return the numbers."""
    server = TestPostgres()
    server.start()
    try:
        url = server.fresh_database()
        key = asyncio.run(_mint(url))
        auth = {"Authorization": f"Bearer {key}"}
        common = {
            "HOGSEND_ENV": "test",
            "HOGSEND_DATABASE_URL": url,
            "HOGSEND_LOG_FORMAT": "json",
            "HOGSEND_LOG_LEVEL": "info",
        }
        generous = str(10**9)  # counted on every request, never reached
        scenarios: list[tuple[str, str, str, dict[str, str], dict[str, str]]] = [
            ("bare", "bench.apps:bare_api", "/ping", {}, {}),
            (
                "whoami",
                "bench.apps:hogsend_api",
                "/v1/whoami",
                {**common, "HOGSEND_RATE_LIMIT_DATA_PLANE": generous},
                auth,
            ),
            (
                "whoami-memory",
                "bench.apps:hogsend_api",
                "/v1/whoami",
                {
                    **common,
                    "HOGSEND_RATE_LIMIT_DATA_PLANE": generous,
                    "HOGSEND_RATE_LIMIT_BACKEND": "memory",
                },
                auth,
            ),
            (
                "whoami-unlimited",
                "bench.apps:hogsend_api",
                "/v1/whoami",
                {**common, "HOGSEND_RATE_LIMIT_DATA_PLANE": "0"},
                auth,
            ),
            (
                "whoami-nocache",
                "bench.apps:hogsend_api",
                "/v1/whoami",
                {
                    **common,
                    "HOGSEND_RATE_LIMIT_DATA_PLANE": generous,
                    "HOGSEND_API_KEY_CACHE_SECONDS": "0",
                },
                auth,
            ),
        ]
        results: dict[str, dict[str, Any]] = {}
        for name, factory, path, env, headers in scenarios:
            ready = "/v1/ready" if factory.endswith("hogsend_api") else path
            with _serve(factory, env, ready) as base:
                results[name] = asyncio.run(_load(base, path, headers))
    finally:
        server.stop()

    print(f"{'scenario':<18}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'client cpu':>12}")
    for name, r in results.items():
        print(
            f"{name:<18}{r['req_per_s']:>9}{r['p50_ms']:>9}{r['p99_ms']:>9}"
            f"{r['errors']:>8}{r['client_cpu']:>12}"
        )
    ratio = results["whoami"]["req_per_s"] / results["bare"]["req_per_s"]
    print(f"ratio whoami / bare: {ratio:.2f}")
    return {
        "concurrency": CONCURRENCY,
        "duration_s": DURATION_S,
        "server": "uvicorn (uvloop, httptools), 1 process",
        "results": results,
        "ratio_whoami_to_bare": round(ratio, 3),
        "ratios_to_bare": {
            name: round(r["req_per_s"] / results["bare"]["req_per_s"], 3)
            for name, r in results.items()
        },
    }
