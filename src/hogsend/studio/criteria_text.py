"""Conditions as sentences: what a bucket's criteria or a trigger's filter says, in words.

:func:`describe` turns a condition tree into indented lines ("all of:", then each
child one level deeper), so Studio can show criteria to someone who does not read
JSON. Pure: no I/O, no markup (the template escapes and indents).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta

from hogsend.core.conditions.model import (
    AllCondition,
    AnyCondition,
    Condition,
    EmailCondition,
    EventCondition,
    NotCondition,
    PropertyCondition,
)

_OPS = {
    "equals": "is",
    "not_equals": "is not",
    "gt": "is greater than",
    "gte": "is at least",
    "lt": "is less than",
    "lte": "is at most",
    "contains": "contains",
    "one_of": "is one of",
}


_VERBS = {"sent": "was sent", "opened": "opened", "clicked": "clicked in"}


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a description and how deep it is nested."""

    depth: int
    text: str


def duration(value: timedelta) -> str:
    """A duration in its largest whole unit: ``3 days``, ``90 minutes``, ``1 week``."""
    total = int(value.total_seconds())
    for size, unit in ((604_800, "week"), (86_400, "day"), (3_600, "hour"), (60, "minute")):
        if total and total % size == 0:
            n = total // size
            return f"{n} {unit}{'' if n == 1 else 's'}"
    return f"{total} second{'' if total == 1 else 's'}"


def _value(value: object) -> str:
    if isinstance(value, tuple):
        return ", ".join(_value(v) for v in value)
    return json.dumps(value, ensure_ascii=False)


def _count(check: str, count: int | None) -> str:
    if check == "exists":
        return "at least once"
    if check == "not_exists":
        return "never"
    bound = "at least" if check == "at_least" else "at most"
    return f"{bound} {count} time{'' if count == 1 else 's'}"


def _within(within: timedelta | None) -> str:
    return "" if within is None else f" in the last {duration(within)}"


def property_text(c: PropertyCondition) -> str:
    """``plan is "pro"``, ``trialEndsAt is set`` ..."""
    if c.op == "is_set":
        return f"{c.property} is set"
    if c.op == "is_not_set":
        return f"{c.property} is not set"
    return f"{c.property} {_OPS[c.op]} {_value(c.value)}"


def describe(condition: Condition, depth: int = 0) -> list[Line]:
    """The lines describing ``condition``, starting at nesting ``depth``."""
    if isinstance(condition, PropertyCondition):
        return [Line(depth, f"contact property {property_text(condition)}")]
    if isinstance(condition, EventCondition):
        head = (
            f"did event “{condition.event}” "
            f"{_count(condition.check, condition.count)}{_within(condition.within)}"
        )
        if condition.where is None:
            return [Line(depth, head)]
        return [
            Line(depth, head + ", counting only events where:"),
            *describe_filter(condition.where, depth + 1),
        ]
    if isinstance(condition, EmailCondition):
        what = "any email" if condition.template is None else f"email “{condition.template}”"
        return [
            Line(
                depth,
                f"{_VERBS[condition.action]} {what} "
                f"{_count(condition.check, condition.count)}{_within(condition.within)}",
            )
        ]
    if isinstance(condition, NotCondition):
        return [Line(depth, "not:"), *describe(condition.condition, depth + 1)]
    word = "all" if isinstance(condition, AllCondition) else "any"
    assert isinstance(condition, (AllCondition, AnyCondition))
    lines = [Line(depth, f"{word} of:")]
    for child in condition.conditions:
        lines += describe(child, depth + 1)
    return lines


def describe_filter(condition: Condition, depth: int = 0) -> list[Line]:
    """Lines for a filter on one event's own properties (a trigger's or an event leg's)."""
    if isinstance(condition, PropertyCondition):
        return [Line(depth, f"property {property_text(condition)}")]
    if isinstance(condition, NotCondition):
        return [Line(depth, "not:"), *describe_filter(condition.condition, depth + 1)]
    if isinstance(condition, (AllCondition, AnyCondition)):
        word = "all" if isinstance(condition, AllCondition) else "any"
        lines = [Line(depth, f"{word} of:")]
        for child in condition.conditions:
            lines += describe_filter(child, depth + 1)
        return lines
    return describe(condition, depth)
