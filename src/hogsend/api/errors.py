"""Every error response is ``application/problem+json`` (RFC 9457); this is the only mapping.

A problem body::

    {
      "type": "urn:hogsend:problem:validation",
      "title": "Unprocessable Content",
      "status": 422,
      "detail": "2 fields failed validation",
      "instance": "/v1/admin/api-keys",
      "requestId": "5f0c6f0e9f0a4b4d8b3d2a1e7c6b5a49",
      "errors": [{"field": "body.name", "message": "String should have at least 1 character"}]
    }

``type`` ends in a stable code (the ``code`` of the :class:`~hogsend.errors.ApiError`
raised, or one derived from the HTTP status); ``errors`` appears on validation failures
only. Sources mapped here: our :class:`~hogsend.errors.ApiError` tree, Starlette's
``HTTPException`` (404 unknown route, 405 wrong method, 413 body too large), FastAPI's
``RequestValidationError`` (422, or 400 when the JSON itself is malformed) and, through
:func:`internal_error_response`, anything unhandled (500, with nothing of the exception
in the body).
"""

from __future__ import annotations

import http
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from hogsend.api.routing import allowed_methods
from hogsend.api.schemas.common import ApiModel
from hogsend.errors import ApiError

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:hogsend:problem:"

# Codes for statuses that reach us without an ApiError (Starlette, FastAPI).
_STATUS_CODES = {
    400: "bad-request",
    401: "unauthorized",
    403: "forbidden",
    404: "not-found",
    405: "method-not-allowed",
    409: "conflict",
    413: "payload-too-large",
    415: "unsupported-media-type",
    422: "validation",
    429: "rate-limited",
    500: "internal",
    503: "unavailable",
}


class FieldError(BaseModel):
    """One invalid input field."""

    field: str = Field(description="Where: `body.name`, `query.limit`, `body.scopes[0]`...")
    message: str = Field(description="What is wrong with it.")


class Problem(ApiModel):
    """An error, as ``application/problem+json`` (RFC 9457)."""

    type: str = Field(description="`urn:hogsend:problem:<code>`; the code is stable.")
    title: str = Field(description="Short summary of the problem type (the HTTP reason).")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(description="What went wrong with this request, for people.")
    instance: str = Field(description="The request path.")
    request_id: str | None = Field(
        default=None, description="The request's `X-Request-Id`; quote it in bug reports."
    )
    errors: list[FieldError] | None = Field(
        default=None, description="Present on validation failures: one entry per bad field."
    )


def status_title(status: int) -> str:
    """The standard reason phrase of an HTTP status."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def status_code_slug(status: int) -> str:
    """The problem code used for a bare HTTP status."""
    return _STATUS_CODES.get(status) or status_title(status).lower().replace(" ", "-")


def request_id_of(scope: Scope) -> str | None:
    """The request id the request-context middleware assigned, if it ran."""
    state = scope.get("state")
    if isinstance(state, Mapping):
        value = state.get("request_id")
        return value if isinstance(value, str) else None
    return None


def problem_response(
    scope: Scope,
    *,
    status: int,
    code: str,
    detail: str,
    title: str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Render a problem+json response for the request in ``scope``."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": title or status_title(status),
        "status": status,
        "detail": detail,
        "instance": scope.get("path", ""),
        "requestId": request_id_of(scope),
    }
    if errors is not None:
        body["errors"] = [dict(e) for e in errors]
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE
    )


def internal_error_response(scope: Scope) -> Response:
    """The 500 for an unhandled exception: says nothing about the exception itself."""
    return problem_response(
        scope,
        status=500,
        code="internal",
        detail="The server failed to handle this request; it has been logged with its request id.",
    )


def _field_name(loc: Sequence[int | str]) -> str:
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return problem_response(
        request.scope,
        status=exc.status,
        code=exc.code,
        title=exc.title,
        detail=exc.detail,
        errors=exc.errors,
        headers=exc.headers,
    )


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail else status_title(status)
    if status == 404 and detail == "Not Found":
        detail = f"No route matches {request.method} {request.url.path}"
    headers = dict(exc.headers or {})
    if status == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
        allowed = allowed_methods(request.app.routes, request.url.path)
        if allowed:
            headers["Allow"] = ", ".join(sorted(allowed))
    elif status == 413:
        detail = "The request body is larger than this route accepts"
    return problem_response(
        request.scope,
        status=status,
        code=status_code_slug(status),
        detail=detail,
        headers=headers,
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    raw_errors = list(exc.errors())
    for err in raw_errors:
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "invalid JSON")
            return problem_response(
                request.scope,
                status=400,
                code="malformed-json",
                detail=f"Malformed JSON in request body: {reason}",
            )
    fields = [
        {"field": _field_name(err.get("loc", ())), "message": str(err.get("msg", "invalid"))}
        for err in raw_errors
    ]
    count = len(fields)
    return problem_response(
        request.scope,
        status=422,
        code="validation",
        detail=f"{count} field{'s' if count != 1 else ''} failed validation",
        errors=fields,
    )


def install_error_handlers(api: FastAPI) -> None:
    """Route every error FastAPI and Starlette raise through problem+json."""
    api.add_exception_handler(ApiError, _api_error)
    api.add_exception_handler(HTTPException, _http_exception)
    api.add_exception_handler(RequestValidationError, _validation_error)


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries documenting problem+json bodies for ``statuses``."""
    return {
        status: {
            "description": status_title(status),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }
