"""Enrollment decisions of journeys: pure functions the trigger path and the harness share.

Nothing here reads a clock or a database: callers pass the facts and get a decision
back, so the same rules run in the worker and in the harness. Entry limits live in
:mod:`hogsend.core.entry_rules`.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from hogsend.core.conditions import EventCondition, event_matches
from hogsend.core.conditions.evaluation import strict_equals
from hogsend.core.contact import Contact, Event
from hogsend.core.definitions import EventSpec
from hogsend.core.identifiers import durable_name


def event_message(event: Event) -> dict[str, Any]:
    """An event as a journey run's input carries it (plain JSON-able values)."""
    return {
        "id": str(event.id),
        "name": event.name,
        "contactKey": event.contact_key,
        "contactId": None if event.contact_id is None else str(event.contact_id),
        "occurredAt": event.occurred_at.isoformat(),
        "properties": dict(event.properties),
        "source": event.source,
    }


def event_from_message(data: Mapping[str, Any]) -> Event:
    """The inverse of :func:`event_message`."""
    return Event(
        id=uuid.UUID(data["id"]),
        name=data["name"],
        contact_key=data["contactKey"],
        contact_id=None if data.get("contactId") is None else uuid.UUID(data["contactId"]),
        occurred_at=datetime.fromisoformat(data["occurredAt"]),
        properties=data.get("properties") or {},
        source=data.get("source"),
    )


def spec_event(spec: EventSpec) -> str:
    """The event name a trigger or exit listens to."""
    return spec if isinstance(spec, str) else spec.event


def spec_matches(spec: EventSpec, name: str, properties: Mapping[str, Any]) -> bool:
    """Whether an event (``name`` with ``properties``) matches a trigger or exit spec."""
    if isinstance(spec, EventCondition):
        return event_matches(spec, name, properties)
    return spec == name


def enrollment_workflow_id(journey_id: str, contact_id: uuid.UUID, ordinal: int) -> str:
    """The deterministic workflow id of a contact's ``ordinal``-th run of a journey."""
    return f"{durable_name('journey', journey_id)}:{contact_id}:{ordinal}"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _from_iso(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def contact_message(contact: Contact) -> dict[str, Any]:
    """A contact as a journey run's input carries it (plain JSON-able values)."""
    return {
        "id": str(contact.id),
        "key": contact.key,
        "userId": contact.user_id,
        "email": contact.email,
        "anonymousId": contact.anonymous_id,
        "timezone": contact.timezone,
        "properties": dict(contact.properties),
        "firstSeenAt": _iso(contact.first_seen_at),
        "lastSeenAt": _iso(contact.last_seen_at),
        "createdAt": _iso(contact.created_at),
        "updatedAt": _iso(contact.updated_at),
    }


def contact_from_message(data: Mapping[str, Any]) -> Contact:
    """The inverse of :func:`contact_message` (a contact in a run's input is not deleted)."""
    return Contact(
        id=uuid.UUID(data["id"]),
        key=data["key"],
        user_id=data.get("userId"),
        email=data.get("email"),
        anonymous_id=data.get("anonymousId"),
        timezone=data.get("timezone"),
        properties=data.get("properties") or {},
        first_seen_at=_from_iso(data.get("firstSeenAt")),
        last_seen_at=_from_iso(data.get("lastSeenAt")),
        created_at=_from_iso(data.get("createdAt")),
        updated_at=_from_iso(data.get("updatedAt")),
    )


def run_input(
    *,
    workflow_id: str,
    contact_id: uuid.UUID,
    user_id: str,
    email: str | None,
    ordinal: int,
    trigger: Mapping[str, Any],
    retry: Mapping[str, Any] | None = None,
    contact: Contact | None = None,
    enrolled_at: datetime | None = None,
) -> dict[str, Any]:
    """A journey run's workflow input: who, which entry, what triggered it (an
    :func:`event_message`) and, for a retry of a failed run, what that run had sent.

    With ``contact`` and ``enrolled_at`` (an enrollment made in the run's enrolling
    transaction), the input also carries the contact as enrollment read it and the
    enrollment's clock: the run then starts from its input, without a start step (see
    :func:`starts_from_input`).
    """
    data: dict[str, Any] = {
        "workflowId": workflow_id,
        "contactId": str(contact_id),
        "userId": user_id,
        "email": email,
        "ordinal": ordinal,
        "trigger": dict(trigger),
    }
    if retry is not None:
        data["retry"] = dict(retry)
    if contact is not None and enrolled_at is not None:
        data["contact"] = contact_message(contact)
        data["enrolledAt"] = enrolled_at.isoformat()
    return data


def starts_from_input(enrollment: Mapping[str, Any]) -> bool:
    """Whether a run's input carries its contact and start time (:func:`run_input`).

    Decided by the recorded input, never by the code running it: a run enqueued
    before inputs carried them recorded a ``journey.start`` step first, and replays it.
    """
    return "contact" in enrollment and "enrolledAt" in enrollment


def retry_workflow_id(workflow_id: str, dead_letter_id: str) -> str:
    """The workflow id of the retry a dead-letter entry asked for, for a failed run.

    Derived from the first run's enrollment id (a retry's own id is cut back to it, so
    retrying a retry does not grow the id) and the entry: one retry per entry.
    """
    base = workflow_id.split(":retry:", 1)[0]
    return f"{base}:retry:{dead_letter_id}"


def pick_variant(
    contact_id: uuid.UUID | str,
    test_id: str,
    variants: Sequence[str],
    weights: Sequence[float] | None = None,
) -> str:
    """The variant a contact sees in test ``test_id``: the same answer every time.

    A SHA-256 of ``test_id:contact_id`` places the contact on ``[0, 1)``; the weights
    (equal by default) cut that line into one slice per variant.

    Raises:
        ValueError: no variants, weights of another length, or weights not positive.
    """
    if not variants:
        raise ValueError("variant needs at least one variant")
    shares = list(weights) if weights is not None else [1.0] * len(variants)
    if len(shares) != len(variants):
        raise ValueError("variant needs one weight per variant")
    if any(w <= 0 for w in shares):
        raise ValueError("variant weights must be positive")
    digest = hashlib.sha256(f"{test_id}:{contact_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(shares)
    edge = 0.0
    for variant, share in zip(variants, shares, strict=True):
        edge += share
        if point < edge:
            return variant
    return variants[-1]


def json_equals(actual: object, expected: object) -> bool:
    """JSON equality with strict types, the one ``match=`` uses in runtime and harness.

    Numbers compare by value (``1 == 1.0``) but ``True`` is not ``1`` and ``"1"`` is not
    ``1``; ``None`` equals only ``None``; lists compare item by item, objects key by key.
    """
    if actual is None or expected is None:
        return actual is None and expected is None
    if isinstance(expected, Mapping) or isinstance(actual, Mapping):
        return (
            isinstance(expected, Mapping)
            and isinstance(actual, Mapping)
            and actual.keys() == expected.keys()
            and all(json_equals(actual[k], expected[k]) for k in expected)
        )
    if isinstance(expected, list | tuple) or isinstance(actual, list | tuple):
        return (
            isinstance(expected, list | tuple)
            and isinstance(actual, list | tuple)
            and len(actual) == len(expected)
            and all(json_equals(a, e) for a, e in zip(actual, expected, strict=True))
        )
    return strict_equals(actual, expected)


def properties_match(expected: Mapping[str, Any] | None, actual: Mapping[str, Any]) -> bool:
    """Whether every key of ``expected`` equals the same key of ``actual`` (``match=``),
    compared with :func:`json_equals`."""
    if not expected:
        return True
    return all(key in actual and json_equals(actual[key], value) for key, value in expected.items())
