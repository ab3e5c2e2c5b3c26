"""Send attempts (``email_sends``): the facts the mailer's gates read, and its decision rows.

Functions take the caller's session and never commit. The mailer serialises attempts
that share an idempotency key with a session-level advisory lock (taken by
:func:`begin_and_read_attempt` and :func:`begin_and_read_batch`), and attempts to one
address with a transaction-level one (:func:`lock_address`), so the duplicate check and
the frequency-cap count see every earlier attempt. One attempt's hot statements
(:func:`begin_and_read_attempt`, :func:`write_attempt`, :func:`finish_attempt`) run
prepared on the driver connection, a pipeline of them per round trip.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from hogsend.core.pagination import InvalidCursor, Page, decode_cursor, encode_cursor, page_of
from hogsend.core.slot_init import slot_init
from hogsend.core.tracking import LinkSet
from hogsend.db import prepared
from hogsend.db.engine import driver_connection
from hogsend.db.repos.contacts import CONTACT_COLUMNS, rows_to_json, to_json

# Attempts that went out (or are on their way): what duplicates, gaps and caps count.
OUTGOING = ("queued", "sent", "redirected")
# Kinds the frequency cap neither applies to nor counts.
CAP_EXEMPT_KINDS = ("transactional", "test")
HANDOFF_CHANNEL = "hogsend_sends"
"""Channel of the ``NOTIFY`` a hand-off sends at commit, waking idle couriers."""


async def lock_address(session: AsyncSession, email: str) -> None:
    """Serialise, until the transaction ends, attempts to one (case-insensitive) address."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtextextended('hogsend.send-to:' || lower(:e), 0))"),
        {"e": email},
    )


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class KeyHolder:
    """The attempt holding an idempotency key."""

    id: uuid.UUID
    decision: str
    status: str
    waiting: bool = False
    """A ``queued`` attempt handed off to a worker: pending, not interrupted."""


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StoredFacts:
    """What the database says about a prospective send (see ``SendFacts``)."""

    key_holder: KeyHolder | None = None
    suppressed: bool = False
    suppression_reason: str | None = None
    unsubscribed_all: bool = False
    list_choice: bool | None = None
    journey_last_sent_at: datetime | None = None
    recent_sends: int = 0


async def read_facts(
    session: AsyncSession,
    *,
    idempotency_key: str | None,
    contact_id: uuid.UUID | None,
    email: str,
    list_id: str | None,
    journey_id: str | None,
    since: datetime,
) -> StoredFacts:
    """Read every fact the gates need, in the caller's transaction, in one statement.

    Absent inputs (no key, contact, list or journey) read as "no fact": their
    subqueries compare with NULL and find nothing.
    """
    row = (
        await session.execute(
            _FACTS,
            {
                "k": idempotency_key,
                "c": contact_id,
                "e": email,
                "l": list_id,
                "j": journey_id,
                "since": since,
                "d": list(OUTGOING),
                "exempt": list(CAP_EXEMPT_KINDS),
            },
        )
    ).one()
    holder = None
    if row.holder_id is not None:
        holder = KeyHolder(
            id=row.holder_id,
            decision=row.holder_decision,
            status=row.holder_status,
            waiting=row.holder_waiting,
        )
    return StoredFacts(
        key_holder=holder,
        suppressed=bool(row.suppressed),
        suppression_reason=row.suppression_reason,
        unsubscribed_all=bool(row.unsubscribed_all),
        list_choice=row.list_choice,
        journey_last_sent_at=row.journey_last_sent_at,
        recent_sends=int(row.recent_sends or 0),
    )


# One round trip instead of six: this runs for every attempt. Suppressions are keyed on
# the address itself (lower-cased, like its unique index), never on a contact.
_FACTS = text(
    """
    SELECT
        holder.id AS holder_id, holder.decision AS holder_decision,
        holder.status AS holder_status, holder.waiting AS holder_waiting,
        suppression.suppressed, suppression.reason AS suppression_reason,
        (SELECT unsubscribed_all FROM email_preferences WHERE contact_id = :c)
            AS unsubscribed_all,
        (SELECT subscribed FROM list_subscriptions WHERE contact_id = :c AND list_id = :l)
            AS list_choice,
        (SELECT max(created_at) FROM email_sends WHERE contact_id = :c AND journey_id = :j
            AND decision = ANY(CAST(:d AS text[]))) AS journey_last_sent_at,
        (SELECT count(*) FROM email_sends WHERE lower(to_email) = lower(:e)
            AND created_at >= :since AND decision = ANY(CAST(:d AS text[]))
            AND kind <> ALL(CAST(:exempt AS text[]))) AS recent_sends
    FROM (SELECT 1) AS one
    LEFT JOIN LATERAL (
        SELECT id, decision, status, handoff IS NOT NULL AS waiting
        FROM email_sends WHERE idempotency_key = :k
    ) AS holder ON true
    LEFT JOIN LATERAL (
        SELECT suppressed, reason FROM email_suppressions WHERE lower(email) = lower(:e)
    ) AS suppression ON true
    """
)


# --------------------------------------------------------------------------- one attempt
# Mailer.send's statements for one attempt (hogsend.channels.mailer), prepared on the
# driver connection (hogsend.db.prepared) and sent as a pipeline per step: the locks, the
# contact and the facts in one round trip; the decision row and its commit in one; the
# outcome, its event, the commit and the key's unlock in one. ``conn`` is in autocommit
# mode, and these open and end their transactions by hand.


async def begin_and_read_attempt(
    conn: AsyncConnection,
    *,
    key: str | None,
    contact_id: uuid.UUID | None,
    email: str | None,
    list_id: str | None,
    journey_id: str | None,
    since: datetime,
) -> tuple[RecipientRow | None, StoredFacts | None]:
    """Open a transaction, take the attempt's locks, read its contact and facts: one round trip.

    In order: BEGIN; the lock on ``key`` (session-level: held past
    the commit, until :func:`finish_attempt` or :func:`unlock_key`); the contact
    ``contact_id`` (``CONTACT_COLUMNS``) with :func:`lock_address` on ``email``, else its
    own address, when it is live; then, in a statement of its own (its snapshot taken
    after the locks), :func:`read_facts` for that contact and address. The transaction
    stays open: :func:`write_attempt` ends it.

    Returns:
        The contact row (None when there is none) and the facts, which hold only when
        the row is live and its address locked (``row.address_locked``): a deleted or
        merged contact is followed by the caller, who locks and reads again. Without a
        ``contact_id``, only BEGIN and the key's lock are sent: (None, None).
    """
    driver = await driver_connection(conn)
    recipient: psycopg.AsyncCursor[dict[str, Any]] | None = None
    facts: psycopg.AsyncCursor[Any] | None = None
    async with driver.pipeline():
        await driver.execute(b"BEGIN")
        if key is not None:
            await driver.execute(_LOCK_KEY, {"k": key}, prepare=True)
        if contact_id is not None:
            recipient = driver.cursor(row_factory=dict_row)
            await recipient.execute(_RECIPIENT, {"id": contact_id, "e": email}, prepare=True)
            facts = await driver.execute(
                _FACTS_ONE,
                {
                    "k": key,
                    "c": contact_id,
                    "e": email,
                    "l": list_id,
                    "j": journey_id,
                    "since": since,
                    "d": _OUTGOING_ARRAY,
                    "exempt": _CAP_EXEMPT_ARRAY,
                },
                prepare=True,
            )
    if recipient is None or facts is None:
        return None, None
    found = await recipient.fetchone()
    row = None if found is None else RecipientRow(found)
    [stored] = _stored_facts(await facts.fetchall())
    return row, stored


class RecipientRow:
    """The contact row :func:`begin_and_read_attempt` read (``CONTACT_COLUMNS``, as
    ``contact_from_row`` reads it) and whether its address is locked."""

    __slots__ = ("_mapping", "address_locked", "deleted_at", "id")

    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = mapping
        self.id: uuid.UUID = mapping["id"]
        self.deleted_at: datetime | None = mapping["deleted_at"]
        self.address_locked = bool(mapping["address_locked"])


async def write_attempt(
    conn: AsyncConnection,
    row: dict[str, Any],
    links: LinkSet | None = None,
    *,
    durable: bool,
    notify_handoff: bool = False,
    deferred: tuple[datetime, dict[str, Any]] | None = None,
) -> None:
    """Insert an attempt's decision row (and its message's link set) and COMMIT: one round trip.

    Ends the transaction :func:`begin_and_read_attempt` opened (rolled back if this
    fails). ``row`` has the keys of :func:`insert_attempts`'s rows plus ``handoff``.
    ``durable=False`` commits without waiting for the WAL flush (``synchronous_commit``
    off for this transaction alone): only for a ``queued`` row whose outcome a durable
    commit records next, which flushes this row's WAL too; only a crash of Postgres
    itself (not of our process) in between loses it. ``notify_handoff`` wakes idle
    couriers at commit (a ``handoff`` row); ``deferred`` (due at, request): the
    ``deferred_sends`` row that keeps a ``deferred`` row's request for the sweep.
    """
    driver = await driver_connection(conn)
    try:
        async with driver.pipeline():
            await driver.execute(
                _WRITE_ATTEMPT,
                {
                    **row,
                    "detail": None if row["detail"] is None else rows_to_json(row["detail"]),
                    "handoff": None if row["handoff"] is None else to_json(row["handoff"]),
                    "durable": durable,
                    "link_set": None if links is None else links.id,
                    "urls": None if links is None else prepared.text_array(links.urls),
                },
                prepare=True,
            )
            if notify_handoff:
                await driver.execute(_NOTIFY_HANDOFF, prepare=True)
            if deferred is not None:
                due_at, request = deferred
                await driver.execute(
                    _INSERT_DEFERRED,
                    {"send": row["id"], "due": due_at, "request": to_json(request)},
                    prepare=True,
                )
            await driver.execute(b"COMMIT")
    except BaseException:
        await end_transaction(conn, commit=False)
        raise


async def finish_attempt(
    conn: AsyncConnection,
    row: dict[str, Any],
    event: dict[str, Any] | None,
    *,
    now: datetime,
    notify: bool,
    unlock: str | None,
) -> list[str]:
    """:func:`finish_and_log` for one attempt, committed durably, then ``unlock``'s key
    released: one round trip.

    The unlock is sent after the COMMIT, in the same pipeline: a concurrent attempt
    with the key, which waits for the lock, reads the committed outcome. When the
    outcome fails to commit, the unlock is not sent (the caller releases the key).

    Returns:
        As :func:`finish_and_log`: the keys of events whose contact is no longer live.
    """
    query, params = finish_and_log_statement(
        [row], [] if event is None else [event], now=now, notify=notify
    )
    driver = await driver_connection(conn)
    async with driver.pipeline():
        await driver.execute(b"BEGIN")
        finished = await driver.execute(query, params, prepare=True)
        await driver.execute(b"COMMIT")
        if unlock is not None:
            await driver.execute(_UNLOCK_KEY, {"k": unlock}, prepare=True)
    [(missing, _, _, _)] = await finished.fetchall()
    return list(missing or [])


async def unlock_key(conn: AsyncConnection, key: str) -> None:
    """Release :func:`begin_and_read_attempt`'s lock on ``key`` (autocommit)."""
    await prepared.execute(conn, _UNLOCK_KEY, {"k": key})


_KEY_HASH = b"hashtextextended('hogsend.send-key:' || CAST(%(k)s AS text), 0)"
_LOCK_KEY = b"SELECT pg_advisory_lock(" + _KEY_HASH + b")"
_UNLOCK_KEY = b"SELECT pg_advisory_unlock(" + _KEY_HASH + b")"
_NOTIFY_HANDOFF = b"SELECT pg_notify('" + HANDOFF_CHANNEL.encode() + b"', '')"
_INSERT_DEFERRED = (
    b"INSERT INTO deferred_sends (email_send_id, due_at, request)"
    b" VALUES (%(send)s, %(due)s, CAST(%(request)s AS jsonb))"
)
# The contact, and the address's lock when it is live: the lock on the caller's address,
# else on the contact's own. A deleted contact (merged away or erased) gets no lock.
_RECIPIENT = (
    b"SELECT "
    + CONTACT_COLUMNS.encode()
    + b""",
        CASE WHEN deleted_at IS NULL AND address IS NOT NULL THEN (
            SELECT true FROM pg_advisory_xact_lock(
                hashtextextended('hogsend.send-to:' || lower(address), 0))
        ) END AS address_locked
    FROM contacts, coalesce(CAST(%(e)s AS text), email) AS address
    WHERE id = %(id)s
    """
)
# The gates' facts of one attempt ``q`` (k: idempotency key, c: contact, e: address,
# l: list, j: journey), in the order _stored_facts unpacks them after q's number;
# _FACTS_ONE and _FACTS_BATCH put q together from their parameters.
_FACTS_OF_Q = b"""
        holder.id AS holder_id, holder.decision AS holder_decision,
        holder.status AS holder_status, holder.waiting AS holder_waiting,
        suppression.suppressed, suppression.reason AS suppression_reason,
        (SELECT unsubscribed_all FROM email_preferences WHERE contact_id = q.c)
            AS unsubscribed_all,
        (SELECT subscribed FROM list_subscriptions WHERE contact_id = q.c AND list_id = q.l)
            AS list_choice,
        (SELECT max(created_at) FROM email_sends WHERE contact_id = q.c AND journey_id = q.j
            AND decision = ANY(CAST(%(d)s AS text[]))) AS journey_last_sent_at,
        (SELECT count(*) FROM email_sends WHERE lower(to_email) = lower(q.e)
            AND created_at >= %(since)s AND decision = ANY(CAST(%(d)s AS text[]))
            AND kind <> ALL(CAST(%(exempt)s AS text[]))) AS recent_sends
    """
_FACTS_JOINS = b"""
    LEFT JOIN LATERAL (
        SELECT id, decision, status, handoff IS NOT NULL AS waiting
        FROM email_sends WHERE idempotency_key = q.k
    ) AS holder ON true
    LEFT JOIN LATERAL (
        SELECT suppressed, reason FROM email_suppressions WHERE lower(email) = lower(q.e)
    ) AS suppression ON true
    """
# For one attempt, its address the caller's or else the contact's own.
_FACTS_ONE = (
    b"SELECT 1,"
    + _FACTS_OF_Q
    + b"""FROM (
        SELECT CAST(%(k)s AS text) AS k, CAST(%(c)s AS uuid) AS c,
            coalesce(CAST(%(e)s AS text), (SELECT email FROM contacts WHERE id = %(c)s)) AS e,
            CAST(%(l)s AS text) AS l, CAST(%(j)s AS text) AS j
    ) AS q"""
    + _FACTS_JOINS
)
_WRITE_ATTEMPT = b"""
    WITH link_set AS (
        INSERT INTO tracked_link_sets (id, urls)
        SELECT CAST(%(link_set)s AS uuid), CAST(%(urls)s AS text[])
        WHERE CAST(%(link_set)s AS uuid) IS NOT NULL
        ON CONFLICT (id) DO NOTHING
    )
    INSERT INTO email_sends (
        id, contact_id, user_id, user_email, to_email, from_email, subject, template_key,
        category, journey_id, journey_state_id, campaign_id, idempotency_key,
        duplicate_of_id, redirected_to, status, decision, decision_detail, kind, last_error,
        handoff
    ) VALUES (
        %(id)s, %(contact_id)s, %(user_id)s, %(to_email)s, %(to_email)s, %(from_email)s,
        %(subject)s, %(template_key)s, %(category)s, %(journey_id)s, %(journey_state_id)s,
        %(campaign_id)s, %(key)s, %(duplicate_of_id)s, %(redirected_to)s, %(status)s,
        %(decision)s, CAST(%(detail)s AS jsonb), %(kind)s, %(error)s,
        CAST(%(handoff)s AS jsonb)
    )
    -- The setting rides on the statement (one row, so evaluated once), before COMMIT.
    RETURNING set_config('synchronous_commit', CASE WHEN %(durable)s
        THEN current_setting('synchronous_commit') ELSE 'off' END, true)
    """


async def insert_link_set_fast(session: AsyncSession, links: LinkSet) -> None:
    """Record the link set of a ``queued`` attempt, committing without a WAL flush.

    Content-addressed, so a set stored before (by any message with the same URLs) is
    left as it is and the statement writes nothing. Committed without a flush for the
    mailer's hot path: the outcome's durable commit that follows flushes the row too,
    and a crash of our process in between (the usual one) loses nothing: the commit
    reached Postgres.
    """
    await session.execute(_INSERT_LINK_SET_FAST, {"id": links.id, "urls": list(links.urls)})


_INSERT_LINK_SET_FAST = text(
    """
    WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS v)
    INSERT INTO tracked_link_sets (id, urls)
    SELECT CAST(:id AS uuid), CAST(:urls AS text[]) FROM cfg
    ON CONFLICT (id) DO NOTHING
    """
)


async def record_message_ids(session: AsyncSession, send_ids: Sequence[uuid.UUID]) -> None:
    """Make the provider message ids of sends written directly (demo data) findable.

    What :func:`finish_and_log` writes to ``email_send_messages`` with an outcome, for rows
    inserted whole; ids already there are left as they are.
    """
    await session.execute(_RECORD_MESSAGE_IDS, {"ids": [str(i) for i in send_ids]})


_RECORD_MESSAGE_IDS = text(
    """
    INSERT INTO email_send_messages (message_id, provider, email_send_id)
    SELECT provider_message_id, coalesce(provider, ''), id FROM email_sends
    WHERE id = ANY(CAST(:ids AS uuid[])) AND provider_message_id IS NOT NULL
    ON CONFLICT DO NOTHING
    """
)


async def abandon(session: AsyncSession, send_id: uuid.UUID) -> None:
    """Close an attempt left ``queued`` by a process that died while it was out.

    Whether the provider got the message is unknown; the row becomes ``provider_error``
    and releases the key to the attempt taking over, which resends with the same key.
    A row still marked in ``email_send_marks`` never reached its provider call: it is removed
    (with its links), as if the batch that decided it had not got that far.
    """
    await session.execute(_ABANDON, {"ids": [send_id]})


_ABANDON_SQL = """
    WITH marked AS (
        DELETE FROM email_send_marks WHERE email_send_id = ANY(CAST(:ids AS uuid[]))
        RETURNING email_send_id
    ), never_started AS (
        DELETE FROM email_sends
        WHERE id = ANY(CAST(:ids AS uuid[])) AND decision = 'queued' AND handoff IS NULL
            AND id IN (SELECT email_send_id FROM marked)
        RETURNING id
    ), unused_links AS (
        -- Links recorded per message (before migration 0017) have no foreign key to
        -- cascade (migration 0016): they go with their row. Link sets are shared: kept.
        DELETE FROM tracked_links WHERE email_send_id IN (SELECT id FROM never_started)
    )
    UPDATE email_sends SET decision = 'provider_error', status = 'failed',
        idempotency_key = NULL, last_error = 'interrupted: the attempt never finished',
        decision_detail = coalesce(decision_detail, '{}'::jsonb)
            || '{"gate": "provider_error", "interrupted": true}'::jsonb,
        updated_at = now()
    WHERE id = ANY(CAST(:ids AS uuid[])) AND decision = 'queued' AND handoff IS NULL
        AND id NOT IN (SELECT email_send_id FROM marked)
    """
_ABANDON = text(_ABANDON_SQL)


async def discard_never_sent(conn: AsyncConnection, send_ids: Sequence[uuid.UUID]) -> None:
    """Remove attempts decided ahead (marked) that no provider call ever took, with their
    marks and links, as if never decided: a batch dropped before it was let go, while it
    still holds their keys' locks. ``conn`` is in autocommit mode (one statement)."""
    if send_ids:
        await conn.execute(_ABANDON, {"ids": list(send_ids)})


# The same, prepared on the driver connection (write_decisions' pipeline).
_ABANDON_PREPARED = _ABANDON_SQL.replace(":ids", "%(ids)s").encode()


# --------------------------------------------------------------------------- hand-off

TRY_LOCK_DELIVERY = text(
    "SELECT pg_try_advisory_lock(hashtextextended('hogsend.send-delivery:' || :id, 0))"
)
UNLOCK_DELIVERY = text(
    "SELECT pg_advisory_unlock(hashtextextended('hogsend.send-delivery:' || :id, 0))"
)


def lock_delivery_sql() -> tuple[Any, Any]:
    """The statements trying and releasing the session-level lock on delivering one send.

    A worker holds it for the whole delivery of a handed-off send, so two workers never
    deliver the same one; it dies with the connection of a worker that dies.
    """
    return TRY_LOCK_DELIVERY, UNLOCK_DELIVERY


async def notify_handoff(session: AsyncSession) -> None:
    """Wake idle couriers when the caller's transaction commits."""
    await session.execute(text(f"SELECT pg_notify('{HANDOFF_CHANNEL}', '')"))


@dataclass(frozen=True, slots=True, kw_only=True)
class Handoff:
    """A handed-off attempt waiting for a worker, with what delivering it needs."""

    id: uuid.UUID
    contact_id: uuid.UUID | None
    to_email: str
    from_email: str
    subject: str | None
    template_key: str
    category: str | None
    kind: str
    journey_id: str | None
    journey_state_id: uuid.UUID | None
    campaign_id: uuid.UUID | None
    idempotency_key: str | None
    redirected_to: str | None
    payload: dict[str, Any]
    created_at: datetime


async def load_handoff(session: AsyncSession, send_id: uuid.UUID) -> Handoff | None:
    """The attempt ``send_id`` if it still waits for delivery (else None)."""
    row = (
        await session.execute(
            text(
                """
                SELECT id, contact_id, to_email, from_email, subject, template_key, category,
                    kind, journey_id, journey_state_id, campaign_id, idempotency_key,
                    redirected_to, handoff AS payload, created_at
                FROM email_sends
                WHERE id = :id AND decision = 'queued' AND handoff IS NOT NULL
                """
            ),
            {"id": send_id},
        )
    ).first()
    return Handoff(**row._mapping) if row is not None else None


async def due_handoffs(
    session: AsyncSession, *, limit: int, skip: Sequence[uuid.UUID] = ()
) -> list[uuid.UUID]:
    """Up to ``limit`` handed-off attempts, oldest first, leaving out ``skip``."""
    rows = await session.execute(
        text(
            "SELECT id FROM email_sends WHERE handoff IS NOT NULL"
            " AND id <> ALL(CAST(:skip AS uuid[])) ORDER BY created_at, id LIMIT :limit"
        ),
        {"skip": list(skip), "limit": limit},
    )
    return [row.id for row in rows]


async def close_handoff(
    session: AsyncSession, send_id: uuid.UUID, *, decision: str, detail: dict[str, Any]
) -> None:
    """Stop a handed-off attempt with a gate's decision (it never reaches a provider)."""
    await session.execute(
        text(
            """
            UPDATE email_sends SET decision = :decision, status = 'skipped',
                idempotency_key = NULL, handoff = NULL,
                decision_detail = CAST(:detail AS jsonb), updated_at = now()
            WHERE id = :id AND decision = 'queued'
            """
        ),
        {"id": send_id, "decision": decision, "detail": to_json(detail)},
    )


async def address_suppression(session: AsyncSession, email: str) -> str | None:
    """Why ``email`` is suppressed (``hard_bounce``, ``complaint`` ...), None when it is not."""
    row = (
        await session.execute(
            text(
                "SELECT suppressed, reason FROM email_suppressions WHERE lower(email) = lower(:e)"
            ),
            {"e": email},
        )
    ).first()
    if row is None or not row.suppressed:
        return None
    return str(row.reason or "suppressed")


# --------------------------------------------------------------------------- listing


@dataclass(frozen=True, slots=True, kw_only=True)
class SendRecord:
    """One attempt as the admin API shows it."""

    id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    decision: str
    status: str
    detail: dict[str, Any] | None
    to_email: str
    from_email: str
    redirected_to: str | None
    subject: str | None
    template_key: str | None
    category: str | None
    journey_id: str | None
    journey_state_id: uuid.UUID | None
    campaign_id: uuid.UUID | None
    duplicate_of_id: uuid.UUID | None
    idempotency_key: str | None
    provider: str | None
    provider_message_id: str | None
    attempts: int
    last_error: str | None
    sent_at: datetime | None
    kind: str = "transactional"


# A sent row written by a batch stores its outcome detail without the keys that repeat
# its columns (sends.finish_and_log): they are put back here, so every reader sees the
# detail as written. jsonb orders keys the same whichever way the object was built.
_DETAIL = (
    "CASE WHEN decision IN ('sent', 'redirected') AND NOT decision_detail ? 'gate'"
    " THEN jsonb_build_object('gate', decision, 'provider', provider, 'providerCalls', attempts)"
    " || decision_detail ELSE decision_detail END AS decision_detail"
)
_COLUMNS = (
    f"id, created_at, updated_at, decision, status, {_DETAIL}, to_email, from_email,"
    " redirected_to, subject, template_key, category, journey_id, journey_state_id,"
    " campaign_id, duplicate_of_id, idempotency_key, provider, provider_message_id, attempts,"
    " last_error, sent_at, kind"
)


def _record(row: Any) -> SendRecord:
    m = dict(row._mapping)
    m["detail"] = m.pop("decision_detail")
    return SendRecord(**m)


def _cursor(record: SendRecord) -> str:
    return encode_cursor(record.created_at.isoformat(), str(record.id))


async def list_sends(
    session: AsyncSession,
    contact_id: uuid.UUID,
    *,
    limit: int = 50,
    cursor: str | None = None,
    template_key: str | None = None,
    journey_id: str | None = None,
) -> Page[SendRecord]:
    """A contact's attempts, newest first, optionally for one template or journey.

    Raises:
        InvalidCursor: ``cursor`` is not one this listing handed out.
    """
    where = ["contact_id = :c"]
    params: dict[str, Any] = {"c": contact_id, "limit": limit + 1}
    if template_key is not None:
        where.append("template_key = :t")
        params["t"] = template_key
    if journey_id is not None:
        where.append("journey_id = :j")
        params["j"] = journey_id
    if cursor is not None:
        at, last_id = decode_cursor(cursor, 2)
        try:
            params["at"] = datetime.fromisoformat(at)
            params["id"] = uuid.UUID(last_id)
        except ValueError:
            raise InvalidCursor("cursor is not valid") from None
        if params["at"].utcoffset() is None:
            raise InvalidCursor("cursor is not valid")
        where.append("(created_at, id) < (:at, :id)")
    rows = await session.execute(
        text(
            f"SELECT {_COLUMNS} FROM email_sends WHERE {' AND '.join(where)}"
            " ORDER BY created_at DESC, id DESC LIMIT :limit"
        ),
        params,
    )
    return page_of([_record(row) for row in rows], limit, _cursor)


async def get_send(session: AsyncSession, send_id: uuid.UUID) -> SendRecord | None:
    """One attempt by id."""
    row = (
        await session.execute(
            text(f"SELECT {_COLUMNS} FROM email_sends WHERE id = :id"), {"id": send_id}
        )
    ).first()
    return _record(row) if row is not None else None


# --------------------------------------------------------------------------- deferred sends

SWEEP_LOCK = text("SELECT pg_try_advisory_lock(hashtextextended('hogsend.deferred-sweep', 0))")
SWEEP_UNLOCK = text("SELECT pg_advisory_unlock(hashtextextended('hogsend.deferred-sweep', 0))")


def sweep_lock_sql() -> tuple[Any, Any]:
    """The statements trying and releasing the session-level lock of the deferred-send sweep.

    Held for a whole sweep, it lets one worker at a time resend; the others skip the
    round. A worker that dies releases it with its connection.
    """
    return SWEEP_LOCK, SWEEP_UNLOCK


@dataclass(frozen=True, slots=True, kw_only=True)
class DeferredRecord:
    """A deferred send waiting for its window (``deferred_sends``).

    Attributes:
        id: the row.
        email_send_id: the ``deferred`` attempt it came from.
        due_at: when the window opens.
        request: the stored request (``hogsend.channels.mailer.request_record``).
        attempts: sweep rounds that failed on it so far.
    """

    id: uuid.UUID
    email_send_id: uuid.UUID
    due_at: datetime
    request: dict[str, Any]
    attempts: int


async def due_deferred(session: AsyncSession, *, now: datetime, limit: int) -> list[DeferredRecord]:
    """Pending deferred sends due at ``now``, the longest waiting first."""
    rows = await session.execute(
        text(
            "SELECT id, email_send_id, due_at, request, attempts FROM deferred_sends"
            " WHERE status = 'pending' AND due_at <= :now ORDER BY due_at, id LIMIT :limit"
        ),
        {"now": now, "limit": limit},
    )
    return [DeferredRecord(**dict(row._mapping)) for row in rows]


async def finish_deferred(
    session: AsyncSession,
    deferred_id: uuid.UUID,
    *,
    resent_send_id: uuid.UUID,
    resent_decision: str,
) -> None:
    """Record the attempt the sweep made for a deferred send; it is not sent again."""
    await session.execute(
        text(
            "UPDATE deferred_sends SET status = 'done', resent_send_id = :sent,"
            " resent_decision = :decision, updated_at = now()"
            " WHERE id = :id AND status = 'pending'"
        ),
        {"id": deferred_id, "sent": resent_send_id, "decision": resent_decision},
    )


async def postpone_deferred(
    session: AsyncSession, deferred_id: uuid.UUID, *, error: str, retry_at: datetime | None
) -> None:
    """A sweep round failed on a deferred send: try again at ``retry_at``, or give up (None)."""
    await session.execute(
        text(
            "UPDATE deferred_sends SET attempts = attempts + 1, last_error = :error,"
            " due_at = coalesce(CAST(:retry_at AS timestamptz), due_at),"
            " status = CASE WHEN CAST(:retry_at AS timestamptz) IS NULL"
            " THEN 'failed' ELSE status END,"
            " updated_at = now()"
            " WHERE id = :id AND status = 'pending'"
        ),
        {"id": deferred_id, "error": error, "retry_at": retry_at},
    )


# --------------------------------------------------------------------------- batches
# The mailer's set-based path (hogsend.channels.send_batches): the same locks, facts and
# rows as one attempt's, for many attempts in a handful of statements.

_UNLOCK_KEYS = (
    b"SELECT count(pg_advisory_unlock(h)) FROM (SELECT DISTINCT"
    b" hashtextextended('hogsend.send-key:' || k, 0) AS h"
    b" FROM unnest(CAST(%(keys)s AS text[])) AS k) AS locks"
)


async def unlock_keys(conn: AsyncConnection, keys: Sequence[str]) -> None:
    """Release the keys' locks :func:`begin_and_read_batch` took."""
    await prepared.execute(conn, _UNLOCK_KEYS, {"keys": prepared.text_array(keys)})


async def begin_and_read_batch(
    conn: AsyncConnection,
    queries: Sequence[FactsQuery],
    *,
    keys: Sequence[str] = (),
    since: datetime,
) -> tuple[dict[uuid.UUID, Any], list[StoredFacts]]:
    """Open a transaction, take a batch's locks, read its contacts and every gate's facts.

    One round trip: ``conn`` must be in autocommit mode (as
    :func:`begin_and_read_attempt`); BEGIN, the locks, the contacts' read and the facts'
    go as one pipeline of prepared statements, and :func:`end_transaction` (or
    :func:`write_decisions`) ends the transaction. The locks, each set in hash order (two
    batches sharing some cannot deadlock): the session-level lock on each of ``keys`` (as
    :func:`begin_and_read_attempt`'s), held until :func:`unlock_keys`; :func:`lock_address`
    on the address of every query's contact that is live and has one (its ``email``, else
    the contact's own). Then, each in a statement of its own so that its snapshot is
    taken after the locks, the contacts (``CONTACT_COLUMNS``, deleted ones included;
    ``.id``, ``.deleted_at``, ``._mapping``) and :func:`read_facts` for each query, in
    order.

    The facts hold only for a query whose contact is live (a deleted or merged one is
    followed by the caller elsewhere) and whose address is the one locked.
    """
    lock_keys, lock_addresses, read_contacts, read_facts = _batch_reads(queries, keys, since)
    driver = await driver_connection(conn)
    async with driver.pipeline():
        await driver.execute(b"BEGIN")
        if lock_keys is not None:
            await driver.execute(*lock_keys, prepare=True)
        await driver.execute(*lock_addresses, prepare=True)
        contacts = driver.cursor(row_factory=dict_row)
        await contacts.execute(*read_contacts, prepare=True)
        facts = await driver.execute(*read_facts, prepare=True)
    found = {row["id"]: _ContactRow(row) for row in await contacts.fetchall()}
    return found, _stored_facts(await facts.fetchall())


_Statement = tuple[bytes, dict[str, Any]]


def _batch_reads(
    queries: Sequence[FactsQuery], keys: Sequence[str], since: datetime
) -> tuple[_Statement | None, _Statement, _Statement, _Statement]:
    """:func:`begin_and_read_batch`'s statements: the keys' lock (None without keys), the
    addresses' lock, the contacts and the facts.

    For one query, statements of scalar parameters. The batch statements read arrays,
    and Postgres's generic plan of those assumes ten elements, which costs more than
    one: for a lone ``Mailer.send`` (a journey's step, a transactional request) it made
    a custom plan on every call, and planning the facts took ten times their execution.
    The scalar ones are planned a few times per connection.
    """
    gates = {"since": since, "d": _OUTGOING_ARRAY, "exempt": _CAP_EXEMPT_ARRAY}
    lock_keys: _Statement | None = None
    if len(keys) == 1:
        lock_keys = (_LOCK_KEY, {"k": keys[0]})
    elif keys:
        lock_keys = (_LOCK_KEYS, {"keys": prepared.text_array(keys)})
    if len(queries) == 1:
        [q] = queries
        facts = {
            "k": q.idempotency_key,
            "c": q.contact_id,
            "e": q.email,
            "l": q.list_id,
            "j": q.journey_id,
            **gates,
        }
        return (
            lock_keys,
            (_LOCK_CONTACT_ADDRESS, {"id": q.contact_id, "e": q.email}),
            (_CONTACT, {"id": q.contact_id}),
            (_FACTS_ONE, facts),
        )
    contact_ids = prepared.text_array([q.contact_id for q in queries])
    emails = prepared.text_array([q.email for q in queries])
    return (
        lock_keys,
        (_LOCK_CONTACT_ADDRESSES, {"ids": contact_ids, "emails": emails}),
        (_CONTACTS, {"ids": contact_ids}),
        (
            _FACTS_BATCH,
            {
                "keys": prepared.text_array([q.idempotency_key for q in queries]),
                "contacts": contact_ids,
                "emails": emails,
                "lists": prepared.text_array([q.list_id for q in queries]),
                "journeys": prepared.text_array([q.journey_id for q in queries]),
                **gates,
            },
        ),
    )


async def end_transaction(conn: AsyncConnection, *, commit: bool) -> None:
    """COMMIT (or ROLLBACK) what :func:`begin_and_read_batch` opened; none open: nothing."""
    driver = await driver_connection(conn)
    if commit:
        await driver.commit()
    else:
        await driver.rollback()


_CONTACTS = (
    b"SELECT "
    + CONTACT_COLUMNS.encode()
    + b" FROM contacts WHERE id = ANY(CAST(%(ids)s AS uuid[]))"
)
_CONTACT = b"SELECT " + CONTACT_COLUMNS.encode() + b" FROM contacts WHERE id = %(id)s"
_LOCK_KEYS = (
    b"SELECT count(pg_advisory_lock(h)) FROM (SELECT DISTINCT"
    b" hashtextextended('hogsend.send-key:' || k, 0) AS h"
    b" FROM unnest(CAST(%(keys)s AS text[])) AS k ORDER BY h) AS locks"
)
# The contacts found by their primary key (``c.id = ANY``), whatever the plan makes of
# the unnest.
_LOCK_CONTACT_ADDRESSES = (
    b"SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT DISTINCT"
    b" hashtextextended('hogsend.send-to:' || lower(coalesce(q.e, c.email)), 0) AS h"
    b" FROM unnest(CAST(%(ids)s AS uuid[]), CAST(%(emails)s AS text[])) AS q(id, e)"
    b" JOIN contacts c ON c.id = q.id AND c.deleted_at IS NULL"
    b" AND c.id = ANY(CAST(%(ids)s AS uuid[]))"
    b" WHERE coalesce(q.e, c.email) IS NOT NULL ORDER BY h) AS locks"
)

# _LOCK_CONTACT_ADDRESSES for one contact.
_LOCK_CONTACT_ADDRESS = (
    b"SELECT count(pg_advisory_xact_lock(hashtextextended('hogsend.send-to:'"
    b" || lower(coalesce(CAST(%(e)s AS text), email)), 0)))"
    b" FROM contacts WHERE id = %(id)s AND deleted_at IS NULL"
    b" AND coalesce(CAST(%(e)s AS text), email) IS NOT NULL"
)


class _ContactRow:
    """A contact row read by the driver, with what ``contact_from_row`` and callers read."""

    __slots__ = ("_mapping", "deleted_at", "id")

    def __init__(self, mapping: dict[str, Any]) -> None:
        self._mapping = mapping
        self.id: uuid.UUID = mapping["id"]
        self.deleted_at: datetime | None = mapping["deleted_at"]


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class FactsQuery:
    """One attempt's inputs to :func:`begin_and_read_batch` (see :func:`read_facts`)."""

    idempotency_key: str | None
    contact_id: uuid.UUID | None
    email: str | None
    """None: the contact's own address."""
    list_id: str | None
    journey_id: str | None


def _stored_facts(rows: Sequence[tuple[Any, ...]]) -> list[StoredFacts]:
    """The facts of :data:`_FACTS_BATCH`'s (or :data:`_FACTS_ONE`'s) rows, in query order."""
    found: list[StoredFacts | None] = [None] * len(rows)
    for (
        n,
        holder_id,
        holder_decision,
        holder_status,
        holder_waiting,
        suppressed,
        suppression_reason,
        unsubscribed_all,
        list_choice,
        journey_last_sent_at,
        recent_sends,
    ) in rows:
        holder = None
        if holder_id is not None:
            holder = KeyHolder(
                id=holder_id,
                decision=holder_decision,
                status=holder_status,
                waiting=holder_waiting,
            )
        found[n - 1] = StoredFacts(
            key_holder=holder,
            suppressed=bool(suppressed),
            suppression_reason=suppression_reason,
            unsubscribed_all=bool(unsubscribed_all),
            list_choice=list_choice,
            journey_last_sent_at=journey_last_sent_at,
            recent_sends=int(recent_sends or 0),
        )
    assert all(item is not None for item in found)
    return [item for item in found if item is not None]


_OUTGOING_ARRAY = prepared.text_array(OUTGOING)
_CAP_EXEMPT_ARRAY = prepared.text_array(CAP_EXEMPT_KINDS)

# One row per attempt, numbered in the order of the arrays; an address not given is the
# contact's own (read in the statement, as _FACTS_ONE does).
_FACTS_BATCH = (
    b"SELECT q.n,"
    + _FACTS_OF_Q
    + b"""FROM (
        SELECT u.k, u.c, coalesce(u.e, (SELECT email FROM contacts WHERE id = u.c)) AS e,
            u.l, u.j, u.n
        FROM unnest(CAST(%(keys)s AS text[]), CAST(%(contacts)s AS uuid[]),
                CAST(%(emails)s AS text[]), CAST(%(lists)s AS text[]),
                CAST(%(journeys)s AS text[]))
            WITH ORDINALITY AS u(k, c, e, l, j, n)
    ) AS q"""
    + _FACTS_JOINS
)


async def insert_attempts(
    conn: AsyncConnection,
    rows: Sequence[dict[str, Any]],
    link_sets: Sequence[LinkSet] = (),
    marked: Sequence[uuid.UUID] = (),
) -> None:
    """Write many decision rows, and the link sets of their messages, in one statement.

    Each row dict names its own ``id``; ``link_sets`` are those of the messages going
    out, each once (a set stored before is left as it is, as
    :func:`insert_link_set_fast`).

    The transaction commits without waiting for its WAL flush (as :func:`write_attempt`'s
    ``durable=False``): the outcomes' durable commit that follows flushes these rows too.
    Only a crash of Postgres itself in between can lose them (the retry then sends as
    if first, with the same key: the at-least-once window of docs/email.md).

    ``marked``: ids of ``queued`` rows a batch decided before their provider call began
    (``channels.send_batches``). Each gets a row in ``email_send_marks`` (in this
    statement) until :func:`finish_and_log`'s ``starts`` takes it off, in the commit
    before that call: a narrow insert and delete rather than a second update of the wide
    ``email_sends`` row, which a Postgres horizon held by any open transaction keeps
    from staying on its page (migration 0015).

    Keys per row: id, contact_id, user_id, to_email, from_email, subject, template_key,
    category, journey_id, journey_state_id, campaign_id, key, duplicate_of_id,
    redirected_to, status, decision, detail, kind, error (as :func:`write_attempt`'s,
    without ``handoff``).
    """
    if rows:
        # Prepared on the driver connection (hogsend.db.prepared), in conn's transaction.
        await prepared.execute(
            conn, _INSERT_ATTEMPTS, _insert_attempts_params(rows, link_sets, marked)
        )


def _insert_attempts_params(
    rows: Sequence[dict[str, Any]], link_sets: Sequence[LinkSet], marked: Sequence[uuid.UUID]
) -> dict[str, str]:
    return {
        # Rows the mailer built (ids, strings, gate details): orjson, in C.
        "rows": rows_to_json(list(rows)),
        "marked": prepared.text_array(marked),
        "link_sets": rows_to_json(
            [{"id": str(links.id), "urls": links.urls} for links in link_sets]
        ),
    }


_INSERT_ATTEMPTS = b"""
    WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true) AS v),
    marks AS (
        INSERT INTO email_send_marks (email_send_id)
        SELECT unnest(CAST(%(marked)s AS uuid[]))
    ),
    link_sets AS (
        INSERT INTO tracked_link_sets (id, urls)
        SELECT l.id, l.urls FROM jsonb_to_recordset(CAST(%(link_sets)s AS jsonb)) AS l(
            id uuid, urls text[]
        )
        ON CONFLICT (id) DO NOTHING
    )
    INSERT INTO email_sends (
        id, contact_id, user_id, user_email, to_email, from_email, subject, template_key,
        category, journey_id, journey_state_id, campaign_id, idempotency_key,
        duplicate_of_id, redirected_to, status, decision, decision_detail, kind, last_error
    )
    SELECT r.id, r.contact_id, r.user_id, r.to_email, r.to_email, r.from_email, r.subject,
        r.template_key, r.category, r.journey_id, r.journey_state_id, r.campaign_id, r.key,
        r.duplicate_of_id, r.redirected_to, r.status, r.decision, r.detail, r.kind, r.error
    FROM cfg, jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS r(
        id uuid, contact_id uuid, user_id text, to_email text, from_email text,
        subject text, template_key text, category text, journey_id text,
        journey_state_id uuid, campaign_id uuid, key text, duplicate_of_id uuid,
        redirected_to text, status text, decision text, detail jsonb, kind text, error text
    )
    """


async def write_decisions(
    conn: AsyncConnection,
    rows: Sequence[dict[str, Any]],
    link_sets: Sequence[LinkSet] = (),
    *,
    marked: Sequence[uuid.UUID] = (),
    abandoned: Sequence[uuid.UUID] = (),
    deferred: Sequence[tuple[uuid.UUID, datetime, dict[str, Any]]] = (),
) -> None:
    """A batch's decisions and COMMIT, in one round trip (one pipeline).

    Ends the transaction :func:`begin_and_read_batch` opened (rolled back if this
    fails): :func:`abandon` of the ``abandoned`` attempts, :func:`insert_attempts` of
    ``rows``, ``link_sets`` and ``marked``, the ``deferred_sends`` row of each ``deferred``
    (row id, due at, request), then COMMIT, without waiting for the WAL flush as
    :func:`insert_attempts` says.
    """
    driver = await driver_connection(conn)
    try:
        async with driver.pipeline():
            if abandoned:
                await driver.execute(
                    _ABANDON_PREPARED, {"ids": prepared.text_array(abandoned)}, prepare=True
                )
            if rows:
                await driver.execute(
                    _INSERT_ATTEMPTS, _insert_attempts_params(rows, link_sets, marked), prepare=True
                )
            for send_id, due_at, request in deferred:
                await driver.execute(
                    _INSERT_DEFERRED,
                    {"send": send_id, "due": due_at, "request": to_json(request)},
                    prepare=True,
                )
            await driver.execute(b"COMMIT")
    except BaseException:
        await end_transaction(conn, commit=False)
        raise


async def finish_and_log(
    conn: AsyncConnection,
    rows: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    *,
    now: datetime,
    notify: bool,
    starts: Sequence[uuid.UUID] = (),
) -> list[str]:
    """The outcomes of many attempts plus their ``email.sent`` events, in ONE statement.

    Run in autocommit mode it is one round trip and one (durable) commit: the outcomes,
    the events and their outbox rows are stored together or not at all. What
    ``hogsend.db.repos.events.ingest_batch`` stores for an event of an internal producer
    naming a live contact (no properties, no last-seen update): the event under the
    contact's key, its outbox row; a key stored before stores nothing. ``notify`` wakes
    idle dispatchers at commit.

    Events: dicts with id, contact_id, name, properties, key, source, occurred_at.

    ``starts``: attempts decided ahead (marked, see :func:`insert_attempts`) that go to the
    provider once this commits: the mark comes off, so an attempt taking over their
    key after a crash closes them as interrupted instead of removing them.

    Returns:
        The idempotency keys of events whose contact is no longer live (merged away or
        erased since the decision): nothing was stored for them, and the caller hands
        them to ``ingest_batch``, which follows merges.
    """
    # Prepared on the driver connection (hogsend.db.prepared): this runs for every few
    # messages, and SQLAlchemy's execution cost more than the statement's values.
    query, params = finish_and_log_statement(rows, events, now=now, notify=notify, starts=starts)
    [(missing, _, _, _)] = await prepared.fetch(conn, query, params)
    return list(missing or [])


def finish_and_log_statement(
    rows: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    *,
    now: datetime,
    notify: bool,
    starts: Sequence[uuid.UUID] = (),
) -> tuple[bytes, dict[str, Any]]:
    """:func:`finish_and_log`'s statement and values, for a caller that pipelines it."""
    payload = [_outcome_row(row) for row in rows]
    return _FINISH_AND_LOG, {
        # Built by the mailer (ids, strings, UTC timestamps): orjson, in C.
        "rows": rows_to_json(payload),
        "events": rows_to_json(list(events)),
        "now": now,
        "notify": notify,
        "starts": prepared.text_array(starts),
    }


def _outcome_row(row: dict[str, Any]) -> dict[str, Any]:
    """``row`` as :data:`_FINISH_AND_LOG` takes it: ``ok``, and a sent row's detail
    without the keys that repeat its own columns (put back by every read, ``_COLUMNS``)."""
    ok = row["decision"] in ("sent", "redirected")
    detail = row["detail"]
    if (
        ok
        and detail
        and all(key in detail for key in _REPEATED_IN_DETAIL)
        and detail["gate"] == row["decision"]
        and detail["provider"] == row["provider"]
        and detail["providerCalls"] == row["attempts"]
    ):
        detail = {k: v for k, v in detail.items() if k not in _REPEATED_IN_DETAIL}
    return {**row, "ok": ok, "detail": detail}


_REPEATED_IN_DETAIL = ("gate", "provider", "providerCalls")
"""A sent row's ``decision``, ``provider`` and ``attempts``, as its outcome detail names them."""


# The planner takes any set-returning function for 100 rows, which (on a table of a few
# thousand rows) makes a hash join over a sequential scan of email_sends and contacts the
# cheapest plan: for a group of 3 outcomes, every row of both tables read on each call
# (measured: most of Postgres's CPU per send). ``id = ANY(ARRAY(SELECT ...))`` of the
# group's own ids is what the primary key answers, so each probe is an index lookup; and
# its estimate (10 ids) does not depend on the parameters, so the server keeps one plan
# instead of planning each call as it did with the ids passed as a separate array.
_FINISH_AND_LOG = b"""
    WITH r AS (
        SELECT * FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS r(
            id uuid, decision text, ok boolean, detail jsonb, attempts int, provider text,
            message_id text, error text, subject text)
    ), done AS (
        UPDATE email_sends e SET
            decision = r.decision,
            status = CASE WHEN r.ok THEN 'sent' ELSE 'failed' END,
            idempotency_key = CASE WHEN r.ok THEN e.idempotency_key END,
            decision_detail = r.detail,
            attempts = r.attempts,
            provider = r.provider,
            provider_message_id = r.message_id,
            last_error = r.error,
            subject = coalesce(r.subject, e.subject),
            sent_at = CASE WHEN r.ok THEN now() END,
            handoff = NULL,
            updated_at = now()
        FROM r WHERE e.id = r.id AND e.id = ANY(ARRAY(SELECT id FROM r))
        RETURNING e.id
    ), message_ids AS (
        INSERT INTO email_send_messages (message_id, provider, email_send_id)
        SELECT r.message_id, coalesce(r.provider, ''), r.id
        FROM r JOIN done ON done.id = r.id WHERE r.message_id IS NOT NULL
    ), started AS (
        DELETE FROM email_send_marks WHERE email_send_id = ANY(CAST(%(starts)s AS uuid[]))
        RETURNING email_send_id
    ), v AS (
        SELECT * FROM jsonb_to_recordset(CAST(%(events)s AS jsonb)) AS v(
            id uuid, contact_id uuid, name text, properties jsonb, key text, source text,
            occurred_at timestamptz)
    ), live AS (
        SELECT v.*, coalesce(c.external_id, c.anonymous_id, c.id::text) AS user_id
        FROM v JOIN contacts c ON c.id = v.contact_id AND c.deleted_at IS NULL
            AND c.id = ANY(ARRAY(SELECT contact_id FROM v))
    ), ins AS (
        INSERT INTO user_events (id, contact_id, user_id, event, properties,
                                 idempotency_key, source, occurred_at, received_at)
        SELECT id, contact_id, user_id, name, properties, key, source, occurred_at,
               CAST(%(now)s AS timestamptz)
        FROM live
        ON CONFLICT DO NOTHING
        RETURNING id, contact_id, user_id, event
    ), outbox AS (
        INSERT INTO event_outbox (event_id, contact_id, contact_key, event, created_at,
                                  next_attempt_at)
        SELECT id, contact_id, user_id, event, CAST(%(now)s AS timestamptz),
               CAST(%(now)s AS timestamptz)
        FROM ins
    )
    SELECT (SELECT array_agg(v.key) FROM v WHERE NOT EXISTS (
                SELECT 1 FROM live WHERE live.id = v.id)) AS missing,
           (SELECT count(*) FROM done) AS finished,
           (SELECT count(*) FROM started) AS started,
           (SELECT count(pg_notify('hogsend_outbox', '')) FROM ins
                WHERE CAST(%(notify)s AS boolean)) AS notified
    """
