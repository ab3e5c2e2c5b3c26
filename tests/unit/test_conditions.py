"""Conditions: the builder, the JSON form, validation, analysis and in-memory evaluation."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from datetime import timedelta

import pytest

from condition_cases import CASES, NOW, WEEK, Case
from hogsend import Condition, Event, days, hours, where
from hogsend.core.conditions import (
    EMAIL_EVENTS,
    AllCondition,
    AnyCondition,
    ContactFacts,
    EmailCondition,
    EventCondition,
    EventFact,
    InvalidCondition,
    NotCondition,
    PropertyCondition,
    canonical_json,
    condition_from_dict,
    condition_to_dict,
    dependencies,
    evaluate,
    event_matches,
    fingerprint,
    format_duration,
    is_time_based,
    leaves,
    matches_properties,
    parse_duration,
    relevant_events,
)
from hogsend.core.conditions.codec import MAX_DEPTH
from hogsend.core.conditions.model import PROPERTY_OPS


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_in_memory(case: Case) -> None:
    assert evaluate(case.condition, case.facts(), NOW) is case.expected


def _label(condition: Condition) -> str:
    if isinstance(condition, PropertyCondition):
        return f"property:{condition.op}"
    if isinstance(condition, EventCondition):
        return f"event:{condition.check}"
    if isinstance(condition, EmailCondition):
        return f"email:{condition.action}:{condition.check}"
    return type(condition).__name__


def test_the_case_table_has_every_operator_both_ways() -> None:
    seen: dict[str, set[bool]] = {}
    for case in CASES:
        seen.setdefault(_label(case.condition), set()).add(case.expected)
    wanted = (
        [f"property:{op}" for op in PROPERTY_OPS]
        + [f"event:{c}" for c in ("exists", "not_exists", "at_least", "at_most")]
        + [f"email:{a}:exists" for a in ("sent", "opened")]
        + [f"email:{a}:not_exists" for a in ("sent", "opened", "clicked")]
        + ["email:clicked:at_least", "email:sent:at_most"]
        + ["AllCondition", "AnyCondition", "NotCondition"]
    )
    missing = {
        label: seen.get(label, set()) for label in wanted if seen.get(label) != {True, False}
    }
    assert missing == {}


def test_builder_builds_plain_data() -> None:
    condition = where.all(
        where.event("app.active").exists(),
        where.event("app.active").within(days(7)).not_exists(),
    )
    assert condition.to_dict() == {
        "type": "all",
        "conditions": [
            {"type": "event", "event": "app.active", "check": "exists"},
            {"type": "event", "event": "app.active", "check": "not_exists", "within": "P7D"},
        ],
    }
    assert condition == AllCondition(
        conditions=(
            EventCondition(event="app.active"),
            EventCondition(event="app.active", check="not_exists", within=timedelta(days=7)),
        )
    )


def test_builder_json_of_every_leaf_kind() -> None:
    assert where.property("plan").one_of(["pro", 2]).to_dict() == {
        "type": "property",
        "property": "plan",
        "op": "one_of",
        "value": ["pro", 2],
    }
    assert where.property("plan").is_set().to_dict() == {
        "type": "property",
        "property": "plan",
        "op": "is_set",
    }
    built = where.event("order").within(hours(36)).where(where.property("total").gt(9.5))
    assert built.at_least(3).to_dict() == {
        "type": "event",
        "event": "order",
        "check": "at_least",
        "count": 3,
        "within": "P1DT12H",
        "where": {"type": "property", "property": "total", "op": "gt", "value": 9.5},
    }
    assert where.email().within(days(30)).clicked(at_most=0).to_dict() == {
        "type": "email",
        "action": "clicked",
        "check": "at_most",
        "count": 0,
        "within": "P30D",
    }
    assert where.not_(where.email("welcome").not_opened()).to_dict() == {
        "type": "not",
        "condition": {
            "type": "email",
            "action": "opened",
            "template": "welcome",
            "check": "not_exists",
        },
    }


def test_matchers_are_immutable_and_replace_their_window_and_filter() -> None:
    base = where.event("e")
    weekly = base.within(WEEK)
    assert base.exists().within is None
    assert weekly.within(days(1)).exists().within == days(1)
    pro = weekly.where(where.property("plan").equals("pro"))
    assert pro.where(where.property("x").is_set()).exists().where == where.property("x").is_set()
    assert isinstance(
        pro.where(where.property("a").is_set(), where.property("b").is_set()).exists().where,
        AllCondition,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_json_round_trip(case: Case) -> None:
    data = condition_to_dict(case.condition)
    text = json.dumps(data)
    again = condition_from_dict(json.loads(text))
    assert again == case.condition
    assert condition_to_dict(again) == data
    assert fingerprint(again) == fingerprint(case.condition)


def test_fingerprint_is_sha256_of_canonical_json() -> None:
    condition = where.any(where.property("é").equals("ü"), where.event("e").at_most(2))
    canonical = canonical_json(condition)
    assert canonical == (
        '{"conditions":[{"op":"equals","property":"é","type":"property","value":"ü"},'
        '{"check":"at_most","count":2,"event":"e","type":"event"}],"type":"any"}'
    )
    assert condition.fingerprint() == hashlib.sha256(canonical.encode()).hexdigest()


def test_fingerprint_ignores_key_order_but_not_value_types() -> None:
    a = condition_from_dict({"type": "property", "property": "n", "op": "equals", "value": 1})
    b = condition_from_dict({"value": 1, "op": "equals", "property": "n", "type": "property"})
    assert fingerprint(a) == fingerprint(b)
    assert a == b
    assert hash(a) == hash(b)
    flag = where.property("n").equals(True)
    assert fingerprint(a) != fingerprint(flag)
    # Dataclass equality would say True == 1; conditions do not.
    assert a != flag
    assert len({a, b, flag}) == 2
    assert a != "not a condition"


@pytest.mark.parametrize(
    ("data", "path", "fragment"),
    [
        ("nope", "", "expected an object"),
        ({"op": "equals"}, "type", "needs a 'type'"),
        ({"type": "maybe"}, "type", "unknown type 'maybe'"),
        ({"type": ["all"]}, "type", "unknown type"),
        ({"type": "event", "event": "e", "check": "at_most", "count": 10**20}, "count", "at most"),
        ({"type": "event", "event": "e", "within": "P36526D"}, "within", "100 years"),
        ({"type": "email", "action": "sent", "within": "P999999999999D"}, "within", "too long"),
        ({"type": "property", "op": "equals", "value": 1}, "property", "needs 'property'"),
        ({"type": "property", "property": "", "op": "is_set"}, "property", "non-empty"),
        ({"type": "property", "property": "a", "op": "like", "value": "x"}, "op", "unknown"),
        ({"type": "property", "property": "a", "op": "equals"}, "value", "is_set / is_not_set"),
        ({"type": "property", "property": "a", "op": "equals", "value": None}, "value", "needs"),
        ({"type": "property", "property": "a", "op": "equals", "value": {}}, "value", "string"),
        ({"type": "property", "property": "a", "op": "gt", "value": "5"}, "value", "numbers"),
        ({"type": "property", "property": "a", "op": "gt", "value": True}, "value", "numbers"),
        ({"type": "property", "property": "a", "op": "is_set", "value": 1}, "value", "no value"),
        ({"type": "property", "property": "a", "op": "one_of", "value": "ab"}, "value", "list"),
        (
            {"type": "property", "property": "a", "op": "one_of", "value": [1, [2]]},
            "value[1]",
            "string",
        ),
        ({"type": "property", "property": "a", "op": "is_set", "extra": 1}, "extra", "unknown key"),
        ({"type": "event", "event": ""}, "event", "non-empty"),
        ({"type": "event", "event": "e", "check": "some"}, "check", "unknown check"),
        ({"type": "event", "event": "e", "check": "exists", "count": 1}, "count", "no count"),
        ({"type": "event", "event": "e", "check": "at_least"}, "count", "integer"),
        ({"type": "event", "event": "e", "check": "at_least", "count": 0}, "count", "1 or more"),
        ({"type": "event", "event": "e", "check": "at_most", "count": -1}, "count", "0 or more"),
        ({"type": "event", "event": "e", "check": "at_most", "count": True}, "count", "integer"),
        ({"type": "event", "event": "e", "within": 3600}, "within", "ISO 8601"),
        ({"type": "event", "event": "e", "within": "P1M"}, "within", "months"),
        ({"type": "event", "event": "e", "within": "PT0S"}, "within", "zero"),
        (
            {"type": "event", "event": "e", "where": {"type": "event", "event": "f"}},
            "where",
            "only test properties",
        ),
        (
            {
                "type": "event",
                "event": "e",
                "where": {"type": "not", "condition": {"type": "email", "action": "sent"}},
            },
            "where.condition",
            "only test properties",
        ),
        ({"type": "email", "action": "read"}, "action", "unknown email action"),
        ({"type": "email", "action": "sent", "template": "a\x00"}, "template", "NUL"),
        ({"type": "event", "event": "\ud800"}, "event", "lone surrogate"),
        ({"type": "property", "property": "\x00", "op": "is_set"}, "property", "NUL"),
        (
            {"type": "property", "property": "a", "op": "one_of", "value": ["ok", "\ud800"]},
            "value[1]",
            "lone surrogate",
        ),
        ({"type": "property", "property": "a", "op": "contains", "value": "\x00"}, "value", "NUL"),
        ({"type": "email", "action": "sent", "template": ""}, "template", "non-empty"),
        ({"type": "all", "conditions": {}}, "conditions", "list"),
        (
            {"type": "any", "conditions": [{"type": "all", "conditions": [{"type": "x"}]}]},
            "conditions[0].conditions[0].type",
            "unknown type",
        ),
        ({"type": "not", "condition": []}, "condition", "expected an object"),
    ],
)
def test_invalid_json_is_located(data: object, path: str, fragment: str) -> None:
    with pytest.raises(InvalidCondition) as info:
        condition_from_dict(data)
    error = info.value
    assert fragment in error.reason
    assert str(error) == (f"{path}: {error.reason}" if path else error.reason)
    assert isinstance(error, ValueError)


def test_deep_json_is_refused() -> None:
    data: dict[str, object] = {"type": "property", "property": "a", "op": "is_set"}
    for _ in range(MAX_DEPTH + 1):
        data = {"type": "not", "condition": data}
    with pytest.raises(InvalidCondition, match="nested deeper"):
        condition_from_dict(data)


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: where.property("n").gt("5"), "numbers"),  # type: ignore[arg-type]
        (lambda: where.property("n").lt(math.nan), "numbers"),
        (lambda: where.property("n").equals(math.inf), "finite"),
        (lambda: where.property("n").equals(None), "is_set"),  # type: ignore[arg-type]
        (lambda: where.property("n").one_of("pro"), "list"),
        (lambda: where.property("").is_set(), "non-empty"),
        (lambda: where.event("e").at_least(0), "1 or more"),
        (lambda: where.event("e").within(timedelta(0)).exists(), "positive"),
        (lambda: where.event("e").where(), "at least one"),
        (lambda: where.event("e").where(where.event("f").exists()), "only test properties"),
        (lambda: where.email().opened(at_least=1, at_most=2), "not both"),
        (lambda: where.all("plan = pro"), "expected a condition"),  # type: ignore[arg-type]
        (lambda: where.not_({"type": "all"}), "expected a condition"),  # type: ignore[arg-type]
    ],
)
def test_builder_refuses_bad_input(build: object, fragment: str) -> None:
    with pytest.raises(InvalidCondition, match=fragment):
        build()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(days=7), "P7D"),
        (timedelta(hours=36), "P1DT12H"),
        (timedelta(minutes=90), "PT1H30M"),
        (timedelta(seconds=1), "PT1S"),
        (timedelta(seconds=1, microseconds=500_000), "PT1.5S"),
        (timedelta(microseconds=1), "PT0.000001S"),
        (timedelta(days=400, seconds=59), "P400DT59S"),
    ],
)
def test_durations_are_canonical_iso(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


def test_duration_parsing_accepts_weeks_and_refuses_the_rest() -> None:
    assert parse_duration("P2W") == timedelta(days=14)
    assert parse_duration("P1DT0H") == timedelta(days=1)
    for bad in ("", "P", "PT", "P1DT", "7d", "P1.5D", "-P1D", "p1d"):
        with pytest.raises(ValueError, match="not an ISO 8601 duration"):
            parse_duration(bad)
    for bad in ("P1Y", "P2M", "P1Y2DT3H"):
        with pytest.raises(ValueError, match="months and years"):
            parse_duration(bad)
    with pytest.raises(ValueError, match="zero"):
        parse_duration("P0D")
    with pytest.raises(ValueError, match="positive"):
        format_duration(timedelta(0))


def test_dependencies_name_what_can_change_a_condition() -> None:
    condition = where.all(
        where.event("app.active").exists(),
        where.event("app.active").within(WEEK).not_exists(),
        where.any(
            where.property("plan").equals("pro"),
            where.not_(where.property("vip").is_set()),
        ),
        where.event("order").where(where.property("coupon").is_set()).at_least(2),
        where.email("welcome").within(days(3)).opened(),
        where.email().clicked(),
    )
    deps = dependencies(condition)
    assert deps.events == {"app.active", "order", EMAIL_EVENTS["opened"], EMAIL_EVENTS["clicked"]}
    # "coupon" is a property of the order event, not of the contact.
    assert deps.properties == {"plan", "vip"}
    assert deps.email_actions == {"opened", "clicked"}
    assert deps.windows == (WEEK, days(3))
    assert deps.time_based
    assert relevant_events(condition) == deps.events
    assert is_time_based(condition)
    assert [type(leaf).__name__ for leaf in leaves(condition)] == [
        "EventCondition",
        "EventCondition",
        "PropertyCondition",
        "PropertyCondition",
        "EventCondition",
        "EmailCondition",
        "EmailCondition",
    ]


def test_a_condition_without_windows_is_not_time_based() -> None:
    condition = where.all(where.event("a").not_exists(), where.property("plan").is_set())
    assert not is_time_based(condition)
    assert relevant_events(condition) == {"a"}
    assert relevant_events(where.property("plan").is_set()) == frozenset()


def test_evaluate_needs_an_aware_now() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(where.all(), ContactFacts(), NOW.replace(tzinfo=None))


def test_evaluate_reads_stored_events() -> None:
    contact_id = uuid.uuid4()
    stored = Event(
        id=uuid.uuid4(),
        name="order",
        contact_key="u1",
        contact_id=contact_id,
        occurred_at=NOW - days(1),
        properties={"total": 120},
    )
    condition = where.event("order").within(WEEK).where(where.property("total").gte(100)).exists()
    assert evaluate(condition, ContactFacts(events=[stored]), NOW)
    assert not evaluate(condition, ContactFacts(events=[stored]), NOW + WEEK)


def test_property_filters_and_single_events() -> None:
    only_pro = where.all(where.property("plan").equals("pro"), where.property("n").lt(3))
    assert matches_properties(only_pro, {"plan": "pro", "n": 2})
    assert not matches_properties(only_pro, {"plan": "pro", "n": 3})
    with pytest.raises(InvalidCondition, match="only test properties"):
        matches_properties(where.event("e").exists(), {})
    trigger = where.event("signed_up").where(where.property("plan").one_of(["pro", "team"]))
    condition = trigger.exists()
    assert event_matches(condition, "signed_up", {"plan": "team"})
    assert not event_matches(condition, "signed_up", {"plan": "free"})
    assert not event_matches(condition, "signed_in", {"plan": "team"})
    assert event_matches(where.event("x").at_least(3), "x", {})


def test_node_types_validate_when_built_directly() -> None:
    with pytest.raises(InvalidCondition, match="tuple of conditions"):
        AnyCondition(conditions="ab")  # type: ignore[arg-type]
    assert AllCondition(conditions=[where.all()]) == where.all(where.all())  # type: ignore[arg-type]
    assert NotCondition(condition=where.any()).to_dict() == {
        "type": "not",
        "condition": {"type": "any", "conditions": []},
    }
    with pytest.raises(InvalidCondition, match="within must be a timedelta"):
        EventCondition(event="e", within=3600)  # type: ignore[arg-type]
    with pytest.raises(InvalidCondition, match="expected a condition"):
        condition_to_dict("x")  # type: ignore[arg-type]
    listed = PropertyCondition(property="n", op="one_of", value=[1, "a"])  # type: ignore[arg-type]
    assert listed.value == (1, "a")
    assert AnyCondition(conditions=[where.all()]).conditions == (where.all(),)  # type: ignore[arg-type]
    with pytest.raises(InvalidCondition, match="expected a property condition"):
        matches_properties("plan = pro", {})  # type: ignore[arg-type]
    same = EventFact(name="e", occurred_at=NOW)
    assert evaluate(EventCondition(event="e"), ContactFacts(events=[same]), NOW)


def test_the_docs_json_example_is_valid() -> None:
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "conditions.md").read_text()
    block = text.split("```json\n", 1)[1].split("```", 1)[0]
    condition = condition_from_dict(json.loads(block))
    assert isinstance(condition, AllCondition)
    assert condition_to_dict(condition) == json.loads(block)
