"""Bar charts laid out on the server: the geometry of an inline SVG, no JavaScript.

:func:`bar_chart` turns a daily series into rectangles, axis ticks and labels in SVG
user units; the template draws them (so every text goes through autoescaping). The
y axis runs from 0 to a "nice" maximum (1, 2 or 5 times a power of ten) split in four.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date

WIDTH = 720
HEIGHT = 260
_LEFT = 68  # room for the y tick labels and the axis title
_RIGHT = 30  # room for the last date label
_TOP = 16
_BOTTOM = 56  # room for the x tick labels and the axis title
_Y_TICKS = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class Bar:
    """One day's bar; ``title`` is its tooltip (and what screen readers get)."""

    x: float
    y: float
    width: float
    height: float
    title: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Tick:
    """A labelled position on an axis."""

    at: float
    label: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BarChart:
    """Everything the template needs to draw one chart."""

    title: str
    y_label: str
    x_label: str
    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    bars: tuple[Bar, ...]
    y_ticks: tuple[Tick, ...]
    x_ticks: tuple[Tick, ...]
    total: int

    @property
    def bottom(self) -> int:
        """The y of the x axis."""
        return self.top + self.plot_height

    @property
    def right(self) -> int:
        """The x where the plot ends."""
        return self.left + self.plot_width


def nice_maximum(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten (times the tick count) at or above ``value``."""
    if value <= 0:
        return _Y_TICKS
    step = value / _Y_TICKS
    power = 10 ** math.floor(math.log10(step))
    for factor in (1, 2, 5, 10):
        if factor * power >= step:
            return int(max(factor * power, 1) * _Y_TICKS)
    raise AssertionError("unreachable: factor 10 always covers the step")


def _short(value: int) -> str:
    if value >= 1_000_000:
        return f"{value / 1_000_000:g}M"
    if value >= 1_000:
        return f"{value / 1_000:g}k"
    return str(value)


def bar_chart(
    points: Sequence[tuple[date, int]], *, title: str, y_label: str, x_label: str = "day (UTC)"
) -> BarChart:
    """Lay out one bar per day of ``points`` (oldest first).

    At most about eight dates are labelled on the x axis, always including the last.
    """
    plot_width = WIDTH - _LEFT - _RIGHT
    plot_height = HEIGHT - _TOP - _BOTTOM
    top = nice_maximum(max((count for _, count in points), default=0))
    slot = plot_width / max(len(points), 1)
    gap = min(2.0, slot * 0.2)
    bars = []
    for index, (day, count) in enumerate(points):
        height = plot_height * count / top
        bars.append(
            Bar(
                x=round(_LEFT + index * slot + gap / 2, 2),
                y=round(_TOP + plot_height - height, 2),
                width=round(max(slot - gap, 0.5), 2),
                height=round(height, 2),
                title=f"{day.isoformat()}: {count:,}",
            )
        )
    y_ticks = tuple(
        Tick(at=round(_TOP + plot_height - plot_height * i / _Y_TICKS, 2), label=_short(value))
        for i, value in ((i, top * i // _Y_TICKS) for i in range(_Y_TICKS + 1))
    )
    every = max(1, math.ceil(len(points) / 8))
    labelled = [i for i in range(len(points)) if (len(points) - 1 - i) % every == 0]
    x_ticks = tuple(
        Tick(at=round(_LEFT + (i + 0.5) * slot, 2), label=points[i][0].strftime("%b %d"))
        for i in labelled
    )
    return BarChart(
        title=title,
        y_label=y_label,
        x_label=x_label,
        width=WIDTH,
        height=HEIGHT,
        left=_LEFT,
        top=_TOP,
        plot_width=plot_width,
        plot_height=plot_height,
        bars=tuple(bars),
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        total=sum(count for _, count in points),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FunnelStage:
    """One horizontal bar of a funnel: its label, count and share of the first stage."""

    label: str
    count: int
    share: str
    y: float
    width: float
    title: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FunnelChart:
    """Everything the template needs to draw a funnel (one bar per stage, top down)."""

    title: str
    width: int
    height: int
    left: int
    bar_height: int
    plot_width: int
    stages: tuple[FunnelStage, ...]


_FUNNEL_LEFT = 110  # room for the stage labels
_FUNNEL_RIGHT = 150  # room for the count and share after each bar
_FUNNEL_ROW = 34
_FUNNEL_BAR = 24


def funnel_chart(stages: Sequence[tuple[str, int]], *, title: str) -> FunnelChart:
    """Lay out a funnel: bars scaled to the first stage, labelled with count and share."""
    plot_width = WIDTH - _FUNNEL_LEFT - _FUNNEL_RIGHT
    base = stages[0][1] if stages else 0
    widest = max((count for _, count in stages), default=0)
    scale = max(base, widest, 1)
    laid = []
    for index, (label, count) in enumerate(stages):
        share = "—" if base == 0 else f"{count / base * 100:.1f}%"
        laid.append(
            FunnelStage(
                label=label,
                count=count,
                share=share,
                y=_TOP + index * _FUNNEL_ROW,
                width=round(max(plot_width * count / scale, 1.0 if count else 0.0), 2),
                title=f"{label}: {count:,} ({share} of {stages[0][0].lower()})",
            )
        )
    return FunnelChart(
        title=title,
        width=WIDTH,
        height=_TOP * 2 + _FUNNEL_ROW * max(len(stages), 1),
        left=_FUNNEL_LEFT,
        bar_height=_FUNNEL_BAR,
        plot_width=plot_width,
        stages=tuple(laid),
    )
