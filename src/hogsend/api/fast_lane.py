"""The fast lane of ``POST /v1/events``: the common request served without FastAPI's machinery.

The route itself is unchanged and still answers everything the lane does not take (its
OpenAPI operation, errors, scope checks: all the route's). The lane takes a request only
when nothing about it can go wrong before the event is stored: a JSON body within the
size limit (not compressed), a key the key cache vouches for and that holds the
``ingest`` scope, a body that validates, an ``Idempotency-Key`` header (if any) that
validates. Anything else is handed to the route untouched, the body it read replayed,
so every error is the route's own error, worded and counted the same way. Those checks
have no side effect; the first one (the rate-limit count) happens only once the lane
has committed to the request, and from there any error goes through the app's
exception handlers exactly as it would from the route.

Why: on a 2-core machine FastAPI's routing, dependency resolution, body parsing and the
exception-handling middleware were about a third of the API's CPU per ingested event,
more than the ceiling of bench/ingest.py spends on a whole request.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hogsend.api.auth import bearer_token, has_scope, key_cache_of
from hogsend.api.deps import rate_limiter_of, settings_of
from hogsend.api.ratelimit import enforce_rate_limit
from hogsend.api.routes.events import idempotency_key_of, single_input, store_event
from hogsend.api.schemas.events import EventIn
from hogsend.core.ingest import EventInput

LANE_PATH = "/v1/events"
LANE_SCOPE = "ingest"


def _is_json(content_type: bytes) -> bool:
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json"


class FastLane:
    """ASGI middleware serving the common ``POST /v1/events`` itself (see the module doc).

    Sits inside :class:`~hogsend.api.middleware.RequestContextMiddleware` (request id,
    ``RateLimit-*`` headers, access log and unhandled errors stay its job) and outside
    the body-size and gzip middlewares, whose work it only takes on for requests it can
    bound by their declared ``Content-Length``.

    Args:
        app: the rest of the stack (the route, for everything the lane hands back).
        default_limit: the body size limit of the route (``HOGSEND_MAX_BODY_BYTES``).
    """

    def __init__(self, app: ASGIApp, *, default_limit: int) -> None:
        self.app = app
        self.default_limit = default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != LANE_PATH
            or scope["method"] != "POST"
            or scope.get("root_path")
        ):
            await self.app(scope, receive, send)
            return
        length = None
        content_type = b""
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"content-type":
                content_type = value
            elif name == b"content-encoding" or name == b"transfer-encoding":
                length = None
                break
        if length is None or not length.isdigit() or not _is_json(content_type):
            await self.app(scope, receive, send)
            return
        if int(length) > self.default_limit:
            await self.app(scope, receive, send)
            return
        body, receive = await _read_body(receive)
        request = Request(scope, receive)
        item = None if body is None else self._admissible(request, body)
        if item is None:
            await self.app(scope, receive, send)
            return
        try:
            principal = request.state.principal
            await enforce_rate_limit(
                request,
                principal,
                settings=settings_of(request),
                limiter=rate_limiter_of(request),
                path=LANE_PATH,
            )
            response = await store_event(request, item)
        except Exception as exc:
            response = await _handled(request, exc)
        await response(scope, receive, send)

    def _admissible(self, request: Request, body: bytes) -> EventInput | None:
        """The request's ingest input if the lane may serve it; None: the route's job."""
        raw = bearer_token(request.headers.get("authorization"))
        cache = key_cache_of(request)
        if raw is None or cache is None:
            return None
        principal = cache.get(raw)
        if principal is None or not has_scope(principal.scopes, LANE_SCOPE):
            return None
        try:
            data = json.loads(body)
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
        try:
            event = EventIn.model_validate(data)
            item = single_input(request, event, idempotency_key_of(request))
        except (ValidationError, RequestValidationError):
            return None
        request.state.principal = principal
        return item


async def _read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole body (None if the client left first), and a ``receive`` replaying it."""
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            body = None
            break
        if not message.get("more_body", False):
            body = b"".join(m.get("body", b"") for m in messages)
            break
    pending = iter(messages)

    async def replay() -> Message:
        return next(pending, None) or await receive()

    return body, replay


async def _handled(request: Request, exc: Exception) -> Response:
    """The response the app's exception handlers give ``exc``; re-raised when none does."""
    app: Any = request.scope.get("app")
    handlers: dict[Any, Any] = app.exception_handlers if isinstance(app, FastAPI) else {}
    for cls in type(exc).__mro__:
        if cls is Exception:
            break  # unhandled: the request-context middleware answers 500 and logs it
        handler = handlers.get(cls)
        if handler is not None:
            response: Response = await handler(request, exc)
            return response
    raise exc
