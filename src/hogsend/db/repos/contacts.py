"""Contacts: identity resolution, lookups, deletion and erasure, listings and the timeline.

Every function takes the caller's session and never commits: the caller owns the
transaction (an ingest resolves the contact and stores the event in ONE transaction).
The rules (normalisation, survivor choice, folds, conflicts) are pure and live in
:mod:`hogsend.core.identity`; docs/decisions/0002-identity.md explains them.

Concurrency: :func:`resolve_contact` takes ``pg_advisory_xact_lock`` on every given key
(``<kind>:<value>``, emails lower-cased) in hash order, so two requests about the same
key run one after the other, then locks the matched contact rows (``FOR NO KEY UPDATE``,
in id order) and re-checks that they are still live, so a concurrent merge of one of
them is seen instead of written around. Inserts of new contacts use ``ON CONFLICT DO
NOTHING`` and look again when they lose, so writers that take no advisory lock (the
bulk ingest path) cannot make it create a duplicate either. A rare deadlock between
two transactions touching the same contacts in different orders is possible; Postgres
aborts one of them (see :func:`hogsend.db.repos.events.is_transient_error`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Row, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.clock import aware_now
from hogsend.core.contact import Contact, Event, TimelineEntry
from hogsend.core.identity import (
    KEY_KINDS,
    Identity,
    IdentityKey,
    KeyKind,
    Resolution,
    ResolutionPlan,
    contact_value,
    fold_properties,
    merge_properties,
    order_for_merge,
    plan_merge,
    plan_resolution,
    resolved_key,
)
from hogsend.core.pagination import InvalidCursor, Page, decode_cursor, encode_cursor, page_of
from hogsend.db import prepared
from hogsend.errors import HogsendError

MAX_PAGE_SIZE = 500
# How often a resolution starts over because a matched contact was merged away or a
# concurrent insert won; each round sees the other transaction's committed result.
_MAX_ROUNDS = 8
_UNIQUE_VIOLATION = "23505"


class ResolutionRace(HogsendError):
    """Identity resolution kept losing races with concurrent merges; retry the transaction."""

    code = "resolution-race"


def _json_default(obj: object) -> str:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, uuid.UUID):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# One encoder for every call: ``json.dumps`` with options builds a new one each time,
# which a batch of events does a thousand times and more.
_ENCODE = json.JSONEncoder(default=_json_default, separators=(",", ":")).encode


def to_json(value: object) -> str:
    """JSON for a ``jsonb`` parameter (datetimes as ISO 8601, UUIDs as strings)."""
    return _ENCODE(value)


def rows_to_json(rows: object) -> str:
    """:func:`to_json` of rows built in this package: ids, keys, names, flags, timestamps.

    Encoded by orjson, about ten times faster than the standard encoder on a batch's
    event rows (the standard one calls back into Python for every timestamp); what
    orjson refuses (an integer past 64 bits, a lone surrogate) goes to :func:`to_json`.
    Not for user payloads: orjson writes a NaN as ``null`` where :func:`to_json` writes
    ``NaN``, which Postgres refuses, and a payload must be refused the same way as ever.
    Timestamps must be in UTC (``tzinfo`` :data:`datetime.UTC`): orjson writes other
    offsets in whole minutes, dropping the seconds of historical ones (``-06:41:16``).
    """
    try:
        return orjson.dumps(rows, default=_json_default).decode()
    except orjson.JSONEncodeError:
        return _ENCODE(rows)


# --------------------------------------------------------------------------- rows

CONTACT_COLUMNS = (
    "id, external_id, email, anonymous_id, timezone, properties, first_seen_at, last_seen_at,"
    " created_at, updated_at, deleted_at, erased_at"
)


def contact_from_row(row: Row[Any]) -> Contact:
    """A :class:`Contact` from a row selected with :data:`CONTACT_COLUMNS`."""
    m = row._mapping
    return Contact(
        id=m["id"],
        key=resolved_key(m["external_id"], m["anonymous_id"], m["id"]),
        user_id=m["external_id"],
        email=m["email"],
        anonymous_id=m["anonymous_id"],
        timezone=m["timezone"],
        properties=m["properties"] or {},
        first_seen_at=m["first_seen_at"],
        last_seen_at=m["last_seen_at"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        deleted_at=m["deleted_at"],
        erased_at=m["erased_at"],
    )


# --------------------------------------------------------------------------- locks & lookups

_ADVISORY_LOCK = text(
    """
    SELECT count(pg_advisory_xact_lock(h)) FROM (
        SELECT DISTINCT hashtext(CASE WHEN n LIKE 'email:%' THEN lower(n) ELSE n END) AS h
        FROM unnest(CAST(:names AS text[])) AS n
        ORDER BY h
    ) AS locks
    """
)


async def advisory_lock(session: AsyncSession, names: Iterable[str]) -> None:
    """Take transaction-scoped advisory locks on ``names`` in one statement.

    Locks are taken in the order of their hash, so any two transactions locking
    overlapping sets queue instead of deadlocking. ``email:`` names are lower-cased by
    Postgres (the same ``lower()`` the unique index uses).
    """
    unique = sorted(set(names))
    if unique:
        await session.execute(_ADVISORY_LOCK, {"names": unique})


# (key ordinal, direct?, contact id) for every live contact a key names: the contact
# holding it, or the target of its alias. 0-ordinals are contact ids asked for as such.
_MATCHES = """
    WITH k AS (
        SELECT * FROM unnest(CAST({kinds} AS text[]), CAST({vals} AS text[]))
            WITH ORDINALITY AS k(kind, value, ord)
    ), m AS (
        SELECT k.ord, true AS direct, c.id FROM k JOIN contacts c
            ON k.kind = 'external' AND c.external_id = k.value AND c.deleted_at IS NULL
        UNION ALL
        SELECT k.ord, true, c.id FROM k JOIN contacts c
            ON k.kind = 'email' AND lower(c.email) = lower(k.value)
            AND c.email IS NOT NULL AND c.deleted_at IS NULL
        UNION ALL
        SELECT k.ord, true, c.id FROM k JOIN contacts c
            ON k.kind = 'anonymous' AND c.anonymous_id = k.value AND c.deleted_at IS NULL
        UNION ALL
        SELECT k.ord, false, c.id FROM k
            JOIN contact_aliases a ON a.alias_kind = k.kind
                AND a.alias_value = CASE WHEN k.kind = 'email' THEN lower(k.value) ELSE k.value END
            JOIN contacts c ON c.id = a.contact_id AND c.deleted_at IS NULL
        UNION ALL
        SELECT 0, true, t.id FROM unnest(CAST({ids} AS uuid[])) AS t(id)
    )
    SELECT m.ord, m.direct, {columns} FROM m JOIN contacts c ON c.id = m.id
"""

# What ingest reads of a matched contact (see :func:`_ingest_contact`), positionally;
# properties only when asked for: decoding every contact's jsonb was a fifth of the
# lookup's CPU in a batch that patches none of them.
_INGEST_COLUMNS = (
    "c.id, c.external_id, c.email, c.anonymous_id, c.first_seen_at, c.last_seen_at,"
    " c.deleted_at, CASE WHEN CAST(%(properties)s AS boolean) THEN c.properties END"
)
# Locks in id order. The join has no liveness condition on purpose: a row merged away
# while we waited comes back with its new deleted_at, so the caller sees it vanished.
_LOCKED = " ORDER BY c.id FOR NO KEY UPDATE OF c"

_BINDS = {"kinds": ":kinds", "vals": ":vals", "ids": ":ids"}
_LOOKUP = text(_MATCHES.format(columns="c.*", **_BINDS))
_LOOKUP_LOCKED = text(_MATCHES.format(columns="c.*", **_BINDS) + _LOCKED)
# Ingest's lookups run on the driver connection (hogsend.db.prepared): a batch runs one
# or two per request, and each cost the API ~100 µs more through the session.
_DRIVER_BINDS = {"kinds": "%(kinds)s", "vals": "%(vals)s", "ids": "%(ids)s"}
_INGEST_LOOKUP = _MATCHES.format(columns=_INGEST_COLUMNS, **_DRIVER_BINDS).encode()
_INGEST_LOOKUP_LOCKED = (
    _MATCHES.format(columns=_INGEST_COLUMNS, **_DRIVER_BINDS) + _LOCKED
).encode()


def text_array(values: Iterable[str]) -> str:
    """A Postgres array literal of ``values`` for a ``CAST(:x AS text[])`` parameter.

    Every element is double-quoted with ``"`` and ``\\`` escaped, so any text (commas,
    braces, ``NULL``) stays one element. Written here rather than passing a list: the
    driver's list dumper, in Python per element, cost more of a 500-event batch's lookup
    than the rows it returned.
    """
    return (
        "{"
        + ",".join(
            f'"{v}"'
            if '"' not in v and "\\" not in v
            else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in values
        )
        + "}"
    )


def _ingest_contact(row: Sequence[Any]) -> Contact:
    # A row of _INGEST_COLUMNS after (ord, direct).
    contact_id, external_id, anonymous_id = row[2], row[3], row[5]
    return Contact(
        id=contact_id,
        key=resolved_key(external_id, anonymous_id, contact_id),
        user_id=external_id,
        email=row[4],
        anonymous_id=anonymous_id,
        properties=row[9] or {},
        first_seen_at=row[6],
        last_seen_at=row[7],
        deleted_at=row[8],
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Matches:
    """What :func:`lock_matches` found.

    Attributes:
        by_key: the live, locked contact each known key resolves to.
        by_id: the contacts asked for by id, locked, as they are now (possibly deleted).
    """

    by_key: dict[IdentityKey, Contact]
    by_id: dict[uuid.UUID, Contact]


async def _matches(
    session: AsyncSession,
    keys: Sequence[IdentityKey],
    ids: Iterable[uuid.UUID],
    *,
    lock: bool,
    ingest: IngestColumns | None = None,
) -> tuple[Matches, bool]:
    unique = list(dict.fromkeys(keys))
    wanted = sorted(set(ids))
    if not unique and not wanted:
        return Matches(by_key={}, by_id={}), False
    # Arrays, not one JSON value: Postgres knows an array's length when it plans, and
    # with a JSON value's default estimate (100 rows) it joined 500 keys' contacts with
    # a sequential scan of every contact (24 ms instead of 12 ms at 20,000 contacts).
    kinds = text_array([k.kind for k in unique])
    vals = text_array([k.value for k in unique])
    rows: Sequence[Sequence[Any]]
    build: Callable[[Any], Contact] = contact_from_row if ingest is None else _ingest_contact
    if ingest is None:
        statement = _LOOKUP_LOCKED if lock else _LOOKUP
        # All at once: iterating the result fetches row by row through three layers.
        result = await session.execute(statement, {"kinds": kinds, "vals": vals, "ids": wanted})
        rows = result.all()
    else:
        rows = await prepared.fetch(
            await session.connection(),
            _INGEST_LOOKUP_LOCKED if lock else _INGEST_LOOKUP,
            {
                "kinds": kinds,
                "vals": vals,
                "ids": prepared.text_array(wanted),
                "properties": ingest.properties,
            },
        )
    by_key: dict[IdentityKey, Contact] = {}
    by_id: dict[uuid.UUID, Contact] = {}
    direct: set[IdentityKey] = set()
    vanished = False
    for row in rows:
        contact = build(row)
        ordinal = row[0]  # by position: a name lookup on a row costs more, 500 times over
        if ordinal == 0:
            by_id[contact.id] = contact
            continue
        if contact.deleted_at is not None:
            vanished = True
            continue
        key = unique[ordinal - 1]
        if row[1]:
            by_key[key] = contact
            direct.add(key)
        elif key not in direct:
            by_key[key] = contact
    return Matches(by_key=by_key, by_id=by_id), vanished


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestColumns:
    """Read only what ingest needs of each contact found.

    The contacts then carry their id, keys, ``first_seen_at``, ``last_seen_at`` and
    ``deleted_at``, and their properties only if ``properties`` (else empty); the other
    fields are None.
    """

    properties: bool


async def lookup_contacts(
    session: AsyncSession, keys: Sequence[IdentityKey], *, ingest: IngestColumns | None = None
) -> dict[IdentityKey, Contact]:
    """The live contact each key resolves to: the one holding it, else its alias's target.

    Keys that resolve to nothing are absent from the result. Takes no row locks: use
    :func:`lock_matches` before deciding anything on them. ``ingest``: see
    :class:`IngestColumns` (default: every column).
    """
    matches, _ = await _matches(session, keys, (), lock=False, ingest=ingest)
    return matches.by_key


async def lock_matches(
    session: AsyncSession,
    keys: Sequence[IdentityKey],
    ids: Iterable[uuid.UUID] = (),
    ingest: IngestColumns | None = None,
) -> Matches | None:
    """Look the keys (and contact ids) up and lock every contact found, in id order.

    Returns None when a contact a key matched was merged away or deleted while we waited
    for its lock: look again (the keys now lead to the survivor, or nowhere).
    ``ingest``: see :class:`IngestColumns` (default: every column).
    """
    matches, vanished = await _matches(session, keys, ids, lock=True, ingest=ingest)
    return None if vanished else matches


_INSERT_CONTACTS = text(
    """
    INSERT INTO contacts (id, external_id, email, anonymous_id, properties,
                          first_seen_at, last_seen_at, created_at, updated_at)
    SELECT v.id, v.external_id, v.email, v.anonymous_id, coalesce(v.properties, '{}'::jsonb),
           CAST(:now AS timestamptz), CAST(:now AS timestamptz),
           CAST(:now AS timestamptz), CAST(:now AS timestamptz)
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        ord int, id uuid, external_id text, email text, anonymous_id text, properties jsonb)
    ORDER BY v.ord
    ON CONFLICT DO NOTHING
    RETURNING id
    """
)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewContact:
    """A contact to insert: its keys and initial properties."""

    identity: Identity
    properties: Mapping[str, Any]
    id: uuid.UUID


async def insert_contacts(
    session: AsyncSession, new: Sequence[NewContact], now: datetime
) -> dict[uuid.UUID, Contact]:
    """Insert contacts; those whose key a live contact holds already are skipped.

    Returns the inserted ones by id (the caller's pre-generated ids). A skipped one lost a
    race: a concurrent transaction created a contact for one of its keys, and a fresh
    lookup (a new statement) sees it once that transaction committed.
    """
    if not new:
        return {}
    # Inserting in key order keeps concurrent bulk inserts waiting in the same order.
    ordered = sorted(new, key=lambda n: tuple(k.lock_name for k in n.identity.keys))
    rows = [
        {
            "ord": i,
            "id": n.id,
            "external_id": n.identity.user_id,
            "email": n.identity.email,
            "anonymous_id": n.identity.anonymous_id,
            "properties": dict(n.properties),
        }
        for i, n in enumerate(ordered)
    ]
    result = await session.execute(_INSERT_CONTACTS, {"rows": to_json(rows), "now": now})
    inserted = {row[0] for row in result}
    # Built here rather than read back: every column is known, and parsing the returned
    # rows (timestamps, jsonb) was a fifth of a batch's CPU when most contacts were new.
    return {
        n.id: Contact(
            id=n.id,
            key=resolved_key(n.identity.user_id, n.identity.anonymous_id, n.id),
            user_id=n.identity.user_id,
            email=n.identity.email,
            anonymous_id=n.identity.anonymous_id,
            properties=dict(n.properties),
            first_seen_at=now,
            last_seen_at=now,
            created_at=now,
            updated_at=now,
        )
        for n in ordered
        if n.id in inserted
    }


_BY_ID = text(f"SELECT {CONTACT_COLUMNS} FROM contacts WHERE id = :id")

_MERGED_INTO = text(
    """
    SELECT a.contact_id FROM contact_aliases a
    JOIN contacts c ON c.id = a.contact_id AND c.deleted_at IS NULL
    WHERE a.from_contact_id = :id AND a.reason = 'merge'
    LIMIT 1
    """
)


async def follow_contact(session: AsyncSession, contact_id: uuid.UUID) -> Contact | None:
    """The live contact ``contact_id`` is now: itself, or the survivor it was merged into.

    None for an unknown, deleted or erased contact. Takes no locks.
    """
    row = (await session.execute(_BY_ID, {"id": contact_id})).first()
    if row is None:
        return None
    contact = contact_from_row(row)
    if contact.deleted_at is None:
        return contact
    if contact.erased_at is not None:
        return None
    # Merges record an alias per loser key with from_contact_id = the loser, and
    # re-point older aliases on later merges, so this finds the current survivor.
    survivor_id = (await session.execute(_MERGED_INTO, {"id": contact_id})).scalar()
    if survivor_id is None:
        return None
    row = (await session.execute(_BY_ID, {"id": survivor_id})).first()
    return None if row is None else contact_from_row(row)


# --------------------------------------------------------------------------- resolution


async def resolve_contact(
    session: AsyncSession,
    identity: Identity,
    *,
    properties: Mapping[str, object] | None = None,
    now: datetime | None = None,
) -> Resolution:
    """Find, create, link or merge the contact ``identity`` names; apply ``properties``.

    One contact: each given key it lacks is attached (``linked``); a given key that is
    unknown but whose slot the contact fills with another value is NOT applied and is
    reported in ``conflicts``. No contact: one is created with every key. Several
    contacts (the keys name different people): they are merged into one survivor
    (identified before anonymous, then oldest, then lowest id), which takes over their
    history, memberships, preferences, list choices and keys (as aliases).

    ``properties`` is a shallow patch (``None`` deletes a key). ``last_seen_at`` moves to
    ``now``. Runs inside the caller's transaction; does not commit.

    Raises:
        ResolutionRace: concurrent merges kept invalidating the lookup (retry).
    """
    now = aware_now(now)
    keys = identity.keys
    await advisory_lock(session, (k.lock_name for k in keys))
    for _ in range(_MAX_ROUNDS):
        matches = await lock_matches(session, keys)
        if matches is None:
            continue  # one was merged away meanwhile; its keys now lead to the survivor
        plan = plan_resolution(identity, matches.by_key)
        if plan.action == "match":
            return await apply_plan(session, plan, properties, now=now)
        if plan.action != "create":
            resolution = await _apply_guarded(session, plan, properties, now)
            if resolution is not None:
                return resolution
            continue
        new = NewContact(
            identity=identity, properties=merge_properties({}, properties), id=uuid.uuid4()
        )
        inserted = await insert_contacts(session, [new], now)
        if new.id in inserted:
            contact = inserted[new.id]
            return Resolution(contact_id=contact.id, key=contact.key, created=True)
    raise ResolutionRace(f"could not settle the contact for {identity!r}; retry")


async def _apply_guarded(
    session: AsyncSession,
    plan: ResolutionPlan,
    properties: Mapping[str, object] | None,
    now: datetime,
) -> Resolution | None:
    """Carry out a link or merge in a savepoint; None if a key we attach was taken meanwhile.

    A writer without our advisory locks (the bulk ingest path creating a contact) may
    take a key we are attaching: the unique index refuses, and the caller looks again.
    """
    try:
        async with session.begin_nested():
            return await apply_plan(session, plan, properties, now=now)
    except IntegrityError as exc:
        if getattr(exc.orig, "sqlstate", None) != _UNIQUE_VIOLATION:
            raise
        return None


async def merge_contacts(
    session: AsyncSession, contact_ids: Sequence[uuid.UUID], *, now: datetime | None = None
) -> Resolution | None:
    """Merge the given contacts into one, whatever keys they hold (explicit merges).

    For a Segment ``alias`` between two identified users or an admin merge. Ids that
    were merged before follow their merge; the survivor rule picks who survives. The
    result has ``merged=False`` when they already were one contact. None if any of them
    does not exist or was deleted.

    Raises:
        ResolutionRace: concurrent merges kept moving the contacts (retry).
    """
    now = aware_now(now)
    for _ in range(_MAX_ROUNDS):
        current = [await follow_contact(session, cid) for cid in contact_ids]
        if any(contact is None for contact in current):
            return None
        contacts = {c.id: c for c in current if c is not None}
        names = [
            IdentityKey(kind, value).lock_name
            for contact in contacts.values()
            for kind in KEY_KINDS
            if (value := contact_value(contact, kind)) is not None
        ]
        await advisory_lock(session, names)
        matches = await lock_matches(session, (), contacts)
        assert matches is not None  # only keys can vanish; ids come back as they are
        locked = list(matches.by_id.values())
        if len(locked) != len(contacts) or any(c.deleted_at is not None for c in locked):
            continue  # one was merged or deleted meanwhile: follow it again
        if len(locked) == 1:
            return Resolution(contact_id=locked[0].id, key=locked[0].key)
        resolution = await _apply_guarded(session, plan_merge(locked), None, now)
        if resolution is not None:
            return resolution
    raise ResolutionRace("could not settle the contacts to merge; retry")


async def alias_contact(
    session: AsyncSession, *, user_id: str, previous_id: str, now: datetime | None = None
) -> Resolution:
    """Segment's ``alias``: ``previous_id`` and ``user_id`` are the same person from now on.

    ``previous_id`` is usually the visitor's anonymous id: then this is an ordinary
    resolution of ``{userId, anonymousId}`` (promote, or merge into the user's contact).
    When ``previous_id`` is a user id a contact holds, the contact of ``user_id`` (created
    if new) and that one are merged; the survivor rule decides, and the other user id
    keeps resolving through its alias.

    Raises:
        IdentityError: an id is blank or invalid.
    """
    identity = Identity(user_id=user_id, anonymous_id=previous_id)
    previous = identity.anonymous_id
    assert previous is not None
    known = await lookup_contacts(session, [IdentityKey("external", previous)])
    holder = known.get(IdentityKey("external", previous))
    if holder is None or previous == identity.user_id:
        return await resolve_contact(session, identity, now=now)
    target = await resolve_contact(session, Identity(user_id=user_id), now=now)
    merged = await merge_contacts(session, [holder.id, target.contact_id], now=now)
    return merged if merged is not None else target


async def resolve_by_contact_id(session: AsyncSession, contact_id: uuid.UUID) -> Resolution | None:
    """Resolve a contact the caller already knows by id (internal producers).

    A merged-away id resolves to its survivor. Nothing is changed: no key is attached,
    ``last_seen_at`` does not move. None for an unknown, deleted or erased contact.
    """
    contact = await follow_contact(session, contact_id)
    if contact is None:
        return None
    return Resolution(contact_id=contact.id, key=contact.key)


_BY_RESOLVED_KEY = text(
    f"""
    SELECT {CONTACT_COLUMNS} FROM contacts
    WHERE deleted_at IS NULL AND (
        external_id = :key
        OR (external_id IS NULL AND anonymous_id = :key)
        OR (external_id IS NULL AND anonymous_id IS NULL AND id = CAST(:uuid AS uuid))
    )
    LIMIT 1
    """
)


def _as_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


async def resolve_by_key(session: AsyncSession, key: str) -> Resolution | None:
    """Resolve a stored resolved key (a ``user_id`` of a history row) to its contact.

    For internal producers that only have a history row's ``user_id``: the key is
    matched as what it is (external id, anonymous id, or contact uuid), never treated as
    a new ``userId``. A key that is no longer the contact's resolved key (its anonymous id
    from before it was identified) or was merged away (through its alias, or a loser's
    uuid) still finds the contact. Changes nothing.
    """
    as_uuid = _as_uuid(key)
    row = (await session.execute(_BY_RESOLVED_KEY, {"key": key, "uuid": as_uuid})).first()
    if row is not None:
        contact = contact_from_row(row)
        return Resolution(contact_id=contact.id, key=contact.key)
    found = await lookup_contacts(
        session, [IdentityKey("external", key), IdentityKey("anonymous", key)]
    )
    if found:
        survivor: Contact | None = next(iter(found.values()))
    elif as_uuid is not None:
        survivor = await follow_contact(session, as_uuid)
    else:
        survivor = None
    return None if survivor is None else Resolution(contact_id=survivor.id, key=survivor.key)


_TOUCH_CONTACT = text(
    """
    UPDATE contacts SET
        last_seen_at = greatest(last_seen_at, CAST(:now AS timestamptz)),
        properties = CAST(:properties AS jsonb),
        updated_at = CASE WHEN :changed THEN CAST(:now AS timestamptz) ELSE updated_at END
    WHERE id = :id
    """
)

_SET_KEYS = text(
    """
    UPDATE contacts SET
        external_id = coalesce(external_id, :external_id),
        email = coalesce(email, :email),
        anonymous_id = coalesce(anonymous_id, :anonymous_id),
        properties = CAST(:properties AS jsonb),
        timezone = coalesce(timezone, :timezone),
        first_seen_at = least(first_seen_at, CAST(:first_seen_at AS timestamptz)),
        last_seen_at = greatest(last_seen_at, CAST(:now AS timestamptz)),
        updated_at = CAST(:now AS timestamptz)
    WHERE id = :id
    """
)

_SOFT_DELETE_LOSERS = text(
    """
    UPDATE contacts
    SET deleted_at = CAST(:now AS timestamptz), updated_at = CAST(:now AS timestamptz)
    WHERE id = ANY(CAST(:ids AS uuid[]))
    """
)

_PROMOTE_ALIASES = text(
    """
    INSERT INTO contact_aliases (contact_id, alias_kind, alias_value, reason, from_contact_id)
    SELECT :contact_id, k.kind, CASE WHEN k.kind = 'email' THEN lower(k.value) ELSE k.value END,
           'promote', NULL
    FROM unnest(CAST(:kinds AS text[]), CAST(:vals AS text[])) AS k(kind, value)
    ON CONFLICT (alias_kind, alias_value) DO UPDATE SET
        contact_id = EXCLUDED.contact_id, reason = 'promote', from_contact_id = NULL,
        updated_at = now()
    """
)


def _attached(plan: ResolutionPlan, kind: KeyKind) -> str | None:
    return next((k.value for k in plan.attach if k.kind == kind), None)


async def apply_plan(
    session: AsyncSession,
    plan: ResolutionPlan,
    properties: Mapping[str, object] | None,
    *,
    now: datetime,
) -> Resolution:
    """Carry out a match, link or merge plan on contacts the caller has locked."""
    target = plan.target
    if target is None:
        raise ValueError("apply_plan cannot create; insert the contact instead")
    key_after = plan.key_after()

    if plan.action == "match":
        new_properties = merge_properties(target.properties, properties)
        changed = new_properties != dict(target.properties)
        await session.execute(
            _TOUCH_CONTACT,
            {
                "id": target.id,
                "now": now,
                "properties": to_json(new_properties),
                "changed": changed,
            },
        )
        return Resolution(contact_id=target.id, key=key_after, conflicts=plan.conflicts)

    losers = plan.losers
    loser_ids = [loser.id for loser in losers]
    if losers:
        # Losers first: soft-deleting them frees their keys for the survivor.
        await session.execute(_SOFT_DELETE_LOSERS, {"ids": loser_ids, "now": now})
        new_properties = fold_properties(target, losers, properties)
        timezone = next((c.timezone for c in order_for_merge(losers) if c.timezone), None)
        first_seen = min(
            (c.first_seen_at for c in (target, *losers) if c.first_seen_at is not None),
            default=now,
        )
    else:
        new_properties = merge_properties(target.properties, properties)
        timezone = None
        first_seen = target.first_seen_at or now
    await session.execute(
        _SET_KEYS,
        {
            "id": target.id,
            "external_id": _attached(plan, "external"),
            "email": _attached(plan, "email"),
            "anonymous_id": _attached(plan, "anonymous"),
            "properties": to_json(new_properties),
            "timezone": timezone,
            "first_seen_at": first_seen,
            "now": now,
        },
    )
    exited: tuple[str, ...] = ()
    if losers or key_after != target.key:
        exited = await move_history(
            session,
            survivor_id=target.id,
            loser_ids=loser_ids,
            key=key_after,
            email=target.email or _attached(plan, "email"),
            now=now,
        )
    if losers:
        await _fold_preferences(session, target.id, loser_ids, now)
        await _fold_list_subscriptions(session, target.id, loser_ids, now)
        await _alias_losers(session, target.id, losers, now)
    else:
        promoted = list(plan.attach)
        await session.execute(
            _PROMOTE_ALIASES,
            {
                "contact_id": target.id,
                "kinds": [k.kind for k in promoted],
                "vals": [k.value for k in promoted],
            },
        )
    return Resolution(
        contact_id=target.id,
        key=key_after,
        linked=True,
        merged=bool(losers),
        merged_contact_ids=tuple(loser_ids),
        conflicts=plan.conflicts,
        exited_workflow_ids=exited,
    )


# --------------------------------------------------------------------------- merge folds

# Keep one running run per journey: the survivor's if it has one, else the oldest.
_EXIT_DUPLICATE_RUNS = text(
    """
    WITH ranked AS (
        SELECT id, row_number() OVER (
            PARTITION BY journey_id ORDER BY (contact_id = :survivor) DESC, created_at, id
        ) AS rn
        FROM journey_states
        WHERE contact_id = ANY(CAST(:ids AS uuid[]))
          AND status IN ('enrolled', 'active', 'waiting') AND deleted_at IS NULL
    )
    UPDATE journey_states j SET
        status = 'exited', exited_at = CAST(:now AS timestamptz), exit_reason = 'merged',
        updated_at = CAST(:now AS timestamptz)
    FROM ranked r WHERE j.id = r.id AND r.rn > 1
    RETURNING j.workflow_id
    """
)

# Same for bucket stays: one active row per bucket survives, the others are left.
_LEAVE_DUPLICATE_STAYS = text(
    """
    WITH ranked AS (
        SELECT id, row_number() OVER (
            PARTITION BY bucket_id ORDER BY (contact_id = :survivor) DESC, entered_at, id
        ) AS rn
        FROM bucket_memberships
        WHERE contact_id = ANY(CAST(:ids AS uuid[])) AND status = 'active' AND deleted_at IS NULL
    )
    UPDATE bucket_memberships b SET
        status = 'left', left_at = CAST(:now AS timestamptz), left_reason = 'merge',
        updated_at = CAST(:now AS timestamptz)
    FROM ranked r WHERE b.id = r.id AND r.rn > 1
    """
)

# Rows to move: every row of a loser, and the survivor's own rows under an old key.
_MOVE = "contact_id = ANY(CAST(:ids AS uuid[])) AND (contact_id <> :survivor OR user_id <> :key)"

_MOVE_STATEMENTS = (
    text(f"UPDATE user_events SET contact_id = :survivor, user_id = :key WHERE {_MOVE}"),
    text(
        "UPDATE event_outbox SET contact_id = :survivor, contact_key = :key"
        " WHERE contact_id = ANY(CAST(:ids AS uuid[]))"
        " AND (contact_id <> :survivor OR contact_key <> :key)"
        " AND processed_at IS NULL AND dead_at IS NULL"
    ),
    text(
        "UPDATE journey_states SET contact_id = :survivor, user_id = :key,"
        " user_email = CASE WHEN contact_id <> :survivor"
        " THEN coalesce(CAST(:email AS text), user_email)"
        " ELSE coalesce(user_email, CAST(:email AS text)) END,"
        f" updated_at = CAST(:now AS timestamptz) WHERE {_MOVE}"
    ),
    text(f"UPDATE journey_logs SET contact_id = :survivor, user_id = :key WHERE {_MOVE}"),
    text(
        "UPDATE bucket_memberships SET contact_id = :survivor, user_id = :key,"
        " user_email = CASE WHEN contact_id <> :survivor"
        " THEN coalesce(CAST(:email AS text), user_email)"
        " ELSE coalesce(user_email, CAST(:email AS text)) END,"
        f" updated_at = CAST(:now AS timestamptz) WHERE {_MOVE}"
    ),
    text(
        "UPDATE email_sends SET contact_id = :survivor, user_id = :key,"
        " user_email = CASE WHEN contact_id <> :survivor"
        " THEN coalesce(CAST(:email AS text), user_email)"
        " ELSE coalesce(user_email, CAST(:email AS text)) END,"
        f" updated_at = CAST(:now AS timestamptz) WHERE {_MOVE}"
    ),
)


async def move_history(
    session: AsyncSession,
    *,
    survivor_id: uuid.UUID,
    loser_ids: Sequence[uuid.UUID],
    key: str,
    email: str | None,
    now: datetime,
) -> tuple[str, ...]:
    """Move the losers' history onto the survivor and re-key the survivor's own.

    Every history table is matched by ``contact_id`` and gets the survivor's id and
    resolved key. Where both sides have a running run of one journey (or an active stay
    in one bucket) the loser's is ended first (``exited``/``merged``, ``left``/``merge``)
    so the partial unique indexes hold; nothing is deleted, so rows referencing a run
    (sends) keep pointing at it. Only pending outbox rows move; processed ones are
    history of the event as it was handled.

    Returns:
        Workflow ids of the runs that were exited (to be cancelled by the caller).
    """
    ids = [survivor_id, *loser_ids]
    params = {"survivor": survivor_id, "ids": ids, "key": key, "email": email, "now": now}
    exited: tuple[str, ...] = ()
    if loser_ids:
        result = await session.execute(_EXIT_DUPLICATE_RUNS, params)
        exited = tuple(row[0] for row in result)
        await session.execute(_LEAVE_DUPLICATE_STAYS, params)
    for statement in _MOVE_STATEMENTS:
        await session.execute(statement, params)
    return exited


_FOLD_PREFERENCES = text(
    """
    WITH gone AS (
        DELETE FROM email_preferences WHERE contact_id = ANY(CAST(:losers AS uuid[]))
        RETURNING *
    ), folded AS (
        SELECT bool_or(unsubscribed_all) AS unsubscribed_all,
               min(unsubscribed_at) FILTER (WHERE unsubscribed_all) AS unsubscribed_at,
               max(resubscribed_at) AS resubscribed_at,
               min(created_at) AS created_at
        FROM gone HAVING count(*) > 0
    )
    INSERT INTO email_preferences AS p (contact_id, unsubscribed_all, unsubscribed_at,
                                        resubscribed_at, source, created_at, updated_at)
    SELECT :survivor, unsubscribed_all, unsubscribed_at, resubscribed_at, 'merge', created_at,
           CAST(:now AS timestamptz)
    FROM folded
    ON CONFLICT (contact_id) DO UPDATE SET
        unsubscribed_all = true,
        unsubscribed_at = EXCLUDED.unsubscribed_at,
        source = 'merge',
        updated_at = EXCLUDED.updated_at
    WHERE EXCLUDED.unsubscribed_all AND NOT p.unsubscribed_all
    """
)


async def _fold_preferences(
    session: AsyncSession, survivor: uuid.UUID, losers: Sequence[uuid.UUID], now: datetime
) -> None:
    # A global unsubscribe on either side survives the merge (OR).
    await session.execute(
        _FOLD_PREFERENCES, {"survivor": survivor, "losers": list(losers), "now": now}
    )


_FOLD_LISTS = text(
    """
    WITH gone AS (
        DELETE FROM list_subscriptions WHERE contact_id = ANY(CAST(:losers AS uuid[]))
        RETURNING *
    ), folded AS (
        SELECT list_id, bool_and(subscribed) AS subscribed,
               max(subscribed_at) AS subscribed_at,
               min(unsubscribed_at) FILTER (WHERE NOT subscribed) AS unsubscribed_at,
               min(created_at) AS created_at
        FROM gone GROUP BY list_id
    )
    INSERT INTO list_subscriptions AS s (contact_id, list_id, subscribed, source, subscribed_at,
                                         unsubscribed_at, created_at, updated_at)
    SELECT :survivor, list_id, subscribed, 'merge', subscribed_at, unsubscribed_at, created_at,
           CAST(:now AS timestamptz)
    FROM folded
    ON CONFLICT (contact_id, list_id) DO UPDATE SET
        subscribed = false,
        unsubscribed_at = EXCLUDED.unsubscribed_at,
        source = 'merge',
        updated_at = EXCLUDED.updated_at
    WHERE s.subscribed AND NOT EXCLUDED.subscribed
    """
)


async def _fold_list_subscriptions(
    session: AsyncSession, survivor: uuid.UUID, losers: Sequence[uuid.UUID], now: datetime
) -> None:
    # Per list, an explicit "no" on any side wins: never resubscribe someone by merging.
    await session.execute(_FOLD_LISTS, {"survivor": survivor, "losers": list(losers), "now": now})


_REPOINT_ALIASES = text(
    """
    UPDATE contact_aliases SET contact_id = :survivor, updated_at = CAST(:now AS timestamptz)
    WHERE contact_id = ANY(CAST(:losers AS uuid[]))
    """
)

_ALIAS_LOSER_KEYS = text(
    """
    INSERT INTO contact_aliases (contact_id, alias_kind, alias_value, reason, from_contact_id)
    SELECT :survivor, k.kind, CASE WHEN k.kind = 'email' THEN lower(k.value) ELSE k.value END,
           'merge', k.loser
    FROM unnest(CAST(:kinds AS text[]), CAST(:vals AS text[]), CAST(:from_ids AS uuid[]))
        AS k(kind, value, loser)
    ON CONFLICT (alias_kind, alias_value) DO UPDATE SET
        contact_id = EXCLUDED.contact_id, reason = 'merge',
        from_contact_id = EXCLUDED.from_contact_id, updated_at = CAST(:now AS timestamptz)
    """
)


async def _alias_losers(
    session: AsyncSession, survivor: uuid.UUID, losers: Sequence[Contact], now: datetime
) -> None:
    # Aliases that pointed at a loser (earlier merges) follow it to the survivor, so
    # chains of merges never strand a key.
    loser_ids = [loser.id for loser in losers]
    await session.execute(_REPOINT_ALIASES, {"survivor": survivor, "losers": loser_ids, "now": now})
    kinds: list[str] = []
    vals: list[str] = []
    from_ids: list[uuid.UUID] = []
    # Live contacts never share a key (unique indexes), so the rows are distinct.
    for loser in losers:
        for kind in KEY_KINDS:
            value = contact_value(loser, kind)
            if value is None:
                continue
            kinds.append(kind)
            vals.append(value)
            from_ids.append(loser.id)
    await session.execute(
        _ALIAS_LOSER_KEYS,
        {"survivor": survivor, "kinds": kinds, "vals": vals, "from_ids": from_ids, "now": now},
    )


# --------------------------------------------------------------------------- lookups


async def get_contact(
    session: AsyncSession, contact_id: uuid.UUID, *, include_deleted: bool = False
) -> Contact | None:
    """One contact by id; soft-deleted (merged, deleted, erased) ones only if asked."""
    row = (await session.execute(_BY_ID, {"id": contact_id})).first()
    if row is None:
        return None
    contact = contact_from_row(row)
    if contact.deleted_at is not None and not include_deleted:
        return None
    return contact


def _age(contact: Contact) -> tuple[datetime, str]:
    assert contact.created_at is not None  # always set on a contact read from a row
    return (contact.created_at, str(contact.id))


async def find_contacts(
    session: AsyncSession,
    *,
    email: str | None = None,
    user_id: str | None = None,
    anonymous_id: str | None = None,
) -> list[Contact]:
    """Live contacts holding ``email``, ``user_id`` or ``anonymous_id`` (any may match).

    Unlike Hogsend 0.7, a key that was merged away still finds its survivor (aliases are
    followed), so a caller looking up an old address finds the person it now belongs
    to. Returns 0 to 3 contacts, oldest first.

    Raises:
        IdentityError: none is given (after trimming) or the email is invalid.
    """
    identity = Identity(user_id=user_id, email=email, anonymous_id=anonymous_id)
    found = await lookup_contacts(session, identity.keys)
    unique = {contact.id: contact for contact in found.values()}
    return sorted(unique.values(), key=_age)


# --------------------------------------------------------------------------- delete & erase


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletedContacts:
    """What :func:`soft_delete_contacts` did.

    Attributes:
        contact_ids: the live contacts the identity resolved to, now deleted (empty when
            nothing matched).
        erased_ids: with ``erase``, every contact row wiped: the deleted ones and the
            contacts earlier merged into them (their tombstones still held old keys).
        exited_workflow_ids: journey runs ended with reason ``contact_deleted`` (the
            caller should cancel these workflows).
    """

    contact_ids: tuple[uuid.UUID, ...] = ()
    erased_ids: tuple[uuid.UUID, ...] = ()
    exited_workflow_ids: tuple[str, ...] = ()


_END_RUNS = text(
    """
    UPDATE journey_states SET status = 'exited', exited_at = CAST(:now AS timestamptz),
        exit_reason = 'contact_deleted', updated_at = CAST(:now AS timestamptz)
    WHERE contact_id = ANY(CAST(:ids AS uuid[]))
      AND status IN ('enrolled', 'active', 'waiting') AND deleted_at IS NULL
    RETURNING workflow_id
    """
)

_END_STAYS = text(
    """
    UPDATE bucket_memberships SET status = 'left', left_at = CAST(:now AS timestamptz),
        left_reason = 'contact_deleted', updated_at = CAST(:now AS timestamptz)
    WHERE contact_id = ANY(CAST(:ids AS uuid[])) AND status = 'active' AND deleted_at IS NULL
    """
)

_MERGED_LOSERS = text(
    """
    SELECT DISTINCT from_contact_id FROM contact_aliases
    WHERE contact_id = ANY(CAST(:ids AS uuid[])) AND from_contact_id IS NOT NULL
    """
)

# Personal data goes; rows that other records or metrics depend on stay, anonymised.
# Suppressions (keyed by address) are kept on purpose: see docs/decisions/0002-identity.md.
_ERASE_STATEMENTS = (
    "DELETE FROM user_events WHERE contact_id = ANY(CAST(:ids AS uuid[]))",
    "DELETE FROM event_outbox WHERE contact_id = ANY(CAST(:ids AS uuid[]))",
    "DELETE FROM contact_aliases WHERE contact_id = ANY(CAST(:ids AS uuid[]))"
    " OR from_contact_id = ANY(CAST(:ids AS uuid[]))",
    "DELETE FROM email_preferences WHERE contact_id = ANY(CAST(:ids AS uuid[]))",
    "DELETE FROM list_subscriptions WHERE contact_id = ANY(CAST(:ids AS uuid[]))",
    "DELETE FROM outbox_messages WHERE email_send_id IN"
    " (SELECT id FROM email_sends WHERE contact_id = ANY(CAST(:ids AS uuid[])))",
    "UPDATE link_clicks SET ip_address = NULL, user_agent = NULL WHERE email_send_id IN"
    " (SELECT id FROM email_sends WHERE contact_id = ANY(CAST(:ids AS uuid[])))",
    "UPDATE email_opens SET ip_address = NULL, user_agent = NULL WHERE email_send_id IN"
    " (SELECT id FROM email_sends WHERE contact_id = ANY(CAST(:ids AS uuid[])))",
    # A handed-off send still waiting for a worker holds the props: it will never go now.
    "UPDATE email_sends SET handoff = NULL, idempotency_key = NULL, status = 'skipped',"
    " decision = 'skipped_deleted', updated_at = CAST(:now AS timestamptz)"
    " WHERE handoff IS NOT NULL AND contact_id = ANY(CAST(:ids AS uuid[]))",
    "UPDATE email_sends SET to_email = '', user_email = NULL, redirected_to = NULL,"
    " user_id = contact_id::text, updated_at = CAST(:now AS timestamptz)"
    " WHERE contact_id = ANY(CAST(:ids AS uuid[]))",
    "UPDATE campaign_recipients SET email = '' WHERE contact_id = ANY(CAST(:ids AS uuid[]))",
    "UPDATE journey_states SET user_id = contact_id::text, user_email = NULL,"
    " context = '{}'::jsonb, updated_at = CAST(:now AS timestamptz)"
    " WHERE contact_id = ANY(CAST(:ids AS uuid[]))",
    "UPDATE journey_logs SET user_id = contact_id::text, detail = '{}'::jsonb"
    " WHERE contact_id = ANY(CAST(:ids AS uuid[]))",
    "UPDATE bucket_memberships SET user_id = contact_id::text, user_email = NULL,"
    " context = '{}'::jsonb, updated_at = CAST(:now AS timestamptz)"
    " WHERE contact_id = ANY(CAST(:ids AS uuid[]))",
    "UPDATE contacts SET external_id = NULL, email = NULL, anonymous_id = NULL, timezone = NULL,"
    " properties = '{}'::jsonb, erased_at = CAST(:now AS timestamptz),"
    " deleted_at = coalesce(deleted_at, CAST(:now AS timestamptz)),"
    " updated_at = CAST(:now AS timestamptz) WHERE id = ANY(CAST(:ids AS uuid[]))",
)

_SOFT_DELETE = text(
    """
    UPDATE contacts
    SET deleted_at = CAST(:now AS timestamptz), updated_at = CAST(:now AS timestamptz)
    WHERE id = ANY(CAST(:ids AS uuid[])) AND deleted_at IS NULL
    """
)


async def soft_delete_contacts(
    session: AsyncSession, identity: Identity, *, erase: bool = False, now: datetime | None = None
) -> DeletedContacts:
    """Delete the live contacts ``identity`` resolves to (each key, aliases followed).

    Soft delete: the row stays with its keys (``deleted_at`` set), running journey runs
    are exited and active bucket stays left (reason ``contact_deleted``); history stays.
    A later event with the same keys creates a new contact.

    ``erase=True`` is the GDPR erasure: additionally wipes keys, properties and timezone
    on the contact AND on the contacts merged into it earlier, deletes their events,
    aliases, pending outbox rows, preferences and list choices, and anonymises the rows
    that stay (sends keep their status for metrics with the address blanked; runs, step
    logs and stays lose their key, email and context). Suppressions stay: they are keyed
    by address and must keep protecting it.
    """
    now = aware_now(now)
    keys = identity.keys
    await advisory_lock(session, (k.lock_name for k in keys))
    for _ in range(_MAX_ROUNDS):
        matches = await lock_matches(session, keys)
        if matches is not None:
            break
    else:
        raise ResolutionRace(f"could not settle the contacts of {identity!r}; retry")
    ids = sorted({contact.id for contact in matches.by_key.values()})
    if not ids:
        return DeletedContacts()
    result = await session.execute(_END_RUNS, {"ids": ids, "now": now})
    exited = tuple(row[0] for row in result)
    await session.execute(_END_STAYS, {"ids": ids, "now": now})
    await session.execute(_SOFT_DELETE, {"ids": ids, "now": now})
    erased: list[uuid.UUID] = []
    if erase:
        losers = (await session.execute(_MERGED_LOSERS, {"ids": ids})).scalars().all()
        erased = sorted({*ids, *losers})
        for statement in _ERASE_STATEMENTS:
            await session.execute(text(statement), {"ids": erased, "now": now})
    return DeletedContacts(
        contact_ids=tuple(ids), erased_ids=tuple(erased), exited_workflow_ids=exited
    )


# --------------------------------------------------------------------------- lists


_UPSERT_LISTS = text(
    """
    INSERT INTO list_subscriptions AS s (contact_id, list_id, subscribed, source, subscribed_at,
                                         unsubscribed_at, created_at, updated_at)
    SELECT v.contact_id, v.list_id, v.subscribed, v.source,
           CASE WHEN v.subscribed THEN CAST(:now AS timestamptz) END,
           CASE WHEN NOT v.subscribed THEN CAST(:now AS timestamptz) END,
           CAST(:now AS timestamptz), CAST(:now AS timestamptz)
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
        AS v(contact_id uuid, list_id text, subscribed boolean, source text)
    ORDER BY v.contact_id, v.list_id
    ON CONFLICT (contact_id, list_id) DO UPDATE SET
        subscribed = EXCLUDED.subscribed,
        source = EXCLUDED.source,
        subscribed_at = coalesce(EXCLUDED.subscribed_at, s.subscribed_at),
        unsubscribed_at = coalesce(EXCLUDED.unsubscribed_at, s.unsubscribed_at),
        updated_at = EXCLUDED.updated_at
    WHERE s.subscribed IS DISTINCT FROM EXCLUDED.subscribed
    """
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListChoice:
    """One contact's choice for one list, as :func:`upsert_list_subscriptions` writes it."""

    contact_id: uuid.UUID
    list_id: str
    subscribed: bool
    source: str | None


async def upsert_list_subscriptions(
    session: AsyncSession, choices: Sequence[ListChoice], *, now: datetime
) -> None:
    """Write list choices in one statement; a later choice for the same pair wins.

    A choice equal to the stored one changes nothing (its time and source stay).
    """
    last: dict[tuple[uuid.UUID, str], ListChoice] = {}
    for choice in choices:
        last[(choice.contact_id, choice.list_id)] = choice
    if not last:
        return
    rows = [
        {
            "contact_id": c.contact_id,
            "list_id": c.list_id,
            "subscribed": c.subscribed,
            "source": c.source,
        }
        for c in last.values()
    ]
    await session.execute(_UPSERT_LISTS, {"rows": to_json(rows), "now": now})


async def set_list_subscriptions(
    session: AsyncSession,
    contact_id: uuid.UUID,
    lists: Mapping[str, bool],
    *,
    source: str | None,
    now: datetime | None = None,
) -> None:
    """Record a contact's choice per list (``True`` subscribed, ``False`` unsubscribed).

    List ids are not checked against the app's registered lists: that is the caller's
    job. A contact needs no email to hold list choices; they apply once it has one.
    A global unsubscribe (``email_preferences``) is not touched by subscribing.
    """
    await upsert_list_subscriptions(
        session,
        [
            ListChoice(contact_id=contact_id, list_id=list_id, subscribed=sub, source=source)
            for list_id, sub in lists.items()
        ],
        now=aware_now(now),
    )


# --------------------------------------------------------------------------- listings


def _limit(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise ValueError(f"limit must be between 1 and {MAX_PAGE_SIZE}")
    return limit


def _cursor_time(value: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise InvalidCursor("cursor is not valid") from exc
    if parsed.utcoffset() is None:
        raise InvalidCursor("cursor is not valid")
    return parsed


def _cursor_uuid(value: str) -> uuid.UUID:
    parsed = _as_uuid(value)
    if parsed is None:
        raise InvalidCursor("cursor is not valid")
    return parsed


def _escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


_LIST_CONTACTS = f"""
    SELECT {CONTACT_COLUMNS} FROM contacts
    WHERE deleted_at IS NULL
      AND (CAST(:pattern AS text) IS NULL
           OR email ILIKE :pattern OR external_id ILIKE :pattern OR anonymous_id ILIKE :pattern
           OR id = CAST(:search_id AS uuid))
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (created_at, id) < (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY created_at DESC, id DESC
    LIMIT :limit
"""


async def list_contacts(
    session: AsyncSession,
    *,
    search: str | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[Contact]:
    """Live contacts, newest first, keyset-paged on ``(created_at, id)``.

    ``search`` matches a substring of the email, user id or anonymous id (case
    insensitive, ``%``/``_`` taken literally) or a whole contact id.

    Raises:
        InvalidCursor: ``cursor`` is not one this listing handed out.
        ValueError: ``limit`` outside 1..:data:`MAX_PAGE_SIZE`.
    """
    _limit(limit)
    after_at: datetime | None = None
    after_id: uuid.UUID | None = None
    if cursor is not None:
        at, ident = decode_cursor(cursor, 2)
        after_at, after_id = _cursor_time(at), _cursor_uuid(ident)
    term = search.strip() if search else ""
    pattern = f"%{_escape_like(term)}%" if term else None
    rows = await session.execute(
        text(_LIST_CONTACTS),
        {
            "pattern": pattern,
            "search_id": _as_uuid(term) if term else None,
            "after_at": after_at,
            "after_id": after_id,
            "limit": limit + 1,
        },
    )
    contacts = [contact_from_row(row) for row in rows]
    return page_of(
        contacts,
        limit,
        lambda c: encode_cursor(c.created_at.isoformat() if c.created_at else "", str(c.id)),
    )


_CONTACT_EVENTS = text(
    """
    SELECT id, contact_id, user_id, event, properties, idempotency_key, source,
           occurred_at, received_at
    FROM user_events
    WHERE contact_id = :contact_id
      AND (CAST(:after_at AS timestamptz) IS NULL
           OR (occurred_at, id) < (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid)))
    ORDER BY occurred_at DESC, id DESC
    LIMIT :limit
    """
)


async def contact_events(
    session: AsyncSession,
    contact_id: uuid.UUID,
    *,
    cursor: str | None = None,
    limit: int = 50,
) -> Page[Event]:
    """A contact's events, newest ``occurred_at`` first, keyset-paged on ``(occurred_at, id)``.

    Raises:
        InvalidCursor: ``cursor`` is not one this listing handed out.
        ValueError: ``limit`` outside 1..:data:`MAX_PAGE_SIZE`.
    """
    _limit(limit)
    after_at: datetime | None = None
    after_id: uuid.UUID | None = None
    if cursor is not None:
        at, ident = decode_cursor(cursor, 2)
        after_at, after_id = _cursor_time(at), _cursor_uuid(ident)
    rows = await session.execute(
        _CONTACT_EVENTS,
        {"contact_id": contact_id, "after_at": after_at, "after_id": after_id, "limit": limit + 1},
    )
    events = [
        Event(
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
        for row in rows
    ]
    return page_of(events, limit, lambda e: encode_cursor(e.occurred_at.isoformat(), str(e.id)))


# Each source is paged on its own (newest first, LIMIT n) and the union re-sorted: the
# sort key (at, kind, id-as-text) is total, so the cursor continues exactly.
_TIMELINE_SOURCES = {
    "event": """
        SELECT occurred_at AS at, 'event' AS kind, id::text AS id,
               jsonb_build_object('name', event, 'properties', properties, 'source', source,
                                  'idempotency_key', idempotency_key) AS data
        FROM user_events WHERE contact_id = :contact_id""",
    "bucket_entered": """
        SELECT entered_at AS at, 'bucket_entered' AS kind, id::text AS id,
               jsonb_build_object('bucket_id', bucket_id, 'entry_count', entry_count,
                                  'source', source, 'status', status) AS data
        FROM bucket_memberships WHERE contact_id = :contact_id AND deleted_at IS NULL""",
    "bucket_left": """
        SELECT left_at AS at, 'bucket_left' AS kind, id::text AS id,
               jsonb_build_object('bucket_id', bucket_id, 'entry_count', entry_count,
                                  'reason', left_reason) AS data
        FROM bucket_memberships
        WHERE contact_id = :contact_id AND deleted_at IS NULL AND left_at IS NOT NULL""",
    "journey": """
        SELECT created_at AS at, 'journey' AS kind, id::text AS id,
               jsonb_build_object('journey_id', journey_id, 'status', status,
                                  'current_step', current_step, 'exit_reason', exit_reason,
                                  'completed_at', completed_at, 'exited_at', exited_at,
                                  'failed_at', failed_at) AS data
        FROM journey_states WHERE contact_id = :contact_id AND deleted_at IS NULL""",
    "journey_step": """
        SELECT started_at AS at, 'journey_step' AS kind, id::text AS id,
               jsonb_build_object('journey_id', journey_id, 'journey_state_id', journey_state_id,
                                  'step', step, 'action', action, 'detail', detail,
                                  'duration_ms', duration_ms) AS data
        FROM journey_logs WHERE contact_id = :contact_id""",
    "email": """
        SELECT created_at AS at, 'email' AS kind, id::text AS id,
               jsonb_build_object('template_key', template_key, 'subject', subject,
                                  'status', status, 'decision', decision,
                                  'to_email', to_email, 'journey_id', journey_id,
                                  'journey_state_id', journey_state_id,
                                  'campaign_id', campaign_id, 'sent_at', sent_at) AS data
        FROM email_sends WHERE contact_id = :contact_id""",
}


def _timeline_sql() -> str:
    parts = []
    for source in _TIMELINE_SOURCES.values():
        parts.append(
            f"""(SELECT * FROM ({source}) AS s
                WHERE CAST(:after_at AS timestamptz) IS NULL
                   OR (s.at, s.kind, s.id) < (CAST(:after_at AS timestamptz),
                                              CAST(:after_kind AS text), CAST(:after_id AS text))
                ORDER BY s.at DESC, s.id DESC LIMIT :limit)"""
        )
    union = "\nUNION ALL\n".join(parts)
    return f"SELECT * FROM ({union}) AS t ORDER BY t.at DESC, t.kind DESC, t.id DESC LIMIT :limit"


_TIMELINE = text(_timeline_sql())


async def timeline(
    session: AsyncSession,
    contact_id: uuid.UUID,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> Page[TimelineEntry]:
    """Everything that happened to a contact, newest first: events, bucket entries and
    exits, journey runs and their steps, and every send attempt (with or without a
    journey). See :class:`~hogsend.core.contact.TimelineEntry` for the kinds.

    Raises:
        InvalidCursor: ``cursor`` is not one this listing handed out.
        ValueError: ``limit`` outside 1..:data:`MAX_PAGE_SIZE`.
    """
    _limit(limit)
    after_at: datetime | None = None
    after_kind: str | None = None
    after_id: str | None = None
    if cursor is not None:
        at, after_kind, after_id = decode_cursor(cursor, 3)
        after_at = _cursor_time(at)
    rows = await session.execute(
        _TIMELINE,
        {
            "contact_id": contact_id,
            "after_at": after_at,
            "after_kind": after_kind,
            "after_id": after_id,
            "limit": limit + 1,
        },
    )
    entries = [TimelineEntry(kind=row.kind, at=row.at, id=row.id, data=row.data) for row in rows]
    return page_of(entries, limit, lambda e: encode_cursor(e.at.isoformat(), e.kind, e.id))


# --------------------------------------------------------------------------- details


@dataclass(frozen=True, slots=True, kw_only=True)
class AliasRecord:
    """A key a contact no longer holds in its own columns but still answers to."""

    kind: KeyKind
    value: str
    reason: str
    from_contact_id: uuid.UUID | None
    created_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class ListSubscriptionRecord:
    """A contact's explicit choice for one list."""

    list_id: str
    subscribed: bool
    source: str | None
    subscribed_at: datetime | None
    unsubscribed_at: datetime | None
    updated_at: datetime


@dataclass(frozen=True, slots=True, kw_only=True)
class SuppressionRecord:
    """The health of the contact's address (kept per address, not per contact)."""

    suppressed: bool
    reason: str | None
    suppressed_at: datetime | None
    bounce_count: int
    complaint_count: int
    last_bounce_at: datetime | None
    last_complaint_at: datetime | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactDetails:
    """What the admin contact page shows next to the contact itself."""

    aliases: tuple[AliasRecord, ...] = ()
    lists: tuple[ListSubscriptionRecord, ...] = ()
    unsubscribed_all: bool = False
    unsubscribed_at: datetime | None = None
    suppression: SuppressionRecord | None = None


_ALIASES_OF = text(
    """
    SELECT alias_kind, alias_value, reason, from_contact_id, created_at FROM contact_aliases
    WHERE contact_id = :id ORDER BY created_at, alias_kind, alias_value
    """
)
_LISTS_OF = text(
    """
    SELECT list_id, subscribed, source, subscribed_at, unsubscribed_at, updated_at
    FROM list_subscriptions WHERE contact_id = :id ORDER BY list_id
    """
)
_PREFERENCES_OF = text(
    "SELECT unsubscribed_all, unsubscribed_at FROM email_preferences WHERE contact_id = :id"
)
_SUPPRESSION_OF = text(
    """
    SELECT suppressed, reason, suppressed_at, bounce_count, complaint_count, last_bounce_at,
           last_complaint_at
    FROM email_suppressions WHERE lower(email) = lower(CAST(:email AS text))
    """
)


async def contact_details(session: AsyncSession, contact: Contact) -> ContactDetails:
    """Aliases, list choices, global unsubscribe and the address's suppression state."""
    aliases = tuple(
        AliasRecord(
            kind=row.alias_kind,
            value=row.alias_value,
            reason=row.reason,
            from_contact_id=row.from_contact_id,
            created_at=row.created_at,
        )
        for row in await session.execute(_ALIASES_OF, {"id": contact.id})
    )
    lists = tuple(
        ListSubscriptionRecord(
            list_id=row.list_id,
            subscribed=row.subscribed,
            source=row.source,
            subscribed_at=row.subscribed_at,
            unsubscribed_at=row.unsubscribed_at,
            updated_at=row.updated_at,
        )
        for row in await session.execute(_LISTS_OF, {"id": contact.id})
    )
    prefs = (await session.execute(_PREFERENCES_OF, {"id": contact.id})).first()
    suppression = None
    if contact.email is not None:
        row = (await session.execute(_SUPPRESSION_OF, {"email": contact.email})).first()
        if row is not None:
            suppression = SuppressionRecord(
                suppressed=row.suppressed,
                reason=row.reason,
                suppressed_at=row.suppressed_at,
                bounce_count=row.bounce_count,
                complaint_count=row.complaint_count,
                last_bounce_at=row.last_bounce_at,
                last_complaint_at=row.last_complaint_at,
            )
    return ContactDetails(
        aliases=aliases,
        lists=lists,
        unsubscribed_all=bool(prefs.unsubscribed_all) if prefs is not None else False,
        unsubscribed_at=prefs.unsubscribed_at if prefs is not None else None,
        suppression=suppression,
    )
