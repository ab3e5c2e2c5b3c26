"""Definitions of lists, buckets and journeys: inert, frozen values built at import.

Nothing here touches the environment, a database or the network; a definition only
describes. The runtime reads these objects after the app is launched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from hogsend.core.conditions import (
    CONDITION_TYPES,
    Condition,
    EventCondition,
    EventMatcher,
    InvalidCondition,
    condition_from_dict,
    format_path,
)
from hogsend.core.identifiers import check_id
from hogsend.errors import DefinitionError

if TYPE_CHECKING:
    from hogsend.core.contact import Contact
    from hogsend.core.journey_context import JourneyContext

JourneyBody: TypeAlias = "Callable[[Contact, JourneyContext], Awaitable[None]]"
EntryLimit = Literal["once", "once_per_period", "unlimited"]
BucketKind = Literal["criteria", "manual"]
EventSpec: TypeAlias = str | EventCondition
"""A journey trigger or exit: an event name, or ``where.event(name)[.where(...)]...``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ListDefinition:
    """A mailing list (or category) people can subscribe to and unsubscribe from."""

    id: str
    name: str
    description: str = ""
    default_opt_in: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketDefinition:
    """A real-time segment: who matches ``criteria`` now (or who was added by hand)."""

    id: str
    name: str
    kind: BucketKind = "criteria"
    criteria: Condition | None = None
    enabled: bool = True
    time_based: bool | None = None
    min_dwell: timedelta | None = None
    max_dwell: timedelta | None = None
    fast_expiry: bool = False
    entry_limit: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JourneyDefinition:
    """A durable journey: an async function run once per enrollment of a contact."""

    id: str
    name: str
    body: JourneyBody
    trigger: EventSpec
    entry_limit: EntryLimit = "once"
    entry_period: timedelta | None = None
    exit_on: tuple[EventSpec, ...] = ()
    suppress: timedelta | None = None
    enabled: bool = True
    description: str = field(default="")


def define_list(
    *, id: str, name: str, description: str = "", default_opt_in: bool = False
) -> ListDefinition:
    """Define a mailing list.

    Args:
        id: kebab-case id, stable forever (stored with every subscription).
        name: shown on the preference page.
        description: one line under the name on the preference page.
        default_opt_in: whether contacts are subscribed until they opt out.
    """
    check_id("list", id)
    if not name.strip():
        raise DefinitionError(f"list {id!r} needs a non-empty name")
    return ListDefinition(id=id, name=name, description=description, default_opt_in=default_opt_in)


def define_bucket(
    *,
    id: str,
    name: str,
    criteria: Condition | Mapping[str, Any] | None = None,
    kind: BucketKind | None = None,
    enabled: bool = True,
    time_based: bool | None = None,
    min_dwell: timedelta | None = None,
    max_dwell: timedelta | None = None,
    fast_expiry: bool = False,
    entry_limit: int | None = None,
) -> BucketDefinition:
    """Define a bucket (real-time segment).

    Args:
        id: kebab-case id, stable forever.
        name: shown in Studio.
        criteria: a condition (``where...``, or its JSON form) deciding membership; omit
            for manual buckets.
        kind: ``"manual"`` for hand-managed buckets; inferred from ``criteria`` otherwise.
        enabled: code default of the enable switch (admins may override).
        time_based: whether membership can change with time alone.
        min_dwell: a member stays at least this long.
        max_dwell: a member leaves after this long, whatever the criteria say.
        fast_expiry: let reconcile expire members as soon as their window closes.
        entry_limit: how many times one contact may enter (None = unlimited).
    """
    check_id("bucket", id)
    condition = None if criteria is None else as_condition(criteria, f"bucket {id!r}: criteria")
    resolved: BucketKind = kind or ("manual" if criteria is None else "criteria")
    if resolved == "criteria" and criteria is None:
        raise DefinitionError(f"bucket {id!r} needs criteria (or kind='manual')")
    if resolved == "manual" and criteria is not None:
        raise DefinitionError(f"bucket {id!r} is manual and cannot have criteria")
    for label, value in (("min_dwell", min_dwell), ("max_dwell", max_dwell)):
        if value is not None and value <= timedelta(0):
            raise DefinitionError(f"bucket {id!r}: {label} must be positive")
    if min_dwell is not None and max_dwell is not None and max_dwell < min_dwell:
        raise DefinitionError(f"bucket {id!r}: max_dwell is shorter than min_dwell")
    if entry_limit is not None and entry_limit < 1:
        raise DefinitionError(f"bucket {id!r}: entry_limit must be at least 1")
    return BucketDefinition(
        id=id,
        name=name,
        kind=resolved,
        criteria=condition,
        enabled=enabled,
        time_based=time_based,
        min_dwell=min_dwell,
        max_dwell=max_dwell,
        fast_expiry=fast_expiry,
        entry_limit=entry_limit,
    )


def define_journey(
    *,
    id: str,
    name: str,
    trigger: EventSpec | Mapping[str, Any],
    entry_limit: EntryLimit = "once",
    entry_period: timedelta | None = None,
    exit_on: Sequence[EventSpec | Mapping[str, Any]] = (),
    suppress: timedelta | None = None,
    enabled: bool = True,
    description: str = "",
) -> Callable[[JourneyBody], JourneyDefinition]:
    """Decorate an ``async def body(contact, ctx)`` to define a journey.

    Args:
        id: kebab-case id; the durable workflow name is ``hogsend.journey:<id>``.
        name: shown in Studio.
        trigger: an event name, ``"bucket:entered:<bucket-id>"``, or an event condition
            (``where.event(name).where(...)``: the filter reads the event's properties).
        entry_limit: ``once``, ``once_per_period`` (with ``entry_period``) or ``unlimited``.
        entry_period: the period of ``once_per_period``.
        exit_on: events (names or conditions) that end a running enrollment.
        suppress: minimum gap between two sends of this journey to one contact.
        enabled: code default of the enable switch (admins may override).
        description: one paragraph shown in Studio.
    """
    check_id("journey", id)
    if entry_limit == "once_per_period" and entry_period is None:
        raise DefinitionError(f"journey {id!r}: entry_limit='once_per_period' needs entry_period")
    if entry_limit != "once_per_period" and entry_period is not None:
        raise DefinitionError(f"journey {id!r}: entry_period only applies to once_per_period")
    if isinstance(trigger, str) and not trigger.strip():
        raise DefinitionError(f"journey {id!r}: trigger must name an event")
    trigger_spec = as_event_spec(trigger, f"journey {id!r}: trigger")
    exits = tuple(
        as_event_spec(item, f"journey {id!r}: exit_on[{index}]")
        for index, item in enumerate(exit_on)
    )
    if suppress is not None and suppress <= timedelta(0):
        raise DefinitionError(f"journey {id!r}: suppress must be positive")

    def decorate(body: JourneyBody) -> JourneyDefinition:
        import inspect

        if not inspect.iscoroutinefunction(body):
            raise DefinitionError(f"journey {id!r}: the body must be an async function")
        return JourneyDefinition(
            id=id,
            name=name,
            body=body,
            trigger=trigger_spec,
            entry_limit=entry_limit,
            entry_period=entry_period,
            exit_on=exits,
            suppress=suppress,
            enabled=enabled,
            description=description or (inspect.getdoc(body) or ""),
        )

    return decorate


def as_condition(value: object, where: str) -> Condition:
    """``value`` as a condition: a condition is kept, its JSON form (a dict) is decoded.

    Raises:
        DefinitionError: naming ``where`` (e.g. ``bucket 'vips': criteria``) and the
            path of the bad node.
    """
    if isinstance(value, CONDITION_TYPES):
        return value
    if isinstance(value, Mapping):
        try:
            return condition_from_dict(value)
        except InvalidCondition as exc:
            at = f" at {format_path(exc.path)}" if exc.path else ""
            raise DefinitionError(f"{where}{at}: {exc.reason}") from exc
    raise DefinitionError(
        f"{where}: expected a condition built with where (or its JSON form), got {value!r}"
    )


def as_event_spec(value: object, where: str) -> EventSpec:
    """A journey trigger or exit: an event name, or an event condition (or its JSON form).

    Raises:
        DefinitionError: naming ``where``.
    """
    if isinstance(value, str):
        if not value.strip():
            raise DefinitionError(f"{where}: an event name cannot be empty")
        return value
    if isinstance(value, EventMatcher):
        # ``where.event(name)[.where(...)]`` without a count: "an event like this".
        value = value.exists()
    condition = as_condition(value, where)
    if not isinstance(condition, EventCondition):
        raise DefinitionError(
            f"{where}: expected an event name or where.event(...), got an "
            f"{condition.to_dict()['type']!r} condition"
        )
    return condition


def check_conditions(definition: object) -> None:
    """Raise if a bucket or journey definition holds something that is not a condition.

    Definitions made with ``define_*`` are checked there already; this catches ones
    built directly from the dataclasses.

    Raises:
        DefinitionError: naming the definition and the field.
    """
    if isinstance(definition, BucketDefinition):
        if definition.criteria is not None:
            as_condition(definition.criteria, f"bucket {definition.id!r}: criteria")
        elif definition.kind == "criteria":
            raise DefinitionError(f"bucket {definition.id!r} needs criteria (or kind='manual')")
    elif isinstance(definition, JourneyDefinition):
        as_event_spec(definition.trigger, f"journey {definition.id!r}: trigger")
        for index, item in enumerate(definition.exit_on):
            as_event_spec(item, f"journey {definition.id!r}: exit_on[{index}]")
