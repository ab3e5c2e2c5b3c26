"""The public API is a list, pinned here; importing it pulls in no heavy dependency."""

from __future__ import annotations

import json
import subprocess
import sys

import hogsend

EXPECTED = [
    "BucketDefinition",
    "Condition",
    "Contact",
    "Event",
    "Hogsend",
    "HogsendError",
    "JourneyContext",
    "JourneyDefinition",
    "ListDefinition",
    "TemplateRegistry",
    "days",
    "define_bucket",
    "define_journey",
    "define_list",
    "hours",
    "load_app",
    "minutes",
    "seconds",
    "weeks",
    "where",
]

HEAVY = ("dbos", "fastapi", "sqlalchemy", "httpx", "starlette", "psycopg", "alembic", "uvicorn")


def test_all_is_pinned_and_sorted() -> None:
    assert hogsend.__all__ == EXPECTED
    assert sorted(hogsend.__all__) == hogsend.__all__


def test_every_export_exists() -> None:
    for name in hogsend.__all__:
        assert hasattr(hogsend, name), name


def test_import_hogsend_imports_no_heavy_dependency() -> None:
    probe = (
        "import json, sys\n"
        "import hogsend\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(heavy))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert json.loads(out.stdout) == []
