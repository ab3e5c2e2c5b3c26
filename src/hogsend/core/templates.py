"""Email templates as values: what a template declares and what rendering one produces.

Pure: no Jinja2, no files. :mod:`hogsend.channels.templates` loads and renders; this
module holds the model both sides (the mailer, the CLI, the admin API) talk in, and
the parser of the metadata block a template file starts with::

    {#---
    subject: Welcome to Acme, {{ first_name }}
    preheader: Your account is ready.
    category: onboarding
    ---#}

Each line inside the block is ``name: value``. The block is a Jinja2 comment, so the
file stays a valid template; ``subject`` and ``preheader`` are themselves templates,
rendered with the same variables as the body.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hogsend.core.slot_init import slot_init
from hogsend.errors import TemplateError

TemplateFormat = Literal["html", "mjml"]

META_FIELDS = ("subject", "preheader", "category", "description")
# Variables the renderer provides itself; a prop may not take these names.
RESERVED_VARIABLES = frozenset({"contact", "props", "preheader", "template_key"})

_META_OPEN = "{#---"
_META_CLOSE = "---#}"
_KEY = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


@dataclass(frozen=True, slots=True, kw_only=True)
class TemplateMeta:
    """What a template declares about itself (all optional but the subject, in practice)."""

    subject: str | None = None
    preheader: str | None = None
    category: str | None = None
    description: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailTemplate:
    """One template of a registry.

    Attributes:
        key: the name senders use (``send_email(template="welcome")``): the file's stem.
        format: ``html`` (Jinja2 HTML) or ``mjml`` (Jinja2 over MJML, compiled to HTML).
        source: the body's file name inside the template directory (``welcome.html``).
        text_source: the plain-text part's file name, or None to derive text from HTML.
        meta: the metadata block.
        props_model: qualified name of the pydantic model validating props, if any.
    """

    key: str
    format: TemplateFormat
    source: str
    text_source: str | None
    meta: TemplateMeta
    props_model: str | None = None

    @property
    def subject(self) -> str | None:
        """The default subject (a Jinja2 template string)."""
        return self.meta.subject

    @property
    def category(self) -> str | None:
        """The default category (``transactional`` exempts sends from caps)."""
        return self.meta.category


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RenderedEmail:
    """A template rendered for one recipient: ready for tracking, headers and a provider."""

    key: str
    subject: str
    html: str
    text: str
    preheader: str | None = None
    category: str | None = None


def is_template_key(value: str) -> bool:
    """Whether ``value`` is a valid template key (kebab-case, like every other id)."""
    return bool(_KEY.match(value)) and len(value) <= 64


def parse_metadata(source: str, *, key: str) -> TemplateMeta:
    """Read the ``{#--- ... ---#}`` block at the top of a template source.

    A source without a block has empty metadata. Blank lines and lines starting with
    ``#`` inside the block are ignored.

    Raises:
        TemplateError: an unclosed block, a line that is not ``name: value``, an
            unknown name or a name given twice (with the template key and line).
    """
    stripped = source.lstrip()
    if not stripped.startswith(_META_OPEN):
        return TemplateMeta()
    first_line = source[: len(source) - len(stripped)].count("\n") + 1
    end = stripped.find(_META_CLOSE)
    if end < 0:
        raise TemplateError(
            f"metadata block opened with {_META_OPEN} is never closed with {_META_CLOSE}",
            key=key,
            line=first_line,
        )
    values: dict[str, str] = {}
    block = stripped[len(_META_OPEN) : end]
    for offset, raw in enumerate(block.split("\n")):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        lineno = first_line + offset
        name, sep, value = line.partition(":")
        name = name.strip().lower()
        if not sep or not name:
            raise TemplateError(
                f"metadata line {line!r} is not 'name: value'", key=key, line=lineno
            )
        if name not in META_FIELDS:
            raise TemplateError(
                f"unknown metadata {name!r} (known: {', '.join(META_FIELDS)})",
                key=key,
                line=lineno,
            )
        if name in values:
            raise TemplateError(f"metadata {name!r} is given twice", key=key, line=lineno)
        values[name] = value.strip()
    return TemplateMeta(
        subject=values.get("subject") or None,
        preheader=values.get("preheader") or None,
        category=values.get("category") or None,
        description=values.get("description") or None,
    )


def render_variables(
    *, key: str, contact: Any, props: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The variables a template sees: each prop by name, ``props``, ``contact``, ``extra``.

    ``extra`` carries what the engine adds (``unsubscribe_url`` ...); it wins over a
    prop of the same name.

    Raises:
        TemplateError: a prop uses a reserved name.
    """
    clash = sorted(RESERVED_VARIABLES & set(props))
    if clash:
        raise TemplateError(f"props may not be named {', '.join(map(repr, clash))}", key=key)
    variables: dict[str, Any] = dict(props)
    variables.update(extra or {})
    variables["props"] = dict(props)
    variables["contact"] = contact
    variables["template_key"] = key
    return variables
