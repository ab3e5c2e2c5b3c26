"""Evaluate a condition in memory against one contact's facts.

This is the per-event path: the dispatcher has one contact in hand and asks whether it
matches. :mod:`hogsend.db.conditions` compiles the same semantics to SQL for whole
populations; a property test proves the two agree. docs/conditions.md has the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from hogsend.core.conditions.model import (
    AllCondition,
    AnyCondition,
    Condition,
    CountCheck,
    EmailCondition,
    EventCondition,
    NotCondition,
    PropertyCondition,
    check_property_filter,
)


class EventRecord(Protocol):
    """What the evaluator reads of an event (``hogsend.Event`` and :class:`EventFact` fit)."""

    @property
    def name(self) -> str:
        """The event name."""

    @property
    def occurred_at(self) -> datetime:
        """When it happened (timezone-aware)."""

    @property
    def properties(self) -> Mapping[str, Any]:
        """The event's own properties."""


class EmailRecord(Protocol):
    """What the evaluator reads of one ``email_sends`` row."""

    @property
    def template_key(self) -> str | None:
        """The template sent, if any."""

    @property
    def sent_at(self) -> datetime | None:
        """When the message left for the provider."""

    @property
    def opened_at(self) -> datetime | None:
        """First open."""

    @property
    def clicked_at(self) -> datetime | None:
        """First click."""


@dataclass(frozen=True, slots=True, kw_only=True)
class EventFact:
    """One event of the contact, as the evaluator needs it."""

    name: str
    occurred_at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class EmailFact:
    """One send attempt to the contact, as the evaluator needs it."""

    template_key: str | None = None
    sent_at: datetime | None = None
    opened_at: datetime | None = None
    clicked_at: datetime | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ContactFacts:
    """Everything a condition may read about one contact.

    Attributes:
        properties: the contact's properties (stored, overlaid with this event's patch
            on the real-time path).
        events: the contact's events — all of them under the resolved contact, merged
            contacts' included — at least those named by the condition; for a name
            every leg of which has a window, events older than the widest window may be
            left out.
        emails: the contact's ``email_sends`` rows, when the condition has email legs.
    """

    properties: Mapping[str, Any] = field(default_factory=dict)
    events: Sequence[EventRecord] = ()
    emails: Sequence[EmailRecord] = ()


def evaluate(condition: Condition, facts: ContactFacts, now: datetime) -> bool:
    """Whether ``facts`` satisfy ``condition`` at the instant ``now``.

    Raises:
        ValueError: ``now`` is naive.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return _evaluate(condition, facts, now)


def matches_properties(condition: Condition, properties: Mapping[str, Any]) -> bool:
    """Evaluate a property-only condition (an event filter, a trigger's ``where``).

    Raises:
        InvalidCondition: the condition tests events or emails.
    """
    check_property_filter(condition)
    return _properties(condition, properties)


def event_matches(condition: EventCondition, name: str, properties: Mapping[str, Any]) -> bool:
    """Whether one event (``name`` with ``properties``) is of the kind ``condition`` counts.

    Ignores the window and the count: this answers "does this incoming event match the
    trigger / exit ``where.event(...)``".
    """
    return name == condition.event and (
        condition.where is None or _properties(condition.where, properties)
    )


def _evaluate(condition: Condition, facts: ContactFacts, now: datetime) -> bool:
    if isinstance(condition, PropertyCondition):
        return _property(condition, facts.properties)
    if isinstance(condition, EventCondition):
        cutoff = None if condition.within is None else now - condition.within
        n = sum(
            1
            for event in facts.events
            if event.name == condition.event
            and (cutoff is None or event.occurred_at > cutoff)
            and (condition.where is None or _properties(condition.where, event.properties))
        )
        return _counted(condition.check, condition.count, n)
    if isinstance(condition, EmailCondition):
        cutoff = None if condition.within is None else now - condition.within
        n = 0
        for send in facts.emails:
            if condition.template is not None and send.template_key != condition.template:
                continue
            at = getattr(send, f"{condition.action}_at")
            if at is not None and (cutoff is None or at > cutoff):
                n += 1
        return _counted(condition.check, condition.count, n)
    if isinstance(condition, AllCondition):
        return all(_evaluate(c, facts, now) for c in condition.conditions)
    if isinstance(condition, AnyCondition):
        return any(_evaluate(c, facts, now) for c in condition.conditions)
    return not _evaluate(condition.condition, facts, now)


def _properties(condition: Condition, bag: Mapping[str, Any]) -> bool:
    if isinstance(condition, PropertyCondition):
        return _property(condition, bag)
    if isinstance(condition, AllCondition):
        return all(_properties(c, bag) for c in condition.conditions)
    if isinstance(condition, AnyCondition):
        return any(_properties(c, bag) for c in condition.conditions)
    if isinstance(condition, NotCondition):
        return not _properties(condition.condition, bag)
    raise TypeError(f"not a property condition: {condition!r}")  # pragma: no cover


def _counted(check: CountCheck, bound: int | None, n: int) -> bool:
    if check == "exists":
        return n > 0
    if check == "not_exists":
        return n == 0
    assert bound is not None  # validated at construction
    return n >= bound if check == "at_least" else n <= bound


def as_number(value: object) -> Decimal | None:
    """``value`` as an exact decimal if it is a JSON number, else ``None``.

    Floats go through their shortest repr, which is how they are written to JSON and
    so what Postgres compares (``numeric``); ints are exact; bools are not numbers.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float) and math.isfinite(value):
        return Decimal(repr(value))
    return None


def strict_equals(actual: object, expected: object) -> bool:
    """JSON equality with strict types: numbers by value, else same type and value."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    left, right = as_number(actual), as_number(expected)
    if left is not None and right is not None:
        return left == right
    return isinstance(actual, str) and isinstance(expected, str) and actual == expected


def _property(condition: PropertyCondition, bag: Mapping[str, Any]) -> bool:
    op, expected = condition.op, condition.value
    actual = bag.get(condition.property)
    if op == "is_set":
        return actual is not None
    if op == "is_not_set":
        return actual is None
    if op == "equals":
        return strict_equals(actual, expected)
    if op == "not_equals":
        return not strict_equals(actual, expected)
    if op == "one_of":
        assert isinstance(expected, tuple)
        return any(strict_equals(actual, item) for item in expected)
    if op == "contains":
        if isinstance(actual, str):
            return isinstance(expected, str) and expected in actual
        if isinstance(actual, list | tuple):
            return any(strict_equals(item, expected) for item in actual)
        return False
    left, right = as_number(actual), as_number(expected)
    if left is None or right is None:
        return False
    if op == "gt":
        return left > right
    if op == "gte":
        return left >= right
    if op == "lt":
        return left < right
    return left <= right
