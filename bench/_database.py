"""The database every benchmark starts from: its own embedded Postgres, migrated."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from hogsend.db import migrate
from hogsend.db.embedded import EmbeddedPostgres


@contextmanager
def embedded_server() -> Iterator[EmbeddedPostgres]:
    """An embedded Postgres of its own in a temporary directory (durable commits, as in
    production); stopped and its files removed on exit."""
    with tempfile.TemporaryDirectory(prefix="hogsend-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp), database="postgres")
        server.start()
        try:
            yield server
        finally:
            server.stop()


def migrated(server: EmbeddedPostgres, name: str) -> str:
    """The URL of a new database ``name`` on ``server``, at the migration head."""
    url = server.create_database(name)
    migrate.upgrade(url)
    return url


@contextmanager
def migrated_database(name: str) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """(server, url) of database ``name`` at the migration head, on an
    :func:`embedded_server` of its own."""
    with embedded_server() as server:
        yield server, migrated(server, name)
