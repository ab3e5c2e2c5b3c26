"""Every DBOS queue hogsend uses, declared in this one module.

DBOS 3.4 stores queue settings in its system database, and the last process to
declare a queue wins. Declaring them all here, identically in every process, keeps
workers on different hosts from fighting over a queue's limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from dbos import DBOS

from hogsend.core.identifiers import durable_name


@dataclass(frozen=True, slots=True, kw_only=True)
class QueueSpec:
    """One queue: its id (the durable name is ``hogsend.queue:<id>``) and its limits.

    Attributes:
        id: kebab-case id, stable forever (workflows in flight reference the name).
        worker_concurrency: most workflows from this queue running on one worker.
        global_concurrency: most running across all workers (None = no global cap).
        rate_limit: at most ``(count, seconds)`` workflow starts per rolling window.
        polling_seconds: how often a worker looks for new work on this queue.
    """

    id: str
    worker_concurrency: int | None = None
    global_concurrency: int | None = None
    rate_limit: tuple[int, float] | None = None
    polling_seconds: float = 1.0

    @property
    def name(self) -> str:
        """The durable queue name, e.g. ``hogsend.queue:journeys``."""
        return durable_name("queue", self.id)


JOURNEYS = QueueSpec(id="journeys", worker_concurrency=100, polling_seconds=0.1)
"""Journey runs, started by the dispatcher and resumed from parking.

Polled every 100 ms: a worker takes at most its free slots per poll, so the interval
bounds both the trigger-to-first-step latency and the runs started per second
(bench/journeys.py measured a 1 s poll as the floor of both). 100 runs in flight per
worker: with 50, waking 10,000 runs that fell due together left a third of the 2-core
bench machine idle (73 s); with 100 it took 54 s and less CPU per run (session 8)."""

CAMPAIGNS = QueueSpec(id="campaigns", worker_concurrency=2, global_concurrency=4)
"""Broadcast campaigns: one workflow per campaign, sending in batched steps."""

MAINTENANCE = QueueSpec(id="maintenance", worker_concurrency=1, global_concurrency=1)
"""Sweeps (bucket reconcile, cleanup, alerts) that must not run twice at once."""

IMPORTS = QueueSpec(id="imports", worker_concurrency=1, global_concurrency=2)
"""Contact imports: one workflow per job, importing in chunked steps."""

ALL_QUEUES: tuple[QueueSpec, ...] = (JOURNEYS, CAMPAIGNS, MAINTENANCE, IMPORTS)


async def declare_queues(queues: tuple[QueueSpec, ...] = ALL_QUEUES) -> list[str]:
    """Register ``queues`` with the launched DBOS instance; returns their names."""
    names = []
    for spec in queues:
        await DBOS.register_queue_async(
            spec.name,
            worker_concurrency=spec.worker_concurrency,
            global_concurrency=spec.global_concurrency,
            limiter=(
                {"limit": spec.rate_limit[0], "period": spec.rate_limit[1]}
                if spec.rate_limit is not None
                else None
            ),
            polling_interval_sec=spec.polling_seconds,
        )
        names.append(spec.name)
    return names
