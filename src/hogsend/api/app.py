"""The FastAPI app factory.

``create_api(app, settings)`` returns an ASGI app holding everything it needs on
``api.state`` (settings, the Hogsend app, the engine and sessionmakers, the rate
limiter); nothing is module-global, so several APIs can live in one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from copy import deepcopy
from typing import Any

import structlog
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import __version__
from hogsend.api.auth import KeyCache, bearer_scheme, route_scope
from hogsend.api.deps import DriverPool
from hogsend.api.errors import PROBLEM_MEDIA_TYPE, FieldError, Problem, install_error_handlers
from hogsend.api.fast_lane import FastLane
from hogsend.api.middleware import (
    BodySizeLimitMiddleware,
    GzipRequestMiddleware,
    RequestContextMiddleware,
)
from hogsend.api.ratelimit import make_rate_limiter
from hogsend.api.routes import include_routes
from hogsend.api.routing import iter_api_routes
from hogsend.app import Hogsend
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos.outbox import NotifyThrottle
from hogsend.errors import ConfigurationError
from hogsend.settings import Settings

_log = structlog.get_logger("hogsend.api")

_DESCRIPTION = """\
Hogsend's HTTP API: the data plane (`/v1/...`) and the admin API (`/v1/admin/...`).

Authenticate with `Authorization: Bearer <api key>`; each operation states the scope it
needs in `x-required-scope`. Errors are `application/problem+json`. Every response carries
`X-Request-Id`; rate-limited operations carry `RateLimit-*` headers.
"""


def _attach_engine(api: FastAPI, settings: Settings, engine: AsyncEngine) -> None:
    pool = DriverPool.for_engine(engine, max_size=max(2, settings.db_pool_size // 2))
    api.state.engine = engine
    api.state.sessionmaker = make_sessionmaker(engine)
    api.state.driver_pool = pool
    api.state.rate_limiter = make_rate_limiter(settings, pool)


def _detach_engine(api: FastAPI) -> None:
    for name in ("engine", "sessionmaker", "driver_pool", "rate_limiter"):
        setattr(api.state, name, None)


async def _prune_rate_limits(api: FastAPI, every_seconds: float) -> None:
    """Drop counters of ended windows, forever (cancelled at shutdown)."""
    while True:
        await asyncio.sleep(every_seconds)
        limiter = api.state.rate_limiter
        if limiter is None:
            continue
        try:
            pruned = await limiter.prune()
        except Exception:
            _log.warning("rate limit pruning failed", exc_info=True)
        else:
            if pruned:
                _log.debug("rate limit counters pruned", count=pruned)


def create_api(app: Hogsend, settings: Settings, *, engine: AsyncEngine | None = None) -> FastAPI:
    """Build the HTTP API for ``app``.

    Args:
        app: the user's Hogsend app object.
        settings: this process's settings.
        engine: an async engine to use (and not dispose). Without one, the lifespan
            creates an engine for ``settings.database_url`` and disposes it at shutdown.

    Raises:
        ConfigurationError: neither an engine nor ``settings.database_url`` is given.
    """
    if engine is None and settings.database_url is None:
        raise ConfigurationError(
            "the API needs a database: set HOGSEND_DATABASE_URL "
            "(or run `hogsend dev`, which starts an embedded Postgres)"
        )

    @contextlib.asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        owned: AsyncEngine | None = None
        if api.state.engine is None:
            assert settings.database_url is not None
            owned = make_async_engine(
                settings.database_url, pool_size=settings.db_pool_size, keep_overflow=True
            )
            _attach_engine(api, settings, owned)
        pruner = asyncio.create_task(
            _prune_rate_limits(api, max(float(settings.rate_limit_window_seconds), 30.0))
        )
        try:
            yield
        finally:
            pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pruner
            mailer = getattr(api.state, "mailer", None)
            if mailer is not None:
                api.state.mailer = None
                await mailer.provider.aclose()
            await api.state.driver_pool.close()
            if owned is not None:
                _detach_engine(api)
                await owned.dispose()

    api = FastAPI(
        title="Hogsend",
        version=__version__,
        description=_DESCRIPTION,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    api.state.settings = settings
    api.state.app = app
    api.state.started_at = time.monotonic()
    # At most one outbox NOTIFY per interval from this API (see NotifyThrottle).
    api.state.outbox_notify = NotifyThrottle()
    api.state.key_cache = KeyCache(settings.api_key_cache_seconds)
    _detach_engine(api)
    if engine is not None:
        _attach_engine(api, settings, engine)

    install_error_handlers(api)
    include_routes(api)
    # Added innermost first: the request context wraps the body limit, which bounds the
    # bytes on the wire; gzip decoding inside it bounds the decompressed size.
    api.add_middleware(GzipRequestMiddleware, default_limit=settings.max_body_bytes)
    api.add_middleware(BodySizeLimitMiddleware, default_limit=settings.max_body_bytes)
    # The common POST /v1/events skips the framework; it hands everything else back.
    api.add_middleware(FastLane, default_limit=settings.max_body_bytes)
    api.add_middleware(RequestContextMiddleware)

    built_for: list[object] = [None]

    def openapi() -> dict[str, Any]:
        # Rebuilt when routes change (Studio, or a test, may add some after creation).
        fingerprint = tuple(
            (mounted.path, frozenset(mounted.route.methods or ()))
            for mounted in iter_api_routes(api.routes)
        )
        if api.openapi_schema is None or built_for[0] != fingerprint:
            api.openapi_schema = build_openapi(api)
            built_for[0] = fingerprint
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
    return api


# -- OpenAPI -------------------------------------------------------------------------------

_HEADER_DOCS: dict[str, dict[str, Any]] = {
    "X-Request-Id": {
        "description": "The request's id (the client's, if it sent a sane one).",
        "schema": {"type": "string"},
    },
    "RateLimit-Limit": {
        "description": "Requests allowed per window for this key and route group.",
        "schema": {"type": "integer"},
    },
    "RateLimit-Remaining": {
        "description": "Requests left in the current window.",
        "schema": {"type": "integer"},
    },
    "RateLimit-Reset": {
        "description": "Seconds until the current window ends and the budget refills.",
        "schema": {"type": "integer"},
    },
    "RateLimit-Policy": {
        "description": "`<limit>;w=<window seconds>`.",
        "schema": {"type": "string"},
    },
    "Retry-After": {
        "description": "Seconds to wait before retrying (429 only).",
        "schema": {"type": "integer"},
    },
    "WWW-Authenticate": {
        "description": "The Bearer challenge (401, 403).",
        "schema": {"type": "string"},
    },
    "Allow": {"description": "Methods the path accepts (405).", "schema": {"type": "string"}},
}
_RATE_LIMIT_HEADERS = (
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
)


def _header_refs(*names: str) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _problem(description: str, *headers: str) -> dict[str, Any]:
    return {
        "description": description,
        "headers": _header_refs("X-Request-Id", *headers),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


def build_openapi(api: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus our conventions: problem+json errors, headers, required scopes."""
    schema = get_openapi(
        title=api.title,
        version=api.version,
        description=api.description,
        routes=api.routes,
    )
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    for model in (Problem, FieldError):
        model_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in model_schema.pop("$defs", {}).items():
            schemas[name] = definition
        schemas[model.__name__] = model_schema
    components["headers"] = deepcopy(_HEADER_DOCS)
    # ScopeGuard reads the Bearer header itself (see its __call__): document the scheme.
    components.setdefault("securitySchemes", {})[bearer_scheme.scheme_name] = (
        bearer_scheme.model.model_dump(mode="json", by_alias=True, exclude_none=True)
    )

    scopes = {
        (mounted.path, method.lower()): route_scope(mounted.route)
        for mounted in iter_api_routes(api.routes)
        for method in mounted.route.methods or ()
    }
    for path, operations in schema.get("paths", {}).items():
        for method, operation in operations.items():
            scope = scopes.get((path, method))
            secured = scope is not None
            responses: dict[str, Any] = operation.setdefault("responses", {})
            for status, response in responses.items():
                if status.startswith("2") or status == "503":
                    headers = ("X-Request-Id", *(_RATE_LIMIT_HEADERS if secured else ()))
                    response.setdefault("headers", {}).update(_header_refs(*headers))
                elif "content" in response and PROBLEM_MEDIA_TYPE in response["content"]:
                    response.setdefault("headers", {}).update(_header_refs("X-Request-Id"))
            has_input = "requestBody" in operation or bool(operation.get("parameters"))
            if has_input:
                responses["422"] = _problem(
                    "Validation failed; `errors` lists each bad field", *_RATE_LIMIT_HEADERS
                )
            if "requestBody" in operation:
                responses["400"] = _problem("Malformed JSON body")
                responses["413"] = _problem("Request body too large")
            if secured:
                operation.setdefault("security", [{bearer_scheme.scheme_name: []}])
                operation["x-required-scope"] = scope
                needs = "any valid API key" if scope == "any-key" else f"the `{scope}` scope"
                operation["description"] = (
                    operation.get("description", "") + f"\n\nRequires {needs}."
                ).strip()
                responses["401"] = _problem(
                    "Missing, unknown, expired or revoked API key", "WWW-Authenticate"
                )
                responses["403"] = _problem("The key lacks the required scope", "WWW-Authenticate")
                responses["429"] = _problem(
                    "Rate limit exceeded", "Retry-After", *_RATE_LIMIT_HEADERS
                )
            responses["500"] = _problem("Internal error (details are in the server log)")
    return schema
