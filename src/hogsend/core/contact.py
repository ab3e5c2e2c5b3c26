"""The contact and event values a journey body sees."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from hogsend.core.slot_init import slot_init


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Contact:
    """One person, as stored: identities, properties and timestamps.

    ``key`` is the resolved key (user id, else anonymous id, else the contact id)
    that events, memberships and journey runs are stored under.
    """

    id: UUID
    key: str
    user_id: str | None = None
    email: str | None = None
    anonymous_id: str | None = None
    timezone: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    first_seen_at: datetime | None = None
    last_seen_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    # Soft-deleted (merged away or deleted) contacts are only returned when asked for.
    deleted_at: datetime | None = None
    erased_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One stored event."""

    id: UUID
    name: str
    contact_key: str
    occurred_at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)
    contact_id: UUID | None = None
    idempotency_key: str | None = None
    source: str | None = None
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class TimelineEntry:
    """One thing that happened to a contact, as the admin timeline shows it.

    ``kind`` is one of ``event``, ``bucket_entered``, ``bucket_left``, ``journey`` (a
    run, at its enrollment), ``journey_step`` (a step log row) and ``email`` (a send
    attempt, with or without a journey). ``id`` is the source row's id as text.
    """

    kind: str
    at: datetime
    id: str
    data: Mapping[str, Any] = field(default_factory=dict)
