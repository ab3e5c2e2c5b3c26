"""Fixtures shared by every test directory: one embedded Postgres per session."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator

import pytest

from hogsend.testing.postgres import TestPostgres
from mail_sink import Sink, running_sink


@pytest.fixture(autouse=True)
def _guard_async_tests(request: pytest.FixtureRequest) -> None:
    """Give every async test :func:`no_stranded_workflows` (a sync test may itself run
    inside an event loop, e.g. Playwright's, where an async fixture cannot start)."""
    if inspect.iscoroutinefunction(request.function):
        request.getfixturevalue("no_stranded_workflows")


@pytest.fixture
async def no_stranded_workflows() -> AsyncIterator[None]:
    """Fail a test that leaves a DBOS workflow running on the shared event loop.

    Tests share one event loop per process: a workflow coroutine a test forgot would
    wake up during a later test and write to a database that was dropped, retrying
    forever on a thread the loop's shutdown then waits for.
    """
    yield
    stranded = [
        task
        for task in asyncio.all_tasks()
        if not task.done()
        and getattr(task.get_coro(), "__qualname__", "") == "_execute_workflow_async"
    ]
    for task in stranded:
        task.cancel()
    if stranded:
        pytest.fail(f"{len(stranded)} DBOS workflow task(s) outlived the test")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[TestPostgres]:
    """The session's embedded Postgres server (started lazily by the first test needing it)."""
    server = TestPostgres()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def database_url(pg_server: TestPostgres) -> Iterator[str]:
    """A fresh database at the migration head, dropped after the test."""
    url = pg_server.fresh_database()
    yield url
    pg_server.drop(url)


@pytest.fixture
def empty_database_url(pg_server: TestPostgres) -> Iterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    url = pg_server.fresh_database(migrated=False)
    yield url
    pg_server.drop(url)


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    """A real SMTP server (aiosmtpd) on a free port and the handler keeping its mail."""
    yield from running_sink()
