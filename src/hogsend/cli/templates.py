"""``hogsend templates``: list the app's email templates and preview one rendered."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from hogsend.cli.context import cli_state, load_user_app, one_off_settings, resolve_app_path
from hogsend.core.contact import Contact
from hogsend.errors import TemplateError

templates_cli = typer.Typer(
    name="templates",
    help="List and preview email templates.",
    no_args_is_help=True,
    add_completion=False,
)

PREVIEW_UNSUBSCRIBE_URL = "https://example.com/unsubscribe?preview=1"


def _registry(ctx: typer.Context) -> Any:
    app = load_user_app(resolve_app_path(cli_state(ctx), one_off_settings()))
    if app.templates is None:
        typer.secho("error: the app has no templates (Hogsend(templates=...))", fg="red", err=True)
        raise typer.Exit(1)
    return app.templates


@templates_cli.command("list")
def list_templates(ctx: typer.Context) -> None:
    """Print each template: key, format, category, subject, props model."""
    registry = _registry(ctx)
    for template in registry.templates():
        fields = [
            template.key,
            template.format + ("+txt" if template.text_source else ""),
            template.category or "-",
            template.subject or "(no subject)",
        ]
        if template.props_model:
            fields.append(f"props={template.props_model.rsplit('.', 1)[-1]}")
        typer.echo("\t".join(fields))


def _load_json(path: Path | None, option: str) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise typer.BadParameter(
            f"cannot read JSON from {path}: {exc}", param_hint=option
        ) from None
    if not isinstance(value, dict):
        raise typer.BadParameter(f"{path} must hold a JSON object", param_hint=option)
    return value


@templates_cli.command("preview")
def preview(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The template key, e.g. welcome.")],
    props: Annotated[
        Path | None,
        typer.Option(
            "--props", help="JSON file with the props (default: the template's examples)."
        ),
    ] = None,
    contact_email: Annotated[
        str, typer.Option("--contact-email", help="Email of the preview contact.")
    ] = "preview@example.com",
    contact_properties: Annotated[
        Path | None,
        typer.Option("--contact-properties", help="JSON file with the contact's properties."),
    ] = None,
    fmt: Annotated[
        Literal["html", "text"],
        typer.Option("--format", help="html: the HTML part; text: subject, preheader and text."),
    ] = "text",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Render a template with sample props for a sample contact."""
    registry = _registry(ctx)
    given = _load_json(props, "--props")
    contact = Contact(
        id=uuid.UUID(int=0),
        key=contact_email,
        email=contact_email,
        properties=_load_json(contact_properties, "--contact-properties") or {},
    )
    try:
        rendered = registry.render(
            key,
            contact=contact,
            props=given if given is not None else registry.preview_props(key),
            extra={"unsubscribe_url": PREVIEW_UNSUBSCRIBE_URL},
        )
    except TemplateError as exc:
        typer.secho(f"error: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    if fmt == "html":
        out = rendered.html
    else:
        lines = [f"Subject: {rendered.subject}"]
        if rendered.preheader:
            lines.append(f"Preheader: {rendered.preheader}")
        lines.append(f"Category: {rendered.category or '-'}")
        out = "\n".join(lines) + "\n\n" + rendered.text
    if output is not None:
        output.write_text(out, encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)
    else:
        typer.echo(out, nl=not out.endswith("\n"))
