"""``hogsend dev``'s settings: test mode is on unless the environment turns it off."""

from __future__ import annotations

from pathlib import Path

import pytest

from hogsend.cli.dev import dev_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("HOGSEND_TEST_MODE", "HOGSEND_TEST_MODE_RECIPIENT", "HOGSEND_ENV"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOGSEND_DATA_DIR", str(tmp_path))


def test_dev_defaults_to_test_mode() -> None:
    settings = dev_settings()
    assert settings.env == "dev"
    assert settings.test_mode is True
    assert settings.test_mode_recipient is None


@pytest.mark.parametrize("value", ["0", "false"])
def test_the_environment_can_turn_test_mode_off(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("HOGSEND_TEST_MODE", value)
    assert dev_settings().test_mode is False


def test_a_test_mode_recipient_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOGSEND_TEST_MODE_RECIPIENT", "qa@example.com")
    settings = dev_settings()
    assert (settings.test_mode, settings.test_mode_recipient) == (True, "qa@example.com")
