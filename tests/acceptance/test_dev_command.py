"""``hogsend dev`` for real: healthy within a minute, and back up after every kind of crash.

Each step starts the real command in a subprocess on a temporary data dir and waits for
``/v1/health`` to report the database, the migrations and a live worker.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

DevFactory = Callable[..., Any]


def _report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        sys.stderr.write(f"\n[hogsend dev] {line}\n")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_dev_is_healthy_and_survives_crashes(
    dev_factory: DevFactory, harness: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    postmaster_pid, processes_of = harness.postmaster_pid, harness.processes_of
    dev = dev_factory()

    # 1. First start on an empty data dir: initdb, migrations, DBOS schema, dev key.
    dev.start()
    seconds, body = dev.wait_healthy()
    _report(capsys, f"first start (fresh data dir) healthy in {seconds:.1f}s")
    assert body["migrations"]["inSync"] is True
    assert body["database"]["status"] == "up"
    first = dev.last_run_output()
    assert "/studio" in first
    assert "test mode: every send goes to the outbox" in first
    key = re.search(r"^\s+(hsk_\S+)\s*$", first, re.MULTILINE)
    assert key is not None, first
    studio = httpx.get(f"{dev.base_url}/studio", timeout=5, follow_redirects=True)
    assert studio.status_code == 200
    assert str(studio.url).endswith("/studio/setup")  # a fresh install asks for its first admin
    assert (dev.data_dir / "secret_key").stat().st_mode & 0o077 == 0

    # 2. SIGKILL the dev process: its postmaster lives on as an orphan and is reused.
    orphan = postmaster_pid(dev.data_dir)
    assert orphan is not None
    dev.sigkill()
    assert _alive(orphan), "the postmaster was expected to outlive hogsend dev"
    dev.start()
    seconds, _ = dev.wait_healthy()
    _report(capsys, f"after SIGKILL of hogsend dev (orphaned postmaster) healthy in {seconds:.1f}s")
    assert "hsk_" not in dev.last_run_output(), "the dev key is only minted on the first run"

    # 3. SIGKILL the dev process and the postmaster: a stale postmaster.pid with a dead
    # pid, and possibly backends that have not noticed yet.
    postmaster = postmaster_pid(dev.data_dir)
    assert postmaster is not None
    dev.sigkill()
    psutil.Process(postmaster).kill()
    psutil.wait_procs([psutil.Process(postmaster)], timeout=10)
    assert (dev.data_dir / "pgdata" / "postmaster.pid").exists()
    dev.start()
    seconds, _ = dev.wait_healthy()
    _report(capsys, f"after SIGKILL of dev and postmaster (stale lock) healthy in {seconds:.1f}s")

    # 4. A graceful stop: exit 0, and the embedded Postgres is shut down with it.
    dev.signal(signal.SIGTERM)
    assert dev.wait_exit(60) == 0, dev.last_run_output()
    assert not (dev.data_dir / "pgdata" / "postmaster.pid").exists()
    assert processes_of(dev.data_dir) == []

    # 5. A stale postmaster.pid naming a live process that is not Postgres: that process
    # must survive, and the server must start anyway.
    bystander = subprocess.Popen(["sleep", "300"])
    try:
        lock = dev.data_dir / "pgdata" / "postmaster.pid"
        lock.write_text(
            f"{bystander.pid}\n{dev.data_dir / 'pgdata'}\n1700000000\n5432\n\n127.0.0.1\n"
            "  5432001     32768\nready   \n"
        )
        dev.start()
        seconds, _ = dev.wait_healthy()
        _report(capsys, f"with a postmaster.pid naming a live non-Postgres pid: {seconds:.1f}s")
        assert bystander.poll() is None, "an unrelated process was killed"
    finally:
        bystander.kill()
        bystander.wait()
    dev.signal(signal.SIGINT)
    assert dev.wait_exit(60) == 0, dev.last_run_output()


def test_two_instances_run_side_by_side(
    dev_factory: DevFactory, harness: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    postmaster_pid, processes_of = harness.postmaster_pid, harness.processes_of
    one, two = dev_factory("one"), dev_factory("two")
    one.start()
    two.start()
    seconds_one, _ = one.wait_healthy()
    seconds_two, _ = two.wait_healthy()
    _report(
        capsys, f"two instances side by side healthy in {seconds_one:.1f}s / {seconds_two:.1f}s"
    )
    assert postmaster_pid(one.data_dir) != postmaster_pid(two.data_dir)
    for server in (one, two):
        server.signal(signal.SIGTERM)
    for server in (one, two):
        assert server.wait_exit(60) == 0, server.last_run_output()
        assert processes_of(server.data_dir) == []


def test_dev_seed_demo_is_idempotent(dev_factory: DevFactory) -> None:
    dev = dev_factory()
    for run in (1, 2):
        dev.start("--seed-demo")
        dev.wait_healthy()
        out = dev.last_run_output()
        if run == 1:
            assert re.search(r"demo data\s+200 contacts and [1-9]\d* events added", out), out
        else:
            assert re.search(r"demo data\s+0 contacts and 0 events added", out), out
        dev.signal(signal.SIGTERM)
        assert dev.wait_exit(60) == 0, out


def test_dev_outside_the_repository_needs_an_app(tmp_path: Path, harness: Any) -> None:
    env = harness.clean_env(HOGSEND_DATA_DIR=str(tmp_path / "d"))
    result = harness.run_cli("dev", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "examples.quickstart.app:app" in result.stderr
    assert "root of the hogsend repository" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "d" / "pgdata").exists()


def test_dev_uses_hogsend_database_url_when_set(
    dev_factory: DevFactory, harness: Any, database_url: str
) -> None:
    dev = dev_factory("external")
    dev.start(env=harness.clean_env(HOGSEND_DATABASE_URL=database_url))
    dev.wait_healthy()
    assert "database   HOGSEND_DATABASE_URL" in dev.last_run_output()
    assert not (dev.data_dir / "pgdata").exists()
    dev.signal(signal.SIGTERM)
    assert dev.wait_exit(60) == 0, dev.last_run_output()
