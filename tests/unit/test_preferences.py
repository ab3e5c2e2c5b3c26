"""hogsend.core.preferences: list states, preference-form changes, one-click targets."""

from __future__ import annotations

from hogsend import define_list
from hogsend.core.preferences import ListState, form_changes, list_states, one_click_target

LISTS = [
    define_list(id="newsletter", name="Newsletter", description="Monthly", default_opt_in=True),
    define_list(id="beta", name="Beta programme"),
]


def test_states_follow_the_polarity_rule() -> None:
    assert ListState(id="x", name="x", default_opt_in=True).subscribed
    assert not ListState(id="x", name="x", default_opt_in=True, choice=False).subscribed
    assert not ListState(id="x", name="x", default_opt_in=False).subscribed
    assert ListState(id="x", name="x", default_opt_in=False, choice=True).subscribed
    # A category no list registers: subscribed until an explicit unsubscribe.
    assert ListState(id="x", name="x").subscribed
    assert not ListState(id="x", name="x", choice=False).subscribed


def test_registered_lists_first_then_chosen_categories_without_transactional() -> None:
    states = list_states(
        LISTS, {"zeta": False, "beta": True, "alpha": True, "transactional": False}
    )
    assert [(s.id, s.name, s.choice, s.subscribed) for s in states] == [
        ("newsletter", "Newsletter", None, True),
        ("beta", "Beta programme", True, True),
        ("alpha", "alpha", True, True),
        ("zeta", "zeta", False, False),
    ]
    assert states[0].description == "Monthly"
    assert states[2].default_opt_in is None


def test_form_changes_only_what_differs_and_only_what_was_shown() -> None:
    states = list_states(LISTS, {"tips": False})
    # Unchanged form: nothing to write (the defaults stay defaults).
    assert form_changes(states, shown={"newsletter", "beta", "tips"}, checked={"newsletter"}) == {}
    changed = form_changes(states, shown={"newsletter", "beta", "tips"}, checked={"beta", "tips"})
    assert changed == {"newsletter": False, "beta": True, "tips": True}
    # Not shown: left alone even though unticked; unknown ids are ignored.
    assert form_changes(states, shown={"beta", "bogus"}, checked={"bogus"}) == {}


def test_one_click_targets_the_list_or_everything() -> None:
    assert one_click_target("newsletter") == "newsletter"
    assert one_click_target(None) is None
    assert one_click_target("transactional") is None
