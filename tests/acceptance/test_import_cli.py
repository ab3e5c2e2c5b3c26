"""``hogsend import contacts``: a real CLI process importing a CSV into real Postgres."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import text

from hogsend.db.engine import make_sync_engine

CSV = "email,userId,plan\nann@example.com,u-1,pro\nbroken,,free\n,,nothing\nbo@example.com,,free\n"


def test_import_contacts_reports_bad_lines_and_a_rerun_creates_no_duplicates(
    database_url: str, tmp_path: Path, harness: Any
) -> None:
    people = tmp_path / "people.csv"
    people.write_text(CSV)
    env = harness.clean_env(HOGSEND_ENV="test", HOGSEND_DATABASE_URL=database_url)

    checked = harness.run_cli("import", "contacts", str(people), "--dry-run", env=env)
    assert checked.returncode == 0, checked.stderr
    assert "dry run: 4 rows, 2 valid, 2 failed" in checked.stdout
    assert "line 3:" in checked.stdout
    assert "line 4: row has neither email nor userId" in checked.stdout

    first = harness.run_cli("import", "contacts", str(people), env=env)
    assert first.returncode == 0, first.stderr
    assert "completed; 4 rows, 2 failed, 2 contacts created, 0 updated" in first.stdout
    assert "importing" in first.stderr  # the progress bar

    again = harness.run_cli("import", "contacts", str(people), env=env)
    assert again.returncode == 0, again.stderr
    assert "0 contacts created, 2 updated" in again.stdout

    bad = harness.run_cli(
        "import", "contacts", str(people), "--mapping", '{"nope": "email"}', env=env
    )
    assert bad.returncode == 2
    assert "not in the header" in bad.stderr

    engine = make_sync_engine(database_url)
    with engine.connect() as conn:
        emails = conn.execute(text("SELECT email FROM contacts ORDER BY email")).scalars().all()
    engine.dispose()
    assert emails == ["ann@example.com", "bo@example.com"]
