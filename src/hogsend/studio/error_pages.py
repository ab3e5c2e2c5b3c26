"""Why a Studio view stopped, and the HTML page (or redirect) each reason becomes.

Views raise these; the handlers installed by :func:`install_error_pages` answer with a
page in Studio's layout instead of the API's problem+json.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from hogsend.studio.rendering import render
from hogsend.studio.state import studio_of

_TITLES = {
    400: "Bad request",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    429: "Too many attempts",
}


class PageError(Exception):
    """Answer with an error page.

    Args:
        status: the HTTP status.
        message: what went wrong, for a person (rendered as text, never as HTML).
        headers: extra response headers (``Retry-After``).
    """

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


class LoginRequired(Exception):
    """No live session: send the browser to the sign-in page, then back here."""


class SetupRequired(Exception):
    """No Studio user exists yet: send the browser to the setup page."""


def _page(request: Request, status: int, message: str, headers: Mapping[str, str]) -> Response:
    response = render(
        request,
        "error.html",
        status_code=status,
        title=_TITLES.get(status, "Error"),
        status=status,
        message=message,
    )
    response.headers.update(headers)
    return response


async def _page_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageError)
    return _page(request, exc.status, exc.message, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {
        404: "There is no Studio page at this address.",
        405: "This page does not accept that kind of request.",
    }
    return _page(
        request, exc.status_code, messages.get(exc.status_code, str(exc.detail)), exc.headers or {}
    )


def _next_target(request: Request) -> str:
    path = request.url.path
    return path + (f"?{request.url.query}" if request.url.query else "")


async def _login_required(request: Request, exc: Exception) -> Response:
    studio = studio_of(request)
    if request.headers.get("HX-Request") == "true":
        # An htmx request (the live tail) would swap the sign-in page into the table:
        # ask htmx to load the sign-in page as a whole page instead.
        target = studio.url("/login") + "?" + urlencode({"next": studio.url("/")})
        return Response(status_code=204, headers={"HX-Redirect": target})
    query = "" if request.method != "GET" else "?" + urlencode({"next": _next_target(request)})
    return RedirectResponse(studio.url("/login") + query, status_code=303)


async def _setup_required(request: Request, exc: Exception) -> Response:
    return RedirectResponse(studio_of(request).url("/setup"), status_code=303)


def install_error_pages(app: Starlette) -> None:
    """Answer Studio's errors with pages and redirects."""
    app.add_exception_handler(PageError, _page_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(SetupRequired, _setup_required)
