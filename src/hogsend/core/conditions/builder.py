"""``where``: the fluent way to build conditions.

::

    where.property("plan").equals("pro")
    where.event("app.active").within(days(7)).not_exists()
    where.event("order.placed").where(where.property("total").gte(100)).at_least(3)
    where.email("welcome").opened()
    where.all(where.event("app.active").exists(), where.not_(where.property("vip").equals(True)))

Every terminal returns a plain frozen condition; matchers are immutable, so a partly
built matcher can be kept and reused.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import timedelta

from hogsend.core.conditions.model import (
    AllCondition,
    AnyCondition,
    Condition,
    CountCheck,
    EmailAction,
    EmailCondition,
    EventCondition,
    InvalidCondition,
    NotCondition,
    PropertyCondition,
    Scalar,
    check_property_filter,
)


@dataclass(frozen=True, slots=True)
class PropertyMatcher:
    """Tests on one property; from ``where.property(name)``."""

    name: str

    def equals(self, value: Scalar) -> PropertyCondition:
        """The property is ``value``, with strict types (``True`` is not ``1``)."""
        return PropertyCondition(property=self.name, op="equals", value=value)

    def not_equals(self, value: Scalar) -> PropertyCondition:
        """Not :meth:`equals`; true when the property is missing or null."""
        return PropertyCondition(property=self.name, op="not_equals", value=value)

    def gt(self, value: float) -> PropertyCondition:
        """The property is a number greater than ``value``."""
        return PropertyCondition(property=self.name, op="gt", value=value)

    def gte(self, value: float) -> PropertyCondition:
        """The property is a number greater than or equal to ``value``."""
        return PropertyCondition(property=self.name, op="gte", value=value)

    def lt(self, value: float) -> PropertyCondition:
        """The property is a number less than ``value``."""
        return PropertyCondition(property=self.name, op="lt", value=value)

    def lte(self, value: float) -> PropertyCondition:
        """The property is a number less than or equal to ``value``."""
        return PropertyCondition(property=self.name, op="lte", value=value)

    def contains(self, value: Scalar) -> PropertyCondition:
        """A string property containing the string ``value`` (case-sensitive), or a
        list property with an element equal to ``value``."""
        return PropertyCondition(property=self.name, op="contains", value=value)

    def one_of(self, values: Iterable[Scalar]) -> PropertyCondition:
        """The property equals one of ``values`` (strict types, as :meth:`equals`)."""
        if isinstance(values, str | bytes):
            raise InvalidCondition(
                f"one_of takes a list of values, got the string {values!r}", path=("value",)
            )
        return PropertyCondition(property=self.name, op="one_of", value=tuple(values))

    def is_set(self) -> PropertyCondition:
        """The property is present and not null."""
        return PropertyCondition(property=self.name, op="is_set")

    def is_not_set(self) -> PropertyCondition:
        """The property is missing or null."""
        return PropertyCondition(property=self.name, op="is_not_set")


@dataclass(frozen=True, slots=True)
class EventMatcher:
    """Tests on how many of an event the contact has; from ``where.event(name)``."""

    name: str
    window: timedelta | None = None
    filter: Condition | None = None

    def within(self, duration: timedelta) -> EventMatcher:
        """Count only events younger than ``duration`` (replaces an earlier window)."""
        return replace(self, window=duration)

    def where(self, *conditions: Condition) -> EventMatcher:
        """Count only events whose own properties satisfy every one of ``conditions``.

        Replaces an earlier filter; build the filter from ``where.property(...)`` tests
        and ``where.all / any / not_``.
        """
        if not conditions:
            raise InvalidCondition("where(...) needs at least one condition", path=("where",))
        combined = conditions[0] if len(conditions) == 1 else AllCondition(conditions=conditions)
        check_property_filter(combined, path=("where",))
        return replace(self, filter=combined)

    def _build(self, check: CountCheck, count: int | None = None) -> EventCondition:
        return EventCondition(
            event=self.name, check=check, count=count, within=self.window, where=self.filter
        )

    def exists(self) -> EventCondition:
        """The contact has at least one such event."""
        return self._build("exists")

    def not_exists(self) -> EventCondition:
        """The contact has no such event (in the window, if one is set)."""
        return self._build("not_exists")

    def at_least(self, n: int) -> EventCondition:
        """The contact has ``n`` or more such events (``n`` >= 1)."""
        return self._build("at_least", n)

    def at_most(self, n: int) -> EventCondition:
        """The contact has ``n`` or fewer such events, none included (``n`` >= 0)."""
        return self._build("at_most", n)


@dataclass(frozen=True, slots=True)
class EmailMatcher:
    """Tests on emails sent to the contact; from ``where.email(template)``."""

    template: str | None = None
    window: timedelta | None = None

    def within(self, duration: timedelta) -> EmailMatcher:
        """Count only sends / opens / clicks younger than ``duration``."""
        return replace(self, window=duration)

    def _build(
        self, action: EmailAction, negate: bool, at_least: int | None, at_most: int | None
    ) -> EmailCondition:
        if at_least is not None and at_most is not None:
            raise InvalidCondition(
                "give at_least or at_most, not both (combine two conditions with where.all)",
                path=("count",),
            )
        check: CountCheck = "not_exists" if negate else "exists"
        count = None
        if at_least is not None:
            check, count = "at_least", at_least
        elif at_most is not None:
            check, count = "at_most", at_most
        return EmailCondition(
            action=action, template=self.template, check=check, count=count, within=self.window
        )

    def sent(self, *, at_least: int | None = None, at_most: int | None = None) -> EmailCondition:
        """Such an email was sent to the contact (once, or a bounded number of times)."""
        return self._build("sent", False, at_least, at_most)

    def opened(self, *, at_least: int | None = None, at_most: int | None = None) -> EmailCondition:
        """The contact opened such an email (counted per message)."""
        return self._build("opened", False, at_least, at_most)

    def clicked(self, *, at_least: int | None = None, at_most: int | None = None) -> EmailCondition:
        """The contact clicked a link in such an email (counted per message)."""
        return self._build("clicked", False, at_least, at_most)

    def not_sent(self) -> EmailCondition:
        """No such email was sent to the contact."""
        return self._build("sent", True, None, None)

    def not_opened(self) -> EmailCondition:
        """The contact opened no such email (including when none was sent)."""
        return self._build("opened", True, None, None)

    def not_clicked(self) -> EmailCondition:
        """The contact clicked no such email (including when none was sent)."""
        return self._build("clicked", True, None, None)


class ConditionBuilder:
    """The ``where`` namespace; use the module-level instance ``hogsend.where``."""

    __slots__ = ()

    def property(self, name: str) -> PropertyMatcher:
        """Start a test on the property ``name`` (flat key)."""
        return PropertyMatcher(name)

    def event(self, name: str) -> EventMatcher:
        """Start a test on the contact's events named ``name``."""
        return EventMatcher(name)

    def email(self, template: str | None = None) -> EmailMatcher:
        """Start a test on emails of ``template`` (any email when omitted)."""
        return EmailMatcher(template)

    def all(self, *conditions: Condition) -> AllCondition:
        """Every condition holds (``all()`` holds for everyone)."""
        return AllCondition(conditions=conditions)

    def any(self, *conditions: Condition) -> AnyCondition:
        """At least one condition holds (``any()`` holds for no one)."""
        return AnyCondition(conditions=conditions)

    def not_(self, condition: Condition) -> NotCondition:
        """The condition does not hold."""
        return NotCondition(condition=condition)


where = ConditionBuilder()
"""Build conditions: ``where.property(...)``, ``where.event(...)``, ``where.email(...)``,
``where.all(...)``, ``where.any(...)``, ``where.not_(...)``."""
