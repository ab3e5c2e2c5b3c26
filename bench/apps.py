"""ASGI app factories the HTTP benchmarks serve with uvicorn (``--factory``) in subprocesses.

Every factory ends like ``hogsend serve`` starts serving: with
:func:`~hogsend.cli.serving.tune_garbage_collector`, ceilings included, so that every
scenario runs in the same kind of process.
"""

from __future__ import annotations

from fastapi import FastAPI

from hogsend.api import create_api
from hogsend.app import Hogsend
from hogsend.cli.serving import tune_garbage_collector
from hogsend.logs import configure_logging
from hogsend.settings import load_settings


def hogsend_api() -> FastAPI:
    """The real API, configured from HOGSEND_* like ``hogsend serve`` (JSON logs included)."""
    settings = load_settings()
    configure_logging(settings)
    api = create_api(Hogsend(), settings)
    tune_garbage_collector()
    return api


def bare_api() -> FastAPI:
    """The ceiling: FastAPI with one trivial route, nothing else."""
    api = FastAPI()

    @api.get("/ping")
    async def ping() -> dict[str, bool]:
        return {"ok": True}

    tune_garbage_collector()
    return api
