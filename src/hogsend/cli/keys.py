"""``hogsend keys``: mint, list and revoke API keys from the command line.

``create`` needs no existing key, which makes it the way to get the first one (and a
way back in after losing every full-admin key). The raw key is printed once, alone on
the last line of stdout, so scripts can take it with ``tail -n1``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

import typer

from hogsend.cli.context import database, in_transaction, quiet_one_off_settings
from hogsend.db.engine import AsyncSession
from hogsend.db.repos import api_keys
from hogsend.db.tables.auth import API_SCOPES

keys_cli = typer.Typer(
    name="keys",
    help="Create, list and revoke API keys.",
    no_args_is_help=True,
    add_completion=False,
)


def _parse_expiry(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is not an ISO 8601 time such as 2030-01-31 or 2030-01-31T12:00:00Z",
            param_hint="--expires-at",
        ) from None
    # A bare date or a time without offset means UTC.
    parsed = parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    if parsed <= datetime.now(UTC):
        raise typer.BadParameter(f"{value} is in the past", param_hint="--expires-at")
    return parsed


@keys_cli.command()
def create(
    scope: Annotated[
        list[str],
        typer.Option(
            "--scope",
            help=f"A scope to grant; repeat for several. One of: {', '.join(API_SCOPES)}.",
        ),
    ],
    name: Annotated[str, typer.Option(help="A label telling keys apart.")] = "cli",
    expires_at: Annotated[
        str | None,
        typer.Option("--expires-at", help="ISO 8601 expiry (UTC unless an offset is given)."),
    ] = None,
) -> None:
    """Mint a key; the raw key is printed once, alone on the last line."""
    unknown = [s for s in scope if s not in API_SCOPES]
    if unknown:
        raise typer.BadParameter(
            f"unknown scope {', '.join(map(repr, unknown))}; choose from {', '.join(API_SCOPES)}",
            param_hint="--scope",
        )
    if not name.strip():
        raise typer.BadParameter("must not be empty", param_hint="--name")
    expiry = _parse_expiry(expires_at)
    with database(quiet_one_off_settings()) as url:
        info, raw = in_transaction(
            url,
            lambda session: api_keys.create_key(
                session, name=name, scopes=scope, expires_at=expiry, created_by="hogsend cli"
            ),
        )
    typer.echo(
        f"created key {info.name!r}: id {info.id}, prefix {info.key_prefix}, "
        f"scopes {', '.join(info.scopes)}"
        + (f", expires {info.expires_at.isoformat()}" if info.expires_at else "")
    )
    typer.echo("Store it now, it is not shown again:")
    typer.echo(raw)


@keys_cli.command("list")
def list_(
    include_revoked: Annotated[bool, typer.Option("--all", help="Include revoked keys.")] = False,
) -> None:
    """List keys, newest first (never their secrets)."""

    async def fetch(session: AsyncSession) -> list[api_keys.ApiKeyInfo]:
        found: list[api_keys.ApiKeyInfo] = []
        while True:
            page, total = await api_keys.list_keys(
                session, include_revoked=include_revoked, limit=100, offset=len(found)
            )
            found += page
            if not page or len(found) >= total:
                return found

    with database(quiet_one_off_settings()) as url:
        keys = in_transaction(url, fetch)
    if not keys:
        typer.echo("no keys; create one with: hogsend keys create --scope full-admin")
        return
    rows = [("ID", "NAME", "PREFIX", "SCOPES", "CREATED", "LAST USED", "EXPIRES", "STATE")]
    now = datetime.now(UTC)
    for key in keys:
        state = (
            "revoked"
            if key.revoked_at
            else ("expired" if key.expires_at and key.expires_at <= now else "active")
        )
        rows.append(
            (
                str(key.id),
                key.name,
                key.key_prefix,
                ",".join(key.scopes),
                _when(key.created_at),
                _when(key.last_used_at),
                _when(key.expires_at),
                state,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value else "-"


@keys_cli.command()
def revoke(key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id.")]) -> None:
    """Revoke a key; requests with it fail with 401 from now on."""
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise typer.BadParameter(f"{key_id!r} is not a key id (a UUID)", param_hint="ID") from None
    with database(quiet_one_off_settings()) as url:
        revoked = in_transaction(url, lambda session: api_keys.revoke_key(session, parsed))
    if not revoked:
        typer.echo(f"error: no active key with id {parsed}", err=True)
        raise typer.Exit(1)
    typer.echo(f"revoked {parsed}")
