"""``hogsend check``: validate the app object without touching a database."""

from __future__ import annotations

import typer

from hogsend.cli.context import cli_state, load_user_app, one_off_settings, resolve_app_path


def check(ctx: typer.Context) -> None:
    """Validate the app: unique kebab-case ids, known templates, valid criteria.

    Warnings (templates that get the standard preference footer) go to stderr and do
    not fail it."""
    app = load_user_app(resolve_app_path(cli_state(ctx), one_off_settings()))
    problems = app.check()
    for warning in app.warnings():
        typer.echo(f"warning: {warning}", err=True)
    for problem in problems:
        typer.echo(str(problem))
    if problems:
        typer.echo(f"{len(problems)} problem(s) found", err=True)
        raise typer.Exit(1)
    typer.echo("ok")
