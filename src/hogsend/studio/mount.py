"""Mount Studio's pages on an API app (``hogsend dev`` and ``hogsend serve`` do this).

The API factory does not know Studio exists; the serving commands add it, so the data
plane can be deployed without the admin UI.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from hogsend import __version__

_templates = Environment(
    loader=PackageLoader("hogsend.studio", "templates"),
    autoescape=select_autoescape(["html"]),
)


def mount_studio(api: FastAPI, *, prefix: str = "/studio") -> None:
    """Serve Studio under ``prefix`` on ``api``.

    Args:
        api: the FastAPI app from :func:`hogsend.api.create_api`.
        prefix: the URL path Studio lives under.
    """

    async def placeholder() -> HTMLResponse:
        page = _templates.get_template("placeholder.html").render(
            version=__version__, docs_url="/docs", health_url="/v1/health"
        )
        return HTMLResponse(page)

    async def with_slash() -> RedirectResponse:
        return RedirectResponse(prefix, status_code=307)

    api.add_api_route(prefix, placeholder, methods=["GET"], include_in_schema=False)
    api.add_api_route(f"{prefix}/", with_slash, methods=["GET"], include_in_schema=False)
