"""``hogsend buckets list`` and ``backfill`` in a subprocess against a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from hogsend.db.engine import make_sync_engine

APP = """
from hogsend import Hogsend, define_bucket, where

app = Hogsend(buckets=[
    define_bucket(id="vip", name="VIP", criteria=where.property("plan").equals("vip")),
    define_bucket(id="picked", name="Picked by hand", kind="manual"),
])
"""


def hogsend(database_url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOGSEND_")}
    env["HOGSEND_DATABASE_URL"] = database_url
    env["HOGSEND_BUCKET_BACKFILL_CHUNK_SIZE"] = "2"
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "hogsend.cli.main", "--app", "bucketapp:app", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_backfill_with_progress_then_list_counts(database_url: str, tmp_path: Path) -> None:
    (tmp_path / "bucketapp.py").write_text(APP)
    engine = make_sync_engine(database_url)
    try:
        with engine.begin() as conn:
            for plan in ("vip", "vip", "vip", "free", "free"):
                conn.execute(
                    text("INSERT INTO contacts (properties) VALUES (CAST(:p AS jsonb))"),
                    {"p": f'{{"plan": "{plan}"}}'},
                )
        listed = hogsend(database_url, tmp_path, "buckets", "list")
        assert listed.returncode == 0, listed.stderr
        vip_line = next(line for line in listed.stdout.splitlines() if " vip " in line)
        assert "needed" in vip_line

        done = hogsend(database_url, tmp_path, "buckets", "backfill", "vip")
        assert done.returncode == 0, done.stderr
        assert "initial backfill done, 5 contacts looked at, 3 joined, 0 left" in done.stdout
        assert "5/5" in done.stdout  # the progress bar's last state
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT count(*) FROM bucket_memberships")) == 3
            assert conn.scalar(text("SELECT count(*) FROM user_events")) == 0  # silent

        again = hogsend(database_url, tmp_path, "buckets", "backfill", "vip")
        assert again.returncode == 0
        assert "nothing to do for vip" in again.stdout

        listed = hogsend(database_url, tmp_path, "buckets", "list")
        vip_line = next(line for line in listed.stdout.splitlines() if " vip " in line)
        cells = [c.strip() for c in vip_line.strip("│┃ ").split("│")]
        assert cells == ["vip", "criteria", "yes", "no", "3", "0", "done"]

        unknown = hogsend(database_url, tmp_path, "buckets", "backfill", "nope")
        assert unknown.returncode == 2
        assert "no bucket 'nope'" in unknown.stderr
        manual = hogsend(database_url, tmp_path, "buckets", "backfill", "picked")
        assert manual.returncode == 2
        assert "is manual" in manual.stderr
    finally:
        engine.dispose()
