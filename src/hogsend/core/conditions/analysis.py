"""What a condition depends on: the facts that can change its value.

Buckets use this to evaluate only the buckets an event can affect, to decide which
need the reconcile sweep (a window can close with no event arriving) and to anchor
their dwell clocks.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from types import MappingProxyType

from hogsend.core.conditions.model import (
    Condition,
    EmailAction,
    EmailCondition,
    EventCondition,
    PropertyCondition,
    walk,
)

Leaf = PropertyCondition | EventCondition | EmailCondition

EMAIL_EVENTS: Mapping[EmailAction, str] = MappingProxyType(
    {"sent": "email.sent", "opened": "email.opened", "clicked": "email.clicked"}
)
"""The event ingested when an email is sent, opened or clicked: the event that can
change an email condition in real time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Dependencies:
    """The facts a condition reads.

    Attributes:
        events: names of events whose arrival can change the value (event legs, plus
            the :data:`EMAIL_EVENTS` of email legs).
        properties: contact properties the condition tests (outside event filters).
        email_actions: the email actions it counts.
        windows: the ``within`` windows of its event and email legs, depth-first.
    """

    events: frozenset[str]
    properties: frozenset[str]
    email_actions: frozenset[EmailAction]
    windows: tuple[timedelta, ...]

    @property
    def time_based(self) -> bool:
        """Whether time alone can change the value (some leg has a window), so
        membership needs a periodic reconcile and not only events."""
        return bool(self.windows)


def leaves(condition: Condition) -> Iterator[Leaf]:
    """The property, event and email tests of ``condition``, depth-first, in order.

    Event filters are not entered: their tests read the event, not the contact.
    """
    for node in walk(condition):
        if isinstance(node, PropertyCondition | EventCondition | EmailCondition):
            yield node


def dependencies(condition: Condition) -> Dependencies:
    """What ``condition`` reads; see :class:`Dependencies`."""
    events: set[str] = set()
    properties: set[str] = set()
    actions: set[EmailAction] = set()
    windows: list[timedelta] = []
    for leaf in leaves(condition):
        if isinstance(leaf, PropertyCondition):
            properties.add(leaf.property)
            continue
        if isinstance(leaf, EventCondition):
            events.add(leaf.event)
        else:
            actions.add(leaf.action)
            events.add(EMAIL_EVENTS[leaf.action])
        if leaf.within is not None:
            windows.append(leaf.within)
    return Dependencies(
        events=frozenset(events),
        properties=frozenset(properties),
        email_actions=frozenset(actions),
        windows=tuple(windows),
    )


def relevant_events(condition: Condition) -> frozenset[str]:
    """Names of the events whose arrival can change ``condition``'s value."""
    return dependencies(condition).events


def is_time_based(condition: Condition) -> bool:
    """Whether some leg has a ``within`` window, so time alone can change the value."""
    return dependencies(condition).time_based
