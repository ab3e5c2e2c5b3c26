"""``hogsend dev``: everything in one process for local work.

Embedded Postgres in the data dir (unless HOGSEND_DATABASE_URL is set) → migrations →
optional demo data → worker + API + Studio, until Ctrl+C; then the worker
stops gracefully and the embedded Postgres is shut down.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend.app import Hogsend
from hogsend.cli.context import (
    DEV_DEFAULT_APP,
    cli_state,
    down_on_forced_exit,
    load_user_app,
    resolve_app_path,
    settings_overrides,
)
from hogsend.cli.serving import (
    HostOption,
    PortOption,
    Processes,
    bind_api_socket,
    run_processes,
)
from hogsend.db import migrate
from hogsend.db.embedded import EmbeddedPostgres
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import api_keys, demo
from hogsend.errors import ConfigurationError
from hogsend.logs import configure_logging
from hogsend.runtime import event_loop
from hogsend.settings import Settings, load_settings

SECRET_KEY_FILE = "secret_key"
DEV_KEY_NAME = "dev"


def dev_secret_key(data_dir: Path) -> str:
    """The dev secret key: generated on first use and kept in ``<data_dir>/secret_key``."""
    path = data_dir / SECRET_KEY_FILE
    if path.exists():
        value = path.read_text().strip()
        if len(value) < 32:
            raise ConfigurationError(
                f"{path} holds a secret key shorter than 32 characters; delete the file "
                "to have a new one generated"
            )
        return value
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32)
    path.touch(mode=0o600)
    path.write_text(value + "\n")
    return value


def dev_settings(**given: object) -> Settings:
    """Settings for ``hogsend dev``: env=dev, a persisted secret, public URL from host:port.

    Test mode is on unless ``HOGSEND_TEST_MODE`` says otherwise: a dev machine sends to
    the outbox (or ``HOGSEND_TEST_MODE_RECIPIENT``), never to the real recipients.
    """
    overrides = {"env": "dev", **settings_overrides(**given)}
    settings = load_settings(**overrides)
    if "test_mode" not in settings.model_fields_set:
        overrides["test_mode"] = True
    if settings.secret_key is None:
        overrides["secret_key"] = dev_secret_key(settings.data_dir)
    if "public_url" not in settings.model_fields_set:
        host = "localhost" if settings.host in ("0.0.0.0", "127.0.0.1", "::") else settings.host
        overrides["public_url"] = f"http://{host}:{settings.port}"
    return load_settings(**overrides)


def dev(
    ctx: typer.Context,
    host: HostOption = None,
    port: PortOption = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir", help="Where embedded Postgres and local state live (default: .hogsend)."
        ),
    ] = None,
    seed_demo: Annotated[
        bool, typer.Option("--seed-demo", help="Load demo contacts and events (idempotent).")
    ] = False,
) -> None:
    """Run Postgres, migrations, the API, a worker and Studio in one process."""
    settings = dev_settings(host=host, port=port, data_dir=data_dir)
    configure_logging(settings)
    state = cli_state(ctx)
    path = resolve_app_path(state, settings, default=DEV_DEFAULT_APP)
    app = load_user_app(path, bundled_default=path == DEV_DEFAULT_APP and not state.app_path)
    for problem in (*app.check(), *app.warnings()):
        typer.secho(f"warning: {problem}", fg="yellow", err=True)
    api_socket = bind_api_socket(settings.host, settings.port)

    server: EmbeddedPostgres | None = None
    if settings.database_url is None:
        server = EmbeddedPostgres(settings.data_dir)
        url = server.start()
        settings = dev_settings(host=host, port=port, data_dir=data_dir, database_url=url)
    try:
        # A second Ctrl+C exits without the graceful stop: not without Postgres.
        with down_on_forced_exit(server):
            assert settings.database_url is not None
            migrate.upgrade(settings.database_url)
            prepared = _DevPreparation(seed_demo=seed_demo)
            event_loop.run(
                run_processes(
                    app,
                    settings,
                    Processes(api=True, worker=True),
                    api_socket=api_socket,
                    before_start=prepared.run,
                    on_ready=lambda: _print_banner(app, settings, server, prepared),
                )
            )
    finally:
        if server is not None:
            server.stop()


class _DevPreparation:
    """Work done on the database before serving: demo data and the first dev key."""

    def __init__(self, *, seed_demo: bool) -> None:
        self.seed_demo = seed_demo
        self.seeded: demo.SeedResult | None = None
        self.dev_key: str | None = None

    async def run(self, engine: AsyncEngine) -> None:
        sessions = make_sessionmaker(engine)
        async with sessions() as session, session.begin():
            _, total = await api_keys.list_keys(session, include_revoked=True, limit=1)
            if total == 0:
                _, self.dev_key = await api_keys.create_key(
                    session, name=DEV_KEY_NAME, scopes=["full-admin"], created_by="hogsend dev"
                )
        if self.seed_demo:
            async with sessions() as session, session.begin():
                self.seeded = await demo.seed(session)


def _print_banner(
    app: Hogsend, settings: Settings, server: EmbeddedPostgres | None, prepared: _DevPreparation
) -> None:
    base = f"http://{settings.host}:{settings.port}"
    if server is not None:
        where = f"embedded Postgres in {server.pgdata} (port {server.port})"
    else:
        where = "HOGSEND_DATABASE_URL"
    lines = [
        "",
        f"hogsend dev is running the app {app.name!r} "
        f"(journeys: {len(app.journeys)}, buckets: {len(app.buckets)}, lists: {len(app.lists)})",
        f"  API        {base}",
        f"  health     {base}/v1/health",
        f"  API docs   {base}/docs",
        f"  Studio     {base}/studio",
        f"  database   {where}",
    ]
    if settings.test_mode:
        target = settings.test_mode_recipient or "the outbox"
        lines.append(f"  email      test mode: every send goes to {target}")
    if prepared.seeded is not None:
        seeded = prepared.seeded
        lines.append(
            f"  demo data  {seeded.contacts} contacts and {seeded.events} events added"
            f" ({seeded.sends} sends, {seeded.journey_runs} journey runs,"
            f" {seeded.memberships} bucket memberships, {seeded.campaigns} campaigns,"
            f" {seeded.dead_letters} dead letters)"
        )
    if prepared.dev_key is not None:
        lines += [
            "",
            "A full-admin API key was created for this data dir. It is shown only now;",
            "`hogsend keys create --scope ...` makes more:",
            f"  {prepared.dev_key}",
        ]
    lines += ["", "Press Ctrl+C to stop.", ""]
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
