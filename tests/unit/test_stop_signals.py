"""Stop signals: one request delivered twice stops gracefully; a later second one forces.

Real signals to a real child process running :func:`install_stop_handlers` on the event
loop the CLI uses; its graceful stop takes a moment, as a worker's does. Its log lines
(structlog's default, unconfigured: standard output) are read with its output.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from hogsend.runtime.stop_signals import REPEATED_SIGNAL_SECONDS

CHILD = """
import asyncio, sys
from hogsend.runtime import event_loop
from hogsend.runtime.stop_signals import at_forced_exit, install_stop_handlers

async def main() -> None:
    stop = asyncio.Event()
    at_forced_exit(lambda: print("first hook", flush=True))
    at_forced_exit(lambda: print("last hook", flush=True))
    forgotten = at_forced_exit(lambda: print("forgotten hook", flush=True))
    forgotten()
    install_stop_handlers(stop.set)
    print("ready", flush=True)
    await stop.wait()
    await asyncio.sleep(3)  # the graceful stop
    print("stopped gracefully", flush=True)

event_loop.run(main())
"""


def _started(tmp_path: Path) -> subprocess.Popen[str]:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "ready"
    return child


def test_a_signal_delivered_twice_at_once_still_stops_gracefully(tmp_path: Path) -> None:
    # As `timeout make run` does: the process group's SIGTERM and make's own, together.
    child = _started(tmp_path)
    child.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0, out
    assert "stopped gracefully" in out
    assert "already stopping" in out


def test_a_second_signal_later_exits_at_once_after_the_hooks(tmp_path: Path) -> None:
    child = _started(tmp_path)
    child.send_signal(signal.SIGINT)
    time.sleep(REPEATED_SIGNAL_SECONDS + 0.3)
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 128 + signal.SIGINT, out
    assert "stopped gracefully" not in out
    assert "exiting without a graceful stop" in out
    # The at_forced_exit hooks ran before the exit, the last registered first.
    assert out.index("last hook") < out.index("first hook")
    assert "forgotten hook" not in out
