"""Readable criteria and funnel geometry (pure Studio helpers)."""

from __future__ import annotations

from datetime import timedelta

from hogsend import where
from hogsend.studio.criteria_text import Line, describe, describe_filter, duration
from hogsend.studio.funnel_chart import funnel_chart


def test_duration_uses_the_largest_whole_unit() -> None:
    assert duration(timedelta(days=14)) == "2 weeks"
    assert duration(timedelta(days=3)) == "3 days"
    assert duration(timedelta(hours=1)) == "1 hour"
    assert duration(timedelta(minutes=90)) == "90 minutes"
    assert duration(timedelta(seconds=45)) == "45 seconds"
    assert duration(timedelta(seconds=1)) == "1 second"


def test_a_nested_criteria_reads_as_indented_sentences() -> None:
    criteria = where.all(
        where.property("plan").equals("pro"),
        where.any(
            where.event("app.opened").within(timedelta(days=7)).at_least(5),
            where.event("purchase")
            .where(where.property("total").gte(100))
            .within(timedelta(days=30))
            .exists(),
        ),
        where.not_(where.property("vip").is_set()),
        where.email("welcome").not_opened(),
    )
    assert describe(criteria) == [
        Line(0, "all of:"),
        Line(1, 'contact property plan is "pro"'),
        Line(1, "any of:"),
        Line(2, "did event “app.opened” at least 5 times in the last 1 week"),
        Line(
            2, "did event “purchase” at least once in the last 30 days, counting only events where:"
        ),
        Line(3, "property total is at least 100"),
        Line(1, "not:"),
        Line(2, "contact property vip is set"),
        Line(1, "opened email “welcome” never"),
    ]


def test_operators_and_filters() -> None:
    assert describe(where.property("n").lt(3)) == [Line(0, "contact property n is less than 3")]
    assert describe(where.property("tag").one_of(["a", "b"])) == [
        Line(0, 'contact property tag is one of "a", "b"')
    ]
    assert describe(where.event("x").at_most(1)) == [Line(0, "did event “x” at most 1 time")]
    assert describe(where.email().clicked()) == [Line(0, "clicked in any email at least once")]
    assert describe(where.email("news").sent(at_least=2)) == [
        Line(0, "was sent email “news” at least 2 times")
    ]
    assert describe_filter(
        where.any(where.property("a").is_not_set(), where.not_(where.property("b").equals(1)))
    ) == [
        Line(0, "any of:"),
        Line(1, "property a is not set"),
        Line(1, "not:"),
        Line(2, "property b is 1"),
    ]


def test_funnel_bars_scale_to_the_first_step() -> None:
    chart = funnel_chart([("enrolled", 200), ("sent", 100), ("clicked", 0)], title="t")
    enrolled, sent, clicked = chart.steps
    assert enrolled.width == 420  # the plot width
    assert sent.width == 210
    assert clicked.width == 0
    assert (enrolled.caption, sent.caption, clicked.caption) == (
        "200 (100.0%)",
        "100 (50.0%)",
        "0 (0.0%)",
    )
    assert sent.y > enrolled.y
    assert chart.height > clicked.y + 22


def test_an_empty_funnel_and_a_step_bigger_than_the_first() -> None:
    empty = funnel_chart([("enrolled", 0), ("sent", 0)], title="t")
    assert [s.caption for s in empty.steps] == ["0", "0"]
    odd = funnel_chart([("opened", 1), ("clicked", 3)], title="t")
    assert odd.steps[1].width == odd.steps[0].width
    assert odd.steps[1].caption == "3 (300.0%)"
