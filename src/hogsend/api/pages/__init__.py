"""The HTML pages the API serves to people: one-click confirmation and the preference centre.

Plain server-rendered Jinja2 with autoescaping, inline CSS and no script, so every page
works with JavaScript off and loads nothing from elsewhere. The templates sit beside
this module and ship inside the package.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

PAGES_DIR = Path(__file__).parent

SECURITY_HEADERS = {
    # No script at all; styles only inline; forms post back here only; never framed.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    # The URL carries a token: it must not leak to other sites through Referer.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Robots-Tag": "noindex, nofollow",
    "X-Content-Type-Options": "nosniff",
}
"""Headers every page is served with."""


@lru_cache(maxsize=1)
def _environment() -> Environment:
    # Built once per process: the templates are part of the package and never change.
    return Environment(
        loader=FileSystemLoader(PAGES_DIR),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def render_page(name: str, **context: Any) -> str:
    """Render the page template ``name`` (e.g. ``preferences.html``) with ``context``."""
    return _environment().get_template(name).render(**context)
