"""``hogsend studio``: manage who can sign in to Studio from the command line.

``create-user`` needs no Studio session, which makes it the way to add people (and the
way back in when every admin forgot their password: create a new admin).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer

from hogsend.cli.context import database, in_transaction, quiet_one_off_settings
from hogsend.core.identity import IdentityError, normalize_email
from hogsend.db.engine import AsyncSession
from hogsend.db.repos import audit, studio_users
from hogsend.db.tables.auth import STUDIO_ROLES
from hogsend.errors import Conflict

studio_cli = typer.Typer(
    name="studio",
    help="Manage Studio users (the people who sign in to the admin UI).",
    no_args_is_help=True,
    add_completion=False,
)


@studio_cli.command("create-user")
def create_user(
    email: Annotated[str, typer.Option(help="The address the person signs in with.")],
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            help="The password (asked for when not given).",
        ),
    ],
    role: Annotated[
        str, typer.Option(help=f"One of: {', '.join(STUDIO_ROLES)} (viewer only reads).")
    ] = "viewer",
    name: Annotated[str | None, typer.Option(help="A display name.")] = None,
) -> None:
    """Add a Studio user; an admin may change things, a viewer only look."""
    # Imported here: the Studio package pulls in the web stack, which other commands skip.
    from hogsend.studio.passwords import hash_password, password_problem

    if role not in STUDIO_ROLES:
        raise typer.BadParameter(f"choose from {', '.join(STUDIO_ROLES)}", param_hint="--role")
    try:
        normalized = normalize_email(email)
    except IdentityError as exc:
        raise typer.BadParameter(exc.reason, param_hint="--email") from None
    if normalized is None:
        raise typer.BadParameter("must not be empty", param_hint="--email")
    problem = password_problem(password)
    if problem is not None:
        raise typer.BadParameter(problem, param_hint="--password")
    password_hash = hash_password(password)

    async def add(session: AsyncSession) -> studio_users.StudioUserInfo:
        user = await studio_users.create_user(
            session, email=normalized, password_hash=password_hash, role=role, name=name
        )
        await audit.record(
            session,
            actor="hogsend cli",
            action="studio-users.create",
            resource="studio-users",
            resource_id=str(user.id),
            detail=user.created_detail("cli"),
        )
        return user

    with database(quiet_one_off_settings()) as url:
        try:
            user = in_transaction(url, add)
        except Conflict as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"created Studio {user.role} {user.email} (id {user.id})")


@studio_cli.command("list-users")
def list_users() -> None:
    """List Studio users, oldest first (never their passwords)."""
    with database(quiet_one_off_settings()) as url:
        users = in_transaction(url, studio_users.list_users)
    if not users:
        typer.echo("no Studio users; open /studio to set up the first admin, or run:")
        typer.echo("  hogsend studio create-user --email you@example.com --role admin")
        return
    rows = [("EMAIL", "ROLE", "CREATED", "LAST SIGN-IN", "STATE")]
    for user in users:
        rows.append(
            (
                user.email,
                user.role,
                _when(user.created_at),
                _when(user.last_login_at),
                "disabled" if user.disabled_at else "active",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else "-"
