"""Where a batch send's time goes: the SMTP lanes of ``Mailer.send_batch``, step by step.

A diagnostic, not a benchmark (no ceiling, nothing written to ``bench/results``): one
embedded Postgres, the sink of :mod:`bench.send`, and ``send_batch`` of ``SENDS``
messages with ``CONCURRENCY`` lanes, as :mod:`bench.send`'s ``mailer_batch`` scenario,
in this process. Each SMTP write and reply of every connection and each outcome write
is time-stamped (by wrapping the provider's reply reader and the outcome writer), and
the lane's cycle per message is printed:

* ``MAIL``, ``RCPT`` and ``DATA`` written → their replies (the ``354``);
* the message written → its ending line written: the wait for the commit of the
  lane's previous outcome (the gate that bounds the at-least-once window);
* the ending line (or the message and its ending together, when the gate had already
  opened) → the ``250``;
* the ``250`` → the lane's next envelope;

and each outcome write's time (its statement and commit, once its group is gathered)
and size.

Run with ``python -m bench._lanes [SENDS]`` (``HOGSEND_BENCH_CONCURRENCY`` sets the
lanes, as for the benchmarks). docs/benchmarks.md, "Where the remaining gaps are",
reads one run.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from bench import send as bench_send
from bench._database import migrated_database
from hogsend.channels.email import smtp
from hogsend.runtime import event_loop

SENDS = 3000
WARMUP = 150

Stamp = tuple[float, str]

STEPS = {
    ("envelope", "reply"): "envelope written → its replies (354)",
    ("body", "ending"): "message written → ending line (waiting for the gate)",
    ("ending", "reply"): "ending line → 250",
    ("message", "reply"): "message and ending together → 250 (gate already open)",
    ("reply", "envelope"): "250 → next envelope",
}


def _kind(data: bytes) -> str:
    if data.startswith(b"MAIL FROM:"):
        return "envelope"
    if data == b".\r\n":
        return "ending"
    if data.endswith(b"\r\n.\r\n"):
        return "message"
    return "body"


def _instrument(stamps: dict[int, list[Stamp]], writes: list[tuple[float, int]]) -> None:
    """Wrap the provider's writes and reply reads and the outcome writes, recording."""
    # Imported once the email package is (at the top): it and send_batches import each
    # other, and send_batches first would find the package half made.
    from hogsend.channels import send_batches

    write = smtp._Pipeline.write
    read = smtp._Pipeline.read
    init = send_batches.GroupCommit.__init__

    def timed_write(self: Any, data: bytes) -> None:
        write(self, data)
        stamps[id(self)].append((time.perf_counter(), _kind(data)))

    async def timed_read(self: Any, count: int = 1) -> list[Any]:
        replies = await read(self, count)
        stamps[id(self)].append((time.perf_counter(), "reply"))
        return replies

    def timed_init(self: Any, write: Callable[[list[Any]], Awaitable[None]], **kwargs: Any) -> None:
        async def timed(items: list[Any]) -> None:
            started = time.perf_counter()
            await write(items)
            writes.append((time.perf_counter() - started, len(items)))

        init(self, timed, **kwargs)

    smtp._Pipeline.write = timed_write  # type: ignore[method-assign]
    smtp._Pipeline.read = timed_read  # type: ignore[method-assign]
    send_batches.GroupCommit.__init__ = timed_init  # type: ignore[method-assign]


def _steps(stamps: dict[int, list[Stamp]]) -> dict[str, list[float]]:
    """Milliseconds between consecutive stamps of each connection, by step."""
    steps: dict[str, list[float]] = defaultdict(list)
    for sequence in stamps.values():
        for (before, first), (after, second) in itertools.pairwise(sequence):
            name = STEPS.get((first, second))
            if name is not None:
                steps[name].append((after - before) * 1000)
    return steps


def _ms(values: list[float]) -> str:
    return f"mean {statistics.mean(values):6.2f}  median {statistics.median(values):6.2f}"


def run(sends: int = SENDS) -> dict[str, Any]:
    """Trace ``sends`` batch sends; print the lane cycle; return it."""
    stamps: dict[int, list[Stamp]] = defaultdict(list)
    writes: list[tuple[float, int]] = []
    _instrument(stamps, writes)
    with migrated_database("bench_lanes") as (_, url):
        ids = bench_send._contacts(url, WARMUP + sends)
        with bench_send._sink() as (port, _, _):
            result = event_loop.run(
                bench_send._mailer(port, url, ids, sends, WARMUP, True, bench_send._SINK_PID[0])
            )
    steps = _steps(stamps)
    print(
        f"\nsend_batch: {sends:,} sends after {WARMUP} warm-up, "
        f"{bench_send.CONCURRENCY} lanes: {result['sends_per_s']:,} sends/s, "
        f"{result['cpu_ms_per_send']} ms CPU per send"
    )
    print("a lane's cycle, ms per message:")
    for name in STEPS.values():
        if steps.get(name):
            print(f"  {name:<56} {_ms(steps[name])}  ({len(steps[name]):,})")
    if writes:
        durations = [seconds * 1000 for seconds, _ in writes]
        sizes = [size for _, size in writes]
        print(
            f"outcome writes: {len(writes):,}, {statistics.mean(sizes):.1f} outcomes each, "
            f"{_ms(durations)} ms"
        )
    return {
        "result": result,
        "steps_ms": {name: statistics.mean(values) for name, values in steps.items()},
    }


if __name__ == "__main__":
    run(*(int(arg) for arg in sys.argv[1:2]))
