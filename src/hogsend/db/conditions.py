"""Conditions compiled to SQL: the set-based twin of the in-memory evaluator.

:func:`compile_sql` turns a condition into one boolean SQL expression about a contact:
by default the row of ``contacts`` in the enclosing query, so
``select(contacts.c.id).where(compile_sql(c, now))`` is the audience of ``c``. Backfill,
reconcile and campaign audiences use it; the per-event path can use
:func:`contact_matches` or :func:`load_facts` + :func:`hogsend.core.conditions.evaluate`.

The semantics are those of :mod:`hogsend.core.conditions.evaluation` (docs/conditions.md),
and a property test holds the two to it. How the SQL keeps them:

- History is found by ``contact_id``: merges move events and sends to the survivor, so
  a merged contact's history counts for it, and contacts without an external id are
  found like any other.
- Property values stay ``jsonb``. Equality compares ``jsonb`` with ``jsonb``, which is
  type-strict (``true`` is not ``1``, ``"1"`` is not ``1``) and numeric for numbers;
  ordering is guarded by ``jsonb_typeof = 'number'``. Nothing is cast, so no value
  makes a query fail.
- Every leaf is wrapped so it is never NULL: SQL's three-valued logic would otherwise
  turn ``NOT (missing = 1)`` into "unknown" where the evaluator says true.
- ``now`` is a parameter; windows become ``occurred_at > :cutoff`` computed in Python,
  exactly as the evaluator computes them.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Interval,
    Select,
    Text,
    and_,
    cast,
    false,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.core.conditions import (
    AllCondition,
    AnyCondition,
    Condition,
    ContactFacts,
    CountCheck,
    EmailCondition,
    EmailFact,
    EventCondition,
    EventFact,
    NotCondition,
    PropertyCondition,
    leaves,
)
from hogsend.db.tables.contacts import Contact
from hogsend.db.tables.email import EmailSend
from hogsend.db.tables.events import UserEvent

contacts = Contact.__table__
user_events = UserEvent.__table__
email_sends = EmailSend.__table__


def compile_sql(
    condition: Condition,
    now: datetime | ColumnElement[datetime],
    *,
    contact_id: ColumnElement[Any] | None = None,
    properties: ColumnElement[Any] | None = None,
    set_based: bool = False,
) -> ColumnElement[bool]:
    """One boolean SQL expression: does the contact satisfy ``condition`` at ``now``?

    Args:
        condition: the condition.
        now: the instant windows are measured from (timezone-aware), or a SQL
            expression giving it (e.g. a bind parameter, so that one statement serves
            every instant; a window's cutoff is then ``now - <seconds>`` in SQL, exact
            to the microsecond like the Python subtraction).
        contact_id: the contact's uuid; ``contacts.id`` of the enclosing query by default
            (any uuid expression works, e.g. ``bucket_memberships.contact_id``).
        properties: the contact's properties as ``jsonb``; ``contacts.properties`` by
            default (e.g. ``contacts.properties || :patch`` on the real-time path).
        set_based: for statements over many contacts at once (a full reconcile pass):
            count checks (``at_least`` / ``at_most``) become membership in the set of
            contacts with enough rows, computed once and hashed, rather than a
            correlated ``LIMIT``/``OFFSET`` probe per contact, which Postgres cannot
            turn into a join (one such leg over 650k contacts took 85 s). Same
            semantics; slower for one contact or a small batch.

    Raises:
        ValueError: ``now`` is naive.
    """
    if isinstance(now, datetime) and now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    return _Compiler(
        now,
        contacts.c.id if contact_id is None else contact_id,
        contacts.c.properties if properties is None else properties,
        set_based=set_based,
    ).compile(condition)


def matching_contacts(
    condition: Condition, now: datetime, *, set_based: bool = False
) -> Select[tuple[uuid.UUID]]:
    """``SELECT id FROM contacts`` of the live (not deleted) contacts matching ``condition``
    (``set_based``: see :func:`compile_sql`)."""
    return select(contacts.c.id).where(
        contacts.c.deleted_at.is_(None), compile_sql(condition, now, set_based=set_based)
    )


async def contact_matches(
    session: AsyncSession,
    condition: Condition,
    contact_id: uuid.UUID,
    now: datetime,
    *,
    patch: Mapping[str, Any] | None = None,
) -> bool:
    """Evaluate ``condition`` for one contact in the database, in one query.

    Args:
        session: the caller's session (nothing is written).
        condition: the condition.
        contact_id: the (resolved, live or not) contact.
        now: the instant windows are measured from.
        patch: properties overlaid on the stored ones (``||``), e.g. the ones the
            current event sets, for a read that must not wait for the write.

    Returns:
        False when no contact has that id.
    """
    bag: ColumnElement[Any] = contacts.c.properties
    if patch:
        bag = contacts.c.properties.op("||", return_type=JSONB)(_jsonb(dict(patch)))
    query = select(compile_sql(condition, now, properties=bag)).where(contacts.c.id == contact_id)
    return bool((await session.execute(query)).scalar())


async def load_facts(
    session: AsyncSession, contact_id: uuid.UUID, condition: Condition, now: datetime
) -> ContactFacts:
    """Read what :func:`hogsend.core.conditions.evaluate` needs for one contact.

    Loads the contact's properties, its events named by ``condition`` (only those
    inside the widest window of a name when every leg on that name has one) and, when
    the condition has email legs, its email sends.
    """
    props = (
        await session.execute(select(contacts.c.properties).where(contacts.c.id == contact_id))
    ).scalar()
    cutoffs: dict[str, datetime | None] = {}
    has_email = False
    for leaf in leaves(condition):
        if isinstance(leaf, EventCondition):
            # One unwindowed leg on a name needs all of that name's events.
            cutoff = None if leaf.within is None else now - leaf.within
            known = cutoffs.get(leaf.event, cutoff)
            cutoffs[leaf.event] = None if known is None or cutoff is None else min(known, cutoff)
        elif isinstance(leaf, EmailCondition):
            has_email = True
    events: list[EventFact] = []
    if cutoffs:
        e = user_events
        wanted = [
            and_(e.c.event == name, true() if cutoff is None else e.c.occurred_at > cutoff)
            for name, cutoff in sorted(cutoffs.items())
        ]
        rows = await session.execute(
            select(e.c.event, e.c.occurred_at, e.c.properties).where(
                e.c.contact_id == contact_id, or_(*wanted)
            )
        )
        events = [
            EventFact(name=row.event, occurred_at=row.occurred_at, properties=row.properties)
            for row in rows
        ]
    emails: list[EmailFact] = []
    if has_email:
        s = email_sends
        rows = await session.execute(
            select(s.c.template_key, s.c.sent_at, s.c.opened_at, s.c.clicked_at).where(
                s.c.contact_id == contact_id
            )
        )
        emails = [
            EmailFact(
                template_key=row.template_key,
                sent_at=row.sent_at,
                opened_at=row.opened_at,
                clicked_at=row.clicked_at,
            )
            for row in rows
        ]
    return ContactFacts(properties=props or {}, events=events, emails=emails)


def _jsonb(value: object) -> ColumnElement[Any]:
    # Bound as text and cast: the value reaches Postgres exactly as json.dumps wrote it.
    return cast(literal(json.dumps(value, allow_nan=False), Text), JSONB)


def _never_null(expr: ColumnElement[bool]) -> ColumnElement[bool]:
    return func.coalesce(expr, false())


class _Compiler:
    def __init__(
        self,
        now: datetime | ColumnElement[datetime],
        contact_id: ColumnElement[Any],
        properties: ColumnElement[Any],
        *,
        set_based: bool = False,
    ) -> None:
        self.set_based = set_based
        self.now = now
        self.contact_id = contact_id
        self.properties = properties

    def compile(self, condition: Condition) -> ColumnElement[bool]:
        if isinstance(condition, PropertyCondition):
            return _property(condition, self.properties)
        if isinstance(condition, EventCondition):
            return self._event(condition)
        if isinstance(condition, EmailCondition):
            return self._email(condition)
        if isinstance(condition, AllCondition):
            parts = [self.compile(c) for c in condition.conditions]
            return and_(*parts) if parts else true()
        if isinstance(condition, AnyCondition):
            parts = [self.compile(c) for c in condition.conditions]
            return or_(*parts) if parts else false()
        assert isinstance(condition, NotCondition)
        return not_(self.compile(condition.condition))

    def _cutoff(self, condition: EventCondition | EmailCondition) -> ColumnElement[Any] | None:
        if condition.within is None:
            return None
        if isinstance(self.now, datetime):
            return literal(self.now - condition.within, DateTime(timezone=True))
        # A fixed number of seconds, never '<n> days': day intervals follow the session
        # time zone's daylight-saving shifts, Python's timedelta does not.
        seconds = condition.within / timedelta(microseconds=1) / 1_000_000
        return self.now - literal_column(f"interval '{seconds:.6f} seconds'", Interval)

    def _event(self, condition: EventCondition) -> ColumnElement[bool]:
        e = user_events.alias()
        where: list[ColumnElement[bool]] = [
            e.c.contact_id == self.contact_id,
            e.c.event == condition.event,
        ]
        cutoff = self._cutoff(condition)
        if cutoff is not None:
            where.append(e.c.occurred_at > cutoff)
        if condition.where is not None:
            where.append(_filter(condition.where, e.c.properties))
        if self.set_based and condition.count is not None:
            return self._counted_set(e.c.contact_id, where[1:], condition)
        return _counted(select(literal(1)).select_from(e).where(*where), condition)

    def _email(self, condition: EmailCondition) -> ColumnElement[bool]:
        s = email_sends.alias()
        at = s.c[f"{condition.action}_at"]
        where: list[ColumnElement[bool]] = [s.c.contact_id == self.contact_id, at.is_not(None)]
        if condition.template is not None:
            where.append(s.c.template_key == condition.template)
        cutoff = self._cutoff(condition)
        if cutoff is not None:
            where.append(at > cutoff)
        if self.set_based and condition.count is not None:
            return self._counted_set(s.c.contact_id, where[1:], condition)
        return _counted(select(literal(1)).select_from(s).where(*where), condition)

    def _counted_set(
        self,
        owner: ColumnElement[Any],
        where: list[ColumnElement[bool]],
        condition: EventCondition | EmailCondition,
    ) -> ColumnElement[bool]:
        # The contacts with more than ``over`` rows, grouped once (uncorrelated); the
        # contact's membership in that set is the count check.
        assert condition.count is not None
        over = condition.count - 1 if condition.check == "at_least" else condition.count
        crowded = select(owner).where(*where).group_by(owner).having(func.count() > over)
        found = _never_null(self.contact_id.in_(crowded))
        return found if condition.check == "at_least" else not_(found)


def _counted(rows: Select[Any], condition: EventCondition | EmailCondition) -> ColumnElement[bool]:
    # "At least k rows" is EXISTS past the first k-1: the scan stops at the k-th row
    # instead of counting them all, and a contact with no rows is handled like any other.
    check: CountCheck = condition.check
    if check == "exists":
        return rows.exists()
    if check == "not_exists":
        return not_(rows.exists())
    assert condition.count is not None
    if check == "at_least":
        return rows.offset(condition.count - 1).limit(1).exists()
    return not_(rows.offset(condition.count).limit(1).exists())


def _filter(condition: Condition, bag: ColumnElement[Any]) -> ColumnElement[bool]:
    if isinstance(condition, PropertyCondition):
        return _property(condition, bag)
    if isinstance(condition, AllCondition):
        parts = [_filter(c, bag) for c in condition.conditions]
        return and_(*parts) if parts else true()
    if isinstance(condition, AnyCondition):
        parts = [_filter(c, bag) for c in condition.conditions]
        return or_(*parts) if parts else false()
    assert isinstance(condition, NotCondition)  # event filters are property-only
    return not_(_filter(condition.condition, bag))


def _property(condition: PropertyCondition, bag: ColumnElement[Any]) -> ColumnElement[bool]:
    value = bag.op("->", return_type=JSONB)(literal(condition.property, Text))
    kind = func.jsonb_typeof(value, type_=Text)
    op, expected = condition.op, condition.value
    if op == "is_set":
        return _never_null(kind != "null")
    if op == "is_not_set":
        return not_(_never_null(kind != "null"))
    if op == "equals":
        return _never_null(value == _jsonb(expected))
    if op == "not_equals":
        return not_(_never_null(value == _jsonb(expected)))
    if op == "one_of":
        assert isinstance(expected, tuple)
        if not expected:
            return false()
        return _never_null(or_(*(value == _jsonb(item) for item in expected)))
    if op == "contains":
        # One-element array containment: jsonb equality of a top-level element, so as
        # type-strict as equals; nested arrays and objects never contain a scalar.
        in_list = and_(kind == "array", value.op("@>", return_type=JSONB)(_jsonb([expected])))
        if not isinstance(expected, str):
            return _never_null(in_list)
        text_value = bag.op("->>", return_type=Text)(literal(condition.property, Text))
        in_text = and_(kind == "string", func.strpos(text_value, literal(expected, Text)) > 0)
        return _never_null(or_(in_text, in_list))
    compare = {
        "gt": value.op(">", is_comparison=True),
        "gte": value.op(">=", is_comparison=True),
        "lt": value.op("<", is_comparison=True),
        "lte": value.op("<=", is_comparison=True),
    }[op]
    return _never_null(and_(kind == "number", compare(_jsonb(expected))))
