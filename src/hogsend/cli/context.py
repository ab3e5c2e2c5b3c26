"""What every command shares: the ``--app`` option, settings, the app, the database.

Commands build settings once here (the only place the CLI touches configuration) and
pass them down. A ConfigurationError or AppLoadError raised anywhere below ends the
command with its message on stderr and exit code 2 (see :mod:`hogsend.cli.main`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil
import typer

from hogsend.app import Hogsend, load_app
from hogsend.db.embedded import EmbeddedPostgres, PostmasterLock
from hogsend.db.engine import AsyncSession, make_async_engine, make_sessionmaker
from hogsend.errors import AppLoadError, ConfigurationError
from hogsend.logs import configure_logging
from hogsend.runtime.stop_signals import at_forced_exit
from hogsend.settings import Settings, load_settings

DEV_DEFAULT_APP = "examples.quickstart.app:app"


@dataclass(frozen=True, slots=True, kw_only=True)
class CliState:
    """Global options, stored on the Typer context by the root callback."""

    app_path: str | None = None


def cli_state(ctx: typer.Context) -> CliState:
    """The global options of this invocation."""
    state = ctx.find_root().obj
    return state if isinstance(state, CliState) else CliState()


def settings_overrides(**values: object) -> dict[str, object]:
    """Only the options the user actually gave (None means "not given")."""
    return {key: value for key, value in values.items() if value is not None}


def server_settings(**overrides: object) -> Settings:
    """Settings of a long-running server process: validated strictly."""
    return load_settings(**settings_overrides(**overrides))


def one_off_settings(**overrides: object) -> Settings:
    """Settings of a one-off command (db, keys, check).

    One-off commands sign nothing, so they do not insist on HOGSEND_SECRET_KEY in prod:
    when the only thing missing is the secret, a throwaway one stands in.
    """
    given = settings_overrides(**overrides)
    try:
        return load_settings(**given)
    except ConfigurationError as strict_error:
        try:
            return load_settings(**given, secret_key=secrets.token_hex(32))
        except ConfigurationError:
            raise strict_error from None


def quiet_one_off_settings() -> Settings:
    """One-off settings with logging configured to stay quiet unless debug was asked for."""
    settings = one_off_settings()
    if settings.log_level != "debug":
        settings = one_off_settings(log_level="warning")
    configure_logging(settings)
    return settings


def resolve_app_path(state: CliState, settings: Settings, *, default: str | None = None) -> str:
    """``--app``, else HOGSEND_APP, else ``default``; AppLoadError if none is given."""
    path = state.app_path or settings.app or default
    if path is None:
        raise AppLoadError(
            "no app given: pass --app package.module:attribute (before the command) "
            "or set HOGSEND_APP"
        )
    return path


def load_user_app(path: str, *, bundled_default: bool = False) -> Hogsend:
    """Load the app from the current directory (added to the import path)."""
    try:
        return load_app(path, search=(Path.cwd(),))
    except AppLoadError as exc:
        if bundled_default:
            raise AppLoadError(
                f"{exc}\nhogsend dev defaults to the bundled example {DEV_DEFAULT_APP}, "
                "which is importable only from the root of the hogsend repository: "
                "run it from there, or pass --app yourpackage.module:app"
            ) from exc
        raise


def postgres_running(data_dir: Path) -> bool:
    """Whether an embedded Postgres of ``data_dir`` is already up (e.g. ``hogsend dev``)."""
    lock = PostmasterLock.read(data_dir.expanduser().resolve() / "pgdata")
    if lock is None or lock.status != "ready":
        return False
    try:
        return psutil.Process(lock.pid).name() == "postgres"
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL for a command: HOGSEND_DATABASE_URL, else embedded Postgres.

    The embedded server of the data dir is started if needed and stopped afterwards
    only if this command started it, so a one-off next to ``hogsend dev`` leaves the
    dev server's database running.
    """
    if settings.database_url is not None:
        yield settings.database_url
        return
    already_running = postgres_running(settings.data_dir)
    server = EmbeddedPostgres(settings.data_dir)
    url = server.start()
    try:
        # `hogsend serve` exits at once on a second stop signal: not without this server.
        with down_on_forced_exit(None if already_running else server):
            yield url
    finally:
        if not already_running:
            server.stop()


@contextlib.contextmanager
def down_on_forced_exit(server: EmbeddedPostgres | None) -> Iterator[None]:
    """Meanwhile, a forced exit (a second stop signal, which skips every ``finally``)
    takes ``server`` down too, in immediate mode. None: nothing to take down."""
    if server is None:
        yield
        return
    forget = at_forced_exit(functools.partial(server.stop, immediate=True))
    try:
        yield
    finally:
        forget()


T = TypeVar("T")


def in_transaction(url: str, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction on a one-connection engine, from sync CLI code."""

    async def run() -> T:
        engine = make_async_engine(url, pool_size=1)
        try:
            async with make_sessionmaker(engine)() as session, session.begin():
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())
