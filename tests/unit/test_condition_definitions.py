"""Buckets and journeys hold conditions; a bad one is refused naming the definition."""

from __future__ import annotations

from datetime import timedelta

import pytest

from hogsend import (
    BucketDefinition,
    Contact,
    Hogsend,
    JourneyContext,
    JourneyDefinition,
    days,
    define_bucket,
    define_journey,
    define_list,
    where,
)
from hogsend.errors import DefinitionError

LAPSED = where.all(
    where.event("app.active").exists(),
    where.event("app.active").within(days(7)).not_exists(),
)


async def body(contact: Contact, ctx: JourneyContext) -> None:
    return None


def test_bucket_criteria_accept_a_condition_or_its_json_form() -> None:
    built = define_bucket(id="lapsed", name="Lapsed", criteria=LAPSED)
    assert built.criteria is LAPSED
    from_json = define_bucket(id="lapsed", name="Lapsed", criteria=LAPSED.to_dict())
    assert from_json.criteria == LAPSED
    assert Hogsend(buckets=[from_json]).check() == []


def test_bad_bucket_criteria_name_the_bucket_and_the_node() -> None:
    bad = {
        "type": "all",
        "conditions": [{"type": "property", "property": "plan", "op": "gt", "value": "pro"}],
    }
    with pytest.raises(
        DefinitionError,
        match=r"^bucket 'pros': criteria at conditions\[0\]\.value: gt compares numbers only",
    ):
        define_bucket(id="pros", name="Pros", criteria=bad)
    with pytest.raises(DefinitionError, match="bucket 'pros': criteria: expected a condition"):
        define_bucket(id="pros", name="Pros", criteria=["plan", "pro"])  # type: ignore[arg-type]


def test_hand_built_definitions_are_checked_by_the_app() -> None:
    no_criteria = BucketDefinition(id="empty", name="Empty")
    with pytest.raises(DefinitionError, match="bucket 'empty' needs criteria"):
        Hogsend(buckets=[no_criteria])
    manual = BucketDefinition(id="hand", name="Hand", kind="manual")
    assert Hogsend(buckets=[manual]).buckets == (manual,)
    bad_trigger = JourneyDefinition(
        id="j", name="J", body=body, trigger=where.property("a").is_set()
    )  # type: ignore[arg-type]
    with pytest.raises(DefinitionError, match=r"journey 'j': trigger: expected an event name"):
        Hogsend(journeys=[bad_trigger])
    bad_exit = JourneyDefinition(id="j", name="J", body=body, trigger="e", exit_on=("",))
    with pytest.raises(DefinitionError, match=r"journey 'j': exit_on\[0\]: an event name"):
        Hogsend(journeys=[bad_exit])


def test_journey_triggers_and_exits_take_event_conditions() -> None:
    trigger = where.event("signed_up").where(where.property("plan").equals("pro")).exists()
    journey = define_journey(
        id="pro-welcome",
        name="Pro welcome",
        trigger=trigger.to_dict(),
        exit_on=["account_deleted", where.event("plan_changed").exists()],
    )(body)
    assert journey.trigger == trigger
    assert journey.exit_on == ("account_deleted", where.event("plan_changed").exists())
    assert Hogsend(journeys=[journey]).journeys == (journey,)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"trigger": where.email("w").opened()},
            r"journey 'x': trigger: .*got an? 'email' condition",
        ),
        ({"trigger": {"type": "event"}}, r"journey 'x': trigger at event: .*needs 'event'"),
        (
            {"trigger": "e", "exit_on": ["ok", where.all()]},
            r"journey 'x': exit_on\[1\]: .*got an? 'all' condition",
        ),
        ({"trigger": 42}, r"journey 'x': trigger: expected a condition"),
    ],
)
def test_bad_triggers_and_exits_name_the_journey(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        define_journey(id="x", name="X", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: define_list(id="news", name=" "), "list 'news' needs a non-empty name"),
        (lambda: define_bucket(id="b", name="B", kind="criteria"), "'b' needs criteria"),
        (
            lambda: define_bucket(id="b", name="B", kind="manual", criteria=where.all()),
            "manual and cannot have criteria",
        ),
        (
            lambda: define_bucket(id="b", name="B", criteria=LAPSED, min_dwell=timedelta(0)),
            "min_dwell must be positive",
        ),
        (
            lambda: define_bucket(
                id="b", name="B", criteria=LAPSED, min_dwell=days(2), max_dwell=days(1)
            ),
            "max_dwell is shorter",
        ),
        (
            lambda: define_bucket(id="b", name="B", criteria=LAPSED, entry_limit=0),
            "entry_limit must be at least 1",
        ),
        (
            lambda: define_journey(id="j", name="J", trigger="e", entry_limit="once_per_period"),
            "needs entry_period",
        ),
        (
            lambda: define_journey(id="j", name="J", trigger="e", entry_period=days(1)),
            "only applies to once_per_period",
        ),
        (lambda: define_journey(id="j", name="J", trigger=" "), "trigger must name an event"),
        (
            lambda: define_journey(id="j", name="J", trigger="e", suppress=timedelta(0)),
            "suppress must be positive",
        ),
    ],
)
def test_definition_rules(build: object, message: str) -> None:
    with pytest.raises(DefinitionError, match=message):
        build()  # type: ignore[operator]


def test_check_follows_event_condition_triggers_to_their_bucket() -> None:
    entered = where.event("bucket:entered:ghosts").exists()
    journey = define_journey(id="haunt", name="Haunt", trigger=entered)(body)
    (problem,) = Hogsend(journeys=[journey]).check()
    assert problem.where == "journey haunt"
    assert "'bucket:entered:ghosts' names no registered bucket" in problem.message
    ghosts = define_bucket(id="ghosts", name="Ghosts", criteria=LAPSED)
    assert Hogsend(journeys=[journey], buckets=[ghosts]).check() == []
