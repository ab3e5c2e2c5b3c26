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
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from dbos import DBOS, SetWorkflowID
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hogsend.app import Hogsend
from hogsend.core.contact_imports import (
    ImportRow,
    RowError,
    parse_csv_line,
    parse_json_line,
)
from hogsend.core.identifiers import durable_name
from hogsend.core.identity import IdentityKey, merge_properties, plan_resolution
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import contacts as contacts_repo
from hogsend.db.repos import imports as repo
from hogsend.db.repos.contacts import NewContact, to_json
from hogsend.db.repos.events import random_uuids
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


async def _import_bulk(
    session: AsyncSession, rows: Sequence[ImportRow], now: datetime
) -> tuple[int, int, list[ImportRow]]:
    """Import the chunk's plain rows set-based; return (created, updated, the rest).

    The rows whose keys name no contact, or exactly the one contact holding every key
    they give, and that choose no lists, are the bulk of any import: their keys are
    looked up (and the contacts found locked) in one statement, the new contacts are
    inserted in one statement and the known ones patched in one, with the semantics of
    :func:`~hogsend.db.repos.contacts.resolve_contact` (a shallow patch, ``None``
    deletes, ``last_seen_at`` moves). The others (a key to attach, a merge, list
    choices, a key seen earlier in the chunk, an insert that lost a race) are returned
    for the row-by-row path, in file order, which runs after this one, so later lines
    still win. Everything here runs in a savepoint: if it fails, every row goes the
    slow way and fails or succeeds alone.
    """
    seen: set[IdentityKey] = set()
    bulk: list[ImportRow] = []
    rest: list[ImportRow] = []
    for row in rows:
        keys = row.identity.keys
        if row.lists or any(k in seen for k in keys):
            rest.append(row)
        else:
            bulk.append(row)
        seen.update(keys)
    if not bulk:
        return 0, 0, rest
    try:
        async with session.begin_nested():
            matches = await contacts_repo.lock_matches(
                session, [k for row in bulk for k in row.identity.keys]
            )
            if matches is None:  # a contact was merged away meanwhile: one by one
                return 0, 0, list(rows)
            creates: list[tuple[ImportRow, NewContact]] = []
            touches: list[dict[str, Any]] = []
            ids = iter(random_uuids(len(bulk)))
            for row in bulk:
                found = {k: matches.by_key[k] for k in row.identity.keys if k in matches.by_key}
                plan = plan_resolution(row.identity, found)
                if plan.action == "create":
                    props = merge_properties({}, row.properties)
                    creates.append(
                        (row, NewContact(identity=row.identity, properties=props, id=next(ids)))
                    )
                elif plan.action == "match" and not plan.conflicts and plan.target is not None:
                    target = plan.target
                    after = merge_properties(target.properties, row.properties)
                    touches.append(
                        {
                            "id": target.id,
                            "properties": after,
                            "changed": after != dict(target.properties),
                        }
                    )
                else:
                    rest.append(row)
            inserted = await contacts_repo.insert_contacts(session, [n for _, n in creates], now)
            lost = [row for row, new in creates if new.id not in inserted]
            if touches:
                await session.execute(_TOUCH_MANY, {"rows": to_json(touches), "now": now})
    except Exception:
        log.warning("bulk import of a chunk failed; importing it row by row", exc_info=True)
        return 0, 0, list(rows)
    rest.extend(lost)
    rest.sort(key=lambda r: r.line)
    return len(creates) - len(lost), len(touches), rest


_TOUCH_MANY = text(
    """
    UPDATE contacts c SET
        last_seen_at = greatest(c.last_seen_at, CAST(:now AS timestamptz)),
        properties = v.properties,
        updated_at = CASE WHEN v.changed THEN CAST(:now AS timestamptz) ELSE c.updated_at END
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(id uuid, properties jsonb, changed bool)
    WHERE c.id = v.id
    """
)


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
