"""The event outbox: claiming rows under a lease, finishing, retrying, lag and sweeping.

A row is *pending* while ``processed_at`` and ``dead_at`` are both null (the predicate
of the partial indexes ``ix_event_outbox_pending`` and ``ix_event_outbox_pending_contact``;
queries here repeat it word for word so the planner can use them).

Claiming (:data:`CLAIM`) takes, in id order, runs of one contact's rows such that:

1. every row of the run is pending, due (``next_attempt_at <= now()``) and not leased;
2. no pending row of the contact is leased (in flight at some dispatcher), and no
   earlier one waits for a retry;
3. the run starts at the contact's earliest pending row and leaves no pending row of
   the contact out between its first and last row.

So at most one dispatcher holds a contact's events at a time, and it holds them in id
order. Each claim runs in its own short transaction that first takes :data:`CLAIM_LOCK`
(``pg_advisory_xact_lock``): claims take turns, so every claim sees the leases the
previous one committed. Without it, two concurrent claims could each take events of one
contact, neither seeing the other's uncommitted lease (an event whose ingest committed
after a later one of the same contact would expose that). A claim takes a few
milliseconds; the slow part, processing, runs in parallel.

Rows are locked ``FOR UPDATE SKIP LOCKED`` only during the claim itself; afterwards the
lease (``claimed_by``, ``claimed_at``, ``locked_until``) keeps others away, and
``(claimed_by, claimed_at)`` is the token every later write checks, so a dispatcher
whose lease expired and whose rows were claimed again cannot finish them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.repos import dead_letters

OUTBOX_CHANNEL = "hogsend_outbox"
"""The ``LISTEN``/``NOTIFY`` channel that wakes idle dispatchers when events arrive."""

NOTIFY_INTERVAL_SECONDS = 0.05
"""Default shortest gap between two wake-up notifications from one process."""

DISPATCHER_SOURCE = "dispatcher"
"""``dead_letter_queue.source`` of events the dispatcher gave up on."""

CLAIM_LOCK = 0x686F6773656E64  # "hogsend" in ASCII: one lock key per database
"""Advisory lock key that serialises claims across every dispatcher of a database."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimToken:
    """Who holds a claim: every write about a claimed row checks both fields."""

    worker_id: str
    claimed_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ClaimedRow:
    """An outbox row this dispatcher holds, with the stored event it points at.

    ``event_found`` is false when the event itself is gone (a GDPR erase deleted it
    before the row was processed); ``user_id``, ``properties`` and ``occurred_at`` are
    then placeholders.
    """

    id: int
    event_id: uuid.UUID
    contact_id: uuid.UUID
    contact_key: str
    event: str
    attempts: int
    consumers_done: tuple[str, ...]
    token: ClaimToken
    created_at: datetime
    event_found: bool
    user_id: str
    properties: dict[str, Any]
    occurred_at: datetime
    source: str | None

    def payload(self) -> dict[str, Any]:
        """What the dead-letter queue keeps to show and to re-queue the event."""
        return {
            "outboxId": self.id,
            "eventId": str(self.event_id),
            "contactId": str(self.contact_id),
            "contactKey": self.contact_key,
            "event": self.event,
            "userId": self.user_id,
            "properties": self.properties,
            "occurredAt": self.occurred_at.isoformat(),
            "source": self.source,
        }


class OutboxLag(NamedTuple):
    """How far the dispatchers are behind."""

    pending: int
    """Rows still to process (including rows waiting for a retry)."""
    oldest_pending_age_seconds: float
    """Age of the oldest pending row; 0 when nothing is pending."""


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboxStats:
    """Counts behind ``GET /v1/admin/metrics/dispatcher``."""

    pending: int
    leased: int
    retrying: int
    dead: int
    oldest_pending_at: datetime | None
    lag_seconds: float
    processed_last_minute: int
    processed_last_hour: int


_PENDING = "processed_at IS NULL AND dead_at IS NULL"

TAKE_CLAIM_LOCK = text(
    # Losing a claim in a crash is harmless (its rows just become claimable again), so
    # its commit need not wait for the WAL flush, which it would do holding the lock.
    "SELECT set_config('synchronous_commit', 'off', true), pg_advisory_xact_lock(:key)"
)

_BLOCKING = (
    "processed_at IS NULL AND dead_at IS NULL AND (locked_until IS NOT NULL OR attempts > 0)"
)

CLAIM = text(
    f"""
WITH picked AS MATERIALIZED (
    SELECT o.id, o.contact_id
    FROM event_outbox o
    WHERE o.{_PENDING}
      AND o.next_attempt_at <= now()
      AND (o.locked_until IS NULL OR o.locked_until <= now())
      -- Rule 2, through the small ix_event_outbox_blocking index. A scalar subquery
      -- rather than NOT EXISTS: it stays a per-row index probe instead of becoming a
      -- join, which the planner may choose badly on a young table without statistics.
      AND (
          SELECT b.id FROM event_outbox b
          WHERE b.contact_id = o.contact_id
            AND b.{_BLOCKING}
            AND (b.locked_until > now() OR (b.id < o.id AND b.next_attempt_at > now()))
          LIMIT 1
      ) IS NULL
    ORDER BY o.id
    LIMIT :batch_size
    FOR UPDATE OF o SKIP LOCKED
),
runs AS MATERIALIZED (
    -- Rule 3, per contact picked. A pending row missing from the run was skipped
    -- because another transaction had it locked: then only the first row is claimed.
    SELECT r.contact_id, r.first_id,
           (SELECT b.id FROM event_outbox b
            WHERE b.contact_id = r.contact_id AND b.id < r.first_id AND b.{_PENDING}
            LIMIT 1) IS NULL AS first_pending,
           (SELECT count(*) FROM event_outbox b
            WHERE b.contact_id = r.contact_id AND b.id BETWEEN r.first_id AND r.last_id
              AND b.{_PENDING}) = r.n AS whole
    FROM (
        SELECT contact_id, min(id) AS first_id, max(id) AS last_id, count(*) AS n
        FROM picked GROUP BY contact_id
    ) r
),
claimed AS (
    UPDATE event_outbox o
    SET claimed_by = :worker_id,
        claimed_at = now(),
        locked_until = now() + make_interval(secs => :lease_seconds)
    FROM picked p
    JOIN runs r ON r.contact_id = p.contact_id
    WHERE o.id = p.id AND r.first_pending AND (r.whole OR p.id = r.first_id)
    RETURNING o.id, o.event_id, o.contact_id, o.contact_key, o.event, o.attempts,
              o.consumers_done, o.claimed_at, o.created_at
)
SELECT c.id, c.event_id, c.contact_id, c.contact_key, c.event, c.attempts,
       c.consumers_done, c.claimed_at, c.created_at,
       u.id IS NOT NULL AS event_found, u.user_id, u.properties, u.occurred_at, u.source
FROM claimed c
LEFT JOIN user_events u ON u.id = c.event_id
ORDER BY c.id
"""
)

_TOKEN = "claimed_by = :worker_id AND claimed_at = :claimed_at"

RENEW = text(
    f"""
UPDATE event_outbox
SET locked_until = now() + make_interval(secs => :lease_seconds)
WHERE id = ANY(:ids) AND {_TOKEN} AND {_PENDING}
"""
)

COMPLETE = text(
    f"""
UPDATE event_outbox
SET processed_at = now(), locked_until = NULL, consumers_done = :consumers_done
WHERE id = :id AND {_TOKEN} AND {_PENDING}
RETURNING id
"""
)

# The rows are found by primary key (``= ANY`` of their ids): joined to the JSON alone,
# the planner (guessing 100 rows from it) hashed it against a scan of every pending row,
# which grows with the backlog.
COMPLETE_ROWS = text(
    f"""
WITH v AS (
    SELECT * FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS r(id bigint, done text[])
)
UPDATE event_outbox o
SET processed_at = now(), locked_until = NULL, consumers_done = v.done
FROM v
WHERE o.id = ANY(ARRAY(SELECT id FROM v)) AND o.id = v.id AND {_TOKEN} AND {_PENDING}
RETURNING o.id
"""
)

FAIL = text(
    f"""
UPDATE event_outbox
SET attempts = attempts + 1,
    last_error = :error,
    consumers_done = :consumers_done,
    next_attempt_at = now() + make_interval(secs => :retry_in_seconds),
    locked_until = NULL,
    dead_at = CASE WHEN attempts + 1 >= :max_attempts THEN now() END
WHERE id = :id AND {_TOKEN} AND {_PENDING}
RETURNING attempts, dead_at IS NOT NULL AS dead
"""
)

RELEASE = text(
    f"""
UPDATE event_outbox SET locked_until = NULL
WHERE id = ANY(:ids) AND {_TOKEN} AND {_PENDING}
"""
)

RELEASE_WORKER = text(
    f"""
UPDATE event_outbox SET locked_until = NULL
WHERE {_PENDING} AND claimed_by = :worker_id AND locked_until IS NOT NULL
"""
)

SWEEP = text(
    """
DELETE FROM event_outbox
WHERE id IN (
    SELECT id FROM event_outbox
    WHERE processed_at < now() - make_interval(secs => :retention_seconds)
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
"""
)

LAG = text(
    f"""
SELECT count(*) AS pending,
       coalesce(extract(epoch FROM now() - min(created_at)), 0) AS age
FROM event_outbox WHERE {_PENDING}
"""
)

STATS = text(
    f"""
SELECT
    (SELECT count(*) FROM event_outbox WHERE {_PENDING}) AS pending,
    (SELECT count(*) FROM event_outbox WHERE {_PENDING} AND locked_until > now()) AS leased,
    (SELECT count(*) FROM event_outbox WHERE {_PENDING} AND attempts > 0) AS retrying,
    (SELECT count(*) FROM event_outbox WHERE dead_at IS NOT NULL) AS dead,
    (SELECT min(created_at) FROM event_outbox WHERE {_PENDING}) AS oldest,
    now() AS now,
    (SELECT count(*) FROM event_outbox
     WHERE processed_at >= now() - interval '1 minute') AS last_minute,
    (SELECT count(*) FROM event_outbox
     WHERE processed_at >= now() - interval '1 hour') AS last_hour
"""
)

DEAD_COUNT = text("SELECT count(*) FROM event_outbox WHERE dead_at IS NOT NULL")

REQUEUE = text(
    """
INSERT INTO event_outbox AS o (event_id, contact_id, contact_key, event, consumers_done)
VALUES (:event_id, :contact_id, :contact_key, :event, :consumers_done)
ON CONFLICT (event_id) DO UPDATE
SET attempts = 0, next_attempt_at = now(), dead_at = NULL, processed_at = NULL,
    locked_until = NULL, last_error = NULL
WHERE o.dead_at IS NOT NULL
RETURNING id
"""
)

DELETE_DEAD = text("DELETE FROM event_outbox WHERE event_id = :event_id AND dead_at IS NOT NULL")

NOTIFY = text(f"SELECT pg_notify('{OUTBOX_CHANNEL}', '')")


async def claim(
    session: AsyncSession, *, worker_id: str, batch_size: int, lease_seconds: float
) -> list[ClaimedRow]:
    """Claim up to ``batch_size`` rows for ``worker_id``, in id order.

    Run it in a transaction of its own and commit right away: the advisory lock it
    takes is held until then, and other dispatchers wait for it.
    """
    await session.execute(TAKE_CLAIM_LOCK, {"key": CLAIM_LOCK})
    result = await session.execute(
        CLAIM,
        {"worker_id": worker_id, "batch_size": batch_size, "lease_seconds": lease_seconds},
    )
    rows = []
    for r in result.mappings():
        found = bool(r["event_found"])
        rows.append(
            ClaimedRow(
                id=r["id"],
                event_id=r["event_id"],
                contact_id=r["contact_id"],
                contact_key=r["contact_key"],
                event=r["event"],
                attempts=r["attempts"],
                consumers_done=tuple(r["consumers_done"]),
                token=ClaimToken(worker_id=worker_id, claimed_at=r["claimed_at"]),
                created_at=r["created_at"],
                event_found=found,
                user_id=r["user_id"] if found else r["contact_key"],
                properties=dict(r["properties"]) if found else {},
                occurred_at=r["occurred_at"] if found else r["created_at"],
                source=r["source"] if found else None,
            )
        )
    return rows


def _token(token: ClaimToken) -> dict[str, Any]:
    return {"worker_id": token.worker_id, "claimed_at": token.claimed_at}


async def renew(
    session: AsyncSession, token: ClaimToken, ids: Sequence[int], *, lease_seconds: float
) -> int:
    """Extend the lease of the still pending rows among ``ids``; returns how many."""
    result = await session.execute(
        RENEW, {"ids": list(ids), "lease_seconds": lease_seconds, **_token(token)}
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def complete(
    session: AsyncSession, token: ClaimToken, row_id: int, *, consumers_done: Sequence[str]
) -> bool:
    """Mark one row processed; False when the claim was lost (nothing was written)."""
    result = await session.execute(
        COMPLETE, {"id": row_id, "consumers_done": list(consumers_done), **_token(token)}
    )
    return result.first() is not None


async def complete_rows(
    session: AsyncSession, token: ClaimToken, progress: Sequence[tuple[int, Sequence[str]]]
) -> set[int]:
    """Mark several rows processed, each with its ``consumers_done``, in one statement.

    Args:
        progress: (row id, consumers done) pairs.

    Returns:
        The ids marked; a missing one was not ours any more (its claim was lost).
    """
    if not progress:
        return set()
    rows = json.dumps([{"id": row_id, "done": list(done)} for row_id, done in progress])
    result = await session.execute(COMPLETE_ROWS, {"rows": rows, **_token(token)})
    return {row[0] for row in result}


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """What :func:`fail` recorded."""

    attempts: int
    dead: bool


async def fail(
    session: AsyncSession,
    row: ClaimedRow,
    *,
    consumers_done: Sequence[str],
    error: str,
    retry_in_seconds: float,
    max_attempts: int,
    dead_letter_detail: dict[str, Any] | None = None,
) -> Failure | None:
    """Record a failed attempt: retry after ``retry_in_seconds``, or give up.

    The row gives up when this was attempt number ``max_attempts``: it is marked dead and
    a ``dead_letter_queue`` row (source :data:`DISPATCHER_SOURCE`, ``source_id`` = the
    event id) is written in the same transaction, with the event, the error and
    ``dead_letter_detail``. Returns None when the claim was lost (nothing was written).
    """
    result = await session.execute(
        FAIL,
        {
            "id": row.id,
            "error": error,
            "consumers_done": list(consumers_done),
            "retry_in_seconds": retry_in_seconds,
            "max_attempts": max_attempts,
            **_token(row.token),
        },
    )
    recorded = result.first()
    if recorded is None:
        return None
    failure = Failure(attempts=int(recorded.attempts), dead=bool(recorded.dead))
    if failure.dead:
        await dead_letters.add(
            session,
            source=DISPATCHER_SOURCE,
            source_id=str(row.event_id),
            payload={
                **row.payload(),
                "consumersDone": list(consumers_done),
                **(dead_letter_detail or {}),
            },
            error=error,
            attempts=failure.attempts,
        )
    return failure


async def release(session: AsyncSession, token: ClaimToken, ids: Sequence[int]) -> int:
    """Give up the lease of rows not processed yet (they become claimable again)."""
    if not ids:
        return 0
    result = await session.execute(RELEASE, {"ids": list(ids), **_token(token)})
    return int(result.rowcount)  # type: ignore[attr-defined]


async def release_worker(session: AsyncSession, worker_id: str) -> int:
    """Give up every lease ``worker_id`` holds (a worker starting or stopping)."""
    result = await session.execute(RELEASE_WORKER, {"worker_id": worker_id})
    return int(result.rowcount)  # type: ignore[attr-defined]


async def sweep(session: AsyncSession, *, retention_seconds: float, limit: int = 5000) -> int:
    """Delete up to ``limit`` rows processed more than ``retention_seconds`` ago."""
    result = await session.execute(SWEEP, {"retention_seconds": retention_seconds, "limit": limit})
    return int(result.rowcount)  # type: ignore[attr-defined]


async def outbox_lag(session: AsyncSession) -> OutboxLag:
    """Pending rows and the age of the oldest one, by the database's clock."""
    row = (await session.execute(LAG)).one()
    return OutboxLag(int(row.pending), round(float(row.age), 3))


async def dead_count(session: AsyncSession) -> int:
    """Rows that gave up and wait in the dead-letter queue."""
    return int((await session.execute(DEAD_COUNT)).scalar_one())


async def stats(session: AsyncSession) -> OutboxStats:
    """Every count the dispatcher metric reports, in one round trip."""
    r = (await session.execute(STATS)).one()
    lag = (r.now - r.oldest).total_seconds() if r.oldest is not None else 0.0
    return OutboxStats(
        pending=int(r.pending),
        leased=int(r.leased),
        retrying=int(r.retrying),
        dead=int(r.dead),
        oldest_pending_at=r.oldest,
        lag_seconds=round(max(lag, 0.0), 3),
        processed_last_minute=int(r.last_minute),
        processed_last_hour=int(r.last_hour),
    )


async def requeue_dead(session: AsyncSession, payload: dict[str, Any]) -> int | None:
    """Put a dead event back in line, from its dead-letter payload.

    Attempts start again from zero and the consumers recorded as done stay skipped. A
    row that was swept or erased meanwhile is inserted again. Returns the row id, or
    None when the event's row is pending or processed (not dead): nothing changes then.
    """
    result = await session.execute(
        REQUEUE,
        {
            "event_id": uuid.UUID(str(payload["eventId"])),
            "contact_id": uuid.UUID(str(payload["contactId"])),
            "contact_key": str(payload["contactKey"]),
            "event": str(payload["event"]),
            "consumers_done": [str(name) for name in payload.get("consumersDone", [])],
        },
    )
    row_id = result.scalar_one_or_none()
    return None if row_id is None else int(row_id)


async def delete_dead(session: AsyncSession, event_id: uuid.UUID) -> bool:
    """Drop a dead event's row for good (its dead-letter entry was discarded)."""
    result = await session.execute(DELETE_DEAD, {"event_id": event_id})
    return bool(result.rowcount)  # type: ignore[attr-defined]


class NotifyThrottle:
    """Lets through at most one outbox NOTIFY per ``interval_seconds`` (per process).

    Every notifying transaction takes a database-wide lock at commit, which measurably
    serialises ingest (see ``bench/dispatcher.py``), and only *idle* dispatchers listen:
    a busy one claims its next batch right after the last. So one notification per short
    interval wakes idle dispatchers just as fast while costing nothing under load; an
    event that loses the race waits at most ``dispatcher_poll_seconds``.

    Args:
        interval_seconds: the shortest gap between two notifications.
        clock: a monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        interval_seconds: float = NOTIFY_INTERVAL_SECONDS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_seconds = interval_seconds
        self._clock = clock
        self._next_at = float("-inf")

    def due(self) -> bool:
        """Whether this transaction should notify (and if so, start a new interval)."""
        now = self._clock()
        if now < self._next_at:
            return False
        self._next_at = now + self.interval_seconds
        return True


async def notify_outbox(session: AsyncSession, throttle: NotifyThrottle | None = None) -> bool:
    """Wake idle dispatchers once the current transaction commits.

    Ingest calls this inside its transaction after inserting outbox rows, with the
    process's :class:`NotifyThrottle`. Postgres delivers the notification at commit
    (never for a rollback) and folds repeats within one transaction into one. Returns
    whether a notification was sent.
    """
    if throttle is not None and not throttle.due():
        return False
    await session.execute(NOTIFY)
    return True
