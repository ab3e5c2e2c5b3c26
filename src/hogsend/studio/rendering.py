"""Turning a template and its values into a Studio page.

Autoescaping is on for every template; nothing user-supplied is marked safe. Pages set
no inline script or style (the Content-Security-Policy forbids both), so charts use
SVG attributes and CSS classes only.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from hogsend import __version__
from hogsend.studio.state import studio_of


@dataclass(frozen=True, slots=True)
class NavItem:
    """One entry of the navigation."""

    key: str
    label: str
    path: str


NAVIGATION = (
    NavItem("overview", "Overview", "/"),
    NavItem("contacts", "Contacts", "/contacts"),
    NavItem("events", "Events", "/events"),
    NavItem("journeys", "Journeys", "/journeys"),
    NavItem("buckets", "Buckets", "/buckets"),
    NavItem("campaigns", "Campaigns", "/campaigns"),
    NavItem("email", "Email", "/email"),
    NavItem("api-keys", "API keys", "/api-keys"),
    NavItem("audit", "Audit log", "/audit"),
    NavItem("dlq", "Dead letters", "/dlq"),
)
"""Every Studio page, in the order of the one ``<nav>``."""


def when(value: datetime | None) -> str:
    """A timestamp as people read it in an admin UI: UTC, to the second."""
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(value: datetime | None) -> str:
    """A timestamp for ``<time datetime=...>``."""
    return "" if value is None else value.astimezone(UTC).isoformat()


def as_json(value: object) -> str:
    """A value as indented JSON (properties, payloads, decision details)."""
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False)


def percent(value: float | None) -> str:
    """A share as a percentage with one decimal, or a dash when undefined."""
    return "—" if value is None else f"{value * 100:.1f}%"


def number(value: int | float) -> str:
    """A count with thousands separators."""
    return f"{value:,}"


def query(base: Mapping[str, object], **changes: object) -> str:
    """``?a=1&b=2`` from ``base`` with ``changes`` applied; None and "" are left out."""
    merged = {**base, **changes}
    kept = {k: str(v) for k, v in merged.items() if v is not None and v != ""}
    return "?" + urlencode(kept) if kept else ""


@functools.cache
def environment() -> Environment:
    """The Jinja environment of Studio's templates (built once, read-only afterwards)."""
    env = Environment(
        loader=PackageLoader("hogsend.studio", "templates"),
        autoescape=select_autoescape(["html"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(when=when, iso=iso, json=as_json, percent=percent, number=number)
    env.globals.update(query=query, version=__version__, navigation=NAVIGATION)
    return env


def render(
    request: Request,
    template: str,
    *,
    status_code: int = 200,
    **values: Any,
) -> HTMLResponse:
    """The page ``template`` with ``values``, plus what every page needs.

    Every page gets ``studio`` (for ``studio.url``), ``me`` (the signed-in user's
    session or None), ``csrf_token`` (for forms), ``static`` and ``url`` helpers.
    """
    studio = studio_of(request)
    me = getattr(request.state, "me", None)
    values.setdefault("current", None)
    values.setdefault("notice", None)
    page = (
        environment()
        .get_template(template)
        .render(
            studio=studio,
            me=me,
            csrf_token=me.csrf_token if me is not None else "",
            url=studio.url,
            static=lambda name: studio.url(f"/static/{name}") + f"?v={__version__}",
            **values,
        )
    )
    return HTMLResponse(page, status_code=status_code)
