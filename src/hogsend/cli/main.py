"""The ``hogsend`` entry point: the Typer app and the mapping of errors to exit codes.

Exit codes: 0 success, 1 the command failed (problems found, database unreachable),
2 bad usage or configuration (unknown option, invalid HOGSEND_* value, bad --app).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Annotated

import typer

from hogsend import __version__
from hogsend.cli.buckets import buckets_cli
from hogsend.cli.check import check
from hogsend.cli.context import CliState
from hogsend.cli.db import db_cli
from hogsend.cli.dev import dev
from hogsend.cli.imports import import_cli
from hogsend.cli.keys import keys_cli
from hogsend.cli.serving import serve, worker
from hogsend.cli.studio import studio_cli
from hogsend.cli.templates import templates_cli
from hogsend.errors import ConfigurationError, DatabaseError

cli = typer.Typer(
    name="hogsend",
    help="hogsend: events, contacts, buckets, durable journeys and email on Postgres.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hogsend {__version__}")
        raise typer.Exit()


@cli.callback()
def root(
    ctx: typer.Context,
    app: Annotated[
        str | None,
        typer.Option(
            "--app",
            metavar="MODULE:ATTR",
            help="The Hogsend app object, e.g. myproject.hogsend:app (default: $HOGSEND_APP).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Global options, given before the command: hogsend --app pkg.mod:app COMMAND."""
    ctx.obj = CliState(app_path=app)


cli.command()(dev)
cli.command()(serve)
cli.command()(worker)
cli.command()(check)
cli.add_typer(db_cli)
cli.add_typer(keys_cli)
cli.add_typer(templates_cli)
cli.add_typer(studio_cli)
cli.add_typer(buckets_cli)
cli.add_typer(import_cli)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; configuration mistakes end with a message and exit code 2, no traceback."""
    try:
        cli(args=list(argv) if argv is not None else None, prog_name="hogsend")
    except ConfigurationError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(2)
    except DatabaseError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
