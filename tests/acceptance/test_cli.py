"""The ``hogsend`` command line in subprocesses: check, keys, db, and its error handling."""

from __future__ import annotations

import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from hogsend.db.embedded import EmbeddedPostgres
from hogsend.db.engine import make_sync_engine

pytestmark = pytest.mark.timeout(240)

QUICKSTART = "examples.quickstart.app:app"
SECRET = "x" * 40


def _no_traceback(result: Any) -> None:
    assert "Traceback" not in result.stderr, result.stderr


# -- check ---------------------------------------------------------------------------------


def test_check_passes_the_quickstart(harness: Any) -> None:
    result = harness.run_cli("--app", QUICKSTART, "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_check_reads_hogsend_app_from_the_environment(harness: Any) -> None:
    result = harness.run_cli("check", env=harness.clean_env(HOGSEND_APP=QUICKSTART))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


@pytest.fixture
def broken_project(tmp_path: Path) -> Path:
    package = tmp_path / "brokenproj"
    (package / "templates").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "templates" / "welcome.html").write_text("<p>hi</p>")
    (package / "app.py").write_text(
        textwrap.dedent(
            """
            from pathlib import Path
            from hogsend import Hogsend, define_journey

            @define_journey(id="welcome", name="Welcome", trigger="signed_up")
            async def welcome(contact, ctx):
                await ctx.send_email(template="welcome")
                await ctx.send_email(template="no-such-template")

            @define_journey(id="win-back", name="Win back", trigger="bucket:entered:lapsed")
            async def win_back(contact, ctx):
                await ctx.send_email(template="welcome")

            templates = Path(__file__).parent / "templates"
            app = Hogsend(journeys=[welcome, win_back], templates=templates)
            """
        )
    )
    (package / "dupes.py").write_text(
        textwrap.dedent(
            """
            from hogsend import Hogsend, define_list
            lists = [define_list(id="news", name="A"), define_list(id="news", name="B")]
            app = Hogsend(lists=lists)
            """
        )
    )
    return tmp_path


def test_check_lists_problems_and_exits_1(harness: Any, broken_project: Path) -> None:
    result = harness.run_cli("--app", "brokenproj.app:app", "check", cwd=broken_project)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2, lines
    assert any("journey welcome" in line and "'no-such-template'" in line for line in lines)
    assert any("journey win-back" in line and "bucket:entered:lapsed" in line for line in lines)
    assert "2 problem(s) found" in result.stderr
    # Not a problem: its template shows no preference link, so it gets the standard footer.
    assert "warning: template welcome: its HTML and text parts never show" in result.stderr


def test_duplicate_ids_fail_to_load_with_exit_2(harness: Any, broken_project: Path) -> None:
    result = harness.run_cli("--app", "brokenproj.dupes:app", "check", cwd=broken_project)
    assert result.returncode == 2
    assert "duplicate list id 'news'" in result.stderr
    _no_traceback(result)


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        ("nosuchpackage.app:app", "cannot import module 'nosuchpackage.app'"),
        ("examples.quickstart.app", "must look like 'package.module:attribute'"),
        ("examples.quickstart.app:missing", "has no attribute 'missing'"),
        ("examples.quickstart.app:product_updates", "not a Hogsend app"),
    ],
)
def test_bad_app_path_exits_2_with_a_hint(harness: Any, path: str, hint: str) -> None:
    result = harness.run_cli("--app", path, "check")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert hint in result.stderr
    _no_traceback(result)


def test_missing_app_exits_2(harness: Any) -> None:
    result = harness.run_cli("check")
    assert result.returncode == 2
    assert "--app" in result.stderr
    assert "HOGSEND_APP" in result.stderr
    _no_traceback(result)


def test_invalid_setting_exits_2_naming_the_variable(harness: Any) -> None:
    env = harness.clean_env(HOGSEND_DATABASE_URL="mysql://root@localhost/x")
    result = harness.run_cli("db", "current", env=env)
    assert result.returncode == 2
    assert "HOGSEND_DATABASE_URL" in result.stderr
    _no_traceback(result)


# -- keys ----------------------------------------------------------------------------------


def test_keys_create_list_revoke_against_the_api(
    harness: Any, database_url: str, dev_factory: Callable[..., Any]
) -> None:
    env = harness.clean_env(HOGSEND_DATABASE_URL=database_url)

    created = harness.run_cli("keys", "create", "--scope", "ingest", "--name", "x", env=env)
    assert created.returncode == 0, created.stderr
    raw = created.stdout.splitlines()[-1]
    assert raw.startswith("hsk_")
    assert raw == raw.strip()
    assert " " not in raw
    assert raw not in created.stdout.splitlines()[0]

    api = dev_factory("api", command="serve")
    # A revocation by another process reaches an API within its key cache's interval
    # (test_api_key_cache.py covers that with a fake clock); here, no cache: at once.
    api.start(
        env={
            **env,
            "HOGSEND_SECRET_KEY": SECRET,
            "HOGSEND_APP": QUICKSTART,
            "HOGSEND_API_KEY_CACHE_SECONDS": "0",
        }
    )
    api.wait_healthy()
    auth = {"Authorization": f"Bearer {raw}"}
    whoami = httpx.get(f"{api.base_url}/v1/whoami", headers=auth, timeout=5)
    assert whoami.status_code == 200, whoami.text
    assert whoami.json()["scopes"] == ["ingest"]
    assert httpx.get(f"{api.base_url}/v1/admin/api-keys", headers=auth).status_code == 403

    listed = harness.run_cli("keys", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if " x " in line]
    key_id = row.split()[0]
    assert raw[:12] in row
    assert "active" in row
    assert raw not in listed.stdout

    revoked = harness.run_cli("keys", "revoke", key_id, env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert httpx.get(f"{api.base_url}/v1/whoami", headers=auth).status_code == 401
    again = harness.run_cli("keys", "revoke", key_id, env=env)
    assert again.returncode == 1
    assert "no active key" in again.stderr
    assert "revoked" in harness.run_cli("keys", "list", "--all", env=env).stdout

    api.signal(signal.SIGTERM)
    assert api.wait_exit(30) == 0


def test_keys_create_with_expiry(harness: Any, database_url: str) -> None:
    env = harness.clean_env(HOGSEND_DATABASE_URL=database_url)
    result = harness.run_cli(
        "keys",
        "create",
        "--scope",
        "read",
        "--scope",
        "admin:read",
        "--expires-at",
        "2999-01-01T00:00:00+02:00",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "expires 2998-12-31T22:00:00+00:00" in result.stdout
    assert "scopes read, admin:read" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scope", "superuser"], "unknown scope 'superuser'"),
        (["--scope", "ingest", "--expires-at", "soon"], "not an ISO 8601 time"),
        (["--scope", "ingest", "--expires-at", "2001-01-01"], "in the past"),
        ([], "Missing option '--scope'"),
    ],
)
def test_keys_create_rejects_bad_input_cleanly(
    harness: Any, tmp_path: Path, args: list[str], message: str
) -> None:
    # Validation happens before any database is touched.
    env = harness.clean_env(HOGSEND_DATA_DIR=str(tmp_path / "untouched"))
    result = harness.run_cli("keys", "create", *args, env=env)
    assert result.returncode == 2
    assert message in " ".join(result.stderr.split()), result.stderr
    if "unknown scope" in message:
        assert "full-admin" in result.stderr
    _no_traceback(result)
    assert not (tmp_path / "untouched").exists()


def test_keys_revoke_needs_a_uuid(harness: Any, tmp_path: Path) -> None:
    env = harness.clean_env(HOGSEND_DATA_DIR=str(tmp_path))
    result = harness.run_cli("keys", "revoke", "not-a-uuid", env=env)
    assert result.returncode == 2
    assert "not a key id" in result.stderr


# -- db ------------------------------------------------------------------------------------


def test_db_current_upgrade_downgrade(harness: Any, empty_database_url: str) -> None:
    env = harness.clean_env(HOGSEND_DATABASE_URL=empty_database_url)
    before = harness.run_cli("db", "current", env=env)
    assert before.returncode == 0, before.stderr
    assert "applied:  (none)" in before.stdout
    assert "pending" in before.stdout

    upgraded = harness.run_cli("db", "upgrade", env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "status:   up to date" in upgraded.stdout

    down = harness.run_cli("db", "downgrade", "base", env=env)
    assert down.returncode == 0, down.stderr
    assert "applied:  (none)" in down.stdout

    assert "up to date" in harness.run_cli("db", "upgrade", "head", env=env).stdout


def test_one_off_commands_start_and_stop_embedded_postgres(harness: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = harness.clean_env(HOGSEND_DATA_DIR=str(data_dir))
    try:
        result = harness.run_cli("db", "upgrade", env=env)
        assert result.returncode == 0, result.stderr
        assert "up to date" in result.stdout
        # It started the server, so it stopped it again.
        assert harness.postmaster_pid(data_dir) is None
        assert harness.processes_of(data_dir) == []

        # A server that was already running (hogsend dev's) is left running.
        server = EmbeddedPostgres(data_dir)
        server.start()
        listed = harness.run_cli("keys", "list", env=env)
        assert listed.returncode == 0, listed.stderr
        assert "no keys" in listed.stdout
        assert harness.postmaster_pid(data_dir) is not None
        server.stop()

        # An immediate stop (a forced exit of hogsend dev) leaves no process behind, and
        # the next start recovers the cluster.
        server.start()
        server.stop(immediate=True)
        assert harness.processes_of(data_dir) == []
        again = harness.run_cli("keys", "list", env=env)
        assert again.returncode == 0, again.stderr
        assert harness.processes_of(data_dir) == []
    finally:
        harness.kill_data_dir(data_dir)


def test_version_and_help(harness: Any) -> None:
    assert harness.run_cli("--version").stdout.startswith("hogsend ")
    help_text = harness.run_cli("--help").stdout
    for command in ("dev", "serve", "worker", "check", "db", "keys"):
        assert command in help_text


def test_worker_command_heartbeats_and_stops_on_sigterm(
    harness: Any, database_url: str, tmp_path: Path
) -> None:
    env = harness.clean_env(
        HOGSEND_DATABASE_URL=database_url,
        HOGSEND_SECRET_KEY=SECRET,
        HOGSEND_APP=QUICKSTART,
        HOGSEND_WORKER_ID="cli-worker",
    )
    log = (tmp_path / "worker.log").open("w+")
    proc = subprocess.Popen(
        [*harness.hogsend_command(), "worker"],
        cwd=harness.REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    engine = make_sync_engine(database_url)
    query = text("SELECT stopped_at FROM worker_heartbeats WHERE worker_id = 'cli-worker'")
    try:
        deadline = time.monotonic() + 60
        while True:
            # Wait for the banner too: it is printed after the first heartbeat, and a
            # SIGTERM between the two would (correctly) stop the worker before it.
            with engine.connect() as conn:
                beating = conn.execute(query).first() is not None
            if beating and "is running" in (tmp_path / "worker.log").read_text():
                break
            assert proc.poll() is None, (tmp_path / "worker.log").read_text()
            assert time.monotonic() < deadline, "no heartbeat from hogsend worker"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, (tmp_path / "worker.log").read_text()
        assert "worker cli-worker is running" in (tmp_path / "worker.log").read_text()
        with engine.connect() as conn:
            assert conn.execute(query).scalar_one() is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        engine.dispose()
        log.close()


def test_busy_port_is_a_clean_error(harness: Any, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = harness.clean_env(HOGSEND_DATA_DIR=str(tmp_path / "data"))
        result = harness.run_cli("dev", "--port", str(port), env=env)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "--port" in result.stderr
    _no_traceback(result)
    # Nothing was started for it.
    assert not (tmp_path / "data" / "pgdata").exists()
