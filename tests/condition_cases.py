"""One table of condition cases, run by both evaluators.

Each case is one contact (properties, events, email sends, ages measured back from
``NOW``), one condition and the answer docs/conditions.md gives. The unit tests run it
in memory; the integration tests store the contacts in Postgres and run the SQL.
Every operator and check appears with both answers (a test checks that too).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hogsend import Condition, where
from hogsend.core.conditions import ContactFacts, EmailFact, EventFact

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
WEEK = timedelta(days=7)


@dataclass(frozen=True)
class Send:
    """One email send; each age is how long before NOW it happened (None: never)."""

    template: str | None = "welcome"
    sent: timedelta | None = DAY
    opened: timedelta | None = None
    clicked: timedelta | None = None


@dataclass(frozen=True)
class Case:
    id: str
    condition: Condition
    expected: bool
    properties: dict[str, Any] = field(default_factory=dict)
    # (name, age, properties)
    events: tuple[tuple[str, timedelta, dict[str, Any]], ...] = ()
    emails: tuple[Send, ...] = ()

    def facts(self) -> ContactFacts:
        return ContactFacts(
            properties=self.properties,
            events=[
                EventFact(name=name, occurred_at=NOW - age, properties=props)
                for name, age, props in self.events
            ],
            emails=[
                EmailFact(
                    template_key=s.template,
                    sent_at=None if s.sent is None else NOW - s.sent,
                    opened_at=None if s.opened is None else NOW - s.opened,
                    clicked_at=None if s.clicked is None else NOW - s.clicked,
                )
                for s in self.emails
            ],
        )


def ev(name: str, age: timedelta = DAY, **props: Any) -> tuple[str, timedelta, dict[str, Any]]:
    return (name, age, props)


p = where.property
active = where.event("app.active")
lapsed = where.all(active.exists(), active.within(WEEK).not_exists())

CASES: list[Case] = [
    # equals: strict types; numbers by value.
    Case("equals-str", p("plan").equals("pro"), True, {"plan": "pro"}),
    Case("equals-other-str", p("plan").equals("pro"), False, {"plan": "Pro"}),
    Case("equals-int-float", p("n").equals(1), True, {"n": 1.0}),
    Case("equals-bool-is-not-int", p("n").equals(1), False, {"n": True}),
    Case("equals-int-is-not-bool", p("flag").equals(True), False, {"flag": 1}),
    Case("equals-bool", p("flag").equals(False), True, {"flag": False}),
    Case("equals-str-is-not-number", p("n").equals(1), False, {"n": "1"}),
    Case("equals-missing", p("plan").equals("pro"), False, {}),
    Case("equals-null", p("plan").equals("pro"), False, {"plan": None}),
    Case("equals-list-is-not-scalar", p("n").equals(1), False, {"n": [1]}),
    Case("equals-big-int", p("n").equals(10**30), True, {"n": 10**30}),
    # not_equals: the negation of equals, so missing and null are "not equal".
    Case("not-equals-missing", p("converted").not_equals(True), True, {}),
    Case("not-equals-null", p("converted").not_equals(True), True, {"converted": None}),
    Case("not-equals-same", p("converted").not_equals(True), False, {"converted": True}),
    Case("not-equals-int-vs-bool", p("converted").not_equals(True), True, {"converted": 1}),
    # ordering: numbers only.
    Case("gt-true", p("n").gt(3), True, {"n": 5}),
    Case("gt-equal", p("n").gt(3), False, {"n": 3}),
    Case("gt-float", p("n").gt(3), True, {"n": 3.5}),
    Case("gt-numeric-string", p("n").gt(3), False, {"n": "5"}),
    Case("gt-bool", p("n").gt(0), False, {"n": True}),
    Case("gt-missing", p("n").gt(0), False, {}),
    Case("gte-equal", p("n").gte(3), True, {"n": 3.0}),
    Case("gte-below", p("n").gte(3), False, {"n": 2.9}),
    Case("lt-true", p("n").lt(3), True, {"n": -2}),
    Case("lt-equal", p("n").lt(3), False, {"n": 3}),
    Case("lt-big-int-vs-float", p("n").lt(1e30), False, {"n": 10**30}),
    Case("lte-big-int-vs-float", p("n").lte(1e30), True, {"n": 10**30}),
    Case("lte-above", p("n").lte(3), False, {"n": 4}),
    Case("lte-list", p("n").lte(3), False, {"n": [1]}),
    # contains: substring of a string, or an element of a list.
    Case("contains-substring", p("s").contains("lo w"), True, {"s": "hello world"}),
    Case("contains-case-sensitive", p("s").contains("hello"), False, {"s": "Hello"}),
    Case("contains-empty-string", p("s").contains(""), True, {"s": "abc"}),
    Case("contains-list-member", p("tags").contains("b"), True, {"tags": ["a", "b"]}),
    Case("contains-list-no-substring", p("tags").contains("a"), False, {"tags": ["ab"]}),
    Case("contains-list-number", p("tags").contains(1), True, {"tags": [2, 1.0]}),
    Case("contains-list-bool-is-not-int", p("tags").contains(1), False, {"tags": [True]}),
    Case("contains-nested-list", p("tags").contains(1), False, {"tags": [[1]]}),
    Case("contains-object-key", p("o").contains("a"), False, {"o": {"a": 1}}),
    Case("contains-number", p("n").contains("1"), False, {"n": 12}),
    Case("contains-non-string-in-string", p("s").contains(1), False, {"s": "a1"}),
    Case("contains-missing", p("s").contains("a"), False, {}),
    # one_of: equals against each value.
    Case("one-of-member", p("plan").one_of(["pro", "team"]), True, {"plan": "team"}),
    Case("one-of-not-member", p("plan").one_of(["pro", "team"]), False, {"plan": "free"}),
    Case("one-of-number", p("n").one_of([1.0, "x"]), True, {"n": 1}),
    Case("one-of-str-is-not-number", p("n").one_of(["1"]), False, {"n": 1}),
    Case("one-of-bool-is-not-int", p("n").one_of([1]), False, {"n": True}),
    Case("one-of-empty", p("n").one_of([]), False, {"n": 1}),
    Case("one-of-missing", p("n").one_of([1]), False, {}),
    # is_set / is_not_set: null counts as not set.
    Case("is-set", p("plan").is_set(), True, {"plan": "pro"}),
    Case("is-set-false", p("flag").is_set(), True, {"flag": False}),
    Case("is-set-empty-string", p("s").is_set(), True, {"s": ""}),
    Case("is-set-null", p("plan").is_set(), False, {"plan": None}),
    Case("is-set-missing", p("plan").is_set(), False, {}),
    Case("is-not-set-missing", p("plan").is_not_set(), True, {}),
    Case("is-not-set-null", p("plan").is_not_set(), True, {"plan": None}),
    Case("is-not-set-zero", p("n").is_not_set(), False, {"n": 0}),
    # keys are flat: a dot is part of the name.
    Case("dotted-key", p("a.b").equals(1), True, {"a.b": 1}),
    Case("dotted-key-not-a-path", p("a.b").equals(1), False, {"a": {"b": 1}}),
    # event exists / not_exists / counts, windows exclusive at the far end, open at now.
    Case("exists", active.exists(), True, events=(ev("app.active"),)),
    Case("exists-none", active.exists(), False),
    Case("exists-other-name", active.exists(), False, events=(ev("app.opened"),)),
    Case("within-inside", active.within(WEEK).exists(), True, events=(ev("app.active", DAY),)),
    Case("within-out", active.within(WEEK).exists(), False, events=(ev("app.active", 9 * DAY),)),
    Case("within-boundary", active.within(WEEK).exists(), False, events=(ev("app.active", WEEK),)),
    Case(
        "within-just-inside",
        active.within(WEEK).exists(),
        True,
        events=(ev("app.active", WEEK - timedelta(microseconds=1)),),
    ),
    Case(
        "within-future",
        active.within(WEEK).exists(),
        True,
        events=(ev("app.active", -timedelta(hours=1)),),
    ),
    Case("not-exists-none", active.not_exists(), True),
    Case("not-exists-some", active.not_exists(), False, events=(ev("app.active"),)),
    Case(
        "not-exists-within-old",
        active.within(WEEK).not_exists(),
        True,
        events=(ev("app.active", 30 * DAY),),
    ),
    Case(
        "not-exists-within-recent",
        active.within(WEEK).not_exists(),
        False,
        events=(ev("app.active", DAY),),
    ),
    Case("at-least-2", active.at_least(2), True, events=(ev("app.active"), ev("app.active"))),
    Case("at-least-2-one", active.at_least(2), False, events=(ev("app.active"),)),
    Case(
        "at-least-window",
        active.within(WEEK).at_least(2),
        False,
        events=(ev("app.active", DAY), ev("app.active", 9 * DAY)),
    ),
    Case("at-most-1-zero", active.at_most(1), True),
    Case("at-most-1-one", active.at_most(1), True, events=(ev("app.active"),)),
    Case("at-most-1-two", active.at_most(1), False, events=(ev("app.active"), ev("app.active"))),
    Case("at-most-0-zero", active.at_most(0), True, events=(ev("app.opened"),)),
    Case("at-most-0-one", active.at_most(0), False, events=(ev("app.active"),)),
    # event filters read the event's own properties.
    Case(
        "filter-match",
        where.event("order").where(p("plan").equals("pro")).exists(),
        True,
        events=(ev("order", plan="pro"),),
    ),
    Case(
        "filter-no-match",
        where.event("order").where(p("plan").equals("pro")).exists(),
        False,
        events=(ev("order", plan="free"),),
        properties={"plan": "pro"},
    ),
    Case(
        "filter-strict",
        where.event("order").where(p("total").gte(100)).exists(),
        False,
        events=(ev("order", total="150"),),
    ),
    Case(
        "filter-count",
        where.event("order").where(p("total").gte(100)).at_least(2),
        True,
        events=(ev("order", total=100), ev("order", total=99), ev("order", total=250.5)),
    ),
    Case(
        "filter-composite",
        where.event("order")
        .where(where.any(p("plan").equals("pro"), where.not_(p("coupon").is_set())))
        .exists(),
        True,
        events=(ev("order", plan="free"),),
    ),
    Case(
        "filter-composite-false",
        where.event("order")
        .where(where.any(p("plan").equals("pro"), where.not_(p("coupon").is_set())))
        .exists(),
        False,
        events=(ev("order", plan="free", coupon="X"),),
    ),
    Case(
        "filter-several",
        where.event("order").where(p("plan").equals("pro"), p("total").gt(10)).not_exists(),
        True,
        events=(ev("order", plan="pro", total=5),),
    ),
    # email engagement, by contact.
    Case("email-opened", where.email("welcome").opened(), True, emails=(Send(opened=DAY),)),
    Case("email-not-opened-yet", where.email("welcome").opened(), False, emails=(Send(),)),
    Case(
        "email-opened-other-template",
        where.email("welcome").opened(),
        False,
        emails=(Send(template="digest", opened=DAY),),
    ),
    Case(
        "email-any-template",
        where.email().opened(),
        True,
        emails=(Send(template="digest", opened=DAY),),
    ),
    Case("email-sent", where.email("welcome").sent(), True, emails=(Send(),)),
    Case("email-never-sent", where.email("welcome").sent(), False, emails=(Send(sent=None),)),
    Case(
        "email-sent-within",
        where.email("welcome").within(WEEK).sent(),
        False,
        emails=(Send(sent=10 * DAY),),
    ),
    Case(
        "email-sent-within-recent",
        where.email("welcome").within(WEEK).sent(),
        True,
        emails=(Send(sent=10 * DAY), Send(sent=2 * DAY)),
    ),
    Case(
        "email-clicked-at-least-2",
        where.email().clicked(at_least=2),
        True,
        emails=(Send(clicked=DAY), Send(template=None, clicked=DAY)),
    ),
    Case(
        "email-clicked-at-least-2-one",
        where.email().clicked(at_least=2),
        False,
        emails=(Send(clicked=DAY), Send()),
    ),
    Case("email-sent-at-most-1", where.email().sent(at_most=1), True, emails=(Send(),)),
    Case("email-sent-at-most-1-two", where.email().sent(at_most=1), False, emails=(Send(), Send())),
    Case("email-not-opened-none", where.email("welcome").not_opened(), True),
    Case(
        "email-not-opened-opened",
        where.email("welcome").not_opened(),
        False,
        emails=(Send(opened=DAY),),
    ),
    Case("email-not-sent", where.email("welcome").not_sent(), True, emails=(Send(sent=None),)),
    Case("email-not-sent-sent", where.email("welcome").not_sent(), False, emails=(Send(),)),
    Case("email-not-clicked", where.email().not_clicked(), True, emails=(Send(opened=DAY),)),
    Case(
        "email-not-clicked-clicked",
        where.email().not_clicked(),
        False,
        emails=(Send(clicked=DAY),),
    ),
    # composites.
    Case("all-empty", where.all(), True),
    Case("any-empty", where.any(), False),
    Case("all-true", where.all(p("a").equals(1), p("b").is_not_set()), True, {"a": 1}),
    Case("all-false", where.all(p("a").equals(1), p("b").is_set()), False, {"a": 1}),
    Case("any-true", where.any(p("a").equals(2), p("b").is_not_set()), True, {"a": 1}),
    Case("any-false", where.any(p("a").equals(2), p("b").is_set()), False, {"a": 1}),
    Case("not-true", where.not_(p("a").equals(2)), True, {"a": 1}),
    Case("not-false", where.not_(p("a").equals(1)), False, {"a": 1}),
    Case("not-missing", where.not_(p("a").gt(1)), True),
    Case("lapsed", lapsed, True, events=(ev("app.active", 30 * DAY),)),
    Case("lapsed-recent", lapsed, False, events=(ev("app.active", 30 * DAY), ev("app.active"))),
    Case("lapsed-never", lapsed, False),
]
