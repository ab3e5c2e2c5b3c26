"""Stop signals for the long-running commands: a graceful stop, and a forced one.

SIGTERM or SIGINT asks for a graceful stop; the same signal again within
:data:`REPEATED_SIGNAL_SECONDS` is that request delivered twice, and a later one exits at
once, after the :func:`at_forced_exit` hooks (which is how an embedded Postgres started
by the command still goes down). Light on purpose: one-off commands import it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

REPEATED_SIGNAL_SECONDS = 1.0
"""A stop signal this soon after the first is the same request delivered twice, not a
second one: ``timeout`` and shells signal the whole process group while a parent such
as ``make`` passes its own signal on to its child as well."""


_FORCED_EXIT_HOOKS: list[Callable[[], None]] = []


def at_forced_exit(hook: Callable[[], None]) -> Callable[[], None]:
    """Run ``hook`` (quick, blocking) before a second stop signal exits the process, which
    skips every ``finally``; returns the function that takes it off again."""
    _FORCED_EXIT_HOOKS.append(hook)
    return lambda: _FORCED_EXIT_HOOKS.remove(hook)


def install_stop_handlers(on_stop: Callable[[], None]) -> None:
    """Call ``on_stop`` on the first SIGTERM/SIGINT; a second one exits at once (after
    the :func:`at_forced_exit` hooks).

    A signal within :data:`REPEATED_SIGNAL_SECONDS` of the first is ignored: it is the
    first one delivered again (to the process group and by a parent), and exiting on it
    would skip the graceful stop, leaving `hogsend dev`'s embedded Postgres running.
    """
    loop = asyncio.get_running_loop()
    first: list[float] = []

    def handle(signum: int) -> None:
        name = signal.Signals(signum).name
        if first and time.monotonic() - first[0] < REPEATED_SIGNAL_SECONDS:
            log.info("stop signal repeated; already stopping", signal=name)
            return
        if first:
            log.warning("second signal: exiting without a graceful stop", signal=name)
            for hook in reversed(_FORCED_EXIT_HOOKS):
                with contextlib.suppress(Exception):
                    hook()
            os._exit(128 + signum)
        first.append(time.monotonic())
        log.info("stop signal received", signal=name)
        on_stop()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, handle, signum)


def remove_stop_handlers() -> None:
    """Undo :func:`install_stop_handlers` on the running loop."""
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.remove_signal_handler(signum)
