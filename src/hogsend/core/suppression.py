"""Suppression rules: how delivery reports change an address's health. No I/O.

An address (not a contact) is suppressed when:

- it complained (marked a message as spam): at once, reason ``complaint``;
- it bounced hard (the mailbox or domain does not exist): at once, ``hard_bounce``;
- it bounced softly (mailbox full, temporarily refused) ``threshold`` times in a row:
  ``soft_bounce``. A delivery in between ends the streak; so does an unsuppress.

Bounces about the message rather than the address (too large, content refused) are
counted in ``bounce_count`` but never end in suppression. A suppressed address keeps
its first reason and time; later reports only move the counters.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

BounceClass = Literal["hard", "soft", "message"]
"""``hard``: the address is dead; ``soft``: it may recover; ``message``: this message was
refused (size, content), the address is fine."""
BOUNCE_CLASSES: tuple[BounceClass, ...] = ("hard", "soft", "message")

Reason = Literal["hard_bounce", "soft_bounce", "complaint", "manual", "import"]
REASONS: tuple[Reason, ...] = ("hard_bounce", "soft_bounce", "complaint", "manual", "import")

DEFAULT_SOFT_BOUNCE_THRESHOLD = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressHealth:
    """What is known about one address's deliverability (an ``email_suppressions`` row).

    Attributes:
        suppressed: every send to it is refused.
        reason: why it is suppressed (None when it is not).
        suppressed_at: since when.
        bounce_count: every bounce ever reported.
        soft_bounce_streak: soft bounces since the last delivery (or unsuppress).
        complaint_count: every complaint ever reported.
        last_bounce_at: when the latest bounce happened.
        last_bounce_type: its class (``hard``, ``soft``, ``message``).
        last_complaint_at: when the latest complaint happened.
    """

    suppressed: bool = False
    reason: Reason | None = None
    suppressed_at: datetime | None = None
    bounce_count: int = 0
    soft_bounce_streak: int = 0
    complaint_count: int = 0
    last_bounce_at: datetime | None = None
    last_bounce_type: str | None = None
    last_complaint_at: datetime | None = None


def _suppress(health: AddressHealth, reason: Reason, now: datetime) -> AddressHealth:
    if health.suppressed:
        return health
    return replace(health, suppressed=True, reason=reason, suppressed_at=now)


def after_bounce(
    health: AddressHealth,
    bounce: BounceClass,
    *,
    at: datetime,
    now: datetime,
    threshold: int = DEFAULT_SOFT_BOUNCE_THRESHOLD,
) -> AddressHealth:
    """The address's health after a bounce that happened at ``at``, reported at ``now``."""
    if threshold < 1:
        raise ValueError("the soft-bounce threshold must be at least 1")
    health = replace(
        health,
        bounce_count=health.bounce_count + 1,
        last_bounce_at=at,
        last_bounce_type=bounce,
        soft_bounce_streak=health.soft_bounce_streak + (1 if bounce == "soft" else 0),
    )
    if bounce == "hard":
        return _suppress(health, "hard_bounce", now)
    if bounce == "soft" and health.soft_bounce_streak >= threshold:
        return _suppress(health, "soft_bounce", now)
    return health


def after_complaint(health: AddressHealth, *, at: datetime, now: datetime) -> AddressHealth:
    """The address's health after a spam complaint: suppressed, whatever came before."""
    health = replace(health, complaint_count=health.complaint_count + 1, last_complaint_at=at)
    return _suppress(health, "complaint", now)


def after_delivery(health: AddressHealth) -> AddressHealth:
    """A delivery ends a soft-bounce streak (a suppression stays: only an admin lifts it)."""
    return replace(health, soft_bounce_streak=0)


def after_manual(health: AddressHealth, reason: Reason, *, now: datetime) -> AddressHealth:
    """Suppressed by an admin or an import; an existing suppression keeps its reason."""
    return _suppress(health, reason, now)


def lifted(health: AddressHealth) -> AddressHealth:
    """Unsuppressed by an admin: counters are kept as history, the streak starts over."""
    return replace(health, suppressed=False, reason=None, suppressed_at=None, soft_bounce_streak=0)
