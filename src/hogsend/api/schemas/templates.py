"""Bodies of the admin template routes (``/v1/admin/templates``)."""

from __future__ import annotations

from typing import Any, Literal
from uuid import UUID

from pydantic import ConfigDict, Field

from hogsend.api.schemas.common import ApiModel, Text


class TemplateOut(ApiModel):
    """One template of the app, as its directory and registry declare it."""

    key: str = Field(description='The name senders use: `template=` / `"template"`.')
    default_subject: str | None = Field(
        description="The subject from the metadata block (a Jinja2 template), if any."
    )
    category: str | None = Field(description="The default category of its sends.")
    preheader: str | None
    description: str | None
    format: Literal["html", "mjml"]
    has_text: bool = Field(description="A hand-written `<key>.txt` exists (else text is derived).")
    has_preview: bool = Field(description="Example props are registered for previews.")
    props_model: str | None = Field(description="Qualified name of its props model, if any.")
    props_schema: dict[str, Any] | None = Field(
        description="JSON Schema of the props model, if any."
    )


class TemplateList(ApiModel):
    """Every template, sorted by key."""

    templates: list[TemplateOut]


class TemplatePreviewQuery(ApiModel):
    """What to render the template with."""

    model_config = ConfigDict(extra="forbid")

    props: Text | None = Field(
        default=None,
        max_length=65_536,
        description="Base64 (standard or URL-safe, padding optional) of a JSON object; "
        "merged over the template's example props.",
    )
    format: Literal["json", "html", "text"] = Field(
        default="json",
        description="`html` or `text`: that part alone (`text/html`, `text/plain`); "
        "`json`: subject, preheader and both parts.",
    )
    contact_id: UUID | None = Field(
        default=None, description="Render for this contact (default: a sample contact)."
    )


class TemplatePreviewOut(ApiModel):
    """A template rendered, as a recipient would get it (tracking aside)."""

    key: str
    subject: str
    preheader: str | None
    category: str | None
    html: str
    text: str
    props: dict[str, Any] = Field(description="The props it was rendered with.")
