"""``hogsend studio create-user`` and ``list-users`` in a subprocess against a real database."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from hogsend.db.engine import make_sync_engine
from hogsend.studio.passwords import verify_password

REPO = Path(__file__).resolve().parents[2]


def hogsend(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOGSEND_")}
    env["HOGSEND_DATABASE_URL"] = database_url
    return subprocess.run(
        [sys.executable, "-m", "hogsend.cli.main", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_create_user_stores_an_argon2_hash_and_refuses_duplicates(database_url: str) -> None:
    made = hogsend(
        database_url,
        "studio", "create-user", "--email", "Ada@Example.com", "--password", "a long password",
        "--role", "admin", "--name", "Ada",
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "created Studio admin Ada@example.com" in made.stdout
    engine = make_sync_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT email, role, name, password_hash FROM studio_users")
            ).one()
            audit = conn.execute(text("SELECT actor, action, detail FROM audit_logs")).one()
    finally:
        engine.dispose()
    assert (row.email, row.role, row.name) == ("Ada@example.com", "admin", "Ada")
    assert row.password_hash.startswith("$argon2id$")
    assert verify_password(row.password_hash, "a long password")
    assert not verify_password(row.password_hash, "a wrong password")
    assert (audit.actor, audit.action) == ("hogsend cli", "studio-users.create")
    assert "password" not in str(audit.detail)

    again = hogsend(
        database_url, "studio", "create-user", "--email", "ada@example.com", "--password",
        "another password",
    )  # fmt: skip
    assert again.returncode == 1
    assert "already exists" in again.stderr

    listed = hogsend(database_url, "studio", "list-users")
    assert listed.returncode == 0
    assert "Ada@example.com" in listed.stdout
    assert "admin" in listed.stdout


def test_create_user_refuses_bad_input_before_writing(database_url: str) -> None:
    cases = [
        (["--email", "nobody", "--password", "a long password"], "--email"),
        (["--email", "a@example.com", "--password", "short"], "at least 10"),
        (["--email", "a@example.com", "--password", "a long password", "--role", "owner"], "role"),
    ]
    for args, message in cases:
        result = hogsend(database_url, "studio", "create-user", *args)
        assert result.returncode == 2, result.stderr
        assert message in result.stderr
    listed = hogsend(database_url, "studio", "list-users")
    assert "no Studio users" in listed.stdout
