"""Studio's pure parts: chart geometry, password rules and hashing."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hogsend.studio import passwords
from hogsend.studio.charts import HEIGHT, WIDTH, bar_chart, nice_maximum


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 4),
        (1, 4),
        (3, 4),
        (4, 4),
        (5, 8),
        (7, 8),
        (9, 20),
        (400, 400),
        (401, 800),
        (9_749, 20_000),
    ],
)
def test_nice_maximum(value: int, expected: int) -> None:
    assert nice_maximum(value) == expected


@given(st.integers(min_value=0, max_value=10**9))
def test_nice_maximum_covers_the_value_with_round_ticks(value: int) -> None:
    top = nice_maximum(value)
    assert top >= value
    step = top // 4
    assert top == step * 4
    assert str(step).rstrip("0") in ("1", "2", "5")


def _days(counts: list[int]) -> list[tuple[date, int]]:
    first = date(2026, 3, 1)
    return [(first + timedelta(days=i), n) for i, n in enumerate(counts)]


@given(st.lists(st.integers(min_value=0, max_value=100_000), min_size=1, max_size=90))
def test_bars_stay_inside_the_plot_and_scale_with_their_counts(counts: list[int]) -> None:
    chart = bar_chart(_days(counts), title="t", y_label="y")
    assert len(chart.bars) == len(counts)
    assert chart.total == sum(counts)
    for bar, count in zip(chart.bars, counts, strict=True):
        assert chart.left <= bar.x < bar.x + bar.width <= chart.right + 0.01
        assert chart.top - 0.01 <= bar.y <= chart.bottom
        assert abs(bar.y + bar.height - chart.bottom) < 0.02
        assert f"{count:,}" in bar.title
    tallest = max(counts)
    if tallest:
        heights = [b.height for b in chart.bars]
        # Heights are rounded for the SVG: near-equal counts may tie, never overtake.
        assert heights[counts.index(tallest)] == max(heights)
    assert 1 <= len(chart.x_ticks) <= 9
    assert chart.x_ticks[-1].label == _days(counts)[-1][0].strftime("%b %d")
    assert next(t.label for t in chart.y_ticks) == "0"
    assert 0 < chart.width == WIDTH
    assert chart.height == HEIGHT


def test_tick_labels_are_short() -> None:
    chart = bar_chart(_days([0, 1_500_000]), title="t", y_label="y")
    assert [t.label for t in chart.y_ticks] == ["0", "500k", "1M", "1.5M", "2M"]


def test_password_rules() -> None:
    assert passwords.password_problem("short") == "must be at least 10 characters"
    assert passwords.password_problem(" " * 12) == "must not be only spaces"
    assert passwords.password_problem("x" * 2000) == "must be at most 1024 characters"
    assert passwords.password_problem("a fine password") is None


def test_hash_and_verify() -> None:
    stored = passwords.hash_password("a fine password")
    assert stored.startswith("$argon2id$")
    assert stored != passwords.hash_password("a fine password")  # salted
    assert passwords.verify_password(stored, "a fine password")
    assert not passwords.verify_password(stored, "a fine passworD")
    assert not passwords.verify_password(None, "not a password anyone has")
    assert not passwords.verify_password("not a hash", "a fine password")
    assert not passwords.needs_rehash(stored)


def test_funnel_bars_scale_to_the_first_stage_with_shares() -> None:
    from hogsend.studio.charts import funnel_chart

    chart = funnel_chart([("Audience", 200), ("Sent", 150), ("Opened", 50)], title="F")
    widths = [s.width for s in chart.stages]
    assert widths[0] == chart.plot_width
    assert widths[1] == pytest.approx(chart.plot_width * 0.75)
    assert [s.share for s in chart.stages] == ["100.0%", "75.0%", "25.0%"]
    assert [s.y for s in chart.stages] == sorted(s.y for s in chart.stages)
    assert chart.stages[2].title == "Opened: 50 (25.0% of audience)"
    assert all(s.y + chart.bar_height <= chart.height for s in chart.stages)


@given(st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=8))
def test_funnel_bars_stay_inside_the_plot(counts: list[int]) -> None:
    from hogsend.studio.charts import funnel_chart

    chart = funnel_chart([(f"s{i}", c) for i, c in enumerate(counts)], title="F")
    for stage in chart.stages:
        assert 0 <= stage.width <= chart.plot_width
        assert (stage.width == 0) == (stage.count == 0)
    if counts[0] == 0:
        assert {s.share for s in chart.stages} == {"—"}


def test_an_empty_funnel_draws_nothing() -> None:
    from hogsend.studio.charts import funnel_chart

    assert funnel_chart([], title="F").stages == ()
