"""Enrollment decisions of journeys: pure functions the trigger path and the harness share.

Nothing here reads a clock or a database: callers pass the facts (previous runs, now)
and get a decision back, so the same rules run in the worker and in unit tests.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hogsend.core.conditions import EventCondition, event_matches
from hogsend.core.definitions import EntryLimit, EventSpec
from hogsend.core.identifiers import durable_name


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryHistory:
    """What the entry limit needs to know about a contact's earlier runs of one journey.

    Attributes:
        runs: how many runs the contact ever had in the journey.
        last_entered_at: when the latest of them started (None without runs).
        running: whether one of them is still running.
    """

    runs: int = 0
    last_entered_at: datetime | None = None
    running: bool = False


def spec_event(spec: EventSpec) -> str:
    """The event name a trigger or exit listens to."""
    return spec if isinstance(spec, str) else spec.event


def spec_matches(spec: EventSpec, name: str, properties: Mapping[str, Any]) -> bool:
    """Whether an event (``name`` with ``properties``) matches a trigger or exit spec."""
    if isinstance(spec, EventCondition):
        return event_matches(spec, name, properties)
    return spec == name


def entry_refusal(
    limit: EntryLimit, period: timedelta | None, history: EntryHistory, now: datetime
) -> str | None:
    """Why a new enrollment is refused (a reason code), or None when it may start.

    Every limit refuses while a run is still going (``already_running``): the database's
    partial unique index allows one running run per contact and journey.
    """
    if history.running:
        return "already_running"
    if limit == "once" and history.runs > 0:
        return "entry_limit_once"
    if (
        limit == "once_per_period"
        and period is not None
        and history.last_entered_at is not None
        and now - history.last_entered_at < period
    ):
        return "entry_limit_period"
    return None


def enrollment_workflow_id(journey_id: str, contact_id: uuid.UUID, ordinal: int) -> str:
    """The deterministic workflow id of a contact's ``ordinal``-th run of a journey."""
    return f"{durable_name('journey', journey_id)}:{contact_id}:{ordinal}"


def pick_variant(
    contact_id: uuid.UUID | str,
    test_id: str,
    variants: Sequence[str],
    weights: Sequence[float] | None = None,
) -> str:
    """The variant a contact sees in test ``test_id``: the same answer every time.

    A SHA-256 of ``test_id:contact_id`` places the contact on ``[0, 1)``; the weights
    (equal by default) cut that line into one slice per variant.

    Raises:
        ValueError: no variants, weights of another length, or weights not positive.
    """
    if not variants:
        raise ValueError("variant needs at least one variant")
    shares = list(weights) if weights is not None else [1.0] * len(variants)
    if len(shares) != len(variants):
        raise ValueError("variant needs one weight per variant")
    if any(w <= 0 for w in shares):
        raise ValueError("variant weights must be positive")
    digest = hashlib.sha256(f"{test_id}:{contact_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(shares)
    edge = 0.0
    for variant, share in zip(variants, shares, strict=True):
        edge += share
        if point < edge:
            return variant
    return variants[-1]


def properties_match(expected: Mapping[str, Any] | None, actual: Mapping[str, Any]) -> bool:
    """Whether every key of ``expected`` equals the same key of ``actual`` (``match=``)."""
    if not expected:
        return True
    return all(key in actual and actual[key] == value for key, value in expected.items())
