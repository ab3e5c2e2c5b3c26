"""The CPU an embedded Postgres server has used, for benchmarks that report its cost."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import psutil

from hogsend.db.embedded import EmbeddedPostgres, PostmasterLock


def postgres_cpu_reader(server: EmbeddedPostgres) -> Callable[[], float]:
    """A reader of the CPU seconds the server's processes used so far.

    Counts the live backends and the reaped ones (parallel workers, ended connections):
    the database's share of a benchmark's cost, which survives a loaded machine better
    than a rate.
    """
    return postgres_cpu_reader_at(server.pgdata)


def postgres_cpu_reader_at(pgdata: Path) -> Callable[[], float]:
    """:func:`postgres_cpu_reader` of the server running on ``pgdata`` (another process's)."""
    lock = PostmasterLock.read(pgdata)
    assert lock is not None
    postmaster = psutil.Process(lock.pid)

    def used() -> float:
        own = postmaster.cpu_times()
        total = own.user + own.system + own.children_user + own.children_system
        for child in postmaster.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
        return total

    return used
