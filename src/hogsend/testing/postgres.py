"""A throwaway embedded Postgres for test suites: one server, a fresh database per test.

The schema is migrated once into a template database; each test database is a copy
of it (``CREATE DATABASE ... TEMPLATE``), which takes milliseconds.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

from hogsend.db import migrate
from hogsend.db.embedded import EmbeddedPostgres

_TEMPLATE = "hogsend_template"


class TestPostgres:
    """One embedded server for a test session.

    Args:
        root: directory for the cluster; a temporary one by default.
    """

    __test__ = False  # not a pytest class

    def __init__(self, root: Path | None = None) -> None:
        self._tmp = None if root is not None else tempfile.TemporaryDirectory(prefix="hogsend-pg-")
        base = root if root is not None else Path(self._tmp.name)  # type: ignore[union-attr]
        self.server = EmbeddedPostgres(base, fast_unsafe=True, database="postgres")
        self._counter = itertools.count()
        self._template_ready = False

    def start(self) -> None:
        """Start the server."""
        self.server.start()

    def stop(self) -> None:
        """Stop the server and delete its files."""
        self.server.stop()
        if self._tmp is not None:
            self._tmp.cleanup()

    def fresh_database(self, *, migrated: bool = True) -> str:
        """Create a new database and return its URL; migrated to head unless told not to."""
        name = f"t_{os.getpid()}_{next(self._counter)}"
        if not migrated:
            return self.server.create_database(name)
        if not self._template_ready:
            url = self.server.create_database(_TEMPLATE)
            migrate.upgrade(url)
            self._template_ready = True
        self.server._psql(f'CREATE DATABASE "{name}" TEMPLATE "{_TEMPLATE}"')
        return self.server.url_for(name)

    def drop(self, url: str) -> None:
        """Drop a database made by :meth:`fresh_database`."""
        self.server.drop_database(url.rsplit("/", 1)[1])
