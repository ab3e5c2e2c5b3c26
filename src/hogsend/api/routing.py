"""Walking the routes of an app: which routes exist, on which paths, with which methods."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from fastapi.routing import APIRoute
from starlette.routing import BaseRoute, Route, compile_path


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


def allowed_methods(routes: Iterable[BaseRoute], path: str) -> set[str]:
    """Every method some route serves on ``path`` (what a 405's ``Allow`` must list).

    Starlette answers 405 from the first route whose path matches, so its ``Allow`` names
    only that route's methods even when other routes serve the same path.
    """
    routes = list(routes)
    methods: set[str] = set()
    for mounted in iter_api_routes(routes):
        regex, _, _ = compile_path(mounted.path)
        if regex.fullmatch(path):
            methods |= mounted.route.methods or set()
    for route in routes:
        if isinstance(route, APIRoute) or not isinstance(route, Route):
            continue  # API routes were handled above, with their mounted paths
        if route.path_regex.fullmatch(path):
            methods |= route.methods or set()
    return methods
