"""Property test: the in-memory evaluator and the SQL compiler give the same answers.

Hypothesis generates conditions (nested all / any / not over every operator and check,
values of mixed types) and a handful of contacts (properties of mixed types including
lists, objects and nulls; events and email sends at ages that straddle the windows).
Each example stores the contacts in Postgres inside a transaction, asks every condition
in SQL for the set of matching contacts, compares it with the in-memory answer per
contact, and rolls back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, insert

from hogsend import Condition, where
from hogsend.core.conditions import (
    AllCondition,
    AnyCondition,
    ContactFacts,
    EmailCondition,
    EmailFact,
    EventCondition,
    EventFact,
    NotCondition,
    PropertyCondition,
    evaluate,
)
from hogsend.db.conditions import contacts, email_sends, matching_contacts, user_events
from hogsend.db.engine import make_sync_engine

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
HOUR, DAY, WEEK = timedelta(hours=1), timedelta(days=1), timedelta(days=7)
WINDOWS = (HOUR, DAY, WEEK)
# Ages on, just inside and just outside every window, plus the future and the far past.
AGES = (
    -HOUR,
    timedelta(0),
    HOUR - timedelta(microseconds=1),
    HOUR,
    DAY,
    DAY + timedelta(microseconds=1),
    WEEK - timedelta(seconds=1),
    WEEK,
    30 * DAY,
)
KEYS = ("a", "b", "a.b")
EVENTS = ("x", "y")
TEMPLATES = ("t1", "t2")

# Values: a few that collide a lot across types, plus arbitrary ones.
texts = st.sampled_from(["", "a", "b", "ab", "A", "1", "1.0", "true", "é", "a b"]) | st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=4,
)
ints = st.sampled_from([0, 1, -1, 2, 3, 10**20, 10**30]) | st.integers(-5, 5)
floats = st.sampled_from([0.0, 1.0, -0.0, 0.5, 2.5, 1e20, 1e30, 1e-7]) | st.floats(
    allow_nan=False, allow_infinity=False
)
numbers = ints | floats
scalars = st.booleans() | numbers | texts
# Property values: scalars, null, lists (with a nested list now and then) and objects.
values = st.one_of(
    st.none(),
    scalars,
    st.lists(scalars | st.lists(scalars, max_size=2), max_size=3),
    st.dictionaries(st.sampled_from(KEYS), scalars, max_size=2),
)
bags = st.dictionaries(st.sampled_from(KEYS), values, max_size=3)


def property_conditions() -> st.SearchStrategy[PropertyCondition]:
    key = st.sampled_from(KEYS)
    return st.one_of(
        st.builds(lambda k, v: where.property(k).equals(v), key, scalars),
        st.builds(lambda k, v: where.property(k).not_equals(v), key, scalars),
        st.builds(lambda k, v: where.property(k).gt(v), key, numbers),
        st.builds(lambda k, v: where.property(k).gte(v), key, numbers),
        st.builds(lambda k, v: where.property(k).lt(v), key, numbers),
        st.builds(lambda k, v: where.property(k).lte(v), key, numbers),
        st.builds(lambda k, v: where.property(k).contains(v), key, scalars),
        st.builds(lambda k, v: where.property(k).one_of(v), key, st.lists(scalars, max_size=3)),
        st.builds(lambda k: where.property(k).is_set(), key),
        st.builds(lambda k: where.property(k).is_not_set(), key),
    )


def composites(leaf: st.SearchStrategy[Condition]) -> st.SearchStrategy[Condition]:
    return st.recursive(
        leaf,
        lambda kids: st.one_of(
            st.builds(lambda cs: AllCondition(conditions=tuple(cs)), st.lists(kids, max_size=3)),
            st.builds(lambda cs: AnyCondition(conditions=tuple(cs)), st.lists(kids, max_size=3)),
            st.builds(lambda c: NotCondition(condition=c), kids),
        ),
        max_leaves=4,
    )


checks = st.one_of(
    st.tuples(st.sampled_from(["exists", "not_exists"]), st.none()),
    st.tuples(st.just("at_least"), st.integers(1, 3)),
    st.tuples(st.just("at_most"), st.integers(0, 2)),
)
windows = st.sampled_from([None, *WINDOWS])

event_conditions = st.builds(
    lambda name, check, within, filter_: EventCondition(
        event=name, check=check[0], count=check[1], within=within, where=filter_
    ),
    st.sampled_from(EVENTS),
    checks,
    windows,
    st.none() | composites(property_conditions()),
)
email_conditions = st.builds(
    lambda action, template, check, within: EmailCondition(
        action=action, template=template, check=check[0], count=check[1], within=within
    ),
    st.sampled_from(["sent", "opened", "clicked"]),
    st.none() | st.sampled_from(TEMPLATES),
    checks,
    windows,
)
# Chosen by kind first: a flat one_of would weigh the ten property operators ten to one
# against events and emails, and windowed event legs would be rare.
leaves = st.sampled_from(["property", "event", "event", "email"]).flatmap(
    lambda kind: {
        "property": property_conditions(),
        "event": event_conditions,
        "email": email_conditions,
    }[kind]
)
conditions = st.recursive(
    leaves,
    lambda kids: st.one_of(
        st.builds(lambda cs: AllCondition(conditions=tuple(cs)), st.lists(kids, max_size=3)),
        st.builds(lambda cs: AnyCondition(conditions=tuple(cs)), st.lists(kids, max_size=3)),
        st.builds(lambda c: NotCondition(condition=c), kids),
    ),
    max_leaves=8,
)

ages = st.sampled_from(AGES)


@dataclass(frozen=True)
class Person:
    properties: dict[str, Any]
    events: list[tuple[str, timedelta, dict[str, Any]]]
    emails: list[tuple[str | None, timedelta | None, timedelta | None, timedelta | None]]

    def facts(self) -> ContactFacts:
        def at(age: timedelta | None) -> datetime | None:
            return None if age is None else NOW - age

        return ContactFacts(
            properties=self.properties,
            events=[
                EventFact(name=name, occurred_at=NOW - age, properties=props)
                for name, age, props in self.events
            ],
            emails=[
                EmailFact(template_key=t, sent_at=at(s), opened_at=at(o), clicked_at=at(c))
                for t, s, o, c in self.emails
            ],
        )


people = st.lists(
    st.builds(
        Person,
        properties=bags,
        events=st.lists(st.tuples(st.sampled_from(EVENTS), ages, bags), max_size=5),
        emails=st.lists(
            st.tuples(
                st.none() | st.sampled_from(TEMPLATES),
                st.none() | ages,
                st.none() | ages,
                st.none() | ages,
            ),
            max_size=3,
        ),
    ),
    min_size=1,
    max_size=6,
)


@pytest.fixture
def sync_engine(database_url: str) -> Iterator[Engine]:
    engine = make_sync_engine(database_url)
    yield engine
    engine.dispose()


def store(conn: Connection, crowd: list[Person]) -> list[Any]:
    ids = list(
        conn.execute(
            insert(contacts).returning(contacts.c.id, sort_by_parameter_order=True),
            [{"properties": person.properties} for person in crowd],
        ).scalars()
    )
    event_rows = [
        {
            "contact_id": cid,
            "user_id": str(cid),
            "event": name,
            "properties": props,
            "occurred_at": NOW - age,
        }
        for cid, person in zip(ids, crowd, strict=True)
        for name, age, props in person.events
    ]
    if event_rows:
        conn.execute(insert(user_events), event_rows)
    send_rows = [
        {
            "contact_id": cid,
            "template_key": template,
            "from_email": "team@example.com",
            "to_email": "someone@example.com",
            "sent_at": None if sent is None else NOW - sent,
            "opened_at": None if opened is None else NOW - opened,
            "clicked_at": None if clicked is None else NOW - clicked,
        }
        for cid, person in zip(ids, crowd, strict=True)
        for template, sent, opened, clicked in person.emails
    ]
    if send_rows:
        conn.execute(insert(email_sends), send_rows)
    return ids


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(tests=st.lists(conditions, min_size=1, max_size=4), crowd=people)
def test_sql_and_memory_agree(
    sync_engine: Engine, tests: list[Condition], crowd: list[Person]
) -> None:
    with sync_engine.connect() as conn:
        transaction = conn.begin()
        try:
            ids = store(conn, crowd)
            for condition in tests:
                in_sql = set(conn.execute(matching_contacts(condition, NOW)).scalars())
                # The set-based form (count checks grouped once) used by full passes.
                in_sets = set(
                    conn.execute(matching_contacts(condition, NOW, set_based=True)).scalars()
                )
                in_memory = {
                    cid
                    for cid, person in zip(ids, crowd, strict=True)
                    if evaluate(condition, person.facts(), NOW)
                }
                note(f"condition: {condition.to_dict()}")
                assert in_sql == in_memory
                assert in_sets == in_memory
        finally:
            transaction.rollback()
