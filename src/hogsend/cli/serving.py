"""Running the API server and the worker inside one asyncio loop.

``hogsend dev``, ``hogsend serve`` and ``hogsend worker`` all end up here: an optional
uvicorn server (with Studio mounted) and an optional worker, sharing one engine, and
stopped together on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import structlog
import typer

from hogsend.app import Hogsend
from hogsend.cli.context import (
    cli_state,
    database,
    load_user_app,
    resolve_app_path,
    server_settings,
)
from hogsend.db.engine import make_async_engine
from hogsend.errors import ConfigurationError
from hogsend.logs import configure_logging
from hogsend.runtime import event_loop
from hogsend.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI
    from sqlalchemy.ext.asyncio import AsyncEngine

# FastAPI, uvicorn and DBOS are imported inside the functions that need them, so that
# one-off commands (check, db, keys) start fast.

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class Processes:
    """What one command runs in its process."""

    api: bool
    worker: bool


def bind_api_socket(host: str, port: int) -> socket.socket:
    """Bind the API's listening socket up front, so a busy port fails before anything starts.

    Raises:
        ConfigurationError: the address cannot be bound (in use, unknown host...).
    """
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {exc.strerror}; "
            "choose another port with --port or HOGSEND_PORT"
        ) from None
    return sock


API_GC_THRESHOLDS = (200_000, 20, 100)
"""Collector thresholds of a process that serves the API (Python's defaults: 700, 10, 10)."""

WORKER_GC_THRESHOLDS = (50_000, 20, 100)
"""Collector thresholds of a worker that serves no API: its RSS is held under 150 MB."""


def tune_garbage_collector(*, api: bool = True) -> None:
    """Fewer and cheaper garbage collections, for a long-running server process.

    Called once the app is built: ``gc.freeze()`` moves everything alive then (modules,
    routes, models: ~160,000 objects in the API) out of the collector's sight, and higher
    thresholds make collections rarer. Measured with bench/ingest.py under batch load,
    collections with the defaults took about a quarter of the API's CPU, full ones
    ~0.2 s each. A young collection walks what the requests in flight hold (50 batches
    of 500 events), whatever the threshold: at 50,000 they took 5-6% of the API's CPU
    under the Segment load (about 30 ms each), at 200,000 about 2%, RSS within the
    run-to-run spread (session 11). The price is garbage cycles living a little longer.

    A worker alone (``api=False``) keeps 50,000: in bench/campaign.py 200,000 raised its
    RSS from ~130 to ~152 MB, for no CPU it could measure (session 11).
    """
    gc.freeze()
    gc.set_threshold(*(API_GC_THRESHOLDS if api else WORKER_GC_THRESHOLDS))


def build_api(app: Hogsend, settings: Settings, engine: AsyncEngine) -> FastAPI:
    """The API with Studio mounted, as served by ``dev`` and ``serve``."""
    from hogsend.api import create_api
    from hogsend.studio import mount_studio

    api = create_api(app, settings, engine=engine)
    mount_studio(api)
    return api


async def run_processes(
    app: Hogsend,
    settings: Settings,
    processes: Processes,
    *,
    api_socket: socket.socket | None = None,
    on_ready: Callable[[], None] | None = None,
    before_start: Callable[[AsyncEngine], Awaitable[None]] | None = None,
) -> None:
    """Run the API server and/or the worker until a stop signal, then stop both.

    Args:
        app: the user's app.
        settings: settings with ``database_url`` resolved.
        processes: which parts to run.
        api_socket: the bound socket to serve on (see :func:`bind_api_socket`); bound
            here from settings.host/port when omitted.
        on_ready: called once everything accepts work (prints the dev banner).
        before_start: awaited with the engine before anything starts (dev seeding).
    """
    import uvicorn

    from hogsend.runtime.stop_signals import install_stop_handlers, remove_stop_handlers
    from hogsend.runtime.worker import Worker

    class Server(uvicorn.Server):
        """uvicorn without its own signal handling: our handler stops server and worker."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    assert settings.database_url is not None
    engine = make_async_engine(
        settings.database_url, pool_size=settings.db_pool_size, keep_overflow=True
    )
    stop = asyncio.Event()
    server: Server | None = None
    worker: Worker | None = None

    def request_stop() -> None:
        stop.set()
        if server is not None:
            server.should_exit = True

    install_stop_handlers(request_stop)
    try:
        if before_start is not None:
            await before_start(engine)
        if processes.worker:
            worker = Worker(app, settings, engine=engine)
            await worker.start()
        else:
            app.launch()
        serving: asyncio.Task[None] | None = None
        if processes.api:
            config = uvicorn.Config(
                build_api(app, settings, engine),
                host=settings.host,
                port=settings.port,
                log_config=None,
                access_log=False,
                lifespan="on",
            )
            server = Server(config)
            server.should_exit = stop.is_set()  # a signal may have come during startup
            if api_socket is None:
                api_socket = bind_api_socket(settings.host, settings.port)
            serving = asyncio.create_task(server.serve(sockets=[api_socket]), name="hogsend-api")
            while not server.started:
                done, _ = await asyncio.wait({serving}, timeout=0.05)
                if done:
                    serving.result()  # re-raises a failed startup
                    return
        tune_garbage_collector(api=processes.api)
        if on_ready is not None and not stop.is_set():
            on_ready()
        if serving is not None:
            await serving
        else:
            await stop.wait()
    finally:
        if worker is not None:
            await worker.stop()
        await engine.dispose()
        remove_stop_handlers()


HostOption = Annotated[str | None, typer.Option(help="Interface to bind (default: 127.0.0.1).")]
PortOption = Annotated[int | None, typer.Option(help="Port to bind (default: 8000).")]


def serve(ctx: typer.Context, host: HostOption = None, port: PortOption = None) -> None:
    """Run the HTTP API (and Studio) only; run workers with `hogsend worker`."""
    settings = server_settings(host=host, port=port)
    configure_logging(settings)
    app = load_user_app(resolve_app_path(cli_state(ctx), settings))
    api_socket = bind_api_socket(settings.host, settings.port)
    with database(settings) as url:
        settings = server_settings(host=host, port=port, database_url=url)
        event_loop.run(
            run_processes(
                app,
                settings,
                Processes(api=True, worker=False),
                api_socket=api_socket,
                on_ready=lambda: _announce(f"serving on http://{settings.host}:{settings.port}"),
            )
        )


def worker(ctx: typer.Context, host: HostOption = None, port: PortOption = None) -> None:
    """Run a worker only: journeys, queues, heartbeats. Stops gracefully on SIGTERM."""
    # --host/--port are accepted for symmetry with the other server commands; the
    # worker serves no HTTP, so they only end up in its settings.
    settings = server_settings(host=host, port=port)
    configure_logging(settings)
    app = load_user_app(resolve_app_path(cli_state(ctx), settings))
    with database(settings) as url:
        settings = server_settings(host=host, port=port, database_url=url)
        event_loop.run(
            run_processes(
                app,
                settings,
                Processes(api=False, worker=True),
                on_ready=lambda: _announce(f"worker {settings.worker_id} is running"),
            )
        )


def _announce(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()
