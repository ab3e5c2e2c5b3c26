"""ASGI middleware: request ids and access logs, and request body size limits.

Both are plain ASGI callables (not ``BaseHTTPMiddleware``) so that context variables
bound here reach the endpoint and a streamed body is never buffered by us.
"""

from __future__ import annotations

import itertools
import re
import time
import uuid
import zlib
from collections.abc import Mapping
from typing import Any

import structlog
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hogsend.api.errors import internal_error_response

REQUEST_ID_HEADER = "X-Request-Id"
MAX_BODY_BYTES_EXTRA = "x-max-body-bytes"
"""``openapi_extra`` key overriding the body size limit of one route, e.g.
``@router.post("/v1/batch", openapi_extra={MAX_BODY_BYTES_EXTRA: 10_000_000})``.
The value may also name a :class:`~hogsend.settings.Settings` attribute
(``"batch_max_body_bytes"``): the limit is then that setting of the serving API."""

# A client's id is kept if it is short printable ASCII without spaces (safe to log).
_VALID_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")

_access_log = structlog.get_logger("hogsend.api.access")
_error_log = structlog.get_logger("hogsend.api")


def response_headers_of(scope: Scope) -> dict[str, str]:
    """Headers that guards want added to this request's response, whatever it turns out to be.

    The rate limiter puts its ``RateLimit-*`` headers here: they must reach 2xx responses
    and error responses alike, which no single handler produces.
    """
    state = scope.setdefault("state", {})
    headers: dict[str, str] = state.setdefault("response_headers", {})
    return headers


class RequestContextMiddleware:
    """Request id, extra response headers, unhandled errors as 500 problems, access log.

    The id comes from the client's ``X-Request-Id`` when it is sane, otherwise it is
    generated; it is echoed on the response, stored in ``request.state.request_id`` and
    bound into structlog's context variables for every log line of the request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Generated ids: a random prefix per process and a counter, 32 hex characters
        # like a uuid4's, unique without a read of the kernel's random source per request.
        self._id_prefix = uuid.uuid4().hex[:16]
        self._id_counter = itertools.count()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = Headers(scope=scope).get(REQUEST_ID_HEADER)
        if incoming is not None and _VALID_REQUEST_ID.fullmatch(incoming):
            request_id = incoming
        else:
            request_id = f"{self._id_prefix}{next(self._id_counter):016x}"
        state: dict[str, Any] = scope.setdefault("state", {})
        state["request_id"] = request_id
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_with_context(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = request_id
                extra: Mapping[str, str] = state.get("response_headers") or {}
                for name, value in extra.items():
                    if name not in headers:
                        headers[name] = value
            await send(message)

        try:
            await self.app(scope, receive, send_with_context)
        except Exception:
            _error_log.exception(
                "unhandled error", method=scope.get("method"), path=scope.get("path")
            )
            if response_started:
                raise  # too late to answer; the server drops the connection
            await internal_error_response(scope)(scope, receive, send_with_context)
        finally:
            principal = state.get("principal")
            client = scope.get("client")
            _access_log.info(
                "request",
                method=scope.get("method"),
                path=scope.get("path"),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                client_ip=client[0] if client else None,
                key_id=str(principal.key_id) if principal is not None else None,
            )
            structlog.contextvars.reset_contextvars(**tokens)


def route_body_limit(scope: Scope, default: int) -> int:
    """The body size limit of the route matched for ``scope`` (known once routing ran)."""
    route = scope.get("route")
    extra = getattr(route, "openapi_extra", None)
    if isinstance(extra, Mapping):
        override = extra.get(MAX_BODY_BYTES_EXTRA)
        if isinstance(override, int):
            return override
        if isinstance(override, str):
            app = scope.get("app")
            settings = getattr(getattr(app, "state", None), "settings", None)
            value = getattr(settings, override, None)
            if isinstance(value, int):
                return value
    return default


class BodySizeLimitMiddleware:
    """413 for a request body over the route's limit, by ``Content-Length`` or by counting.

    The limit is looked up when the app first reads the body, i.e. after routing, so a
    route can raise or lower it (:data:`MAX_BODY_BYTES_EXTRA`). A declared
    ``Content-Length`` over the limit is refused before a single byte is read; a chunked
    body is counted as it streams in and refused as soon as it passes the limit. The
    ``HTTPException`` raised here becomes a problem+json 413 in :mod:`hogsend.api.errors`.
    (FastAPI's own per-route ``max_body_size`` is not used: its 413 is plain text.)
    """

    def __init__(self, app: ASGIApp, *, default_limit: int) -> None:
        self.app = app
        self.default_limit = default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        content_length = int(declared) if declared is not None and declared.isdigit() else None
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            limit = route_body_limit(scope, self.default_limit)
            if content_length is not None and content_length > limit:
                raise HTTPException(413)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413)
            return message

        await self.app(scope, receive_within_limit, send)


_GZIP_WBITS = 16 + zlib.MAX_WBITS


class GzipRequestMiddleware:
    """Decompress request bodies sent with ``Content-Encoding: gzip``.

    Segment-style clients gzip their batches (rudder-sdk-python does by default). The
    body is inflated as it streams in, and the route's body limit applies to the
    *decompressed* size as well, so a small compressed body cannot expand into a huge
    one (each chunk is inflated at most up to the limit). Undecodable data is a 400;
    an encoding other than ``gzip``/``identity`` is a 415. Placed inside
    :class:`BodySizeLimitMiddleware`, which bounds the compressed size on the wire.
    """

    def __init__(self, app: ASGIApp, *, default_limit: int) -> None:
        self.app = app
        self.default_limit = default_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        encoding = (Headers(scope=scope).get("content-encoding") or "").strip().lower()
        if encoding in ("", "identity"):
            await self.app(scope, receive, send)
            return
        # Downstream sees a plain body: no encoding, and no (now wrong) length.
        scope = dict(scope)
        scope["headers"] = [
            (name, value)
            for name, value in scope["headers"]
            if name not in (b"content-encoding", b"content-length")
        ]
        if encoding not in ("gzip", "x-gzip"):
            unsupported = encoding

            async def refuse() -> Message:
                raise HTTPException(
                    415, detail=f"Content-Encoding {unsupported!r} is not supported; use gzip"
                )

            await self.app(scope, refuse, send)
            return
        inflater = zlib.decompressobj(_GZIP_WBITS)
        produced = 0
        finished = False

        async def receive_inflated() -> Message:
            nonlocal produced, finished
            message = await receive()
            if message["type"] != "http.request" or finished:
                return message
            limit = route_body_limit(scope, self.default_limit)
            try:
                body = inflater.decompress(message.get("body", b""), limit - produced + 1)
                if inflater.unconsumed_tail:
                    raise HTTPException(413)
                produced += len(body)
                if produced > limit:
                    raise HTTPException(413)
                more = message.get("more_body", False)
                if not more:
                    body += inflater.flush()
                    if not inflater.eof:
                        raise HTTPException(400, detail="The gzip body is truncated")
                    finished = True
            except zlib.error as exc:
                raise HTTPException(400, detail=f"The body is not valid gzip: {exc}") from exc
            return {"type": "http.request", "body": body, "more_body": more}

        await self.app(scope, receive_inflated, send)
