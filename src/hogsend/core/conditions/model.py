"""The condition tree: property, event and email leaves joined by all / any / not.

Every node is a frozen value validated when it is built, so an invalid condition cannot
exist; :mod:`hogsend.core.conditions.codec` turns the JSON form into these nodes and
prefixes validation errors with the path of the bad node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal, TypeAlias, get_args

from hogsend.errors import DefinitionError

if TYPE_CHECKING:
    from collections.abc import Iterator

Scalar: TypeAlias = str | int | float | bool
"""A value a condition compares with: a JSON string, number or boolean (never null)."""

PropertyOp = Literal[
    "equals",
    "not_equals",
    "gt",
    "gte",
    "lt",
    "lte",
    "contains",
    "one_of",
    "is_set",
    "is_not_set",
]
CountCheck = Literal["exists", "not_exists", "at_least", "at_most"]
EmailAction = Literal["sent", "opened", "clicked"]

PROPERTY_OPS: tuple[PropertyOp, ...] = get_args(PropertyOp)
COUNT_CHECKS: tuple[CountCheck, ...] = get_args(CountCheck)
EMAIL_ACTIONS: tuple[EmailAction, ...] = get_args(EmailAction)
MAX_COUNT = 1_000_000_000
"""Largest ``at_least`` / ``at_most`` bound (it becomes a SQL OFFSET)."""
MAX_WINDOW = timedelta(days=36_525)
"""Longest ``within`` window, 100 years: ``now - within`` must stay a valid date."""
_ORDERING_OPS = frozenset({"gt", "gte", "lt", "lte"})
_VALUELESS_OPS = frozenset({"is_set", "is_not_set"})


class InvalidCondition(DefinitionError, ValueError):
    """A condition is malformed: an unknown operator, a value of the wrong type, ...

    Also a ``ValueError`` so pydantic validators (the admin API's criteria preview) can
    raise it as an ordinary validation error.

    Attributes:
        path: where the bad node sits, from the root: keys and list indexes, e.g.
            ``("conditions", 1, "value")``; empty for the root itself.
        reason: what is wrong, for people.
    """

    code = "invalid-condition"

    def __init__(self, reason: str, *, path: tuple[str | int, ...] = ()) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{format_path(path)}: {reason}" if path else reason)

    def under(self, *prefix: str | int) -> InvalidCondition:
        """The same error, located ``prefix`` deeper from a new root."""
        return InvalidCondition(self.reason, path=(*prefix, *self.path))


def format_path(path: tuple[str | int, ...]) -> str:
    """``("conditions", 1, "value")`` → ``conditions[1].value``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


class _Node:
    """Equality and hashing by the canonical JSON form.

    Dataclass equality would compare field tuples, where ``True == 1``; conditions that
    differ in the type of a value are different conditions.
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        from hogsend.core.conditions.codec import canonical_json

        if type(self) is not type(other):
            return NotImplemented
        return canonical_json(self) == canonical_json(other)  # type: ignore[arg-type]

    def __hash__(self) -> int:
        from hogsend.core.conditions.codec import canonical_json

        return hash(canonical_json(self))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, object]:
        """The JSON form of this condition (see docs/conditions.md)."""
        from hogsend.core.conditions.codec import condition_to_dict

        return condition_to_dict(self)  # type: ignore[arg-type]

    def fingerprint(self) -> str:
        """A stable hash of the canonical JSON form (sha256, hex)."""
        from hogsend.core.conditions.codec import fingerprint

        return fingerprint(self)  # type: ignore[arg-type]


def is_number(value: object) -> bool:
    """A JSON number: an int or a finite float, never a bool."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)


def is_scalar(value: object) -> bool:
    """A value a condition may compare with: a string, a number or a bool."""
    return isinstance(value, str | bool) or is_number(value)


def storable_text(value: str) -> bool:
    """Whether Postgres can hold ``value`` as text: no NUL, no lone surrogate."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(value: str, what: str, path: tuple[str | int, ...]) -> None:
    # Postgres text holds neither; refusing here keeps a query from failing later.
    if not storable_text(value):
        raise InvalidCondition(
            f"{what} contains a NUL character or a lone surrogate, which cannot be stored",
            path=path,
        )


def _check_scalar(value: object, what: str, *, path: tuple[str | int, ...] = ("value",)) -> None:
    if not is_scalar(value):
        raise InvalidCondition(
            f"{what} must be a string, a finite number or a boolean, got {value!r}", path=path
        )
    if isinstance(value, str):
        _check_text(value, what, path)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class PropertyCondition(_Node):
    """A test on one property of a bag: the contact's properties, or an event's.

    Attributes:
        property: the key, looked up flat (``"a.b"`` is one key, not a path).
        op: the operator; see docs/conditions.md for the exact semantics of each.
        value: the operand: a scalar, a tuple of scalars for ``one_of``, ``None`` for
            ``is_set`` / ``is_not_set``.
    """

    property: str
    op: PropertyOp
    value: Scalar | tuple[Scalar, ...] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.property, str) or not self.property:
            raise InvalidCondition(
                f"property must be a non-empty string, got {self.property!r}", path=("property",)
            )
        _check_text(self.property, "property", ("property",))
        if self.op not in PROPERTY_OPS:
            raise InvalidCondition(
                f"unknown operator {self.op!r}; expected one of {', '.join(PROPERTY_OPS)}",
                path=("op",),
            )
        value = self.value
        if self.op in _VALUELESS_OPS:
            if value is not None:
                raise InvalidCondition(f"{self.op} takes no value", path=("value",))
        elif self.op == "one_of":
            if isinstance(value, list):
                value = tuple(value)
                object.__setattr__(self, "value", value)
            if not isinstance(value, tuple):
                raise InvalidCondition(
                    f"one_of needs a list of values, got {value!r}", path=("value",)
                )
            for index, item in enumerate(value):
                _check_scalar(item, "each one_of value", path=("value", index))
        elif self.op in _ORDERING_OPS:
            if not is_number(value):
                raise InvalidCondition(
                    f"{self.op} compares numbers only; got {value!r}", path=("value",)
                )
        elif value is None:
            hint = " (is_set / is_not_set test for a missing value)" if "equals" in self.op else ""
            raise InvalidCondition(f"{self.op} needs a value{hint}", path=("value",))
        else:
            _check_scalar(value, f"the {self.op} value")


def _check_count(check: object, count: object) -> None:
    if check not in COUNT_CHECKS:
        raise InvalidCondition(
            f"unknown check {check!r}; expected one of {', '.join(COUNT_CHECKS)}",
            path=("check",),
        )
    if check in ("exists", "not_exists"):
        if count is not None:
            raise InvalidCondition(f"{check} takes no count", path=("count",))
        return
    if isinstance(count, bool) or not isinstance(count, int):
        raise InvalidCondition(f"{check} needs an integer count, got {count!r}", path=("count",))
    if check == "at_least" and count < 1:
        raise InvalidCondition("at_least needs a count of 1 or more", path=("count",))
    if check == "at_most" and count < 0:
        raise InvalidCondition("at_most needs a count of 0 or more", path=("count",))
    if count > MAX_COUNT:
        raise InvalidCondition(f"count can be at most {MAX_COUNT:_}", path=("count",))


def _check_within(within: object) -> None:
    if within is None:
        return
    if not isinstance(within, timedelta):
        raise InvalidCondition(f"within must be a timedelta, got {within!r}", path=("within",))
    if within <= timedelta(0):
        raise InvalidCondition("within must be a positive duration", path=("within",))
    if within > MAX_WINDOW:
        raise InvalidCondition("within can be at most 100 years (P36525D)", path=("within",))


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class EventCondition(_Node):
    """How many of the contact's events named ``event`` there are.

    The events counted are those named ``event``, that occurred strictly after
    ``now - within`` when a window is set (no upper bound), and whose properties
    satisfy ``where`` when a filter is set.

    Attributes:
        event: the event name, matched exactly.
        check: ``exists`` (1 or more), ``not_exists`` (none), ``at_least`` or
            ``at_most`` (compared with ``count``).
        count: the bound of ``at_least`` (>= 1) / ``at_most`` (>= 0).
        within: only events younger than this count.
        where: a filter on each event's own properties (property tests and all / any /
            not only).
    """

    event: str
    check: CountCheck = "exists"
    count: int | None = None
    within: timedelta | None = None
    where: Condition | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.event, str) or not self.event:
            raise InvalidCondition(
                f"event must be a non-empty string, got {self.event!r}", path=("event",)
            )
        _check_text(self.event, "event", ("event",))
        _check_count(self.check, self.count)
        _check_within(self.within)
        if self.where is not None:
            check_property_filter(self.where, path=("where",))


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class EmailCondition(_Node):
    """How many emails sent to the contact were sent / opened / clicked.

    Counted over the contact's ``email_sends`` rows (by contact, never by address) of
    ``template`` (any template when ``None``) whose ``<action>_at`` is set and, with a
    window, later than ``now - within``.

    Attributes:
        action: ``sent`` (the message left for the provider), ``opened`` or ``clicked``.
        template: a template key, or ``None`` for any email.
        check: as for events.
        count: as for events.
        within: only actions younger than this count.
    """

    action: EmailAction
    template: str | None = None
    check: CountCheck = "exists"
    count: int | None = None
    within: timedelta | None = None

    def __post_init__(self) -> None:
        if self.action not in EMAIL_ACTIONS:
            raise InvalidCondition(
                f"unknown email action {self.action!r}; expected one of {', '.join(EMAIL_ACTIONS)}",
                path=("action",),
            )
        if self.template is not None and (not isinstance(self.template, str) or not self.template):
            raise InvalidCondition(
                f"template must be a non-empty string or null, got {self.template!r}",
                path=("template",),
            )
        if self.template is not None:
            _check_text(self.template, "template", ("template",))
        _check_count(self.check, self.count)
        _check_within(self.within)


def _check_children(conditions: object, kind: str) -> None:
    if not isinstance(conditions, tuple):
        raise InvalidCondition(
            f"{kind} needs a tuple of conditions, got {conditions!r}", path=("conditions",)
        )
    for index, child in enumerate(conditions):
        if not isinstance(child, CONDITION_TYPES):
            raise InvalidCondition(
                f"expected a condition (built with where...), got {child!r}",
                path=("conditions", index),
            )


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class AllCondition(_Node):
    """True when every child is true; ``all()`` of nothing is true."""

    conditions: tuple[Condition, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.conditions, list):
            object.__setattr__(self, "conditions", tuple(self.conditions))
        _check_children(self.conditions, "all")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class AnyCondition(_Node):
    """True when at least one child is true; ``any()`` of nothing is false."""

    conditions: tuple[Condition, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.conditions, list):
            object.__setattr__(self, "conditions", tuple(self.conditions))
        _check_children(self.conditions, "any")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class NotCondition(_Node):
    """True when its child is false."""

    condition: Condition

    def __post_init__(self) -> None:
        if not isinstance(self.condition, CONDITION_TYPES):
            raise InvalidCondition(
                f"expected a condition (built with where...), got {self.condition!r}",
                path=("condition",),
            )


Condition: TypeAlias = (
    PropertyCondition | EventCondition | EmailCondition | AllCondition | AnyCondition | NotCondition
)
"""Any condition node; what ``where...`` builds and what criteria and filters hold."""

CONDITION_TYPES = (
    PropertyCondition,
    EventCondition,
    EmailCondition,
    AllCondition,
    AnyCondition,
    NotCondition,
)


def walk(condition: Condition) -> Iterator[Condition]:
    """Every node of ``condition``, depth-first, parents before children.

    Event filters are not entered: their property tests read the event's properties,
    not the contact's (see :func:`hogsend.core.conditions.analysis.dependencies`).
    """
    stack: list[Condition] = [condition]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, AllCondition | AnyCondition):
            stack.extend(reversed(node.conditions))
        elif isinstance(node, NotCondition):
            stack.append(node.condition)


def check_property_filter(condition: Condition, *, path: tuple[str | int, ...] = ()) -> None:
    """Raise unless ``condition`` only tests properties (with all / any / not).

    Event filters and journey ``where`` clauses read one bag of properties, so event
    and email tests have no meaning inside them.
    """
    if isinstance(condition, PropertyCondition):
        return
    if isinstance(condition, AllCondition | AnyCondition):
        for index, child in enumerate(condition.conditions):
            check_property_filter(child, path=(*path, "conditions", index))
        return
    if isinstance(condition, NotCondition):
        check_property_filter(condition.condition, path=(*path, "condition"))
        return
    kind = "an event" if isinstance(condition, EventCondition) else "an email"
    if not isinstance(condition, CONDITION_TYPES):
        raise InvalidCondition(f"expected a property condition, got {condition!r}", path=path)
    raise InvalidCondition(
        f"a property filter may only test properties, not {kind} condition", path=path
    )
