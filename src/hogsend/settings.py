"""Settings: every knob hogsend reads from the environment, validated once at boot.

Settings are built at the edge (the CLI, a test fixture) and passed down; no other
module reads ``os.environ``. Every field maps to an ``HOGSEND_<NAME>`` variable.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from hogsend.core.identity import IdentityError, normalize_email
from hogsend.core.webhook_signatures import decode_secret
from hogsend.errors import ConfigurationError

EmailProvider = Literal["smtp", "resend", "outbox"]
LogFormat = Literal["json", "console"]
Environment = Literal["dev", "test", "prod"]

_DATABASE_SCHEMES = ("postgresql://", "postgresql+psycopg://", "postgres://")
CAMPAIGN_STALE_MIN_SECONDS = 60.0
"""The least ``campaign_stale_seconds``: above a healthy run's longest stretch without
recording progress (``hogsend.runtime.campaigns``: a ``MAX_WAIT_SECONDS`` sleep, a
``STEP_SECONDS`` batch step and its last batch), with room for a slow database."""


def _default_worker_id() -> str:
    return f"{socket.gethostname()}-worker"


class Settings(BaseSettings):
    """Runtime configuration.

    Attributes are documented in ``docs/configuration.md``; each one is set with the
    environment variable ``HOGSEND_<ATTRIBUTE>`` (upper case).
    """

    model_config = SettingsConfigDict(
        env_prefix="HOGSEND_",
        extra="ignore",
        frozen=True,
        validate_default=True,
    )

    env: Environment = Field(
        default="prod",
        description="dev, test or prod; prod requires a secret key, dev logs for people.",
    )
    app: str | None = Field(
        default=None,
        description="Dotted path `package.module:attribute` of the Hogsend app object.",
    )
    database_url: str | None = Field(
        default=None,
        description="Postgres URL. Unset: `hogsend dev` starts embedded Postgres in data_dir.",
    )
    data_dir: Path = Field(
        default=Path(".hogsend"),
        description="Where embedded Postgres and local state live.",
    )
    public_url: str = Field(
        default="http://localhost:8000",
        description="Base URL people and mailbox providers reach this API on.",
    )
    secret_key: SecretStr | None = Field(
        default=None,
        description="Key signing unsubscribe/tracking tokens; at least 32 characters.",
    )
    host: str = Field(default="127.0.0.1", description="Interface the API server binds.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port the API server binds.")

    email_provider: EmailProvider = Field(default="outbox", description="smtp, resend or outbox.")
    email_from: str = Field(
        default="Hogsend <hello@example.com>", description="Default From header."
    )
    smtp_host: str = Field(default="localhost", description="SMTP server host.")
    smtp_port: int = Field(default=587, ge=1, le=65535, description="SMTP server port.")
    smtp_username: str | None = Field(default=None, description="SMTP auth user.")
    smtp_password: SecretStr | None = Field(default=None, description="SMTP auth password.")
    smtp_tls: Literal["none", "starttls", "tls"] = Field(
        default="starttls", description="none, starttls (port 587) or tls (port 465)."
    )
    smtp_pool_size: int = Field(
        default=4, ge=1, le=100, description="SMTP connections kept open and reused per process."
    )
    smtp_timeout_seconds: float = Field(
        default=30.0, gt=0, description="SMTP connect and per-command timeout."
    )
    resend_api_key: SecretStr | None = Field(default=None, description="Resend API key.")
    resend_base_url: str = Field(
        default="https://api.resend.com",
        description="Root of the Resend API (point it at a local server in tests).",
    )
    email_rate_per_second: float = Field(
        default=0.0, ge=0, description="Most messages per second to the provider (0 = no limit)."
    )
    unsubscribe_mailto: str | None = Field(
        default=None,
        description="Address List-Unsubscribe also offers as a mailto: URI; unset: only https.",
    )
    resend_webhook_secret: SecretStr | None = Field(
        default=None, description="Svix signing secret of the Resend webhook."
    )
    generic_webhook_secret: SecretStr | None = Field(
        default=None,
        description="Signing secret (whsec_...) of POST /v1/webhooks/generic; unset: refused.",
    )
    webhook_tolerance_seconds: int = Field(
        default=300,
        ge=1,
        le=86_400,
        description="Largest accepted age (or skew) of a signed webhook's timestamp.",
    )
    soft_bounce_threshold: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Soft bounces in a row (no delivery between) that suppress an address.",
    )
    suppression_import_max_rows: int = Field(
        default=100_000,
        ge=1,
        le=1_000_000,
        description="Most rows one suppression CSV import may carry.",
    )

    test_mode: bool = Field(
        default=False, description="Redirect every send to test_mode_recipient or the outbox."
    )
    test_mode_recipient: str | None = Field(
        default=None, description="Where test-mode sends go; unset: the outbox."
    )

    frequency_cap_count: int = Field(
        default=0,
        ge=0,
        description="Most non-transactional messages one address gets per cap window (0 = no cap).",
    )
    frequency_cap_window_seconds: int = Field(
        default=86_400, ge=1, description="Length of the frequency-cap window."
    )
    mailer_max_attempts: int = Field(
        default=3,
        ge=1,
        le=20,
        description="Provider calls per send before a transient error becomes provider_error.",
    )
    mailer_retry_base_seconds: float = Field(
        default=1.0, ge=0, description="Wait before the mailer's first retry; doubles per retry."
    )
    mailer_retry_max_seconds: float = Field(
        default=30.0, ge=0, description="Longest wait between two provider calls of one send."
    )
    track_opens: bool = Field(
        default=True, description="Add an open-tracking pixel to the HTML part of every email."
    )
    track_clicks: bool = Field(
        default=True,
        description="Rewrite the http(s) links of the HTML part to signed click-tracking URLs.",
    )
    track_bot_click_seconds: float = Field(
        default=5.0,
        ge=0,
        description="A click sooner than this after the send is taken for a link scanner.",
    )
    track_bot_events: bool = Field(
        default=False,
        description="Also emit email.opened/email.clicked for hits flagged as bots.",
    )
    track_max_hits_per_hour: int = Field(
        default=100,
        ge=1,
        le=1_000_000,
        description="Most opens plus clicks stored per message per hour; further hits are "
        "answered but not stored.",
    )
    email_queue_poll_seconds: float = Field(
        default=5.0,
        gt=0,
        le=300,
        description="Idle worker's wait between looks for handed-off sends (NOTIFY wakes it).",
    )
    email_queue_concurrency: int = Field(
        default=4, ge=1, le=100, description="Handed-off sends one worker delivers at once."
    )
    deferred_sweep_seconds: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="How often a worker sends the deferred sends whose window has opened.",
    )
    deferred_sweep_batch_size: int = Field(
        default=200, ge=1, le=10_000, description="Deferred sends one sweep loads at once."
    )
    bucket_reconcile_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="How often the bucket reconcile sweep runs (one worker at a time).",
    )
    bucket_sweep_batch_size: int = Field(
        default=1000, ge=1, le=100_000, description="Memberships one reconcile batch handles."
    )
    bucket_backfill_chunk_size: int = Field(
        default=2000, ge=1, le=100_000, description="Contacts one backfill chunk handles."
    )
    bucket_backfill_lease_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A backfill silent this long is taken over by another runner.",
    )
    campaign_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        le=300,
        description="How often a worker looks for campaigns to start, resume or reap.",
    )
    campaign_batch_size: int = Field(
        default=2000,
        ge=1,
        le=10_000,
        description="Most recipients in one campaign batch (sized to about 2 s of sending).",
    )
    campaign_concurrency: int = Field(
        default=8, ge=1, le=200, description="Sends one campaign has in flight at once."
    )
    campaign_stale_seconds: float = Field(
        default=900.0,
        description="A sending campaign without progress this long is handed to another run "
        f"(at least {CAMPAIGN_STALE_MIN_SECONDS:.0f}).",
    )
    import_stale_seconds: float = Field(
        default=300.0,
        gt=0,
        description="A processing import without progress this long is handed to another run.",
    )

    rate_limit_data_plane: int = Field(
        default=6000, ge=0, description="Data-plane requests per key per minute (0 = off)."
    )
    rate_limit_emails: int = Field(
        default=600, ge=0, description="POST /v1/emails per key per minute (0 = off)."
    )
    rate_limit_admin: int = Field(
        default=600, ge=0, description="Admin requests per key per minute (0 = off)."
    )
    rate_limit_window_seconds: int = Field(
        default=60, ge=1, le=3600, description="Length of the rate-limit window."
    )
    rate_limit_backend: Literal["postgres", "memory"] = Field(
        default="postgres",
        description="Where rate-limit counters live: postgres (shared by every API process) "
        "or memory (per process; limits multiply by the number of processes).",
    )
    api_key_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        le=5,
        description="How long an API process trusts a key it checked (0 = check every request).",
    )

    worker_id: str = Field(
        default_factory=_default_worker_id,
        min_length=1,
        max_length=100,
        description="Stable identity of this worker (DBOS executor id, heartbeat row).",
    )
    application_version: str = Field(
        default="hogsend-1",
        min_length=1,
        description="DBOS application version, pinned for the life of the install.",
    )
    heartbeat_seconds: float = Field(
        default=10.0, gt=0, description="How often a worker writes its heartbeat."
    )
    worker_stale_seconds: float = Field(
        default=30.0, gt=0, description="A worker silent this long counts as dead."
    )
    db_pool_size: int = Field(default=10, ge=1, le=200, description="SQL pool per process.")

    dispatcher_batch_size: int = Field(
        default=100, ge=1, le=10_000, description="Outbox rows a dispatcher claims at once."
    )
    dispatcher_concurrency: int = Field(
        default=8,
        ge=1,
        le=200,
        description="Contacts whose events one dispatcher processes at the same time.",
    )
    dispatcher_events_per_transaction: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Most events one dispatcher transaction processes (1: one per event).",
    )
    dispatcher_poll_seconds: float = Field(
        default=0.2, gt=0, le=60, description="Idle dispatcher's wait between outbox polls."
    )
    dispatcher_listen: bool = Field(
        default=True,
        description="Also wake the dispatcher on Postgres NOTIFY hogsend_outbox.",
    )
    dispatcher_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a claim holds a row; a dead worker's rows return after it.",
    )
    dispatcher_max_attempts: int = Field(
        default=12, ge=1, description="Failed attempts before a row goes to the dead-letter queue."
    )
    dispatcher_backoff_base_seconds: float = Field(
        default=2.0, gt=0, description="Delay before the first retry; doubles per attempt."
    )
    dispatcher_backoff_max_seconds: float = Field(
        default=600.0, gt=0, description="Longest delay between two attempts."
    )
    dispatcher_lag_threshold_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Oldest pending outbox row older than this degrades /v1/health.",
    )
    dispatcher_retention_seconds: float = Field(
        default=86_400.0, ge=0, description="How long processed outbox rows are kept."
    )

    log_format: LogFormat | None = Field(
        default=None, description="json or console; default console in dev, json otherwise."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Minimum log level."
    )
    max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest accepted request body."
    )
    batch_max_body_bytes: int = Field(
        default=10_485_760,
        ge=1024,
        description="Largest accepted body of a batch request (events and Segment batches).",
    )
    import_max_body_bytes: int = Field(
        default=104_857_600,
        ge=1024,
        description="Largest contact-import upload (POST /v1/admin/imports), decompressed.",
    )
    batch_max_events: int = Field(
        default=1000, ge=1, le=100_000, description="Most events or messages in one batch request."
    )

    studio_session_seconds: int = Field(
        default=43_200,
        ge=60,
        le=2_592_000,
        description="How long a Studio sign-in lasts before the password is asked again.",
    )
    studio_cookie_secure: Literal["auto", "always", "never"] = Field(
        default="auto",
        description="Secure flag of Studio cookies: auto (when the request came over https), "
        "always or never.",
    )
    studio_login_attempts: int = Field(
        default=5,
        ge=1,
        description="Studio sign-in attempts per client address and email per rate-limit window.",
    )
    journey_park_after_seconds: float = Field(
        default=600.0,
        gt=0,
        description="A journey run sleeping or waiting longer than this is parked: it holds "
        "no coroutine until it is due or its event comes.",
    )
    alert_sweep_seconds: float = Field(
        default=60.0,
        gt=0,
        le=86_400,
        description="How often one worker evaluates the alert rules.",
    )
    retention_sweep_seconds: float = Field(
        default=3600.0,
        gt=0,
        le=86_400,
        description="How often a worker deletes webhook receipts and finished DBOS workflows "
        "past their retention.",
    )
    webhook_receipt_retention_days: float = Field(
        default=30.0,
        ge=0,
        description="How long provider webhook receipts (the de-duplication of deliveries) "
        "are kept; 0 keeps them forever.",
    )
    workflow_retention_days: float = Field(
        default=30.0,
        ge=0,
        description="How long finished (succeeded or failed) DBOS workflows are kept; "
        "0 keeps them forever.",
    )

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if not value.startswith(_DATABASE_SCHEMES):
            raise ValueError(
                "must be a Postgres URL such as postgresql://user:pass@host:5432/dbname"
            )
        return value

    @field_validator("campaign_stale_seconds")
    @classmethod
    def _check_campaign_stale_seconds(cls, value: float) -> float:
        if value < CAMPAIGN_STALE_MIN_SECONDS:
            raise ValueError(
                f"must be at least {CAMPAIGN_STALE_MIN_SECONDS:.0f} seconds: a healthy "
                "campaign run can go 30 s without recording progress (a durable sleep "
                "until recipients' local send times) or a 5 s batch step plus its last "
                "batch, and a shorter value would hand it to a second run"
            )
        return value

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("unsubscribe_mailto")
    @classmethod
    def _check_unsubscribe_mailto(cls, value: str | None) -> str | None:
        try:
            address = normalize_email(value)
        except IdentityError as exc:
            raise ValueError(
                f"must be an address such as unsubscribe@example.com ({exc.reason})"
            ) from None
        if address is not None and not address.isascii():
            # It goes into a header as a URI: only ASCII survives there unencoded.
            raise ValueError("must be an ASCII email address")
        return address

    @field_validator("resend_webhook_secret", "generic_webhook_secret")
    @classmethod
    def _check_webhook_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        decode_secret(value.get_secret_value())
        return value

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (try: openssl rand -hex 32)")
        return value

    @model_validator(mode="after")
    def _check_combination(self) -> Settings:
        if self.env == "prod" and self.secret_key is None:
            raise ValueError(
                "HOGSEND_SECRET_KEY is required when HOGSEND_ENV=prod "
                "(generate one with: openssl rand -hex 32)"
            )
        if self.email_provider == "resend" and self.resend_api_key is None:
            raise ValueError(
                "HOGSEND_RESEND_API_KEY is required when HOGSEND_EMAIL_PROVIDER=resend"
            )
        if self.worker_stale_seconds <= self.heartbeat_seconds:
            raise ValueError("HOGSEND_WORKER_STALE_SECONDS must exceed HOGSEND_HEARTBEAT_SECONDS")
        if self.dispatcher_backoff_max_seconds < self.dispatcher_backoff_base_seconds:
            raise ValueError(
                "HOGSEND_DISPATCHER_BACKOFF_MAX_SECONDS must be at least "
                "HOGSEND_DISPATCHER_BACKOFF_BASE_SECONDS"
            )
        return self

    @property
    def effective_log_format(self) -> LogFormat:
        """The log format to use: the explicit setting, or console in dev and json elsewhere."""
        if self.log_format is not None:
            return self.log_format
        return "console" if self.env == "dev" else "json"

    @property
    def pgdata_dir(self) -> Path:
        """Directory of the embedded Postgres cluster."""
        return self.data_dir / "pgdata"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment plus explicit overrides.

    Raises:
        ConfigurationError: naming each invalid ``HOGSEND_*`` variable and why.
    """
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(part) for part in err["loc"])
            name = f"HOGSEND_{loc.upper()}" if loc else "settings"
            message = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"  {name}: {message}")
        raise ConfigurationError("invalid configuration:\n" + "\n".join(lines)) from None
