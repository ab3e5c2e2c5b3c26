"""Contact imports on DBOS: one durable run per job, importing the file chunk by chunk.

Every worker runs an :class:`ImportScheduler`, which claims ``pending`` jobs
(``FOR UPDATE SKIP LOCKED``), names the run that owns each and enqueues it on the
``imports`` queue. A run (:func:`import_run`) calls :func:`import_chunk` until the
file is done; each chunk (up to ``CHUNK_ROWS`` lines) is one step and one transaction:
the contacts of its good lines are resolved (found by their keys, or created), its bad
lines are recorded with their line numbers and reasons, and the cursor moves past it.
A run killed anywhere is recovered by DBOS and resumes at the first uncommitted chunk;
a re-run of a chunk finds the contacts it made, so nothing is duplicated.

A run whose worker died for good (DBOS only recovers a workflow when its own executor
comes back) is found by the reaper every scheduler round runs first: a ``processing``
job without a committed chunk for ``HOGSEND_IMPORT_STALE_SECONDS`` goes back to
``pending`` without an owner, once, under a cluster-wide lock, and the next claim
starts one new run at the stored cursor (see :func:`hogsend.db.repos.imports.reap_stale`).

``hogsend import contacts`` runs the same :func:`import_chunk` loop in the CLI process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from dbos import DBOS, SetWorkflowID
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hogsend.app import Hogsend
from hogsend.core.contact_imports import (
    ImportRow,
    RowError,
    parse_csv_line,
    parse_json_line,
)
from hogsend.core.identifiers import durable_name
from hogsend.core.identity import IdentityKey
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import contacts as contacts_repo
from hogsend.db.repos import imports as repo
from hogsend.runtime.queues import IMPORTS
from hogsend.settings import Settings

log = structlog.get_logger(__name__)

WORKFLOW_NAME = durable_name("workflow", "import")
CHUNK_ROWS = 2000
"""Lines imported per step and transaction."""
SLICE_BYTES = 1 << 20
"""Bytes of the file read per chunk; a longer line fails the job."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ChunkResult:
    """What one chunk did: ``more``, ``done`` or ``stopped``, and its counts."""

    state: str
    processed: int = 0
    failed: int = 0

    def dump(self) -> dict[str, Any]:
        """A form DBOS can record."""
        return {"state": self.state, "processed": self.processed, "failed": self.failed}


def _lines(data: bytes, *, at_end: bool) -> list[bytes]:
    """Up to CHUNK_ROWS complete lines of ``data`` (with their ``\\n``)."""
    found: list[bytes] = []
    start = 0
    while len(found) < CHUNK_ROWS:
        end = data.find(b"\n", start)
        if end < 0:
            if at_end and start < len(data):
                found.append(data[start:])
            break
        found.append(data[start : end + 1])
        start = end + 1
    return found


def _parse(
    number: int, raw: bytes, job_format: str, mapping: dict[str, Any], known: frozenset[str]
) -> ImportRow | RowError | None:
    try:
        line = raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        return RowError(line=number, reason="not UTF-8 text", raw=raw.decode("latin-1"))
    if not line.strip():
        return None
    if job_format == "jsonl":
        return parse_json_line(number, line, known)
    return parse_csv_line(number, line, mapping["columns"], mapping["targets"], known)


def _staged(rows: Sequence[ImportRow]) -> list[repo.StagedRow]:
    """The chunk's good lines as the staging table takes them; a line giving a key an
    earlier line gave is staged ``slow`` (the row-by-row path imports it after that one)."""
    seen: set[IdentityKey] = set()
    staged: list[repo.StagedRow] = []
    dumps = json.dumps
    for row in rows:
        keys = row.identity.keys
        repeat = not seen.isdisjoint(keys)
        seen.update(keys)
        properties = row.properties
        deleted = None
        if None in properties.values():  # JSON lines only: a null deletes the property
            deleted = dumps([k for k, v in properties.items() if v is None])
            properties = {k: v for k, v in properties.items() if v is not None}
        staged.append(
            repo.StagedRow(
                row.line,
                row.identity.user_id,
                row.identity.email,
                dumps(properties),
                deleted,
                dumps(row.lists) if row.lists else None,
                "slow" if repeat else "create",
            )
        )
    return staged


async def _import_bulk(
    session: AsyncSession, rows: Sequence[ImportRow], now: datetime
) -> tuple[int, int, list[ImportRow]]:
    """Import the chunk's plain rows set-based; return (created, updated, the rest).

    The rows whose keys name no contact, or exactly the one contact holding every key
    they give (with their list choices), are the bulk of any import: they are copied
    into a staging table and imported in a few statements
    (:func:`~hogsend.db.repos.imports.import_staged`), with the semantics of
    :func:`~hogsend.db.repos.contacts.resolve_contact` (a shallow patch, ``None``
    deletes, ``last_seen_at`` moves). The others (a key to attach, a merge, a key or
    contact seen earlier in the chunk, an insert that lost a race) are returned for the
    row-by-row path, in file order, which runs after this one, so later lines still win.
    Everything here runs in a savepoint: if it fails, every row goes the slow way and
    fails or succeeds alone.
    """
    if not rows:
        return 0, 0, []
    try:
        async with session.begin_nested():
            result = await repo.import_staged(session, _staged(rows), now)
    except Exception:
        log.warning("bulk import of a chunk failed; importing it row by row", exc_info=True)
        return 0, 0, list(rows)
    rest = set(result.rest)
    return result.created, result.updated, [row for row in rows if row.line in rest]


async def import_chunk(
    engine: AsyncEngine, app: Hogsend, job_id: uuid.UUID, owner: str
) -> ChunkResult:
    """Import the next chunk of a job ``owner`` owns, in one transaction."""
    known = frozenset(item.id for item in app.lists)
    now = datetime.now(UTC)
    async with make_sessionmaker(engine)() as session, session.begin():
        job = await repo.owned(session, job_id, owner)
        if job is None:
            return ChunkResult(state="stopped")
        mapping = dict(job.mapping or {})
        cursor = (
            repo.Cursor.load(job.cursor, first_line=1)
            if job.cursor is not None
            # CSV data starts after the header line (kept in the mapping).
            else repo.Cursor(
                offset=int(mapping.get("dataOffset", 0)), line=int(mapping.get("firstLine", 1))
            )
        )
        data = await repo.read_slice(session, job_id, cursor.offset, SLICE_BYTES)
        lines = _lines(data, at_end=len(data) < SLICE_BYTES)
        if not data:
            await repo.finish(session, job_id, now, total=job.processed_rows)
            return ChunkResult(state="done")
        if not lines:
            job.status = "failed"
            job.error = f"line {cursor.line} is longer than {SLICE_BYTES} bytes"
            job.finished_at = now
            return ChunkResult(state="stopped")
        errors: list[RowError] = []
        good: list[ImportRow] = []
        processed = 0
        for index, raw in enumerate(lines):
            parsed = _parse(cursor.line + index, raw, job.format, mapping, known)
            if parsed is None:
                continue
            processed += 1
            if isinstance(parsed, RowError):
                errors.append(parsed)
            else:
                good.append(parsed)
        created, updated, slow = await _import_bulk(session, good, now)
        for row in slow:
            try:
                # A savepoint per row: a row the database refuses fails alone.
                async with session.begin_nested():
                    resolution = await contacts_repo.resolve_contact(
                        session, row.identity, properties=row.properties, now=now
                    )
                    if row.lists:
                        await contacts_repo.set_list_subscriptions(
                            session, resolution.contact_id, row.lists, source="import", now=now
                        )
            except Exception as exc:  # reported on the row; the rest of the chunk goes on
                errors.append(
                    RowError(line=row.line, reason=f"not stored: {type(exc).__name__}", raw="")
                )
                continue
            if resolution.created:
                created += 1
            else:
                updated += 1
        errors.sort(key=lambda e: e.line)
        await repo.record_chunk(
            session,
            job_id,
            cursor=repo.Cursor(
                offset=cursor.offset + sum(len(raw) for raw in lines),
                line=cursor.line + len(lines),
            ),
            processed=processed,
            errors=errors,
            created=created,
            updated=updated,
            now=now,
        )
    return ChunkResult(state="more", processed=processed, failed=len(errors))


# ------------------------------------------------------------------------- on DBOS


@dataclass(slots=True)
class _Context:
    app: Hogsend
    engine: AsyncEngine


_context: _Context | None = None


@DBOS.step(name="hogsend.import.chunk", retries_allowed=True, max_attempts=5)
async def chunk_step(job_id: str, owner: str) -> dict[str, Any]:
    """One chunk of an import run."""
    if _context is None:
        raise RuntimeError("import runs need a started worker")
    result = await import_chunk(_context.engine, _context.app, uuid.UUID(job_id), owner)
    return result.dump()


@DBOS.workflow(name=WORKFLOW_NAME)
async def import_run(job_id: str, owner: str) -> str:
    """One import job, chunk by chunk until done or stopped."""
    while True:
        step = await chunk_step(job_id, owner)
        if step["state"] != "more":
            return str(step["state"])


class ImportScheduler:
    """Claims pending import jobs and enqueues their runs; one per worker."""

    def __init__(self, app: Hogsend, settings: Settings, engine: AsyncEngine) -> None:
        self.app = app
        self.settings = settings
        self.engine = engine
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Make runs possible in this process and start the loop."""
        global _context
        _context = _Context(app=self.app, engine=self.engine)
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="hogsend-imports")

    async def stop(self) -> None:
        """Stop the loop (runs in flight are DBOS's to drain or recover)."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> list[uuid.UUID]:
        """Reap stalled jobs, then claim pending jobs and enqueue a run for each; returns
        the ids of the runs started."""
        started = []
        now = datetime.now(UTC)
        async with make_sessionmaker(self.engine)() as session, session.begin():
            reaped = await repo.reap_stale(
                session, now, timedelta(seconds=self.settings.import_stale_seconds)
            )
        if reaped:
            log.warning("stalled imports handed to a new run", imports=[str(i) for i in reaped])
        async with make_sessionmaker(self.engine)() as session, session.begin():
            for job_id, owner in await repo.claim_pending(session, datetime.now(UTC), limit=10):
                with SetWorkflowID(owner):
                    await DBOS.enqueue_workflow_async(IMPORTS.name, import_run, str(job_id), owner)
                started.append(job_id)
        return started

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception:
                log.warning("import scheduling round failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self.settings.campaign_poll_seconds
                )
