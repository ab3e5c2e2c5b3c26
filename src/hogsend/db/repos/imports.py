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
from typing import Any, NamedTuple

from sqlalchemy import func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.contact_imports import RowError
from hogsend.db.engine import driver_connection
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


# --------------------------------------------------------------------------- set-based rows


class StagedRow(NamedTuple):
    """One import line for :func:`import_staged` (a tuple: COPY writes it as it is)."""

    line: int
    external_id: str | None
    email: str | None
    properties: str
    """The property values to set, as a JSON object."""
    deleted: str | None
    """The property names to delete (``null`` in the file), as a JSON array, or None."""
    lists: str | None
    """The list choices, as a JSON object of list id to bool, or None."""
    action: str
    """``create`` (its keys may name nobody: let the lookup decide), or ``slow`` for a
    line the row-by-row path must import (a key an earlier line of the chunk gave)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class StagedResult:
    """What :func:`import_staged` did; ``rest`` are the lines it left to the caller."""

    created: int
    updated: int
    rest: list[int]


_STAGE = "hogsend_import_stage"

_CREATE_STAGE = text(
    f"""
    CREATE TEMPORARY TABLE {_STAGE} (
        line int NOT NULL,
        external_id text,
        email text,
        properties jsonb NOT NULL,
        deleted jsonb,
        lists jsonb,
        id uuid NOT NULL DEFAULT gen_random_uuid(),
        target uuid,
        action text NOT NULL,
        done bool NOT NULL DEFAULT false
    ) ON COMMIT DROP
    """
)

_COPY_STAGE = (
    f"COPY {_STAGE} (line, external_id, email, properties, deleted, lists, action) FROM STDIN"
)

# The live contact each key of each line resolves to (the contact holding it, else the
# target of its alias, as in contacts._MATCHES), probed through the unique indexes
# whatever the planner knows of the staging table; aliases are only looked at for a key
# no contact holds. A line is a plain update ("match") when every key it gives is held
# by one and the same contact and no earlier line of the chunk reaches that contact; a
# line none of whose keys is known stays "create"; anything else (a key to attach, a
# key known through an alias, a merge, a contact an earlier line also reaches) is left
# to the row-by-row path ("slow").
_CLASSIFY = text(
    f"""
    WITH held AS MATERIALIZED (
        SELECT s.line, s.action, s.external_id, s.email,
            (SELECT c.id FROM contacts c
             WHERE c.external_id = s.external_id AND c.deleted_at IS NULL) AS by_external,
            (SELECT c.id FROM contacts c
             WHERE lower(c.email) = lower(s.email) AND c.email IS NOT NULL
               AND c.deleted_at IS NULL) AS by_email
        FROM {_STAGE} s
    ), found AS MATERIALIZED (
        SELECT h.*,
            CASE WHEN h.by_external IS NULL AND h.external_id IS NOT NULL THEN (
                SELECT c.id FROM contact_aliases a JOIN contacts c
                    ON c.id = a.contact_id AND c.deleted_at IS NULL
                WHERE a.alias_kind = 'external' AND a.alias_value = h.external_id)
            END AS alias_external,
            CASE WHEN h.by_email IS NULL AND h.email IS NOT NULL THEN (
                SELECT c.id FROM contact_aliases a JOIN contacts c
                    ON c.id = a.contact_id AND c.deleted_at IS NULL
                WHERE a.alias_kind = 'email' AND a.alias_value = lower(h.email))
            END AS alias_email
        FROM held h
    ), reached AS (
        SELECT id, min(line) AS first FROM (
            SELECT line, coalesce(by_external, alias_external) AS id FROM found
            UNION ALL
            SELECT line, coalesce(by_email, alias_email) FROM found
        ) AS r
        WHERE id IS NOT NULL
        GROUP BY id
    )
    UPDATE {_STAGE} s SET
        target = r.id,
        action = CASE
            WHEN f.action = 'create'
                 AND f.alias_external IS NULL AND f.alias_email IS NULL
                 AND (f.external_id IS NULL OR f.by_external IS NOT NULL)
                 AND (f.email IS NULL OR f.by_email IS NOT NULL)
                 AND (f.by_external IS NULL OR f.by_email IS NULL OR f.by_external = f.by_email)
                 AND r.first = f.line
            THEN 'match' ELSE 'slow' END
    FROM found f
    JOIN reached r
        ON r.id = coalesce(f.by_external, f.alias_external, f.by_email, f.alias_email)
    WHERE s.line = f.line
    """
)

# The contacts to update, locked in id order (as contacts.lock_matches does), so two
# imports touching the same contacts queue instead of deadlocking.
_LOCK_TARGETS = text(
    f"""
    SELECT c.id FROM contacts c JOIN {_STAGE} s ON s.target = c.id AND s.action = 'match'
    ORDER BY c.id FOR NO KEY UPDATE OF c
    """
)

# New contacts in key order; one whose key a contact took meanwhile is skipped (the
# row-by-row path then finds that contact).
_INSERT_NEW = text(
    f"""
    INSERT INTO contacts (id, external_id, email, properties,
                          first_seen_at, last_seen_at, created_at, updated_at)
    SELECT s.id, s.external_id, s.email, s.properties,
           CAST(:now AS timestamptz), CAST(:now AS timestamptz),
           CAST(:now AS timestamptz), CAST(:now AS timestamptz)
    FROM {_STAGE} s WHERE s.action = 'create'
    ORDER BY s.external_id, lower(s.email)
    ON CONFLICT DO NOTHING
    """
)

# A shallow patch (contacts.merge_properties): the line's values win key by key, its
# null-valued keys are deleted; updated_at moves only when the properties changed. A
# contact merged away since the lookup is skipped (the row-by-row path follows it).
_UPDATE_KNOWN = text(
    f"""
    WITH patched AS (
        SELECT s.target, CASE
            WHEN s.deleted IS NULL THEN coalesce(c.properties, '{{}}') || s.properties
            ELSE (coalesce(c.properties, '{{}}') || s.properties)
                 - CAST(ARRAY(SELECT jsonb_array_elements_text(s.deleted)) AS text[])
            END AS after
        FROM {_STAGE} s JOIN contacts c ON c.id = s.target
        WHERE s.action = 'match'
    )
    UPDATE contacts c SET
        properties = p.after,
        last_seen_at = greatest(c.last_seen_at, CAST(:now AS timestamptz)),
        updated_at = CASE WHEN p.after IS DISTINCT FROM c.properties
                          THEN CAST(:now AS timestamptz) ELSE c.updated_at END
    FROM patched p
    WHERE c.id = p.target AND c.deleted_at IS NULL
    """
)

# The lines the statements above did not import: an insert that lost a race, or a
# contact merged away before we locked it (read only when the row counts fall short;
# the locks keep the answer still).
_NOT_DONE = text(
    f"""
    SELECT s.line FROM {_STAGE} s
    WHERE s.action = 'slow'
       OR (s.action = 'create' AND NOT EXISTS (SELECT FROM contacts c WHERE c.id = s.id))
       OR (s.action = 'match' AND NOT EXISTS (
               SELECT FROM contacts c WHERE c.id = s.target AND c.deleted_at IS NULL))
    ORDER BY s.line
    """
)

_SLOW = text(f"SELECT line FROM {_STAGE} WHERE action = 'slow' ORDER BY line")

_COUNTS = text(f"SELECT action, count(*) FROM {_STAGE} GROUP BY action")

# The list choices of the lines imported here (contacts.upsert_list_subscriptions'
# semantics): a new contact that exists now, a known one that is still live.
_UPSERT_STAGED_LISTS = text(
    f"""
    INSERT INTO list_subscriptions AS ls (contact_id, list_id, subscribed, source,
                                          subscribed_at, unsubscribed_at,
                                          created_at, updated_at)
    SELECT c.id, l.key, CAST(l.value AS boolean), 'import',
           CASE WHEN CAST(l.value AS boolean) THEN CAST(:now AS timestamptz) END,
           CASE WHEN NOT CAST(l.value AS boolean) THEN CAST(:now AS timestamptz) END,
           CAST(:now AS timestamptz), CAST(:now AS timestamptz)
    FROM {_STAGE} s
    JOIN contacts c ON c.id = CASE WHEN s.action = 'create' THEN s.id ELSE s.target END
        AND c.deleted_at IS NULL
    CROSS JOIN LATERAL jsonb_each(s.lists) AS l
    WHERE s.action <> 'slow' AND s.lists IS NOT NULL
    ORDER BY c.id, l.key
    ON CONFLICT (contact_id, list_id) DO UPDATE SET
        subscribed = EXCLUDED.subscribed,
        source = EXCLUDED.source,
        subscribed_at = coalesce(EXCLUDED.subscribed_at, ls.subscribed_at),
        unsubscribed_at = coalesce(EXCLUDED.unsubscribed_at, ls.unsubscribed_at),
        updated_at = EXCLUDED.updated_at
    WHERE ls.subscribed IS DISTINCT FROM EXCLUDED.subscribed
    """
)


async def import_staged(
    session: AsyncSession, rows: Sequence[StagedRow], now: datetime
) -> StagedResult:
    """Import plain lines set-based: COPY them into a temporary table, then create the
    contacts none of whose keys is known, patch the ones all of whose keys name one
    contact holding them, and write their list choices, in a few statements.

    Every good line of a chunk is given, so that a line is only patched here when no
    earlier line reaches its contact; a line staged as ``slow`` is always left to the
    caller. Lines needing more (a key to attach, a merge, a contact an earlier line also
    reaches, an insert that lost a race to a concurrent writer, a contact merged away
    meanwhile) are returned in ``rest`` for the row-by-row path. Runs in the caller's
    transaction (the table is dropped at its end).
    """
    if not rows:
        return StagedResult(created=0, updated=0, rest=[])
    await session.execute(_CREATE_STAGE)
    driver = await driver_connection(await session.connection())
    async with driver.cursor() as cursor, cursor.copy(_COPY_STAGE) as copy:
        for row in rows:
            await copy.write_row(row)
    await session.execute(_CLASSIFY)
    counts: dict[str, int] = {row[0]: row[1] for row in await session.execute(_COUNTS)}
    planned_new, planned_known = counts.get("create", 0), counts.get("match", 0)
    if planned_known:
        await session.execute(_LOCK_TARGETS)
    created = updated = 0
    if planned_new:
        inserted = await session.execute(_INSERT_NEW, {"now": now})
        created = inserted.rowcount  # type: ignore[attr-defined]
    if planned_known:
        patched = await session.execute(_UPDATE_KNOWN, {"now": now})
        updated = patched.rowcount  # type: ignore[attr-defined]
    if any(row.lists is not None for row in rows):
        await session.execute(_UPSERT_STAGED_LISTS, {"now": now})
    if created == planned_new and updated == planned_known:
        rest = list((await session.scalars(_SLOW)).all()) if counts.get("slow") else []
    else:
        rest = list((await session.scalars(_NOT_DONE)).all())
    return StagedResult(created=created, updated=updated, rest=rest)
