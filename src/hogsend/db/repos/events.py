"""Events: storing one event or a batch, with its contact, outbox row and list choices.

Both entry points run inside the caller's transaction and never commit. What one
stored event writes: the contact (resolved, created, linked or merged; its property
patch), the ``user_events`` row, the ``event_outbox`` row the dispatcher consumes, and
the event's list choices. A repeated idempotency key writes NOTHING and returns the
original event (Hogsend 0.7 resolved the contact and applied properties and lists
before noticing the duplicate).

How a batch stays set-based: one query finds already-stored keys; one lookup finds the
contacts of every identity; the contacts are locked in id order in one statement;
brand-new contacts are inserted in one ``INSERT ... ON CONFLICT DO NOTHING``; then ONE
statement inserts every event (``ON CONFLICT (idempotency_key) DO NOTHING``), their
outbox rows, the contacts' property/last-seen updates and the list choices. Only the
identities that need a link or a merge go through :func:`resolve_contact` one by one.

Why duplicates change nothing even under concurrency: the event row claims the key.
Contact writes that depend on the event (property patches, last seen, lists) run in
the same statement as the claim and only for events that were inserted. Writes that
must happen before (a new contact, a link, a merge) are undone when the claim loses:
a link or merge runs in a savepoint that is rolled back, a contact created for nothing
is deleted again.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.clock import aware_now
from hogsend.core.contact import Contact, Event
from hogsend.core.identity import (
    IdentityConflict,
    IdentityKey,
    ResolutionPlan,
    merge_properties,
    plan_resolution,
)
from hogsend.core.ids import random_uuids
from hogsend.core.ingest import EventInput, IngestResult
from hogsend.core.pagination import InvalidCursor, Page, decode_cursor, encode_cursor, page_of
from hogsend.db import prepared
from hogsend.db.engine import driver_connection
from hogsend.db.repos.contacts import (
    IngestColumns,
    Matches,
    NewContact,
    ResolutionRace,
    advisory_lock,
    follow_contact,
    insert_contacts,
    lock_matches,
    lookup_contacts,
    resolve_contact,
    rows_to_json,
    to_json,
)

# Postgres aborted the transaction (or savepoint) to break a tie; running it again works.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})
DATABASE_ERRORS = (DBAPIError, psycopg.Error)
"""What a failed statement raises: SQLAlchemy's wrapper, or psycopg's own error from a
statement run on the driver connection (:mod:`hogsend.db.prepared`). Catch these, then
ask :func:`is_transient_error`."""
_MAX_ROUNDS = 8
LAST_SEEN_RESOLUTION = timedelta(minutes=1)
"""Ingest moves a contact's ``last_seen_at`` only when it is at least this old."""


def is_transient_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a deadlock or serialization failure: retry the whole transaction.

    Concurrent writers touching the same contacts in different orders can, rarely,
    deadlock; Postgres then aborts one transaction. The caller owns the transaction, so
    the caller retries it (a fresh session, the same input: ingest is idempotent with
    an idempotency key).
    """
    current: BaseException | None = exc
    while current is not None:
        orig = getattr(current, "orig", None)
        for candidate in (current, orig):
            if getattr(candidate, "sqlstate", None) in _TRANSIENT_SQLSTATES:
                return True
        current = current.__cause__
    return False


def idempotency_lock_name(key: str) -> str:
    """The advisory lock name of an idempotency key."""
    return f"idempotency:{key}"


@dataclass(eq=False, slots=True)
class _Work:
    """One item on its way through the pipeline."""

    index: int
    item: EventInput
    event_id: uuid.UUID
    result: IngestResult | None = None
    contact: Contact | None = None
    # For contact_id items: where the id led (a merged-away id moves to its survivor).
    target_id: uuid.UUID | None = None
    conflicts: tuple[IdentityConflict, ...] = ()
    # The contact was inserted by this call with this item's patch already in it.
    patch_applied: bool = False
    created: bool = False
    lost: bool = False
    plan: ResolutionPlan | None = None

    @property
    def key(self) -> str | None:
        return self.item.idempotency_key


# --------------------------------------------------------------------------- SQL

# The batch path's statements run on the driver connection (hogsend.db.prepared): each
# cost the API about 100 µs more of CPU through the session, and their rows came back
# through SQLAlchemy's result layers (the claim's 500 ordinals were 3% of a batch).
_ORIGINALS = b"""
    SELECT idempotency_key, id, contact_id, user_id FROM user_events
    WHERE idempotency_key IS NOT NULL AND idempotency_key IN (
        SELECT jsonb_array_elements_text(CAST(%(keys)s AS jsonb)))
"""

# Inserting an event claims its idempotency key; everything that must happen only for
# a stored event hangs off the ``ins`` rows in the same statement.
_CLAIM = b"""
    WITH v AS (
        SELECT r.*, p.properties
        FROM jsonb_to_recordset(CAST(%(events)s AS jsonb)) AS r(
            pos int, ord int, id uuid, contact_id uuid, user_id text, event text,
            idempotency_key text, source text, occurred_at timestamptz)
        JOIN jsonb_array_elements(CAST(%(properties)s AS jsonb)) WITH ORDINALITY
            AS p(properties, pos)
            USING (pos)
    ), ins AS (
        INSERT INTO user_events (id, contact_id, user_id, event, properties, idempotency_key,
                                 source, occurred_at, received_at)
        SELECT id, contact_id, user_id, event, properties,
               idempotency_key, source, coalesce(occurred_at, CAST(%(now)s AS timestamptz)),
               CAST(%(now)s AS timestamptz)
        FROM v
        ORDER BY idempotency_key NULLS LAST, ord
        ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
        RETURNING id
    ), outbox AS (
        INSERT INTO event_outbox (event_id, contact_id, contact_key, event, created_at,
                                  next_attempt_at)
        SELECT v.id, v.contact_id, v.user_id, v.event, CAST(%(now)s AS timestamptz),
               CAST(%(now)s AS timestamptz)
        FROM v JOIN ins ON ins.id = v.id
        ORDER BY v.ord
    ), lost AS (
        SELECT v.contact_id FROM v WHERE v.id NOT IN (SELECT id FROM ins)
    ), touched AS (
        UPDATE contacts c SET
            properties = coalesce(u.properties, c.properties),
            last_seen_at = CASE WHEN u.seen_at IS NULL THEN c.last_seen_at
                                ELSE greatest(c.last_seen_at, u.seen_at) END,
            updated_at = CASE WHEN u.changed THEN CAST(%(now)s AS timestamptz) ELSE c.updated_at END
        FROM jsonb_to_recordset(CAST(%(contacts)s AS jsonb))
            AS u(id uuid, properties jsonb, seen_at timestamptz, changed boolean)
        WHERE c.id = u.id AND u.id NOT IN (SELECT contact_id FROM lost)
    ), lists AS (
        INSERT INTO list_subscriptions AS s (contact_id, list_id, subscribed, source,
                                             subscribed_at, unsubscribed_at, created_at,
                                             updated_at)
        SELECT DISTINCT ON (l.contact_id, l.list_id)
               l.contact_id, l.list_id, l.subscribed, l.source,
               CASE WHEN l.subscribed THEN CAST(%(now)s AS timestamptz) END,
               CASE WHEN NOT l.subscribed THEN CAST(%(now)s AS timestamptz) END,
               CAST(%(now)s AS timestamptz), CAST(%(now)s AS timestamptz)
        FROM jsonb_to_recordset(CAST(%(lists)s AS jsonb))
            AS l(ord int, event_id uuid, contact_id uuid, list_id text, subscribed boolean,
                 source text)
        JOIN ins ON ins.id = l.event_id
        ORDER BY l.contact_id, l.list_id, l.ord DESC
        ON CONFLICT (contact_id, list_id) DO UPDATE SET
            subscribed = EXCLUDED.subscribed,
            source = EXCLUDED.source,
            subscribed_at = coalesce(EXCLUDED.subscribed_at, s.subscribed_at),
            unsubscribed_at = coalesce(EXCLUDED.unsubscribed_at, s.unsubscribed_at),
            updated_at = EXCLUDED.updated_at
        WHERE s.subscribed IS DISTINCT FROM EXCLUDED.subscribed
    )
    SELECT v.ord FROM v JOIN ins ON ins.id = v.id
    """

_UPDATE_CONTACTS = text(
    """
    UPDATE contacts c SET
        properties = coalesce(u.properties, c.properties),
        last_seen_at = CASE WHEN u.seen_at IS NULL THEN c.last_seen_at
                            ELSE greatest(c.last_seen_at, u.seen_at) END,
        updated_at = CASE WHEN u.changed THEN CAST(:now AS timestamptz) ELSE c.updated_at END
    FROM jsonb_to_recordset(CAST(:contacts AS jsonb))
        AS u(id uuid, properties jsonb, seen_at timestamptz, changed boolean)
    WHERE c.id = u.id
    """
)

_DELETE_UNUSED = text("DELETE FROM contacts WHERE id = ANY(CAST(:ids AS uuid[]))")

# The batch's lookup savepoint (see _process), named apart from the session's own. It is
# never released: it ends with the transaction, and a RELEASE was a round trip of its own
# (a later batch in the same transaction opens another; a rollback goes to the latest).
_SAVEPOINT = "SAVEPOINT hogsend_batch_lookup"
_ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO SAVEPOINT hogsend_batch_lookup"


class _ClaimLost(Exception):
    """The event's idempotency key was taken by a concurrent transaction."""


# --------------------------------------------------------------------------- claim


@dataclass(frozen=True, slots=True, kw_only=True)
class _ContactUpdate:
    id: uuid.UUID
    properties: dict[str, Any] | None
    seen_at: datetime | None
    changed: bool

    def row(self) -> dict[str, object]:
        return {
            "id": self.id,
            "properties": self.properties,
            "seen_at": self.seen_at,
            "changed": self.changed,
        }


def _event_row(work: _Work, contact: Contact, pos: int) -> dict[str, object]:
    item = work.item
    when = item.occurred_at
    # rows_to_json takes UTC timestamps only; any other offset goes as ISO text.
    occurred_at: object = when if when is None or when.tzinfo is UTC else when.isoformat()
    # Ids as they are: rows_to_json writes UUIDs itself, in C.
    return {
        "pos": pos,
        "ord": work.index,
        "id": work.event_id,
        "contact_id": contact.id,
        "user_id": contact.key,
        "event": item.name,
        "idempotency_key": item.idempotency_key,
        "source": item.source,
        "occurred_at": occurred_at,
    }


def _list_rows(work: _Work, contact: Contact) -> list[dict[str, object]]:
    return [
        {
            "ord": work.index,
            "event_id": work.event_id,
            "contact_id": contact.id,
            "list_id": list_id,
            "subscribed": subscribed,
            "source": work.item.source,
        }
        for list_id, subscribed in (work.item.lists or {}).items()
    ]


async def _claim(
    session: AsyncSession,
    works: Sequence[_Work],
    updates: Sequence[_ContactUpdate],
    now: datetime,
    payloads: str | None = None,
) -> set[int]:
    """Insert the events (and what hangs off them); returns the stored works' ``index``.

    Indexes rather than event ids: a batch's 500 ids parsed and hashed as UUIDs were a
    measurable share of its CPU, and the caller matches works by index anyway.

    ``payloads``: every item's properties as one JSON array in item order (``index``),
    already encoded by the caller; without it, the works' properties are encoded here.
    """
    events: list[dict[str, object]] = []
    lists: list[dict[str, object]] = []
    for pos, work in enumerate(works, start=1):
        assert work.contact is not None
        events.append(_event_row(work, work.contact, work.index + 1 if payloads else pos))
        if work.item.lists:
            lists.extend(_list_rows(work, work.contact))
    if payloads is None:
        payloads = to_json([dict(work.item.properties) for work in works])
    rows = await prepared.fetch(
        await session.connection(),
        _CLAIM,
        {
            "events": rows_to_json(events),
            # One JSON array: a text[] parameter made psycopg escape every element (a
            # regex per item, ~10% of a batch's CPU).
            "properties": payloads,
            "contacts": updates_json(updates),
            "lists": rows_to_json(lists),
            "now": now,
        },
    )
    return {ord_ for (ord_,) in rows}


def updates_json(updates: Sequence[_ContactUpdate]) -> str:
    """The contact updates as one JSON array for the claim's ``jsonb_to_recordset``.

    When no update carries properties (a user payload) and every ``seen_at`` is in UTC,
    the rows hold only ids, UTC timestamps and flags, which :func:`rows_to_json` writes in
    C; the standard encoder called back into Python for every id and timestamp (two
    callbacks per contact whose last-seen moves, most of a batch's JSON CPU then).
    """
    rows = [u.row() for u in updates]
    if all(
        u.properties is None and (u.seen_at is None or u.seen_at.tzinfo is UTC) for u in updates
    ):
        return rows_to_json(rows)
    return to_json(rows)


def _contact_updates(works: Iterable[_Work], now: datetime) -> list[_ContactUpdate]:
    """Per contact: its properties after the works' patches (in order), and last seen."""
    # Keyed by the ids' integers: a UUID hashes through a Python method, and this loop
    # did it eight times per event (about a twentieth of a batch's API CPU).
    contacts: dict[int, Contact] = {}
    # Only contacts some work patches: most events carry no contact properties, and a
    # copy of every contact's properties per event was a tenth of a batch's CPU.
    patched: dict[int, dict[str, Any]] = {}
    # Identified traffic means the person was seen; internal producers do not.
    seen: set[int] = set()
    for work in works:
        contact = work.contact
        assert contact is not None
        number = contact.id.int
        if number not in contacts:
            contacts[number] = contact
        item = work.item
        if item.contact_properties and not work.patch_applied:
            props = patched.get(number)
            if props is None:
                props = dict(contact.properties)
            patched[number] = merge_properties(props, item.contact_properties)
        if item.identity is not None and not work.created:
            seen.add(number)
    updates = []
    # last_seen_at moves in steps of LAST_SEEN_RESOLUTION: an active contact's events do
    # not each rewrite its row. One comparison per contact rather than a subtraction.
    stale_before = now - LAST_SEEN_RESOLUTION
    for number, contact in contacts.items():
        props = patched.get(number)
        changed = props is not None and props != dict(contact.properties)
        last_seen = contact.last_seen_at
        moved = number in seen and (last_seen is None or last_seen <= stale_before)
        if changed or moved:
            updates.append(
                _ContactUpdate(
                    id=contact.id,
                    properties=props if changed else None,
                    seen_at=now if moved else None,
                    changed=changed,
                )
            )
    return updates


# --------------------------------------------------------------------------- pipeline


def _identity_keys(works: Iterable[_Work]) -> list[IdentityKey]:
    keys: list[IdentityKey] = []
    for work in works:
        if work.item.identity is not None:
            keys.extend(work.item.identity.keys)
    return list(dict.fromkeys(keys))


def _stored(work: _Work, contact: Contact, conflicts: tuple[IdentityConflict, ...]) -> None:
    work.result = IngestResult(
        status="stored",
        event_id=work.event_id,
        contact_id=contact.id,
        contact_key=contact.key,
        conflicts=conflicts,
    )


def _rejected(work: _Work, reason: str) -> None:
    work.result = IngestResult(status="rejected", reason=reason)


async def _slow_one(
    session: AsyncSession, work: _Work, now: datetime, payloads: str | None = None
) -> None:
    """Link or merge, then claim, in a savepoint that is rolled back if the claim loses."""
    identity = work.item.identity
    assert identity is not None
    try:
        async with session.begin_nested():
            resolution = await resolve_contact(
                session, identity, properties=work.item.contact_properties, now=now
            )
            work.contact = Contact(id=resolution.contact_id, key=resolution.key)
            if work.index not in await _claim(session, [work], [], now, payloads):
                raise _ClaimLost
    except _ClaimLost:
        work.lost = True
        return
    except ResolutionRace:
        _rejected(work, "the contact was being merged concurrently; retry")
        return
    except DATABASE_ERRORS as exc:
        if not is_transient_error(exc):
            raise
        _rejected(work, "a concurrent write to the same contact; retry")
        return
    _stored(work, work.contact, resolution.conflicts)


def _columns_for(works: Iterable[_Work]) -> IngestColumns:
    # The contacts' properties matter only to patch them (_contact_updates and
    # _undo_for_lost read them for works with contact properties, and only then).
    return IngestColumns(properties=any(w.item.contact_properties for w in works))


async def _resolve_fast(
    session: AsyncSession,
    works: list[_Work],
    now: datetime,
    slow: list[_Work],
    first: Matches | None = None,
) -> set[uuid.UUID]:
    """Give every work a locked contact (or a result), creating new contacts in bulk.

    Each round looks every pending key and contact id up and locks what it finds in
    one statement (``first`` may stand in for the first round's). Works that turn out
    to need a link or merge are appended to ``slow``. Returns the ids of the contacts
    this call created.
    """
    created: set[uuid.UUID] = set()
    pending = works
    columns = _columns_for(works)
    for round_ in range(_MAX_ROUNDS):
        if not pending:
            break
        by_identity = [w for w in pending if w.item.identity is not None]
        by_id = [w for w in pending if w.item.identity is None]
        matches = first
        reuse = first is not None  # the plans made on these very rows still hold
        first = None
        if matches is None:
            matches = await lock_matches(
                session,
                _identity_keys(by_identity),
                [w.target_id for w in by_id if w.target_id is not None],
                columns,
            )
        retry: list[_Work] = []
        if matches is None:
            retry = pending  # a contact was merged away while we waited for its lock
            by_identity, by_id = [], []
            matches = Matches(by_key={}, by_id={})

        for work in by_id:
            assert work.target_id is not None
            contact = matches.by_id.get(work.target_id)
            if contact is not None and contact.deleted_at is None:
                work.contact = contact
                continue
            survivor = await follow_contact(session, work.target_id)
            if survivor is None:
                _rejected(work, f"contact {work.item.contact_id} does not exist or was deleted")
            else:
                work.target_id = survivor.id
                retry.append(work)

        creates: dict[tuple[str | None, str | None, str | None], list[_Work]] = {}
        for work in by_identity:
            identity = work.item.identity
            assert identity is not None
            plan = work.plan if reuse and work.plan is not None else None
            if plan is None:
                plan = plan_resolution(identity, matches.by_key)
            if plan.action == "match":
                work.contact = plan.target
                work.conflicts = plan.conflicts
            elif plan.action == "create":
                creates.setdefault(identity.signature, []).append(work)
            else:
                slow.append(work)

        if creates:
            new: list[tuple[NewContact, list[_Work]]] = []
            ids = iter(random_uuids(len(creates)))
            for group in creates.values():
                props: dict[str, Any] = {}
                for work in group:
                    props = merge_properties(props, work.item.contact_properties)
                identity = group[0].item.identity
                assert identity is not None
                new.append((NewContact(identity=identity, properties=props, id=next(ids)), group))
            inserted = await insert_contacts(session, [n for n, _ in new], now)
            for candidate, group in new:
                contact = inserted.get(candidate.id)
                if contact is None:
                    retry.extend(group)  # a concurrent insert won; the next lookup sees it
                    continue
                created.add(contact.id)
                for work in group:
                    work.contact = contact
                    work.patch_applied = True
                    work.created = True
        pending = retry
        if round_ == _MAX_ROUNDS - 1:
            for work in pending:
                _rejected(work, "the contact kept changing concurrently; retry")
    return created


async def _process(
    session: AsyncSession,
    works: list[_Work],
    now: datetime,
    *,
    lock_first: bool = False,
    payloads: str | None = None,
) -> None:
    """Resolve and store works that are not known duplicates (at most one per key).

    ``lock_first``: the caller holds the advisory locks of every key (single ingest), so
    the first lookup may lock rows at once; a batch classifies on an unlocked read and
    takes the slow items' advisory locks before any row lock. ``payloads``: see
    :func:`_claim`.
    """
    keys = _identity_keys(works)
    ids = [w.item.contact_id for w in works if w.item.contact_id is not None]
    # Look up and lock in one statement. A batch does it in a savepoint: should an item
    # need a link or merge, rolling the savepoint back drops the row locks again, so
    # the advisory locks of the slow path are never taken while holding row locks.
    # The savepoint's statements go straight to the driver: through the session, each
    # cost the API three times the CPU of the statement itself (python -m bench ingest).
    driver = None if lock_first else await driver_connection(await session.connection())
    if driver is not None:
        await driver.execute(_SAVEPOINT, prepare=False)
    columns = _columns_for(works)
    first = await lock_matches(session, keys, ids, columns)
    seen = (
        first.by_key if first is not None else await lookup_contacts(session, keys, ingest=columns)
    )
    fast: list[_Work] = []
    slow: list[_Work] = []
    for work in works:
        identity = work.item.identity
        if identity is None:
            work.target_id = work.item.contact_id
            fast.append(work)
            continue
        # The whole lookup, not the identity's share of it: a plan reads only its own
        # keys, and a dict per event cost more than the plan itself.
        work.plan = plan_resolution(identity, seen)
        (slow if work.plan.linked else fast).append(work)
    if slow or first is None:
        first = None
        if driver is not None:
            await driver.execute(_ROLLBACK_TO_SAVEPOINT, prepare=False)

    if slow:
        # All of their advisory locks at once, in hash order, before any row lock.
        names = [k.lock_name for k in _identity_keys(slow)]
        names += [idempotency_lock_name(w.key) for w in slow if w.key is not None]
        await advisory_lock(session, names)
        for work in slow:
            await _slow_one(session, work, now, payloads)

    late_slow: list[_Work] = []
    created = await _resolve_fast(session, fast, now, late_slow, first)
    claims = [w for w in fast if w.result is None and w.contact is not None]
    if claims:
        updates = _contact_updates(claims, now)
        stored = await _claim(session, claims, updates, now, payloads)
        lost = [w for w in claims if w.index not in stored]
        for work in claims:
            if work.index in stored:
                assert work.contact is not None
                _stored(work, work.contact, work.conflicts)
            else:
                work.lost = True
        if lost:
            await _undo_for_lost(session, claims, stored, created, now)
    for work in late_slow:
        await _slow_one(session, work, now, payloads)


async def _undo_for_lost(
    session: AsyncSession,
    claims: Sequence[_Work],
    stored: set[int],
    created: set[uuid.UUID],
    now: datetime,
) -> None:
    """Repair contacts whose claims partly lost (a concurrent request stored the key).

    The claim statement skipped their update; write it now from the stored works only.
    A contact this call created holds its whole group's patches: rebuild it from the
    stored ones, or delete it when no stored event uses it.
    """
    affected = {w.contact.id for w in claims if w.lost and w.contact is not None}
    kept: dict[uuid.UUID, list[_Work]] = {}
    for work in claims:
        if work.index in stored and work.contact is not None:
            kept.setdefault(work.contact.id, []).append(work)
    unused = sorted((affected & created) - set(kept))
    if unused:
        await session.execute(_DELETE_UNUSED, {"ids": unused})
    updates: list[_ContactUpdate] = []
    for contact_id in sorted(affected & set(kept)):
        works = kept[contact_id]
        first = works[0].contact
        assert first is not None
        current = dict(first.properties)
        props: dict[str, Any] = {} if contact_id in created else dict(current)
        for work in works:
            # Only works on contacts created here ever have patch_applied set.
            props = merge_properties(props, work.item.contact_properties)
        changed = props != current
        seen = any(w.item.identity is not None for w in works)
        updates.append(
            _ContactUpdate(
                id=contact_id,
                properties=props if changed else None,
                seen_at=now if seen else None,
                changed=changed,
            )
        )
    if updates:
        await session.execute(_UPDATE_CONTACTS, {"contacts": updates_json(updates), "now": now})


# Value types whose JSON from orjson means exactly what the standard encoder's means.
# Floats are left out (orjson writes a NaN as null, and may spell a number differently),
# as are nested objects and arrays (checking them would cost what orjson saves).
_FLAT_VALUE_TYPES = frozenset({str, int, bool, type(None)})


def payloads_json(payloads: list[dict[str, object]]) -> str:
    """``to_json(payloads)``, through orjson when every payload is flat.

    A flat payload (string keys; strings, integers, booleans and nulls as values) is
    stored as the same ``jsonb`` whichever encoder wrote it; orjson refuses what it
    cannot write exactly (an integer past 64 bits, a lone surrogate, a key that is not
    a string), and those go to :func:`to_json` as before. The standard encoder was
    about a twentieth of the API's CPU per event of a batch (sampled in process).
    """
    flat = _FLAT_VALUE_TYPES
    for payload in payloads:
        for value in payload.values():
            if type(value) not in flat:
                return to_json(payloads)
    try:
        return orjson.dumps(payloads).decode()
    except orjson.JSONEncodeError:
        return to_json(payloads)


def bundle_json(bundle: dict[str, object], payload: dict[str, object]) -> str:
    """``to_json(bundle)``, through orjson when ``payload`` is flat (see :func:`payloads_json`).

    For the one-key statement's values: ids, flags, times already written as text,
    strings, and the event's payload, the only value that may hold floats or nesting.
    The standard encoder (a callback per UUID) was ~2% of the API's CPU per single event
    (py-spy, bench/ingest.py).
    """
    flat = _FLAT_VALUE_TYPES
    for value in payload.values():
        if type(value) not in flat:
            return to_json(bundle)
    try:
        return orjson.dumps(bundle).decode()
    except orjson.JSONEncodeError:
        return to_json(bundle)


def _payloads(item: EventInput) -> tuple[dict[str, object], dict[str, object] | None]:
    # As plain dicts: the encoder refuses other mappings.
    patch = item.contact_properties
    return dict(item.properties), None if patch is None else dict(patch)


async def _originals(session: AsyncSession, keys: Iterable[str]) -> dict[str, IngestResult]:
    unique = sorted(set(keys))
    if not unique:
        return {}
    rows = await prepared.fetch(
        await session.connection(), _ORIGINALS, {"keys": rows_to_json(unique)}
    )
    return {
        key: IngestResult(
            status="duplicate", event_id=event_id, contact_id=contact_id, contact_key=user_id
        )
        for key, event_id, contact_id, user_id in rows
    }


async def _ingest(
    session: AsyncSession, items: Sequence[EventInput], now: datetime, *, lock_first: bool = False
) -> list[IngestResult]:
    ids = random_uuids(len(items))
    works = [_Work(index=i, item=item, event_id=ids[i]) for i, item in enumerate(items)]
    payloads: str | None = None
    try:
        # One encoder call checks every item's payloads (a call per item cost more than
        # the encoding); only a failure looks for the items at fault. The properties'
        # JSON is the claim's parameter as it is: encoding them twice was 4% of a batch.
        payloads = payloads_json(
            [p if type(p := item.properties) is dict else dict(p) for item in items]
        )
        patches = [dict(item.contact_properties) for item in items if item.contact_properties]
        if patches:
            to_json(patches)
    except (TypeError, ValueError):
        payloads = None
        for work in works:
            try:
                to_json(_payloads(work.item))
            except (TypeError, ValueError) as exc:
                _rejected(work, f"properties are not JSON: {exc}")

    originals = await _originals(session, (w.key for w in works if w.key and not w.result))
    owners: dict[str, _Work] = {}
    followers: list[_Work] = []
    active: list[_Work] = []
    for work in works:
        if work.result is not None:
            continue
        if work.key is None:
            active.append(work)
        elif work.key in originals:
            work.result = originals[work.key]
        elif work.key in owners:
            followers.append(work)  # same key earlier in this batch
        else:
            owners[work.key] = work
            active.append(work)

    await _process(session, active, now, lock_first=lock_first, payloads=payloads)

    lost = [w for w in active if w.lost]
    if lost:
        # The key was stored by a concurrent transaction after our first look.
        late = await _originals(session, (w.key for w in lost if w.key))
        for work in lost:
            work.result = late.get(work.key or "") or IngestResult(
                status="rejected", reason="the idempotency key is in use by a concurrent request"
            )

    retry: list[_Work] = []
    for work in followers:
        owner = owners[work.key or ""]
        assert owner.result is not None
        if owner.result.status == "rejected":
            retry.append(work)
        else:
            work.result = IngestResult(
                status="duplicate",
                event_id=owner.result.event_id,
                contact_id=owner.result.contact_id,
                contact_key=owner.result.contact_key,
            )
    if retry:
        # The first of them takes the rejected owner's place.
        again = await _ingest(session, [w.item for w in retry], now)
        for work, result in zip(retry, again, strict=True):
            work.result = result

    results = []
    for work in works:
        assert work.result is not None
        results.append(work.result)
    return results


# --------------------------------------------------------------------------- public


async def ingest_event(
    session: AsyncSession, item: EventInput, *, now: datetime | None = None
) -> IngestResult:
    """Store one event in the caller's transaction (the caller commits).

    Takes advisory locks on the idempotency key and the identity's keys, so concurrent
    requests about the same key or person queue. A key already stored returns
    ``duplicate`` with the original event and contact ids, and writes nothing at all.
    Otherwise the contact is resolved (created, linked or merged, see
    :func:`~hogsend.db.repos.contacts.resolve_contact`), its property patch applied,
    the event and its outbox row inserted and ``lists`` applied.

    Returns:
        ``stored`` or ``duplicate``; ``rejected`` only for a ``contact_id`` that does not
        exist (or was deleted).
    """
    now = aware_now(now)
    names: list[str] = []
    if item.idempotency_key is not None:
        names.append(idempotency_lock_name(item.idempotency_key))
    if item.identity is not None:
        names.extend(k.lock_name for k in item.identity.keys)
    await advisory_lock(session, names)
    [result] = await _ingest(session, [item], now, lock_first=True)
    return result


async def ingest_batch(
    session: AsyncSession, items: Sequence[EventInput], *, now: datetime | None = None
) -> list[IngestResult]:
    """Store many events in the caller's transaction, set-based; one result per item.

    Items with a key stored before, or repeating a key earlier in the batch, are
    ``duplicate`` (pointing at the original) and write nothing. Items that cannot be
    stored (a ``contact_id`` that does not exist, properties that are not JSON, an
    identity that kept changing under concurrent merges) are ``rejected`` with a reason;
    the others are stored. Takes no advisory locks for ordinary items (a batch would
    need thousands); unique indexes and the claim-then-write order keep it exact.
    """
    if not items:
        return []
    return await _ingest(session, list(items), aware_now(now))


async def stored_event(session: AsyncSession, idempotency_key: str) -> IngestResult | None:
    """The event already stored under ``idempotency_key`` (as a ``duplicate`` result), if any.

    For callers that must do identity work of their own before ingesting (a Segment
    ``alias``): take :func:`idempotency_lock_name`'s advisory lock first, then ask.
    """
    return (await _originals(session, [idempotency_key])).get(idempotency_key)


# --------------------------------------------------------------------------- reads

_EVENT_COLUMNS = (
    "id, contact_id, user_id, event, properties, idempotency_key, source, occurred_at, received_at"
)

_LIST_EVENTS = text(
    f"""
    SELECT {_EVENT_COLUMNS} FROM user_events
    WHERE (CAST(:event AS text) IS NULL OR event = CAST(:event AS text))
      AND (CAST(:contact_id AS uuid) IS NULL OR contact_id = CAST(:contact_id AS uuid))
      AND (CAST(:since AS timestamptz) IS NULL OR occurred_at >= CAST(:since AS timestamptz))
      AND (CAST(:until AS timestamptz) IS NULL OR occurred_at <= CAST(:until AS timestamptz))
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (occurred_at, id) < (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY occurred_at DESC, id DESC
    LIMIT :limit
    """
)

_GET_EVENT = text(f"SELECT {_EVENT_COLUMNS} FROM user_events WHERE id = :id")

MAX_EVENT_PAGE_SIZE = 500


def _event_from_row(row: Any) -> Event:
    return Event(
        id=row.id,
        name=row.event,
        contact_key=row.user_id,
        occurred_at=row.occurred_at,
        properties=row.properties or {},
        contact_id=row.contact_id,
        idempotency_key=row.idempotency_key,
        source=row.source,
        received_at=row.received_at,
    )


async def list_events(
    session: AsyncSession,
    *,
    event: str | None = None,
    contact_id: uuid.UUID | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[Event]:
    """Stored events, newest ``occurred_at`` first, keyset-paged on ``(occurred_at, id)``.

    Every given filter must match: the exact event name, the contact, and
    ``since <= occurred_at <= until``.

    Raises:
        InvalidCursor: ``cursor`` is not one this listing handed out.
        ValueError: ``limit`` outside 1..:data:`MAX_EVENT_PAGE_SIZE`.
    """
    if not 1 <= limit <= MAX_EVENT_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_EVENT_PAGE_SIZE}")
    after_at: datetime | None = None
    after_id: uuid.UUID | None = None
    if cursor is not None:
        at, ident = decode_cursor(cursor, 2)
        try:
            after_at, after_id = datetime.fromisoformat(at), uuid.UUID(ident)
        except ValueError as exc:
            raise InvalidCursor("cursor is not valid") from exc
        if after_at.utcoffset() is None:
            raise InvalidCursor("cursor is not valid")
    rows = await session.execute(
        _LIST_EVENTS,
        {
            "event": event,
            "contact_id": contact_id,
            "since": since,
            "until": until,
            "after_at": after_at,
            "after_id": after_id,
            "limit": limit + 1,
        },
    )
    events = [_event_from_row(row) for row in rows]
    return page_of(events, limit, lambda e: encode_cursor(e.occurred_at.isoformat(), str(e.id)))


async def get_event(session: AsyncSession, event_id: uuid.UUID) -> Event | None:
    """One stored event by id."""
    row = (await session.execute(_GET_EVENT, {"id": event_id})).first()
    return None if row is None else _event_from_row(row)


# --------------------------------------------------------------------------- fast path

# One statement for the common single event: every given key names the same live
# contact directly (match), or no key is known at all (create). Anything else (a key to
# attach, contacts to merge, a key known only through an alias, a contact created
# concurrently) reports 'general' and writes nothing; the caller takes the full path.
# The event INSERT has no ON CONFLICT: the key was checked under its advisory lock, so
# a conflict means a writer that takes no lock (a batch) claimed it meanwhile, and the
# unique violation rolls back everything, a contact created here included.
_FAST_INGEST = """
WITH a AS (
    SELECT %(now)s::timestamptz AS now, %(key)s::text AS key, %(name)s::text AS name,
           %(source)s::text AS source, %(patch)s::jsonb AS patch
), k AS (
    SELECT * FROM unnest(%(kinds)s::text[], %(vals)s::text[]) AS k(kind, value)
), m AS (
    SELECT k.kind, true AS direct, c.id FROM k JOIN contacts c
        ON k.kind = 'external' AND c.external_id = k.value AND c.deleted_at IS NULL
    UNION ALL
    SELECT k.kind, true, c.id FROM k JOIN contacts c
        ON k.kind = 'email' AND lower(c.email) = lower(k.value)
        AND c.email IS NOT NULL AND c.deleted_at IS NULL
    UNION ALL
    SELECT k.kind, true, c.id FROM k JOIN contacts c
        ON k.kind = 'anonymous' AND c.anonymous_id = k.value AND c.deleted_at IS NULL
    UNION ALL
    SELECT k.kind, false, x.contact_id FROM k JOIN contact_aliases x
        ON x.alias_kind = k.kind
        AND x.alias_value = CASE WHEN k.kind = 'email' THEN lower(k.value) ELSE k.value END
), f AS (
    SELECT c.id, c.external_id, c.anonymous_id, c.properties, c.last_seen_at, c.deleted_at
    FROM contacts c WHERE c.id IN (SELECT id FROM m)
    ORDER BY c.id
    FOR NO KEY UPDATE OF c
), dup AS (
    SELECT e.id, e.contact_id, e.user_id FROM user_events e, a WHERE e.idempotency_key = a.key
), plan AS (
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM dup) THEN 'duplicate'
        WHEN NOT EXISTS (SELECT 1 FROM m) THEN 'create'
        WHEN (SELECT count(*) FROM f WHERE deleted_at IS NULL) = 1
             AND NOT EXISTS (SELECT 1 FROM f WHERE deleted_at IS NOT NULL)
             AND NOT EXISTS (SELECT 1 FROM m WHERE NOT direct)
             AND (SELECT count(DISTINCT kind) FROM m) = (SELECT count(*) FROM k)
        THEN 'match'
        ELSE 'general'
    END AS action
), new AS (
    INSERT INTO contacts (id, external_id, email, anonymous_id, properties,
                          first_seen_at, last_seen_at, created_at, updated_at)
    SELECT %(new_id)s::uuid, %(user_id)s::text, %(email)s::text, %(anonymous_id)s::text,
           %(new_properties)s::jsonb, a.now, a.now, a.now, a.now
    FROM a, plan WHERE plan.action = 'create'
    ON CONFLICT DO NOTHING
    RETURNING id
), t AS (
    SELECT n.id, %(new_key)s::text AS key FROM new n
    UNION ALL
    SELECT f.id, coalesce(f.external_id, f.anonymous_id, f.id::text) FROM f, plan
    WHERE plan.action = 'match'
), ins AS (
    INSERT INTO user_events (id, contact_id, user_id, event, properties, idempotency_key,
                             source, occurred_at, received_at)
    SELECT %(event_id)s::uuid, t.id, t.key, a.name, %(properties)s::jsonb, a.key, a.source,
           coalesce(%(occurred_at)s::timestamptz, a.now), a.now
    FROM t, a
    RETURNING id, contact_id, user_id
), outbox AS (
    INSERT INTO event_outbox (event_id, contact_id, contact_key, event, created_at,
                              next_attempt_at)
    SELECT i.id, i.contact_id, i.user_id, a.name, a.now, a.now FROM ins i, a
), p AS (
    SELECT f.id, f.properties AS old, CASE WHEN a.patch IS NULL THEN f.properties
        ELSE (SELECT coalesce(jsonb_object_agg(e.key, e.value), '{}'::jsonb)
              FROM jsonb_each(f.properties || a.patch) AS e
              WHERE e.value <> 'null'::jsonb) END AS props,
        f.last_seen_at <= a.now - interval '1 minute' AS stale, a.now
    FROM f, a, plan
    WHERE plan.action = 'match' AND EXISTS (SELECT 1 FROM ins)
), touched AS (
    UPDATE contacts c SET
        properties = p.props,
        last_seen_at = CASE WHEN p.stale THEN greatest(c.last_seen_at, p.now)
                            ELSE c.last_seen_at END,
        updated_at = CASE WHEN p.props IS DISTINCT FROM p.old THEN p.now ELSE c.updated_at END
    FROM p
    WHERE c.id = p.id AND (p.stale OR p.props IS DISTINCT FROM p.old)
)
SELECT plan.action, i.id, i.contact_id, i.user_id, d.id, d.contact_id, d.user_id,
       (SELECT count(pg_notify('hogsend_outbox', '')) FROM ins WHERE %(notify)s::boolean)
FROM plan LEFT JOIN ins i ON true LEFT JOIN dup d ON true
"""
_FAST_INGEST = " ".join(_FAST_INGEST.split())

# The same rules, specialised to the most common event: one key (a userId, an email or
# an anonymousId) and no contact properties. With one key, "every key names the same
# contact" is "the key names a live contact", so the statement needs no key list, no
# union of lookups, no counting and no property merge: about half the plan nodes, and
# Postgres initialises every node of a plan on every execution (perf: executor start
# was a quarter of the backend's CPU per event). bench/ingest.py: ~0.1 ms less Postgres
# CPU per event than the general statement, on a match and on a create alike.
# ``l`` is the key's live contact; ``c`` the same row locked (a concurrent merge that
# soft-deleted it meanwhile shows here as ``deleted_at``: the general path then).
# The values are used where they are needed rather than through a one-row CTE: a
# CTE's row joined into each part cost a scan and a join node per use, and hid the
# key from the alias lookup, whose cached plan then read every alias of the kind
# (``uq_contact_aliases_kind_value`` by kind alone) to compare each with the key.
# ``l`` has at most one row (the key's live unique index; one snapshot cannot see two
# live contacts with one key), so ``c`` and ``touched`` take its id as a scalar: an
# index scan for one row whatever the table's size when the plan was cached (as an
# array, a fresh table's plan was a bitmap scan); ``plan``'s one row is read as a
# parameter too (callgrind, one backend: ~8% fewer instructions per matched event).
_FAST_INGEST_ONE = """
WITH l AS (
    SELECT l.id FROM contacts l WHERE {match} AND l.deleted_at IS NULL
), c AS (
    SELECT c.id, coalesce(c.external_id, c.anonymous_id, c.id::text) AS key,
           c.last_seen_at, c.deleted_at
    FROM contacts c WHERE c.id = (SELECT id FROM l)
    FOR NO KEY UPDATE OF c
), dup AS (
    SELECT e.id, e.contact_id, e.user_id FROM user_events e
    WHERE e.idempotency_key = %(key)s::text
), plan AS (
    SELECT CASE
        WHEN EXISTS (SELECT 1 FROM dup) THEN 'duplicate'
        WHEN EXISTS (SELECT 1 FROM contact_aliases x
                     WHERE x.alias_kind = '{kind}' AND x.alias_value = {alias}) THEN 'general'
        WHEN NOT EXISTS (SELECT 1 FROM l) THEN 'create'
        WHEN EXISTS (SELECT 1 FROM c WHERE c.deleted_at IS NULL) THEN 'match'
        ELSE 'general'
    END AS action
), new AS (
    INSERT INTO contacts (id, {column}, properties, first_seen_at, last_seen_at, created_at,
                          updated_at)
    SELECT %(new_id)s::uuid, %(val)s::text, '{{}}'::jsonb, %(now)s::timestamptz,
           %(now)s::timestamptz, %(now)s::timestamptz, %(now)s::timestamptz
    WHERE (SELECT action FROM plan) = 'create'
    RETURNING id, coalesce(external_id, anonymous_id, id::text) AS key
), t AS (
    SELECT n.id, n.key FROM new n
    UNION ALL
    SELECT c.id, c.key FROM c WHERE (SELECT action FROM plan) = 'match'
), ins AS (
    INSERT INTO user_events (id, contact_id, user_id, event, properties, idempotency_key,
                             source, occurred_at, received_at)
    SELECT %(event_id)s::uuid, t.id, t.key, %(name)s::text, %(properties)s::jsonb,
           %(key)s::text, %(source)s::text,
           coalesce(%(occurred_at)s::timestamptz, %(now)s::timestamptz), %(now)s::timestamptz
    FROM t
    RETURNING id, contact_id, user_id, event, received_at
), outbox AS (
    INSERT INTO event_outbox (event_id, contact_id, contact_key, event, created_at,
                              next_attempt_at)
    SELECT i.id, i.contact_id, i.user_id, i.event, i.received_at, i.received_at FROM ins i
), touched AS (
    UPDATE contacts u SET last_seen_at = greatest(u.last_seen_at, %(now)s::timestamptz)
    WHERE u.id = (SELECT c.id FROM c
                  WHERE c.last_seen_at <= %(now)s::timestamptz - interval '1 minute')
      AND EXISTS (SELECT 1 FROM ins)
)
SELECT (SELECT action FROM plan), i.id, i.contact_id, i.user_id, d.id, d.contact_id,
       d.user_id,
       CASE WHEN %(notify)s::boolean AND i.id IS NOT NULL
            THEN pg_notify('hogsend_outbox', '') END
FROM (SELECT) AS one LEFT JOIN ins i ON true LEFT JOIN dup d ON true
"""
# Per kind of key: how the contact is found (the live unique index's own expression and
# predicate), how its alias is spelled, and the column a new contact gets.
_ONE_KEY_SHAPES = {
    "external": ("l.external_id = %(val)s::text", "%(val)s::text", "external_id"),
    "email": (
        "l.email IS NOT NULL AND lower(l.email) = lower(%(val)s::text)",
        "lower(%(val)s::text)",
        "email",
    ),
    "anonymous": ("l.anonymous_id = %(val)s::text", "%(val)s::text", "anonymous_id"),
}
_FAST_INGEST_ONE_BY_KIND = {
    kind: " ".join(
        _FAST_INGEST_ONE.format(kind=kind, match=match, alias=alias, column=column).split()
    )
    for kind, (match, alias, column) in _ONE_KEY_SHAPES.items()
}


# The statements are prepared once per connection. The ingest statement takes its
# values as one jsonb parameter (each ``%(x)s::type`` becomes an extraction from it):
# quoting one literal instead of seventeen halved the client's cost of the query.
def _from_bundle(match: re.Match[str]) -> str:
    key, cast = match.group(1), match.group(2)
    if cast == "jsonb":
        return f"nullif($1->'{key}', 'null'::jsonb)"
    if cast.endswith("[]"):
        return (
            f"ARRAY(SELECT e FROM jsonb_array_elements_text($1->'{key}') WITH ORDINALITY"
            f" AS x(e, n) ORDER BY n)::{cast}"
        )
    return f"($1->>'{key}')::{cast}"


def _prepare_bundled(name: str, sql: str) -> str:
    body = re.sub(r"%\((\w+)\)s::(\w+(?:\[\])?)", _from_bundle, sql)
    if "%(" in body:
        raise AssertionError("every parameter of a bundled statement needs a cast")
    return f"PREPARE {name}(jsonb) AS {body}"


# Advisory locks in a statement of their own, so that the ingest statement's snapshot is
# taken after they are held and sees what their last holder committed.
_PREPARE_LOCKS = (
    "PREPARE hogsend_ingest_locks(jsonb) AS"
    " SELECT count(pg_advisory_xact_lock(h)) FROM ("
    " SELECT DISTINCT hashtext(CASE WHEN n LIKE 'email:%' THEN lower(n) ELSE n END) AS h"
    " FROM jsonb_array_elements_text($1) AS n ORDER BY h) AS locks"
)
_PREPARE_INGEST = _prepare_bundled("hogsend_ingest_event", _FAST_INGEST)
# Every statement the fast path executes, by prepared name.
_FAST_STATEMENTS = {
    "hogsend_ingest_locks": _PREPARE_LOCKS,
    "hogsend_ingest_event": _PREPARE_INGEST,
    **{
        f"hogsend_ingest_{kind}": _prepare_bundled(f"hogsend_ingest_{kind}", sql)
        for kind, sql in _FAST_INGEST_ONE_BY_KIND.items()
    },
}

# One simple-protocol query, which Postgres runs as one transaction. The driver pool's
# connections commit asynchronously (bookkeeping); an event gets the durability the
# server is configured with, like every other write. Sequential scans are off for it:
# every table access is a point lookup by a unique key, and the plan Postgres caches
# for the prepared statement (built once per connection) must not be a scan chosen
# while the tables were small; on a fresh database it was, and a match scanned every
# contact twice until the next ANALYZE (bench/ingest.py: ~0.3 ms of Postgres CPU per
# event at 20,000 contacts).
_LOCKED_FAST_INGEST = (
    b"SET LOCAL synchronous_commit TO DEFAULT; SET LOCAL enable_seqscan TO off;"
    b" EXECUTE hogsend_ingest_locks(%b); EXECUTE hogsend_ingest_event(%b)"
)

# The one-key statement takes no advisory locks, like a batch: with one key, what they
# would order is already ordered by the statement itself. The contact is found and
# row-locked before anything is written (a concurrent merge or delete shows as a
# deleted row: the general path then); a contact created concurrently for the same key
# fails the contact's insert on its live unique index, and a concurrent claim of the
# same idempotency key fails the event's insert (either way all is rolled back: the
# general path then, which finds the contact or the duplicate). A plain insert rather
# than ``ON CONFLICT DO NOTHING``, whose speculative insertion (a check of every unique
# index first, a confirmation record after) cost ~4% of the backend's instructions per
# created contact (callgrind) for a race that ends on the general path either way. The
# general path copes with lock-free writers already (batches are one). Measured on one
# connection, the lock statement was ~0.04 ms of the ~0.3 ms of Postgres CPU per event.
_ONE_KEY_FAST_INGEST = (
    b"SET LOCAL synchronous_commit TO DEFAULT; SET LOCAL enable_seqscan TO off; EXECUTE %b(%b)"
)
_ONE_KEY_STATEMENTS = {kind: f"hogsend_ingest_{kind}".encode() for kind in _ONE_KEY_SHAPES}


def one_key_query(conn: psycopg.AsyncConnection[Any], kind: str, bundle: str) -> bytes:
    """The text of the one-key fast path's query (see :func:`fast_ingest_query`).

    Args:
        conn: the connection the query is for (its quoting rules).
        kind: the event's one kind of key (``external``, ``email``, ``anonymous``).
        bundle: the statement's values as one JSON object.
    """
    quote = psycopg.pq.Escaping(conn.pgconn).escape_literal
    return _ONE_KEY_FAST_INGEST % (_ONE_KEY_STATEMENTS[kind], quote(bundle.encode()))


def fast_ingest_query(conn: psycopg.AsyncConnection[Any], names: list[str], bundle: str) -> bytes:
    """The text of the fast path's one query, its two JSON values quoted by libpq.

    Built here rather than by a psycopg client-side cursor: its per-query parameter
    conversion and quoting in Python cost more of the API's CPU than anything else in
    the request's database work (cProfile, bench/ingest.py). ``PQescapeLiteral`` quotes
    for the connection's own encoding and ``standard_conforming_strings``.
    """
    quote = psycopg.pq.Escaping(conn.pgconn).escape_literal
    return _LOCKED_FAST_INGEST % (
        quote(to_json(names).encode()),
        quote(bundle.encode()),
    )


async def _prepare_fast_statements(conn: psycopg.AsyncConnection[Any]) -> None:
    """Prepare, on ``conn``, those of the fast path's statements it does not have yet."""
    cursor = await conn.execute(
        "SELECT name FROM pg_prepared_statements WHERE name = ANY(%s)",
        (list(_FAST_STATEMENTS),),
        prepare=False,
    )
    have = {name for (name,) in await cursor.fetchall()}
    for name, sql in _FAST_STATEMENTS.items():
        if name not in have:
            await conn.execute(sql, prepare=False)


async def ingest_event_fast(
    conn: psycopg.AsyncConnection[Any],
    item: EventInput,
    *,
    notify: bool = False,
    now: datetime | None = None,
) -> IngestResult | None:
    """Store one event in one round trip when the contact needs no link or merge.

    For the hot path of ``POST /v1/events``, on a raw psycopg connection in autocommit
    mode (the API's driver pool). One simple-protocol query, which Postgres runs as one
    transaction, takes the advisory locks :func:`ingest_event` takes (same names, same
    order), then executes a statement (all prepared on the connection on first use)
    that stores the event when every given key names one live contact directly
    (its properties patched and last seen moved as :func:`ingest_event` does) or when no
    key is known (a new contact). An event with one key and no contact properties, the
    common shape, runs a smaller statement with the same rules (``_FAST_INGEST_ONE``)
    and takes no advisory locks (why that is safe: ``_ONE_KEY_FAST_INGEST``).
    A stored key is reported as ``duplicate`` and nothing is written. Events with
    ``lists`` always take the general path.

    Why not psycopg's own prepared statements: two of them need two round trips, or a
    pipeline, whose bookkeeping cost the API more CPU than the statements (py-spy); one
    query with the parameters as literals is one write and one read on the socket.

    Returns:
        The result, or None when the event needs :func:`ingest_event` (attaching a key,
        merging, a key known through an alias, list choices, a lost race): nothing was
        written.
    """
    identity = item.identity
    if identity is None:
        raise ValueError("the fast path is for events with an identity")
    if item.lists:
        return None  # rare enough to leave to the general path
    now = aware_now(now)
    keys = identity.keys
    new_id, event_id = random_uuids(2)
    patch = item.contact_properties
    if len(keys) == 1 and not patch:
        # The common shape: its own, smaller statement (see _FAST_INGEST_ONE), and no
        # advisory locks (see _ONE_KEY_FAST_INGEST).
        [(kind, value)] = keys
        properties = item.properties
        payload = properties if type(properties) is dict else dict(properties)
        occurred_at = item.occurred_at
        bundle: dict[str, object] = {
            "now": now.isoformat(),
            "key": item.idempotency_key,
            "val": value,
            "new_id": new_id,
            "event_id": event_id,
            "name": item.name,
            "properties": payload,
            "source": item.source,
            "occurred_at": None if occurred_at is None else occurred_at.isoformat(),
            "notify": notify,
        }
        query = one_key_query(conn, kind, bundle_json(bundle, payload))
    else:
        names = {k.lock_name for k in keys}
        if item.idempotency_key is not None:
            names.add(idempotency_lock_name(item.idempotency_key))
        query = fast_ingest_query(
            conn, sorted(names), to_json(_general_bundle(item, now, new_id, event_id, notify))
        )
    cursor = conn.cursor()
    try:
        try:
            await cursor.execute(query, prepare=False)
        except psycopg.errors.InvalidSqlStatementName:
            # First use on this connection (all of it was rolled back): prepare, retry.
            await _prepare_fast_statements(conn)
            await cursor.execute(query, prepare=False)
    except psycopg.errors.UniqueViolation:
        return None  # a key (the event's or a new contact's) taken concurrently; all rolled back
    while cursor.nextset():
        pass  # to the ingest statement's result, the last one
    row = await cursor.fetchone()
    assert row is not None
    action, stored_id = row[0], row[1]
    if stored_id is not None:
        return IngestResult(
            status="stored", event_id=stored_id, contact_id=row[2], contact_key=row[3]
        )
    if action == "duplicate":
        return IngestResult(
            status="duplicate", event_id=row[4], contact_id=row[5], contact_key=row[6]
        )
    return None


def _general_bundle(
    item: EventInput, now: datetime, new_id: uuid.UUID, event_id: uuid.UUID, notify: bool
) -> dict[str, object]:
    """The values of the general fast statement (any keys, a property patch)."""
    identity = item.identity
    assert identity is not None
    keys = identity.keys
    patch = item.contact_properties
    return {
        "kinds": [k.kind for k in keys],
        "vals": [k.value for k in keys],
        "key": item.idempotency_key,
        "new_id": new_id,
        "user_id": identity.user_id,
        "email": identity.email,
        "anonymous_id": identity.anonymous_id,
        "new_properties": merge_properties({}, patch) if patch else {},
        "new_key": identity.user_id or identity.anonymous_id or str(new_id),
        "event_id": event_id,
        "name": item.name,
        "properties": dict(item.properties),
        "source": item.source,
        "occurred_at": item.occurred_at,
        "now": now,
        "patch": dict(patch) if patch else None,
        "notify": notify,
    }
