"""Funnels laid out on the server: one horizontal bar per step, as inline SVG geometry.

Each bar's length is its count relative to the first step (the widest); its label says
the count and that share. The template draws the rectangles and texts, so every label
goes through autoescaping. No JavaScript.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 720
_LABEL = 150  # room for the step names on the left
_RIGHT = 150  # room for "1,234 (100.0%)" after the longest bar
_ROW = 34
_BAR = 22
_TOP = 8


@dataclass(frozen=True, slots=True, kw_only=True)
class Step:
    """One step's bar."""

    label: str
    count: int
    share: float | None
    y: float
    width: float
    text_y: float

    @property
    def caption(self) -> str:
        """``1,234 (56.7%)`` (no share for an empty funnel)."""
        share = "" if self.share is None else f" ({self.share * 100:.1f}%)"
        return f"{self.count:,}{share}"


@dataclass(frozen=True, slots=True, kw_only=True)
class FunnelChart:
    """Everything the template needs to draw one funnel."""

    title: str
    width: int
    height: int
    left: int
    steps: tuple[Step, ...]


def funnel_chart(steps: Sequence[tuple[str, int]], *, title: str) -> FunnelChart:
    """Lay out ``steps`` (label, count), top to bottom, scaled to the first step.

    A later step larger than the first (clicks without a recorded open, say) is drawn
    at full width; its share still says the truth.
    """
    plot = WIDTH - _LABEL - _RIGHT
    base = steps[0][1] if steps else 0
    laid = []
    for index, (label, count) in enumerate(steps):
        share = count / base if base else None
        y = _TOP + index * _ROW
        laid.append(
            Step(
                label=label,
                count=count,
                share=share,
                y=y,
                width=round(max(plot * min(share or 0.0, 1.0), 1.0 if count else 0.0), 2),
                text_y=y + _BAR / 2,
            )
        )
    return FunnelChart(
        title=title,
        width=WIDTH,
        height=_TOP * 2 + max(len(steps), 1) * _ROW,
        left=_LABEL,
        steps=tuple(laid),
    )
