"""Settings validation: every message names the HOGSEND_ variable to fix."""

from __future__ import annotations

import os

import pytest

from hogsend.errors import ConfigurationError
from hogsend.settings import CAMPAIGN_STALE_MIN_SECONDS, Settings, load_settings

SECRET = "s" * 32


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("HOGSEND_"):
            monkeypatch.delenv(name)


def _error(**overrides: object) -> str:
    with pytest.raises(ConfigurationError) as info:
        load_settings(**overrides)
    return str(info.value)


def test_bad_database_url_names_the_variable() -> None:
    message = _error(env="dev", database_url="mysql://root@localhost/app")
    assert "HOGSEND_DATABASE_URL" in message
    assert "Postgres URL" in message


def test_short_secret_names_the_variable() -> None:
    message = _error(env="dev", secret_key="too-short")
    assert "HOGSEND_SECRET_KEY" in message
    assert "32 characters" in message


def test_prod_without_secret_names_the_variable() -> None:
    message = _error(env="prod")
    assert "HOGSEND_SECRET_KEY" in message
    assert "HOGSEND_ENV=prod" in message


def test_bad_value_from_the_environment_names_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOGSEND_PORT", "not-a-port")
    message = _error(env="dev")
    assert "HOGSEND_PORT" in message


def test_several_problems_are_reported_together() -> None:
    message = _error(env="dev", secret_key="short", database_url="sqlite:///x.db")
    assert "HOGSEND_SECRET_KEY" in message
    assert "HOGSEND_DATABASE_URL" in message


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("mailto:unsub@example.com", "characters like"),
        ("Lists <unsub@example.com>", "whitespace"),
        ("unsub@", "nothing after the @"),
        ("désabonner@example.com", "ASCII"),
    ],
)
def test_the_unsubscribe_mailto_must_be_a_plain_address(value: str, reason: str) -> None:
    message = _error(env="dev", unsubscribe_mailto=value)
    assert "HOGSEND_UNSUBSCRIBE_MAILTO" in message
    assert reason in message


def test_the_unsubscribe_mailto_is_normalised_and_optional() -> None:
    assert load_settings(env="dev").unsubscribe_mailto is None
    assert load_settings(env="dev", unsubscribe_mailto=" ").unsubscribe_mailto is None
    given = load_settings(env="dev", unsubscribe_mailto=" Unsub@Lists.Example.COM ")
    assert given.unsubscribe_mailto == "Unsub@lists.example.com"


def test_stale_seconds_must_exceed_heartbeat() -> None:
    message = _error(env="dev", heartbeat_seconds=30, worker_stale_seconds=10)
    assert "HOGSEND_WORKER_STALE_SECONDS" in message


def test_campaign_stale_seconds_has_a_lower_bound_that_names_why() -> None:
    for too_short in (0, 1, 59.9):
        message = _error(env="dev", campaign_stale_seconds=too_short)
        assert "HOGSEND_CAMPAIGN_STALE_SECONDS" in message
        assert "at least 60 seconds" in message
        assert "second run" in message
    assert load_settings(env="dev", campaign_stale_seconds=60).campaign_stale_seconds == 60


def test_campaign_stale_minimum_exceeds_a_healthy_runs_quiet_stretches() -> None:
    # A run records progress at least every sleep and every batch; the reaper must not
    # take a campaign from a run that is only between two of those.
    from hogsend.runtime import campaigns

    quiet = max(campaigns.MAX_WAIT_SECONDS, campaigns.STEP_SECONDS + campaigns.BATCH_SECONDS)
    assert 2 * quiet <= CAMPAIGN_STALE_MIN_SECONDS


def test_valid_settings_and_derived_values() -> None:
    settings = load_settings(
        env="prod",
        secret_key=SECRET,
        database_url="postgres://u:p@db:5432/app",
        public_url="https://mail.example.com/",
    )
    assert settings.public_url == "https://mail.example.com"
    assert settings.effective_log_format == "json"
    assert load_settings(env="dev").effective_log_format == "console"


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOGSEND_ENV", "test")
    monkeypatch.setenv("HOGSEND_WORKER_ID", "w-7")
    monkeypatch.setenv("HOGSEND_DATA_DIR", "/srv/hogsend")
    settings = Settings()
    assert settings.worker_id == "w-7"
    assert str(settings.pgdata_dir) == "/srv/hogsend/pgdata"
