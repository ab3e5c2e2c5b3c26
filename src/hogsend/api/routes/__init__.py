"""HTTP routes, one module per resource; :func:`include_routes` mounts them all."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from hogsend.api.routes import health, whoami
from hogsend.api.routes.admin import api_keys, audit_logs


def include_routes(api: FastAPI) -> None:
    """Mount every router on ``api``."""
    for router in (health.router, whoami.router, api_keys.router, audit_logs.router):
        api.include_router(router)


@dataclass(frozen=True, slots=True)
class MountedRoute:
    """An API route with the path it is served on."""

    path: str
    route: APIRoute


def iter_api_routes(routes: Iterable[BaseRoute], prefix: str = "") -> Iterator[MountedRoute]:
    """Every FastAPI route under ``routes``, descending into included routers.

    FastAPI (0.16x) keeps an included router as one lazy entry of ``api.routes`` that
    holds the original router; its routes are found through ``original_router``.
    """
    for route in routes:
        if isinstance(route, APIRoute):
            yield MountedRoute(prefix + route.path, route)
            continue
        nested = getattr(route, "original_router", None)
        if nested is not None:
            context = getattr(route, "include_context", None)
            yield from iter_api_routes(nested.routes, prefix + getattr(context, "prefix", ""))
