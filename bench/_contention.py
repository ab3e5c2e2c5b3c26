"""Where the batch path's time goes against the raw pool: parts switched off, and waits
for a core.

A diagnostic, not a benchmark (nothing is written to ``bench/results``). One embedded
Postgres (durable commits), the sink of :mod:`bench.send` and its ``CONCURRENCY``
lanes, and every scenario in this one process, taken in turn for ``ROUNDS`` rounds so
that each round's ratios compare runs a few seconds apart (this machine's speed moves
by half within minutes):

* ``raw``: :mod:`bench.send`'s ceiling, aiosmtplib's ``sendmail`` of pre-rendered
  messages on ``CONCURRENCY`` connections;
* ``pipelined``: the SMTP provider's own transaction on the same bytes, no database:
  the SMTP part of the mailer's work alone;
* ``batch``: ``Mailer.send_batch`` in chunks of 500 (:mod:`bench.send`'s
  ``mailer_batch``, the campaign path);
* ``null``: ``batch`` with a provider that accepts each message at once: the mailer's
  own work (gates, decision rows, render, tracking, outcome rows and events) without
  SMTP;
* ``no_event``: ``batch`` without the ``email.sent`` event and its outbox row;
* ``no_tracking``: ``batch`` with open and click tracking off.

For each: sends/s and the ratio to the round's ``raw``; CPU per message of this process
(net of nothing else: only one scenario runs at a time), of the sink and of Postgres;
the share of both cores left idle (``/proc/stat``); and the time per message that this
process, the sink and Postgres spent runnable but waiting for a core (the second field
of every thread's ``/proc/<pid>/task/<tid>/schedstat``). docs/benchmarks.md, "Where the
remaining gaps are", reads a run.

Run with ``python -m bench._contention [SENDS] [ROUNDS] [SCENARIO ...]``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psutil

from bench import send as bench_send
from bench._database import migrated_database
from bench._server_cpu import postgres_cpu_reader
from hogsend.cli.serving import tune_garbage_collector
from hogsend.runtime import event_loop

SENDS = 2000
ROUNDS = 3
WARMUP = 300
SCENARIOS = ("raw", "pipelined", "batch", "null", "no_event", "no_tracking")
BATCH = 500


def _idle_and_total() -> tuple[int, int]:
    """(idle and iowait, all) jiffies of the machine so far."""
    with open("/proc/stat") as stat:
        fields = [int(v) for v in stat.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)


def _run_queue_ns(pids: list[int]) -> int:
    """Nanoseconds the threads of ``pids`` have spent runnable, waiting for a core."""
    waited = 0
    for pid in pids:
        try:
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                waited += int((task / "schedstat").read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    return waited


def _postgres_pids() -> list[int]:
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


class _AcceptingProvider:
    """Accepts every message at once, as an SMTP server that costs nothing would."""

    name = "smtp"

    async def send(self, message: Any) -> Any:
        from hogsend.channels.email.message import ProviderResult

        await asyncio.sleep(0)
        return ProviderResult(provider=self.name, message_id=message.message_id())

    async def aclose(self) -> None:
        """Nothing to close."""


async def _measure(
    url: str,
    port: int,
    contact_ids: list[uuid.UUID],
    sends: int,
    rounds: int,
    scenarios: list[str],
    postgres_cpu: Callable[[], float],
) -> dict[str, list[dict[str, float]]]:
    import aiosmtplib

    from hogsend.channels.email import SmtpProvider
    from hogsend.channels.email.smtp import _give_back, _mail_transaction, envelope_sender
    from hogsend.channels.mailer import Mailer, SendRequest
    from hogsend.db.engine import make_async_engine
    from hogsend.settings import Settings

    tune_garbage_collector(api=False)
    sink_pid = bench_send._SINK_PID[0]
    assert sink_pid is not None

    def settings(**changed: Any) -> Settings:
        return Settings(
            env="test",
            database_url=url,
            secret_key="b" * 40,
            public_url="https://mail.example.test",
            email_from=bench_send.FROM,
            **changed,
        )

    engine = make_async_engine(url, pool_size=bench_send.CONCURRENCY + 2)
    smtp = SmtpProvider(host="127.0.0.1", port=port, tls="none", pool_size=bench_send.CONCURRENCY)
    no_event = Mailer(bench_send._app(), settings(), engine, smtp)
    no_event._sent_event = lambda *_, **__: None  # type: ignore[method-assign]
    mailers = {
        "batch": Mailer(bench_send._app(), settings(), engine, smtp),
        "null": Mailer(bench_send._app(), settings(), engine, _AcceptingProvider()),
        "no_event": no_event,
        "no_tracking": Mailer(
            bench_send._app(), settings(track_opens=False, track_clicks=False), engine, smtp
        ),
    }
    messages = bench_send.prerendered(sends)
    options = [] if messages[0].isascii() else ["BODY=8BITMIME"]
    sender = envelope_sender(bench_send.FROM)
    taken = [0]

    async def mailer_scenario(name: str, count: int = sends) -> None:
        mailer = mailers[name]
        start = taken[0]
        taken[0] += count
        for first in range(start, start + count, BATCH):
            requests = [
                SendRequest(
                    template=bench_send.TEMPLATE,
                    contact_id=contact_ids[i],
                    kind="campaign",
                    props=bench_send.PROPS,
                    idempotency_key=f"{name}:{i}",
                )
                for i in range(first, min(first + BATCH, start + count))
            ]
            for outcome in await mailer.send_batch(requests, concurrency=bench_send.CONCURRENCY):
                if isinstance(outcome, Exception) or outcome.decision != "sent":
                    raise RuntimeError(f"{name}: {outcome!r}")

    results: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
    async with bench_send.sink_clients(port) as clients:

        async def smtp_scenario(pipelined: bool) -> None:
            pending = iter(range(sends))

            async def lane(client: aiosmtplib.SMTP) -> None:
                for i in pending:
                    to = f"user{i}@example.com"
                    if pipelined:
                        await _mail_transaction(client, sender, to, messages[i], options)
                    else:
                        await client.sendmail(
                            bench_send.FROM, [to], messages[i], mail_options=options
                        )

            await asyncio.gather(*(lane(client) for client in clients))
            if pipelined:
                for client in clients:
                    _give_back(client)  # the replies are aiosmtplib's protocol's again

        runs: dict[str, Callable[[], Awaitable[None]]] = {
            "raw": lambda: smtp_scenario(False),
            "pipelined": lambda: smtp_scenario(True),
        }
        for name in mailers:
            runs[name] = lambda name=name: mailer_scenario(name)  # type: ignore[misc]

        for name in scenarios:  # warm-up: each mailer's plans and caches, the pools
            if name in mailers:
                await mailer_scenario(name, WARMUP)
        for round_no in range(rounds):
            for name in scenarios:
                machine, pg = _idle_and_total(), _postgres_pids()
                waits = (
                    _run_queue_ns([os.getpid()]),
                    _run_queue_ns([sink_pid]),
                    _run_queue_ns(pg),
                )
                cpu = time.process_time()
                sink_cpu, pg_cpu = bench_send._sink_cpu(sink_pid), postgres_cpu()
                started = time.perf_counter()
                await runs[name]()
                wall = time.perf_counter() - started
                idle = _idle_and_total()
                row = {
                    "sends_per_s": sends / wall,
                    "cpu_ms": (time.process_time() - cpu) / sends * 1000,
                    "sink_ms": (bench_send._sink_cpu(sink_pid) - sink_cpu) / sends * 1000,
                    "pg_ms": (postgres_cpu() - pg_cpu) / sends * 1000,
                    "idle": (idle[0] - machine[0]) / max(idle[1] - machine[1], 1),
                    "wait_us": (_run_queue_ns([os.getpid()]) - waits[0]) / sends / 1000,
                    "sink_wait_us": (_run_queue_ns([sink_pid]) - waits[1]) / sends / 1000,
                    "pg_wait_us": (_run_queue_ns(pg) - waits[2]) / sends / 1000,
                }
                results[name].append(row)
                raw = results["raw"][round_no]["sends_per_s"] if "raw" in results else 0.0
                ratio = f"{row['sends_per_s'] / raw:5.2f}x" if raw else ""
                print(
                    f"round {round_no + 1} {name:<12}{row['sends_per_s']:>7,.0f}/s {ratio}"
                    f"  cpu {row['cpu_ms']:.3f}  sink {row['sink_ms']:.3f}"
                    f"  pg {row['pg_ms']:.3f} ms  idle {row['idle']:.0%}"
                    f"  waiting for a core: this {row['wait_us']:.0f}"
                    f"  sink {row['sink_wait_us']:.0f}  pg {row['pg_wait_us']:.0f} us",
                    flush=True,
                )
    await smtp.aclose()
    await engine.dispose()
    return results


def run(sends: int = SENDS, rounds: int = ROUNDS, scenarios: list[str] | None = None) -> None:
    """Measure ``scenarios`` (default all, ``raw`` first) in turn for ``rounds`` rounds."""
    chosen = scenarios or list(SCENARIOS)
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)}")
    if "raw" in chosen:
        chosen = ["raw", *[name for name in chosen if name != "raw"]]
    mailer_runs = sum(name not in ("raw", "pipelined") for name in chosen)
    print(
        f"{sends:,} sends per scenario, {rounds} rounds, {bench_send.CONCURRENCY} in flight, "
        f"one process, load average {os.getloadavg()[0]:.2f}"
    )
    with migrated_database("bench_contention") as (server, url):
        contact_ids = bench_send._contacts(url, (WARMUP + sends * rounds) * mailer_runs)
        postgres_cpu = postgres_cpu_reader(server)
        with bench_send._sink() as (port, _counter, _size):
            event_loop.run(_measure(url, port, contact_ids, sends, rounds, chosen, postgres_cpu))


if __name__ == "__main__":
    counts = [int(arg) for arg in sys.argv[1:3] if arg.isdigit()]
    run(
        counts[0] if counts else SENDS,
        counts[1] if len(counts) > 1 else ROUNDS,
        [arg for arg in sys.argv[1:] if not arg.isdigit()] or None,
    )
