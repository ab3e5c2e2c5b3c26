"""Serve an ASGI app over real HTTP from a background thread (uvicorn), for tests.

Used for the live API that outside clients (Segment SDKs, a browser) talk to, and for
stand-ins of outside services (Resend's POST /emails) that our code calls over HTTP.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from starlette.types import ASGIApp

from mail_sink import free_port


@contextmanager
def live_server(app: ASGIApp, port: int | None = None, *, timeout: float = 30) -> Iterator[str]:
    """Serve ``app`` on 127.0.0.1 until the block ends; yields its base URL.

    Raises:
        RuntimeError: the server did not start within ``timeout`` seconds.
    """
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="auto"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"live-server-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on port {port}")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
