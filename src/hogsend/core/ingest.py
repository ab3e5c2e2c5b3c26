"""Ingest: one event to store, and what storing it did."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal
from uuid import UUID

from hogsend.core.identity import Identity, IdentityConflict
from hogsend.core.slot_init import slot_init

IngestStatus = Literal["stored", "duplicate", "rejected"]

MAX_IDEMPOTENCY_KEY_LENGTH = 512


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class EventInput:
    """One event to ingest, already validated by whoever built it.

    Exactly one of ``identity`` (the public data plane: userId / email / anonymousId)
    and ``contact_id`` (internal producers that already know the contact: bucket
    transitions, tracking, admin replays) says who it is about. Internal producers must
    use ``contact_id``: passing a contact's resolved key as a ``userId`` would stamp it
    on the contact as an external id or mint a second contact.

    Attributes:
        name: the event name.
        identity: who, as the caller knows them; the contact is resolved or created.
        contact_id: who, by contact id; a merged-away id follows the merge.
        properties: the event's own properties (stored on the event).
        contact_properties: a patch for the contact (shallow, ``None`` deletes a key).
            Applied only when the event is stored, never on a duplicate.
        lists: list id → subscribed, applied only when the event is stored.
        idempotency_key: a repeated key returns the first event and changes nothing.
        occurred_at: when it happened (timezone-aware); default: when it was received.
        source: where it came from (``api``, ``batch``, ``segment``, ``bucket`` ...).
    """

    name: str
    identity: Identity | None = None
    contact_id: UUID | None = None
    properties: Mapping[str, object] = field(default_factory=dict)
    contact_properties: Mapping[str, object] | None = None
    lists: Mapping[str, bool] | None = None
    idempotency_key: str | None = None
    occurred_at: datetime | None = None
    source: str | None = "api"

    def __post_init__(self) -> None:
        if (self.identity is None) == (self.contact_id is None):
            raise ValueError("an event needs exactly one of identity and contact_id")
        if not self.name:
            raise ValueError("an event needs a name")
        if self.occurred_at is not None and self.occurred_at.utcoffset() is None:
            raise ValueError("occurred_at must be timezone-aware")
        if self.idempotency_key is not None and not (
            0 < len(self.idempotency_key) <= MAX_IDEMPOTENCY_KEY_LENGTH
        ):
            raise ValueError(
                f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
            )


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class IngestResult:
    """What happened to one event.

    Attributes:
        status: ``stored``; ``duplicate`` (the idempotency key was seen before: the ids
            are the ORIGINAL event's and its contact's, and nothing was changed); or
            ``rejected`` (only from a batch, or for an unknown ``contact_id``; see
            ``reason``).
        event_id: the stored event (the original one for a duplicate).
        contact_id: the contact the event belongs to (now).
        contact_key: that contact's resolved key, as stored on the event.
        conflicts: given keys that were not applied to the contact.
        reason: why it was rejected.
    """

    status: IngestStatus
    event_id: UUID | None = None
    contact_id: UUID | None = None
    contact_key: str | None = None
    conflicts: tuple[IdentityConflict, ...] = ()
    reason: str | None = None


ItemResult = IngestResult
"""The per-item result of a batch: the same shape as a single ingest's."""
