"""``GET /t/o/{token}`` (open pixel) and ``GET /t/c/{token}`` (click redirect): public.

These are the one deliberate exception to "nothing changes state on GET": mail clients
only ever GET an image or a link, so recording the hit there is the only way to see it.
They live outside ``/v1`` (no API key, no scopes), and are safe to repeat: a hit adds
a row and bumps counters, and the event a message's first open or click emits is
keyed so that it exists once. The token in the path is signed (see
:mod:`hogsend.core.tracking`); a bad one writes nothing. A click redirects only to the
URL recorded for its link when the message was sent: the request (query string
included) cannot change where it goes, so these are not an open redirect. HEAD is
answered like GET and recorded as a bot (link checkers HEAD, browsers GET).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Annotated, Protocol

import structlog
from fastapi import APIRouter, Path, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.api.deps import settings_of
from hogsend.api.errors import problem_responses
from hogsend.api.routes.transactions import in_transaction, notify_throttle_of
from hogsend.channels.mailer import signing_secret
from hogsend.channels.tracking import HitOutcome, record_click, record_open
from hogsend.db.repos.outbox import NotifyThrottle
from hogsend.errors import NotFound
from hogsend.settings import Settings

router = APIRouter(tags=["tracking"])

_log = structlog.get_logger("hogsend.tracking")

# The smallest transparent GIF: 1x1, one palette entry, transparency on.
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00"
    b"!\xf9\x04\x01\x00\x00\x00\x00"
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
# Every open must reach us: no cache (browser, proxy) may answer in our place.
_NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private",
    "Pragma": "no-cache",
    "Expires": "0",
}
# The destination must not learn the tracking URL (it names the recipient's message).
_REDIRECT_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}

Token = Annotated[
    str,
    Path(description="The signed tracking token from the email (any other string is refused)."),
]


class _Recorder(Protocol):
    def __call__(
        self,
        session: AsyncSession,
        *,
        settings: Settings,
        secret: bytes,
        token: str,
        method: str,
        user_agent: str | None,
        ip_address: str | None,
        notify: NotifyThrottle | None = None,
    ) -> Awaitable[HitOutcome | None]: ...


async def _record(request: Request, token: str, recorder: _Recorder) -> HitOutcome | None:
    settings = settings_of(request)
    secret = signing_secret(settings)
    notify = notify_throttle_of(request)

    def work(session: AsyncSession) -> Awaitable[HitOutcome | None]:
        return recorder(
            session,
            settings=settings,
            secret=secret,
            token=token,
            method=request.method,
            user_agent=request.headers.get("user-agent"),
            # The peer as the server sees it; behind a proxy, run uvicorn with
            # --proxy-headers (and --forwarded-allow-ips) so this is the client's.
            ip_address=request.client.host if request.client is not None else None,
            notify=notify,
        )

    return await in_transaction(request, work)


def _pixel() -> Response:
    return Response(PIXEL_GIF, media_type="image/gif", headers=_NO_CACHE)


async def _open(request: Request, token: str) -> Response:
    try:
        await _record(request, token, record_open)
    except Exception:
        # A mail client shows a broken image for an error; the GIF goes out regardless.
        _log.warning("recording an open failed", exc_info=True)
    return _pixel()


async def _click(request: Request, token: str) -> Response:
    outcome = await _record(request, token, record_click)
    if outcome is None or outcome.url is None:
        raise NotFound("This link is not known here; it may be mistyped or altered")
    return RedirectResponse(outcome.url, status_code=302, headers=_REDIRECT_HEADERS)


_PIXEL_DOC: dict[int | str, dict[str, object]] = {
    200: {
        "description": "A 1x1 transparent GIF, for every token (a bad one records nothing).",
        "content": {"image/gif": {"schema": {"type": "string", "format": "binary"}}},
    }
}
_CLICK_DOC: dict[int | str, dict[str, object]] = {
    302: {
        "description": "Redirect to the URL recorded for this link when the email was sent.",
        "headers": {"Location": {"description": "The recorded URL.", "schema": {"type": "string"}}},
    },
    **problem_responses(404),
}


@router.get(
    "/t/o/{token}",
    summary="Open pixel: record an open, answer a 1x1 GIF",
    response_class=Response,
    responses=_PIXEL_DOC,
)
async def open_pixel(request: Request, token: Token) -> Response:
    """Always a 1x1 GIF; a genuine token also records the open (see docs/email.md)."""
    return await _open(request, token)


@router.head("/t/o/{token}", include_in_schema=False)
async def open_pixel_head(request: Request, token: Token) -> Response:
    """Like GET, with the hit recorded as a bot's."""
    return await _open(request, token)


@router.get(
    "/t/c/{token}",
    summary="Click: record it and redirect to the link's recorded URL",
    status_code=302,
    response_class=RedirectResponse,
    responses=_CLICK_DOC,
)
async def click(request: Request, token: Token) -> Response:
    """302 to the recorded URL; 404 for a token that is not a genuine tracked link."""
    return await _click(request, token)


@router.head("/t/c/{token}", include_in_schema=False)
async def click_head(request: Request, token: Token) -> Response:
    """Like GET, with the hit recorded as a bot's."""
    return await _click(request, token)
