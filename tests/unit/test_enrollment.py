"""Pure enrollment decisions: entry limits, workflow ids, variants, matches, send windows."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime, time
from typing import Any

import pytest

from hogsend import define_journey, where
from hogsend.core.contact import Event
from hogsend.core.enrollment import (
    enrollment_workflow_id,
    event_from_message,
    event_message,
    json_equals,
    pick_variant,
    properties_match,
    retry_workflow_id,
    spec_event,
    spec_matches,
)
from hogsend.core.journey_context import When
from hogsend.errors import JourneyExit

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_workflow_ids_are_deterministic_per_contact_and_ordinal() -> None:
    contact = uuid.UUID("00000000-0000-0000-0000-000000000001")
    first = enrollment_workflow_id("welcome", contact, 1)
    assert first == f"hogsend.journey:welcome:{contact}:1"
    assert enrollment_workflow_id("welcome", contact, 1) == first
    assert enrollment_workflow_id("welcome", contact, 2) != first


def test_variants_are_stable_and_follow_the_weights() -> None:
    contacts = [uuid.UUID(int=i) for i in range(4000)]
    picks = [pick_variant(c, "subject", ["a", "b"], [3, 1]) for c in contacts]
    assert picks == [pick_variant(c, "subject", ["a", "b"], [3, 1]) for c in contacts]
    share = Counter(picks)["a"] / len(picks)
    assert 0.70 < share < 0.80
    # Another test splits the same contacts differently.
    other = [pick_variant(c, "cta", ["a", "b"]) for c in contacts]
    assert other != picks
    for bad in ([], ["a"]):
        with pytest.raises(ValueError, match="variant"):
            pick_variant(contacts[0], "t", bad, [1, 1] if bad else None)
    with pytest.raises(ValueError, match="positive"):
        pick_variant(contacts[0], "t", ["a", "b"], [1, 0])


def test_trigger_and_exit_specs_match_names_and_filters() -> None:
    pro = where.event("user.created").where(where.property("plan").equals("pro")).exists()
    assert spec_event(pro) == "user.created"
    assert spec_matches(pro, "user.created", {"plan": "pro"})
    assert not spec_matches(pro, "user.created", {"plan": "free"})
    assert not spec_matches(pro, "user.deleted", {"plan": "pro"})
    assert spec_matches("user.deleted", "user.deleted", {})
    assert properties_match({"projectId": "p1"}, {"projectId": "p1", "x": 1})
    assert not properties_match({"projectId": "p1"}, {"projectId": "p2"})
    assert not properties_match({"projectId": "p1"}, {})
    assert properties_match(None, {})


@pytest.mark.parametrize(
    ("actual", "expected", "equal"),
    [
        (True, True, True),
        (1, True, False),
        (True, 1, False),
        (0, False, False),
        (1, 1.0, True),
        ("1", 1, False),
        (None, None, True),
        (None, 0, False),
        ("", None, False),
        ([1, "a"], [1, "a"], True),
        ([1], [True], False),
        ([1, 2], [1], False),
        ({"a": 1}, {"a": 1.0}, True),
        ({"a": 1}, {"a": True}, False),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ([1], {"0": 1}, False),
        ("p1", "p1", True),
    ],
)
def test_match_compares_json_strictly(actual: object, expected: object, equal: bool) -> None:
    assert json_equals(actual, expected) is equal
    assert properties_match({"k": expected}, {"k": actual}) is equal


def test_define_journey_takes_a_bare_event_matcher_as_trigger_and_exit() -> None:
    @define_journey(
        id="bare",
        name="Bare",
        trigger=where.event("plan.upgraded"),
        exit_on=[where.event("user.deleted")],
    )
    async def body(contact: object, ctx: object) -> None:
        return None

    assert spec_event(body.trigger) == "plan.upgraded"
    assert spec_matches(body.exit_on[0], "user.deleted", {})


def test_when_builds_the_mailer_send_window() -> None:
    window = When().weekdays().between("09:00", "17:00").window()
    assert window.weekdays == frozenset(range(5))
    assert (window.start, window.end) == (time(9), time(17))
    assert window.timezone is None
    saturday_noon = datetime(2026, 3, 7, 12, 0, tzinfo=UTC)
    assert window.next_open(saturday_noon) == datetime(2026, 3, 9, 9, 0, tzinfo=UTC)
    assert When().weekends().in_timezone("Europe/Paris").window().timezone == "Europe/Paris"
    assert When().on(2).window().weekdays == frozenset({2})
    with pytest.raises(ValueError, match="not H:mm or HH:mm"):
        When().between("9am", "5pm")


def test_journey_exit_is_not_an_exception() -> None:
    exit_signal = JourneyExit("admin")
    assert not isinstance(exit_signal, Exception)
    assert exit_signal.reason == "admin"


def test_a_retry_workflow_id_is_one_per_entry_and_does_not_grow() -> None:
    first = enrollment_workflow_id("welcome", uuid.UUID(int=7), 2)
    retry = retry_workflow_id(first, "entry-1")
    assert retry == f"{first}:retry:entry-1"
    # Retrying the retry starts from the enrollment id again.
    assert retry_workflow_id(retry, "entry-2") == f"{first}:retry:entry-2"


def test_an_event_survives_the_run_input_round_trip() -> None:
    event = Event(
        id=uuid.UUID(int=1),
        name="signed_up",
        contact_key="u-1",
        contact_id=uuid.UUID(int=2),
        occurred_at=datetime(2026, 1, 2, 3, 4, tzinfo=UTC),
        properties={"plan": "pro"},
        source="api",
    )
    assert event_from_message(event_message(event)) == event
    anonymous = Event(
        id=uuid.UUID(int=3),
        name="x",
        contact_key="u-2",
        occurred_at=datetime(2026, 1, 2, tzinfo=UTC),
    )
    assert event_from_message(event_message(anonymous)) == anonymous


def test_a_contact_survives_the_run_input_and_decides_how_the_run_starts() -> None:
    from hogsend.core.contact import Contact
    from hogsend.core.enrollment import contact_from_message, run_input, starts_from_input

    contact = Contact(
        id=uuid.uuid4(),
        key="user-1",
        user_id="user-1",
        email="a@example.com",
        timezone="Europe/Paris",
        properties={"plan": "pro", "seats": 3},
        first_seen_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        created_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
    )
    enrolled_at = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)
    common: dict[str, Any] = {
        "workflow_id": "w",
        "contact_id": contact.id,
        "user_id": contact.key,
        "email": contact.email,
        "ordinal": 1,
        "trigger": {"id": str(uuid.uuid4())},
    }
    carried = run_input(**common, contact=contact, enrolled_at=enrolled_at)
    assert starts_from_input(carried)
    assert contact_from_message(carried["contact"]) == contact
    assert datetime.fromisoformat(carried["enrolledAt"]) == enrolled_at
    # A retry's input (and any run recorded before) carries neither: it takes the start step.
    assert not starts_from_input(run_input(**common))
