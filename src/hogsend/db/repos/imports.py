"""Contact import jobs: the job row, its file, its durable cursor and its rejected lines.

The cursor is ``{"offset": <byte offset of the next line>, "line": <its line number>}``.
One chunk is imported in one transaction together with the cursor's advance, the
counters and the chunk's rejected lines, so a job interrupted anywhere resumes at the
first line of an uncommitted chunk and nothing is counted or created twice (contacts
are found by their keys, never blindly inserted).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.contact_imports import RowError
from hogsend.db.tables.imports import ImportJob, ImportRowError

MAX_SUMMARY_ERRORS = 100
"""Rejected lines shown in the job's summary; all of them are in import_errors."""

_REAPER_LOCK = 0x68_6F_67_69_6D_70  # "hogimp": one import reaper at a time, cluster-wide


@dataclass(frozen=True, slots=True, kw_only=True)
class Cursor:
    """Where the next chunk starts."""

    offset: int
    line: int

    def dump(self) -> str:
        """The stored form."""
        return json.dumps({"offset": self.offset, "line": self.line})

    @classmethod
    def load(cls, stored: str | None, *, first_line: int) -> Cursor:
        """The stored cursor, or the start of the data lines."""
        if stored is None:
            return cls(offset=0, line=first_line)
        data = json.loads(stored)
        return cls(offset=int(data["offset"]), line=int(data["line"]))


async def create_job(session: AsyncSession, **values: Any) -> ImportJob:
    """Insert a job (``pending``: a worker's scheduler will claim it)."""
    job_id = await session.scalar(insert(ImportJob).values(**values).returning(ImportJob.id))
    job = await session.get(ImportJob, job_id)
    assert job is not None
    return job


async def get_job(session: AsyncSession, job_id: uuid.UUID) -> ImportJob | None:
    """The job, or None."""
    return await session.get(ImportJob, job_id, populate_existing=True)


async def claim_pending(
    session: AsyncSession, now: datetime, *, limit: int, owner: str | None = None
) -> list[tuple[uuid.UUID, str]]:
    """Claim pending jobs, naming the run that owns each; rows stay locked until commit."""
    ids = list(
        await session.scalars(
            select(ImportJob.id)
            .where(ImportJob.status == "pending", ImportJob.dry_run.is_(False))
            .order_by(ImportJob.created_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    claimed = []
    for job_id in ids:
        workflow_id = owner or f"hogsend.import:{job_id}:{uuid.uuid4().hex[:12]}"
        await session.execute(
            update(ImportJob)
            .where(ImportJob.id == job_id)
            .values(
                status="processing",
                workflow_id=workflow_id,
                started_at=func.coalesce(ImportJob.started_at, now),
                updated_at=now,
            )
        )
        claimed.append((job_id, workflow_id))
    return claimed


async def reap_stale(session: AsyncSession, now: datetime, stale: timedelta) -> list[uuid.UUID]:
    """Hand imports whose run stopped making progress back to the scheduler, once.

    ``updated_at`` is the run's heartbeat (every chunk and the claim move it). Only one
    reaper works at a time (a transaction-scoped advisory lock; the others skip the
    round), and the compare-and-set on ``status``/``updated_at`` reaps a job once per
    stall: it goes back to ``pending`` without an owner, so the scheduler starts exactly
    one new run, which resumes at the stored cursor. The old run, if it was only slow,
    finds it no longer owns the job at its next chunk and stops; a chunk it has in
    flight holds the job's row lock, so the reaper waits for it and then sees a fresh
    heartbeat and leaves the job alone.
    """
    if not await session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _REAPER_LOCK}):
        return []
    result = await session.execute(
        update(ImportJob)
        .where(
            ImportJob.status == "processing",
            ImportJob.dry_run.is_(False),
            ImportJob.updated_at < now - stale,
        )
        .values(
            status="pending",
            workflow_id=None,
            updated_at=now,
            error=f"resumed by the reaper at {now.isoformat()} (no progress for {stale})",
        )
        .returning(ImportJob.id)
    )
    return list(result.scalars())


async def owned(session: AsyncSession, job_id: uuid.UUID, workflow_id: str) -> ImportJob | None:
    """The job if ``workflow_id`` owns it and it is processing (row locked), else None."""
    job = await session.scalar(
        select(ImportJob)
        .where(ImportJob.id == job_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if job is None or job.status != "processing" or job.workflow_id != workflow_id:
        return None
    return job


async def read_slice(session: AsyncSession, job_id: uuid.UUID, offset: int, size: int) -> bytes:
    """``size`` bytes of the job's file from ``offset`` (fewer at the end)."""
    data = await session.scalar(
        text("SELECT substring(content FROM :start FOR :size) FROM import_jobs WHERE id = :id"),
        {"id": job_id, "start": offset + 1, "size": size},
    )
    return bytes(data or b"")


async def record_chunk(
    session: AsyncSession,
    job_id: uuid.UUID,
    *,
    cursor: Cursor,
    processed: int,
    errors: Sequence[RowError],
    created: int,
    updated: int,
    now: datetime,
) -> None:
    """Advance the cursor and the counters and keep the chunk's rejected lines."""
    if errors:
        await session.execute(
            insert(ImportRowError),
            [
                {"import_job_id": job_id, "line_number": e.line, "reason": e.reason, "raw": e.raw}
                for e in errors
            ],
        )
    job = await session.get(ImportJob, job_id)
    assert job is not None
    summary = list(job.errors or [])
    room = MAX_SUMMARY_ERRORS - len(summary)
    summary += [{"line": e.line, "reason": e.reason} for e in errors[: max(room, 0)]]
    await session.execute(
        update(ImportJob)
        .where(ImportJob.id == job_id)
        .values(
            cursor=cursor.dump(),
            processed_rows=ImportJob.processed_rows + processed,
            failed_rows=ImportJob.failed_rows + len(errors),
            created_contacts=ImportJob.created_contacts + created,
            updated_contacts=ImportJob.updated_contacts + updated,
            errors=summary,
            updated_at=now,
        )
    )


async def finish(session: AsyncSession, job_id: uuid.UUID, now: datetime, *, total: int) -> None:
    """Mark the job done: ``failed`` when every row failed (or there were none)."""
    job = await session.get(ImportJob, job_id, populate_existing=True)
    assert job is not None
    status = "failed" if job.failed_rows >= total else "completed"
    await session.execute(
        update(ImportJob)
        .where(ImportJob.id == job_id)
        .values(
            status=status,
            total_rows=total,
            finished_at=now,
            updated_at=now,
            content=None,
            error="no row could be imported" if status == "failed" else None,
        )
    )


async def row_errors(session: AsyncSession, job_id: uuid.UUID) -> list[ImportRowError]:
    """Every rejected line of the job, in file order."""
    rows = await session.scalars(
        select(ImportRowError)
        .where(ImportRowError.import_job_id == job_id)
        .order_by(ImportRowError.line_number)
    )
    return list(rows)
