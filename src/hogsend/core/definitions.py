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
from hogsend.core.conditions.analysis import dependencies, is_time_based
from hogsend.core.identifiers import check_id
from hogsend.errors import DefinitionError, RegistrationClosedError

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


ReactionKind = Literal["enter", "leave", "dwell"]
LeaveReason = Literal["criteria", "maxDwell", "manual"]
LEAVE_REASONS: tuple[LeaveReason, ...] = ("criteria", "maxDwell", "manual")
ReactionHandler: TypeAlias = "Callable[[Contact, JourneyContext], Awaitable[None]]"

ENTERED_PREFIX = "bucket:entered:"
LEFT_PREFIX = "bucket:left:"
DWELL_PREFIX = "bucket:dwell:"


def entered_event(bucket_id: str) -> str:
    """Name of the event emitted when a contact joins ``bucket_id``."""
    return f"{ENTERED_PREFIX}{bucket_id}"


def left_event(bucket_id: str) -> str:
    """Name of the event emitted when a contact leaves ``bucket_id``."""
    return f"{LEFT_PREFIX}{bucket_id}"


def dwell_event(bucket_id: str, label: str) -> str:
    """Name of the event emitted when a member has stayed as long as a dwell schedule says."""
    return f"{DWELL_PREFIX}{bucket_id}:{label}"


def duration_label(value: timedelta) -> str:
    """A short stable label for a duration: ``3d``, ``36h``, ``90m``, ``45s``."""
    total = value.total_seconds()
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if total >= size and total % size == 0:
            return f"{int(total // size)}{unit}"
    if total == int(total):
        return f"{int(total)}s"
    return f"{round(total * 1000)}ms"


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketReaction:
    """Something to run when a contact enters, leaves or has dwelt in a bucket.

    The journeys feature runs ``handler`` durably, as a journey triggered by
    :attr:`event` (id :attr:`journey_id`); this object only describes it.

    Attributes:
        bucket_id: the bucket.
        kind: ``enter``, ``leave`` or ``dwell``.
        handler: ``async def handler(contact, ctx)``.
        label: the dwell schedule's label (``after-3d`` by default); None otherwise.
        after: dwell once, this long after the contact joined.
        every: dwell every this long while the contact stays.
        reasons: for ``leave``: only these reasons (empty = every reason).
        first_entry_only: for ``enter``: only the contact's first entry.
    """

    bucket_id: str
    kind: ReactionKind
    handler: ReactionHandler
    label: str | None = None
    after: timedelta | None = None
    every: timedelta | None = None
    reasons: tuple[LeaveReason, ...] = ()
    first_entry_only: bool = False

    @property
    def event(self) -> str:
        """The transition event that triggers this reaction."""
        if self.kind == "enter":
            return entered_event(self.bucket_id)
        if self.kind == "leave":
            return left_event(self.bucket_id)
        return dwell_event(self.bucket_id, self.label or "")

    @property
    def journey_id(self) -> str:
        """The id of the journey this reaction runs as (durable name ``hogsend.journey:<id>``)."""
        suffix = f"dwell-{self.label}" if self.kind == "dwell" else self.kind
        return f"bucket-{self.bucket_id}-on-{suffix}"


class _ReactionBook:
    """The mutable part of a frozen bucket definition: its reactions, until launch."""

    __slots__ = ("closed", "items")

    def __init__(self) -> None:
        self.items: list[BucketReaction] = []
        self.closed = False


@dataclass(frozen=True, slots=True, kw_only=True)
class BucketDefinition:
    """A real-time segment: who matches ``criteria`` now (or who was added by hand).

    Reactions are registered with :meth:`on_enter`, :meth:`on_leave` and :meth:`on_dwell`
    before the app launches; after that the definition is closed.
    """

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
    description: str = ""
    _book: _ReactionBook = field(default_factory=_ReactionBook, compare=False, repr=False)

    @property
    def entered(self) -> str:
        """``bucket:entered:<id>``: the event emitted on each join."""
        return entered_event(self.id)

    @property
    def left(self) -> str:
        """``bucket:left:<id>``: the event emitted on each leave."""
        return left_event(self.id)

    @property
    def reactions(self) -> tuple[BucketReaction, ...]:
        """The registered reactions, in registration order."""
        return tuple(self._book.items)

    @property
    def dwell_schedules(self) -> tuple[BucketReaction, ...]:
        """The dwell reactions (their ``label``, ``after`` / ``every``)."""
        return tuple(r for r in self._book.items if r.kind == "dwell")

    @property
    def is_time_based(self) -> bool:
        """Whether time alone can change membership: ``time_based``, else inferred from
        the criteria's ``within`` windows."""
        if self.time_based is not None:
            return self.time_based
        return self.criteria is not None and is_time_based(self.criteria)

    def close(self) -> None:
        """Refuse further reactions (called when the app launches)."""
        self._book.closed = True

    def on_enter(
        self, *, first_entry_only: bool = False
    ) -> Callable[[ReactionHandler], ReactionHandler]:
        """Decorate ``async def handler(contact, ctx)`` to run when a contact joins.

        Args:
            first_entry_only: skip re-entries (``entry_count`` > 1).
        """
        return self._reaction("enter", first_entry_only=first_entry_only)

    def on_leave(
        self, *, reason: LeaveReason | Sequence[LeaveReason] | None = None
    ) -> Callable[[ReactionHandler], ReactionHandler]:
        """Decorate ``async def handler(contact, ctx)`` to run when a contact leaves.

        Args:
            reason: only leaves for this reason (or these): ``criteria``, ``maxDwell``
                or ``manual``; every leave by default.
        """
        reasons: tuple[str, ...] = (
            () if reason is None else (reason,) if isinstance(reason, str) else tuple(reason)
        )
        for item in reasons:
            if item not in LEAVE_REASONS:
                raise DefinitionError(
                    f"bucket {self.id!r}: on_leave reason {item!r} is not one of "
                    f"{', '.join(LEAVE_REASONS)}"
                )
        return self._reaction("leave", reasons=reasons)

    def on_dwell(
        self,
        *,
        after: timedelta | None = None,
        every: timedelta | None = None,
        label: str | None = None,
    ) -> Callable[[ReactionHandler], ReactionHandler]:
        """Decorate ``async def handler(contact, ctx)`` to run while a contact stays.

        Exactly one of ``after`` (once per stay, that long after joining) and ``every``
        (once per interval of the stay; missed intervals coalesce into one) is needed.

        Args:
            after: once per membership, this long after it began.
            every: every this long during a membership.
            label: names the schedule in the event ``bucket:dwell:<id>:<label>``;
                ``after-3d`` / ``every-7d`` by default. Keep it stable.
        """
        if (after is None) == (every is None):
            raise DefinitionError(f"bucket {self.id!r}: on_dwell needs exactly one of after, every")
        period = after if after is not None else every
        assert period is not None
        if period <= timedelta(0):
            raise DefinitionError(f"bucket {self.id!r}: on_dwell duration must be positive")
        name = label or f"{'after' if after is not None else 'every'}-{duration_label(period)}"
        check_id(f"bucket {self.id!r} dwell label", name)
        return self._reaction("dwell", label=name, after=after, every=every)

    def _reaction(
        self, kind: ReactionKind, **options: Any
    ) -> Callable[[ReactionHandler], ReactionHandler]:
        def register(handler: ReactionHandler) -> ReactionHandler:
            import inspect

            if self._book.closed:
                raise RegistrationClosedError(
                    f"bucket {self.id!r}: cannot add an on_{kind} reaction, the app is launched"
                )
            if not inspect.iscoroutinefunction(handler):
                raise DefinitionError(
                    f"bucket {self.id!r}: the on_{kind} handler must be an async function"
                )
            reaction = BucketReaction(bucket_id=self.id, kind=kind, handler=handler, **options)
            if any(r.journey_id == reaction.journey_id for r in self._book.items):
                what = f"dwell label {reaction.label!r}" if kind == "dwell" else f"on_{kind}"
                raise DefinitionError(f"bucket {self.id!r}: {what} is registered twice")
            self._book.items.append(reaction)
            return handler

        return register


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
    bucket_id: str | None = None
    """Set on a bucket reaction's journey: that bucket's enable switch gates it too."""


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
    description: str = "",
) -> BucketDefinition:
    """Define a bucket (real-time segment).

    Args:
        id: kebab-case id, stable forever.
        name: shown in Studio.
        criteria: a condition (``where...``, or its JSON form) deciding membership; omit
            for manual buckets.
        kind: ``"manual"`` for hand-managed buckets; inferred from ``criteria`` otherwise.
        enabled: code default of the enable switch (admins may override).
        time_based: whether membership can change with time alone; inferred from the
            criteria's ``within`` windows when omitted.
        min_dwell: a member stays at least this long.
        max_dwell: a member leaves after this long, whatever the criteria say.
        fast_expiry: let reconcile expire members as soon as their window closes.
        entry_limit: how many times one contact may enter (None = unlimited); a
            contact who has entered that often does not join again.
        description: one paragraph shown in Studio.

    Raises:
        DefinitionError: see :func:`check_bucket`.
    """
    check_id("bucket", id)
    if not name.strip():
        raise DefinitionError(f"bucket {id!r} needs a non-empty name")
    condition = None if criteria is None else as_condition(criteria, f"bucket {id!r}: criteria")
    resolved: BucketKind = kind or ("manual" if criteria is None else "criteria")
    definition = BucketDefinition(
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
        description=description,
    )
    check_bucket(definition)
    return definition


def check_bucket(bucket: BucketDefinition) -> None:
    """Raise if a bucket definition is inconsistent; the message names the bucket.

    Raises:
        DefinitionError: criteria missing (or given to a manual bucket) or invalid,
            a non-positive or inverted min/max dwell, an entry limit below 1,
            ``time_based=False`` or ``fast_expiry`` contradicting the criteria's
            windows, or criteria reading the bucket's own transition events.
    """
    where = f"bucket {bucket.id!r}"
    if bucket.kind not in ("criteria", "manual"):
        raise DefinitionError(f"{where}: kind must be 'criteria' or 'manual', got {bucket.kind!r}")
    if bucket.kind == "criteria" and bucket.criteria is None:
        raise DefinitionError(f"{where} needs criteria (or kind='manual')")
    if bucket.kind == "manual" and bucket.criteria is not None:
        raise DefinitionError(f"{where} is manual and cannot have criteria")
    for label, value in (("min_dwell", bucket.min_dwell), ("max_dwell", bucket.max_dwell)):
        if value is not None and value <= timedelta(0):
            raise DefinitionError(f"{where}: {label} must be positive")
    if (
        bucket.min_dwell is not None
        and bucket.max_dwell is not None
        and bucket.max_dwell < bucket.min_dwell
    ):
        raise DefinitionError(f"{where}: max_dwell is shorter than min_dwell")
    if bucket.entry_limit is not None and (
        isinstance(bucket.entry_limit, bool)
        or not isinstance(bucket.entry_limit, int)
        or bucket.entry_limit < 1
    ):
        raise DefinitionError(f"{where}: entry_limit must be at least 1 (a whole number)")
    if bucket.criteria is None:
        if bucket.fast_expiry:
            raise DefinitionError(f"{where}: fast_expiry needs criteria with a within window")
        return
    condition = as_condition(bucket.criteria, f"{where}: criteria")
    deps = dependencies(condition)
    if bucket.time_based is False and deps.time_based:
        raise DefinitionError(
            f"{where}: time_based=False, but the criteria have a within window, so "
            "membership changes with time alone; drop time_based to let it be inferred"
        )
    if bucket.fast_expiry and not deps.time_based:
        raise DefinitionError(f"{where}: fast_expiry needs criteria with a within window")
    own = sorted(
        name
        for name in deps.events
        if name == entered_event(bucket.id)
        or name == left_event(bucket.id)
        or name.startswith(f"{DWELL_PREFIX}{bucket.id}:")
    )
    if own:
        raise DefinitionError(
            f"{where}: criteria read the bucket's own transition events ({', '.join(own)})"
        )


def bucket_cycle(buckets: Sequence[BucketDefinition]) -> list[str] | None:
    """A cycle of buckets whose criteria read each other's transition events, if any.

    ``a`` reads ``bucket:entered:b`` and ``b`` reads ``bucket:left:a`` could join and
    leave each other forever; such a set is refused at launch.

    Returns:
        The bucket ids around the cycle (first repeated at the end), or None.
    """
    ids = {b.id for b in buckets}
    edges: dict[str, set[str]] = {}
    for bucket in buckets:
        reads: set[str] = set()
        if bucket.criteria is not None:
            for name in dependencies(bucket.criteria).events:
                for prefix in (ENTERED_PREFIX, LEFT_PREFIX, DWELL_PREFIX):
                    if name.startswith(prefix):
                        other = name[len(prefix) :].split(":", 1)[0]
                        if other in ids:
                            reads.add(other)
        edges[bucket.id] = reads
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (found := visit(start)):
            return found
    return None


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
        check_bucket(definition)
    elif isinstance(definition, JourneyDefinition):
        as_event_spec(definition.trigger, f"journey {definition.id!r}: trigger")
        for index, item in enumerate(definition.exit_on):
            as_event_spec(item, f"journey {definition.id!r}: exit_on[{index}]")
