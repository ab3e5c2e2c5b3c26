"""docs/configuration.md documents every setting (so a new setting can't ship undocumented)."""

from __future__ import annotations

from pathlib import Path

from hogsend.settings import Settings

DOC = Path(__file__).parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = DOC.read_text()
    missing = [
        f"HOGSEND_{name.upper()}"
        for name in Settings.model_fields
        if f"`HOGSEND_{name.upper()}`" not in text
    ]
    assert missing == []


def test_no_documented_setting_is_stale() -> None:
    import re

    documented = set(re.findall(r"`HOGSEND_([A-Z0-9_]+)`", DOC.read_text()))
    known = {name.upper() for name in Settings.model_fields}
    assert documented - known == set()
