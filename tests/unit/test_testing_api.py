"""hogsend.testing's public names are pinned; importing it needs no database stack."""

from __future__ import annotations

import json
import subprocess
import sys

import hogsend.testing

EXPECTED = [
    "HarnessContext",
    "HarnessError",
    "JourneyExit",
    "JourneyHarness",
    "SendAttempt",
    "SentEmail",
    "StepLog",
    "make_contact",
]


def test_all_is_pinned_and_sorted() -> None:
    assert hogsend.testing.__all__ == EXPECTED
    for name in EXPECTED:
        assert hasattr(hogsend.testing, name), name


def test_the_harness_imports_no_database_or_server_library() -> None:
    probe = (
        "import json, sys\n"
        "import hogsend.testing\n"
        "heavy = ('dbos', 'sqlalchemy', 'psycopg', 'fastapi', 'httpx', 'alembic', 'jinja2')\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []
