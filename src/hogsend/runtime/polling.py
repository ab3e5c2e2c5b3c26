"""A background task that does one round of work every few seconds until stopped.

For the small pollers every worker runs (journey exits, parked-run wake-ups, dead-worker
takeover): a failed round is logged and the next one runs on schedule; stopping cancels
the round in progress, whose transaction then rolls back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

import structlog

log = structlog.get_logger(__name__)


class Poller:
    """Calls :meth:`run_once` every ``every`` seconds between :meth:`start` and :meth:`stop`.

    Subclasses set ``every`` and implement :meth:`run_once`; ``task_name`` names the
    asyncio task, ``failure`` is the log line of a failed round, and ``wait_first``
    makes the first round wait one interval.
    """

    task_name: ClassVar[str]
    failure: ClassVar[str]
    wait_first: ClassVar[bool] = False
    every: float
    _task: asyncio.Task[None] | None = None

    async def run_once(self) -> Any:
        """One round of work."""
        raise NotImplementedError

    async def _loop(self) -> None:
        if self.wait_first:
            await asyncio.sleep(self.every)
        while True:
            try:
                await self.run_once()
            except Exception:
                log.warning(self.failure, exc_info=True)
            await asyncio.sleep(self.every)

    def start(self) -> None:
        """Start polling."""
        self._task = asyncio.create_task(self._loop(), name=self.task_name)

    async def stop(self) -> None:
        """Stop polling (a round in progress is cancelled)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
