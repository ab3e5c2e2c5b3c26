"""``hogsend db``: apply, revert and inspect hogsend's migrations."""

from __future__ import annotations

from typing import Annotated

import typer

from hogsend.cli.context import database, quiet_one_off_settings
from hogsend.db import migrate

db_cli = typer.Typer(
    name="db",
    help="Apply, revert and inspect database migrations.",
    no_args_is_help=True,
    add_completion=False,
)


def _report(url: str) -> migrate.SchemaStatus:
    status = migrate.status(url)
    typer.echo(f"applied:  {status.applied or '(none)'}")
    typer.echo(f"head:     {status.required or '(none)'}")
    if status.in_sync:
        typer.echo("status:   up to date")
    else:
        typer.echo(f"status:   {len(status.pending)} pending ({', '.join(status.pending)})")
    return status


@db_cli.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Apply migrations up to REVISION (default: the latest)."""
    with database(quiet_one_off_settings()) as url:
        migrate.upgrade(url, revision)
        _report(url)


@db_cli.command()
def downgrade(
    revision: Annotated[
        str, typer.Argument(help="Revision to go back to, `-1` for one step, `base` for empty.")
    ],
) -> None:
    """Revert migrations down to REVISION."""
    with database(quiet_one_off_settings()) as url:
        migrate.downgrade(url, revision)
        _report(url)


@db_cli.command()
def current() -> None:
    """Show the applied revision, the packaged head and what is pending."""
    with database(quiet_one_off_settings()) as url:
        _report(url)
