"""Identity: who an event or a contact update is about, and the rules that resolve it.

Pure: the database side (``hogsend.db.repos.contacts``) looks the keys up, locks the
rows and hands them here; everything decided about them is decided in this module.
The rules are written out in docs/decisions/0002-identity.md.

Three kinds of key name a person: ``external`` (the caller's ``userId``), ``email`` and
``anonymous`` (a pre-login visitor id). A contact's *resolved key* is
``external_id ?? anonymous_id ?? str(id)``: history tables store it as ``user_id``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple
from uuid import UUID

from hogsend.core.contact import Contact
from hogsend.core.slot_init import slot_init
from hogsend.errors import HogsendError

KeyKind = Literal["external", "email", "anonymous"]
KEY_KINDS: tuple[KeyKind, ...] = ("external", "email", "anonymous")

MAX_ID_LENGTH = 512
"""Longest ``userId`` / ``anonymousId`` accepted (they are indexed)."""
MAX_EMAIL_LENGTH = 254
MAX_EMAIL_LOCAL_LENGTH = 64
_MAX_LABEL_LENGTH = 63
# Characters that never appear unquoted in an address someone typed on purpose.
_EMAIL_FORBIDDEN = frozenset('<>()[]\\,;:"')

PlanAction = Literal["create", "match", "link", "merge"]


class IdentityError(HogsendError, ValueError):
    """A userId, email or anonymousId is unusable, or none was given.

    Also a ``ValueError``, so a pydantic validator calling the normalisers turns it into
    an ordinary validation error. ``field`` is ``user_id``, ``email``, ``anonymous_id``
    or ``identity`` (no key at all); ``reason`` says what is wrong, for people.
    """

    code = "invalid-identity"

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# Unicode's "Cc" category is exactly these two ranges; a regex scans in C (ingest checks
# every id of every event).
_CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f]")


def _has_control_characters(value: str) -> bool:
    return _CONTROL_CHARACTERS.search(value) is not None


# ``\s`` is ``str.isspace`` character by character; one C scan instead of a generator per
# character (imports check every address of a million-line file).
_WHITESPACE_OR_CONTROL = re.compile("[\\s\x00-\x1f\x7f-\x9f]")


def normalize_id(value: str | None, *, field: str = "user_id") -> str | None:
    """A ``userId`` / ``anonymousId`` as stored: trimmed; blank means absent.

    Raises:
        IdentityError: the id is longer than :data:`MAX_ID_LENGTH` or contains control
            characters (Postgres rejects NUL bytes in text).
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_ID_LENGTH:
        raise IdentityError(field, f"is longer than {MAX_ID_LENGTH} characters")
    # Printable ASCII (most ids) has no control characters: two C checks, no regex.
    if not (value.isascii() and value.isprintable()) and _has_control_characters(value):
        raise IdentityError(field, "contains control characters")
    return value


def _check_domain(domain: str) -> None:
    if not domain:
        raise IdentityError("email", "has nothing after the @")
    labels = domain.split(".")
    if len(labels) < 2:
        raise IdentityError("email", f"domain {domain!r} has no dot (expected e.g. example.com)")
    for label in labels:
        if not label:
            raise IdentityError("email", f"domain {domain!r} has an empty label")
        if len(label) > _MAX_LABEL_LENGTH:
            raise IdentityError("email", f"domain {domain!r} has a label over 63 characters")
        if label.startswith("-") or label.endswith("-"):
            raise IdentityError("email", f"domain {domain!r} has a label starting or ending in -")
        # Not empty without its hyphens: it neither starts nor ends with one.
        if not label.replace("-", "").isalnum():
            raise IdentityError("email", f"domain {domain!r} contains invalid characters")


def normalize_email(value: str | None) -> str | None:
    """An email address as stored: trimmed, domain lower-cased, local part kept as given.

    Blank means absent. Comparisons never use the stored spelling: the database compares
    ``lower(email)`` (that is what its unique index covers), so ``Ann@x.io`` and
    ``ann@x.io`` are one person. Only obviously broken addresses are refused; whether an
    address really receives mail is the provider's business.

    Raises:
        IdentityError: with a reason naming what is wrong.
    """
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_EMAIL_LENGTH:
        raise IdentityError("email", f"is longer than {MAX_EMAIL_LENGTH} characters")
    if _WHITESPACE_OR_CONTROL.search(value) is not None:
        raise IdentityError("email", "contains whitespace or control characters")
    if value.count("@") != 1:
        raise IdentityError("email", "must contain exactly one @")
    local, domain = value.split("@")
    if not local:
        raise IdentityError("email", "has nothing before the @")
    if len(local) > MAX_EMAIL_LOCAL_LENGTH:
        raise IdentityError("email", f"local part is longer than {MAX_EMAIL_LOCAL_LENGTH}")
    if not _EMAIL_FORBIDDEN.isdisjoint(local):
        raise IdentityError("email", "local part contains characters like < > , ; or quotes")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        raise IdentityError("email", "local part has a misplaced dot")
    domain = domain.lower()
    _check_domain(domain)
    return f"{local}@{domain}"


def email_key(email: str) -> str:
    """The case-insensitive form of a normalised address, for grouping in memory.

    The database uses its own ``lower()``; the two agree on ASCII, which is all that
    grouping needs to be right about (locks and lookups are done in SQL).
    """
    return email.lower()


def resolved_key(external_id: str | None, anonymous_id: str | None, contact_id: UUID) -> str:
    """The key history rows are stored under: ``external_id ?? anonymous_id ?? str(id)``."""
    if external_id is not None:
        return external_id
    if anonymous_id is not None:
        return anonymous_id
    return str(contact_id)


class IdentityKey(NamedTuple):
    """One key of an identity, e.g. ``IdentityKey("email", "ann@x.io")``.

    A named tuple rather than a frozen dataclass: ingest hashes every key of every
    event several times (lookups, plans, locks), and a tuple hashes in C where the
    dataclass's generated ``__hash__`` is a Python call (about a tenth of a batch's
    API CPU per event, bench/ingest.py).
    """

    kind: KeyKind
    value: str

    @property
    def lock_name(self) -> str:
        """``<kind>:<value>``: what the advisory lock is taken on (SQL lower-cases emails)."""
        return f"{self.kind}:{self.value}"


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """Who something is about: at least one of a user id, an email, an anonymous id.

    The constructor normalises (see :func:`normalize_id`, :func:`normalize_email`), so an
    ``Identity`` that exists is valid.

    Raises:
        IdentityError: a key is invalid, or none is left after trimming.
    """

    user_id: str | None = None
    email: str | None = None
    anonymous_id: str | None = None
    # Derived once: ingest asks for the keys several times per event.
    _keys: tuple[IdentityKey, ...] = field(default=(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Written out per kind (absent keys skip their normaliser): every ingested
        # event builds an identity, most of them with a single key.
        # The slots are written through their descriptors and the keys built as plain
        # tuples of the named-tuple class: the same values for a fraction of the calls.
        keys: list[IdentityKey] = []
        user_id = self.user_id
        if user_id is not None:
            user_id = normalize_id(user_id, field="user_id")
            _set_user_id(self, user_id)
            if user_id is not None:
                keys.append(_new_key(IdentityKey, ("external", user_id)))
        email = self.email
        if email is not None:
            email = normalize_email(email)
            _set_email(self, email)
            if email is not None:
                keys.append(_new_key(IdentityKey, ("email", email)))
        anonymous_id = self.anonymous_id
        if anonymous_id is not None:
            anonymous_id = normalize_id(anonymous_id, field="anonymous_id")
            _set_anonymous_id(self, anonymous_id)
            if anonymous_id is not None:
                keys.append(_new_key(IdentityKey, ("anonymous", anonymous_id)))
        if not keys:
            raise IdentityError(
                "identity", "at least one of userId, email or anonymousId is needed"
            )
        _set_keys(self, tuple(keys))

    def get(self, kind: KeyKind) -> str | None:
        """The value given for one kind of key, if any."""
        if kind == "external":
            return self.user_id
        if kind == "email":
            return self.email
        return self.anonymous_id

    @property
    def keys(self) -> tuple[IdentityKey, ...]:
        """The keys given, in the fixed order external, email, anonymous."""
        return self._keys

    @property
    def signature(self) -> tuple[str | None, str | None, str | None]:
        """Equal for identities that name the same keys (emails compared case-insensitively)."""
        email = email_key(self.email) if self.email is not None else None
        return (self.user_id, email, self.anonymous_id)


_new_key = tuple.__new__
_set_user_id = Identity.__dict__["user_id"].__set__
_set_email = Identity.__dict__["email"].__set__
_set_anonymous_id = Identity.__dict__["anonymous_id"].__set__
_set_keys = Identity.__dict__["_keys"].__set__
_new_identity = object.__new__


def checked_ids_identity(user_id: str | None, anonymous_id: str | None) -> Identity:
    """``Identity(user_id=user_id, anonymous_id=anonymous_id)`` for ids already checked.

    Each id given must be one :func:`normalize_id` returns unchanged (trimmed, not blank,
    at most :data:`MAX_ID_LENGTH` characters, no control characters), and at least one
    must be given: the caller has just checked that (the Segment route's plain path),
    so the constructor's second pass over them is skipped, a seventh of that path's
    CPU per message. tests/unit/test_plain_items.py holds both equal.
    """
    identity = _new_identity(Identity)
    _set_user_id(identity, user_id)
    _set_email(identity, None)
    _set_anonymous_id(identity, anonymous_id)
    if user_id is None:
        _set_keys(identity, (_new_key(IdentityKey, ("anonymous", anonymous_id)),))
    elif anonymous_id is None:
        _set_keys(identity, (_new_key(IdentityKey, ("external", user_id)),))
    else:
        _set_keys(
            identity,
            (
                _new_key(IdentityKey, ("external", user_id)),
                _new_key(IdentityKey, ("anonymous", anonymous_id)),
            ),
        )
    return identity


def contact_value(contact: Contact, kind: KeyKind) -> str | None:
    """The value a contact holds for one kind of key."""
    if kind == "external":
        return contact.user_id
    if kind == "email":
        return contact.email
    return contact.anonymous_id


@dataclass(frozen=True, slots=True, kw_only=True)
class IdentityConflict:
    """A given key that was NOT applied: the contact already holds another value there.

    Example: contact ``{userId: "u-1", email: "ann@x.io"}`` and a request
    ``{userId: "u-2", email: "ann@x.io"}`` where ``u-2`` is unknown: the request resolves
    to the contact (through the email) and reports ``IdentityConflict(kind="external",
    given="u-2", existing="u-1")``. Contacts never have a key overwritten.
    """

    kind: KeyKind
    given: str
    existing: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    """What resolving an identity did.

    Attributes:
        contact_id: the contact the identity now resolves to (the survivor of a merge).
        key: that contact's resolved key after the resolution.
        created: a new contact was inserted.
        linked: a key the contact did not hold was attached to it, or contacts were
            merged. False for a plain match (even when properties changed).
        merged: other contacts were folded into this one.
        merged_contact_ids: the contacts folded in (now soft-deleted).
        conflicts: given keys that were not applied; see :class:`IdentityConflict`.
        exited_workflow_ids: journey runs of merged-away contacts that were exited
            (status ``exited``, reason ``merged``) because the survivor runs the same
            journey; whoever owns the transaction should cancel these workflows.
    """

    contact_id: UUID
    key: str
    created: bool = False
    linked: bool = False
    merged: bool = False
    merged_contact_ids: tuple[UUID, ...] = ()
    conflicts: tuple[IdentityConflict, ...] = ()
    exited_workflow_ids: tuple[str, ...] = ()


def _survivor_rank(contact: Contact) -> int:
    # Identified beats anonymous: a userId is the strongest claim, then an email.
    if contact.user_id is not None:
        return 2
    if contact.email is not None:
        return 1
    return 0


def order_for_merge(contacts: Iterable[Contact]) -> list[Contact]:
    """Contacts best-first by the survivor rule; the first one survives a merge.

    Identified beats anonymous (a userId, then an email, then neither), then the oldest
    ``first_seen_at`` (unknown counts as newest), then the lowest id.
    """
    # Sort twice (stable) so an unknown first_seen_at never has to compare with a datetime.
    ordered = sorted(contacts, key=lambda c: str(c.id))
    ordered.sort(key=lambda c: (c.first_seen_at is None, c.first_seen_at or datetime.min))
    ordered.sort(key=lambda c: -_survivor_rank(c))
    return ordered


def choose_survivor(contacts: Sequence[Contact]) -> Contact:
    """The contact that survives a merge of ``contacts`` (see :func:`order_for_merge`)."""
    if not contacts:
        raise ValueError("choose_survivor needs at least one contact")
    return order_for_merge(contacts)[0]


def merge_properties(base: Mapping[str, Any], patch: Mapping[str, object] | None) -> dict[str, Any]:
    """Shallow merge: the patch wins key by key, and a ``None`` value deletes the key.

    ``None`` values already in ``base`` are dropped too: stored properties never hold
    nulls, because null is how a caller says "delete".
    """
    merged: dict[str, Any] = dict(base)
    if patch:
        merged.update(patch)
    return {key: value for key, value in merged.items() if value is not None}


def fold_properties(
    survivor: Contact, losers: Sequence[Contact], patch: Mapping[str, object] | None
) -> dict[str, Any]:
    """Properties of a merge survivor: losers (worst first), then the survivor, then the patch."""
    folded: dict[str, Any] = {}
    for loser in reversed(order_for_merge(losers)):
        folded.update(loser.properties)
    folded.update(survivor.properties)
    return merge_properties(folded, patch)


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ResolutionPlan:
    """What to do with an identity, given the live contacts its keys matched.

    Attributes:
        action: ``create`` (no key known), ``match`` (one contact, nothing to attach),
            ``link`` (one contact, keys to attach) or ``merge`` (several contacts).
        target: the contact that ends up holding the identity (None for ``create``).
        losers: for ``merge``, the contacts folded into ``target``, best first.
        attach: keys to write into ``target``'s empty slots (for ``create``: all keys).
        conflicts: given keys not applied because the slot holds another value.
    """

    action: PlanAction
    target: Contact | None = None
    losers: tuple[Contact, ...] = ()
    attach: tuple[IdentityKey, ...] = ()
    conflicts: tuple[IdentityConflict, ...] = ()

    @property
    def linked(self) -> bool:
        """Whether carrying the plan out attaches keys or merges contacts."""
        return self.action in ("link", "merge")

    def key_after(self) -> str:
        """The target's resolved key once the plan is carried out (not for ``create``)."""
        if self.target is None:
            raise ValueError("a create plan has no target yet")
        values = {kind: contact_value(self.target, kind) for kind in KEY_KINDS}
        for key in self.attach:
            values[key.kind] = key.value
        return resolved_key(values["external"], values["anonymous"], self.target.id)


def plan_resolution(identity: Identity, matches: Mapping[IdentityKey, Contact]) -> ResolutionPlan:
    """Decide create / match / link / merge for ``identity``.

    Args:
        identity: the keys given.
        matches: for each given key that is known, the live contact it resolves to
            (directly or through an alias). Keys not in the mapping are unknown; other
            keys in it are ignored (a batch passes one lookup for all its identities).

    Rules: no key known → create with every key. One contact → attach each unknown key
    whose slot is empty; an unknown key whose slot holds another value is a conflict.
    Several contacts → merge into the best one (:func:`order_for_merge`); the survivor
    fills each empty slot with the given value, else the best loser's; unknown given
    keys that find the slot taken are conflicts. A known key never conflicts: it
    resolves to the contact already (the merge turns losers' keys into aliases).
    """
    keys = identity.keys
    if len(keys) == 1:
        # One key (most traffic): known and held by its contact is a plain match, what
        # the general rules below conclude too, for a fraction of their cost per event.
        key = keys[0]
        only = matches.get(key)
        if only is None:
            return ResolutionPlan(action="create", attach=keys)
        if contact_value(only, key.kind) is not None:
            return ResolutionPlan(action="match", target=only)
    candidates: dict[UUID, Contact] = {}
    for key in keys:
        contact = matches.get(key)
        if contact is not None:
            candidates.setdefault(contact.id, contact)
    if not candidates:
        return ResolutionPlan(action="create", attach=keys)

    # One contact (the common case) needs no survivor ordering.
    ordered = (
        list(candidates.values()) if len(candidates) == 1 else order_for_merge(candidates.values())
    )
    target, losers = ordered[0], tuple(ordered[1:])
    attach: list[IdentityKey] = []
    conflicts: list[IdentityConflict] = []
    for kind in KEY_KINDS:
        existing = contact_value(target, kind)
        given = identity.get(kind)
        given_known = given is not None and IdentityKey(kind, given) in matches
        if existing is None:
            if given is not None:
                attach.append(IdentityKey(kind, given))
            else:
                inherited = next(
                    (v for loser in losers if (v := contact_value(loser, kind)) is not None), None
                )
                if inherited is not None:
                    attach.append(IdentityKey(kind, inherited))
        elif given is not None and not given_known:
            conflicts.append(IdentityConflict(kind=kind, given=given, existing=existing))

    if losers:
        action: PlanAction = "merge"
    elif attach:
        action = "link"
    else:
        action = "match"
    return ResolutionPlan(
        action=action,
        target=target,
        losers=losers,
        attach=tuple(attach),
        conflicts=tuple(conflicts),
    )


def plan_merge(contacts: Sequence[Contact]) -> ResolutionPlan:
    """A merge of ``contacts`` (at least two distinct) with no request keys involved.

    The survivor rule picks the target (:func:`order_for_merge`); it fills each empty
    slot with the best loser's value. Used for explicit merges (a Segment ``alias``, an
    admin merging two people).
    """
    ordered = order_for_merge({c.id: c for c in contacts}.values())
    if len(ordered) < 2:
        raise ValueError("a merge needs at least two distinct contacts")
    target, losers = ordered[0], tuple(ordered[1:])
    attach = []
    for kind in KEY_KINDS:
        if contact_value(target, kind) is None:
            inherited = next(
                (v for loser in losers if (v := contact_value(loser, kind)) is not None), None
            )
            if inherited is not None:
                attach.append(IdentityKey(kind, inherited))
    return ResolutionPlan(action="merge", target=target, losers=losers, attach=tuple(attach))
