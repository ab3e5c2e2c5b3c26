"""A user's journey test written against the harness type-checks under mypy --strict."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLE = Path(__file__).parents[1] / "typing" / "harness_user_example.py"


def run_mypy(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    # From a directory without the project's config: this is how a user's project sees us.
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(path)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=240,
        check=False,
    )


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("harness_user_example", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_user_example_type_checks_and_a_misuse_does_not(tmp_path: Path) -> None:
    good = tmp_path / "test_user_journeys.py"
    shutil.copy(EXAMPLE, good)
    bad = tmp_path / "test_user_misuse.py"
    bad.write_text(
        EXAMPLE.read_text()
        + "\n\nasync def test_misuse() -> None:\n"
        + "    h = JourneyHarness(trial_ending)\n"
        + "    subject_length: int = h.sent_emails[0].subject\n"
        + "    await h.advance(3)\n"
    )
    result = run_mypy(good, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    misuse = run_mypy(bad, tmp_path)
    assert misuse.returncode == 1, misuse.stdout
    assert 'Incompatible types in assignment (expression has type "str | None"' in misuse.stdout
    assert 'Argument 1 to "advance" of "JourneyHarness" has incompatible type "int"' in (
        misuse.stdout
    )


async def test_the_user_example_passes() -> None:
    module = load(EXAMPLE)
    await module.test_reminder_then_lapse()
    await module.test_paying_exits()
