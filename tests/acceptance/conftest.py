"""Running the real ``hogsend`` command in subprocesses, and always cleaning up after it.

Every server a test starts is tied to a temporary data dir; :func:`kill_data_dir`
kills whatever still belongs to one (the CLI process, its postmaster, orphaned
backends), and the fixtures call it in their teardown so a failing test never leaks a
server into the rest of the suite.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

REPO = Path(__file__).resolve().parents[2]
HEALTH_TIMEOUT = 60.0


def hogsend_command() -> list[str]:
    """The installed entry point of this interpreter's environment."""
    script = Path(sys.executable).with_name("hogsend")
    return [str(script)] if script.exists() else [sys.executable, "-m", "hogsend.cli.main"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any HOGSEND_* setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOGSEND_")}
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path = REPO, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``hogsend *args`` to completion."""
    return subprocess.run(
        [*hogsend_command(), *args],
        env=env if env is not None else clean_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _belongs_to(proc: psutil.Process, marker: str) -> bool:
    try:
        if any(marker in arg for arg in proc.cmdline()):
            return True
        return proc.cwd().startswith(marker)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def processes_of(data_dir: Path) -> list[psutil.Process]:
    """Live processes started for ``data_dir``: the CLI (given --data-dir), postgres."""
    marker = str(data_dir.resolve())
    me = os.getpid()
    return [p for p in psutil.process_iter() if p.pid != me and _belongs_to(p, marker)]


def kill_data_dir(data_dir: Path) -> None:
    """SIGKILL everything still running for ``data_dir`` and reap it."""
    procs = processes_of(data_dir)
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(procs, timeout=10)


def postmaster_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


class DevServer:
    """One ``hogsend dev`` (or ``serve``) subprocess with its output in a log file."""

    def __init__(self, data_dir: Path, port: int, *, command: str = "dev") -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-{command}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.runs += 1
        extra = ["--data-dir", str(self.data_dir)] if self.command == "dev" else []
        with self.log_path.open("ab") as log:
            log.write(f"\n===== run {self.runs} =====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                [*hogsend_command(), self.command, "--port", str(self.port), *extra, *args],
                cwd=REPO,
                env=env if env is not None else clean_env(HOGSEND_DATA_DIR=str(self.data_dir)),
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def last_run_output(self) -> str:
        return self.output().rsplit("===== run", 1)[-1]

    def wait_healthy(self, timeout: float = HEALTH_TIMEOUT) -> tuple[float, dict[str, Any]]:
        """Seconds until /v1/health says healthy with a live worker, and that body."""
        assert self.proc is not None
        started = time.monotonic()
        body: dict[str, Any] = {}
        while time.monotonic() - started < timeout:
            if self.proc.poll() is not None:
                pytest.fail(
                    f"hogsend {self.command} exited with {self.proc.returncode}:\n"
                    f"{self.last_run_output()}"
                )
            try:
                response = httpx.get(f"{self.base_url}/v1/health", timeout=2)
                body = response.json()
                if body.get("status") == "healthy" and (
                    self.command != "dev" or body.get("workersAlive", 0) >= 1
                ):
                    elapsed = time.monotonic() - started
                    if self.command == "dev":
                        # The banner is printed just after the server starts answering.
                        self.wait_for_output("Press Ctrl+C to stop.")
                    return elapsed, body
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.2)
        pytest.fail(
            f"not healthy within {timeout:.0f}s (last body {body}):\n{self.last_run_output()}"
        )

    def wait_for_output(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.last_run_output():
            if time.monotonic() > deadline:
                pytest.fail(f"{text!r} never appeared in:\n{self.last_run_output()}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def sigkill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait_exit(10)


@pytest.fixture
def dev_factory(tmp_path: Path) -> Iterator[Any]:
    """Make DevServers on data dirs under tmp_path; kill all their processes afterwards."""
    made: list[DevServer] = []

    def make(name: str = "data", *, command: str = "dev", port: int | None = None) -> DevServer:
        server = DevServer(tmp_path / name, port or free_port(), command=command)
        made.append(server)
        return server

    yield make
    for server in made:
        if server.proc is not None and server.proc.poll() is None:
            server.proc.kill()
            server.proc.wait(10)
        kill_data_dir(server.data_dir)


class Harness:
    """The helpers above, handed to tests as the ``harness`` fixture.

    (Test directories are not packages, so tests cannot import this module by name.)
    """

    REPO = REPO
    hogsend_command = staticmethod(hogsend_command)
    clean_env = staticmethod(clean_env)
    run_cli = staticmethod(run_cli)
    free_port = staticmethod(free_port)
    processes_of = staticmethod(processes_of)
    postmaster_pid = staticmethod(postmaster_pid)
    kill_data_dir = staticmethod(kill_data_dir)


@pytest.fixture
def harness() -> type[Harness]:
    return Harness
