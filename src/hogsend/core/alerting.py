"""When an alert rule notifies: the pure decision between firing, repeating and resolving.

A rule is evaluated on a schedule. Its condition either holds (the measured value is
past the threshold) or not; what the operator hears depends on the rule's state:

============  ===========  ====================================================
holds now     was firing   outcome
============  ===========  ====================================================
yes           no           ``fire``: notify, start firing
yes           yes          ``repeat`` once ``cooldown`` passed since the last
                           notification, else ``hold`` (silent)
no            yes          ``resolve``: notify once, stop firing
no            no           ``quiet``
============  ===========  ====================================================

So a rule that keeps firing notifies once per cooldown, never on every evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

RULE_TYPES = (
    "bounce_rate_exceeded",
    "high_complaint_rate",
    "dispatcher_lag",
    "journey_failure_spike",
    "worker_down",
)
"""The rule types the evaluator measures (the table knows a few more names, unused)."""

RATE_TYPES = frozenset({"bounce_rate_exceeded", "high_complaint_rate"})
"""Types whose value is a share of sent messages (0..1)."""

CHANNELS = ("email", "webhook")

Outcome = Literal["fire", "repeat", "hold", "resolve", "quiet"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Measurement:
    """What one evaluation measured.

    Attributes:
        value: the measured number (a rate, seconds of lag, failed runs, live workers).
        volume: how much the value stands on (messages sent for a rate; else None).
        breached: whether the value is past the threshold (and the volume sufficient).
    """

    value: float
    volume: int | None
    breached: bool


def breached(
    rule_type: str, value: float, threshold: float, volume: int | None, min_volume: int
) -> bool:
    """Whether ``value`` is past ``threshold`` for a rule of ``rule_type``.

    Rates need at least ``min_volume`` messages (two bounces of three sends are noise);
    ``worker_down`` fires when fewer workers than ``threshold`` are alive; every other
    type fires when the value exceeds the threshold.
    """
    if rule_type in RATE_TYPES and (volume or 0) < min_volume:
        return False
    if rule_type == "worker_down":
        return value < threshold
    return value > threshold


def decide(
    *,
    holds: bool,
    firing_since: datetime | None,
    last_notified_at: datetime | None,
    cooldown: timedelta,
    now: datetime,
) -> Outcome:
    """The outcome of one evaluation (see the module's table)."""
    if holds and firing_since is None:
        return "fire"
    if holds:
        if last_notified_at is None or now - last_notified_at >= cooldown:
            return "repeat"
        return "hold"
    return "resolve" if firing_since is not None else "quiet"


def notifies(outcome: Outcome) -> bool:
    """Whether ``outcome`` sends a notification."""
    return outcome in ("fire", "repeat", "resolve")
