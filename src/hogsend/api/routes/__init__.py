"""HTTP routes, one module per resource; :func:`include_routes` mounts them all."""

from __future__ import annotations

from fastapi import FastAPI

from hogsend.api.routes import health, whoami
from hogsend.api.routes.admin import api_keys, audit_logs, dead_letters, metrics


def include_routes(api: FastAPI) -> None:
    """Mount every router on ``api``."""
    for router in (
        health.router,
        whoami.router,
        api_keys.router,
        audit_logs.router,
        metrics.router,
        dead_letters.router,
    ):
        api.include_router(router)
