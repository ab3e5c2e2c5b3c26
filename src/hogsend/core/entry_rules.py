"""Entry limits: may this contact enter this journey now? No I/O.

The runtime reads a contact's past runs of a journey (:class:`PriorEntries`) and asks
:func:`entry_refusal`; the test harness asks the same function, so both refuse for the
same reasons (the one set of codes, :data:`Refusal`, is what ``journey_logs`` records
and what ``JourneyHarness.start`` returns):

- ``unlimited`` never refuses on the count;
- ``once`` refuses if any run of the journey exists for the contact, whatever its
  status (``already_entered_once``);
- ``once_per_period`` refuses while the most recent *entry* (not completion) is less
  than ``entry_period`` old (``period_not_elapsed``); exactly one period later is allowed;
- whatever the limit, a contact with a run still active or waiting is refused
  (``already_active``): one live run per (contact, journey).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from hogsend.core.definitions import EntryLimit

EntryRefusal = Literal["already_entered_once", "period_not_elapsed", "already_active"]
GuardRefusal = Literal["disabled", "trigger_filter", "bucket_disabled", "contact_deleted"]
"""The other guards: the enable switch, the trigger's filter, the bucket's switch (for a
bucket reaction's journey), a contact gone meanwhile."""
Refusal = GuardRefusal | EntryRefusal
"""Every reason a trigger can be refused, in the order the guards run."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PriorEntries:
    """What the entry rules need to know about a contact's past runs of one journey.

    Attributes:
        count: runs of the journey for the contact, in any status.
        last_entered_at: when the most recent of them was enrolled (None: never).
        live: whether one of them is still enrolled, active or waiting.
    """

    count: int = 0
    last_entered_at: datetime | None = None
    live: bool = False

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count cannot be negative")
        if self.count > 0 and self.last_entered_at is None:
            raise ValueError("last_entered_at is needed when count > 0")


NO_ENTRIES = PriorEntries()


def entry_refusal(
    limit: EntryLimit,
    prior: PriorEntries,
    now: datetime,
    *,
    period: timedelta | None = None,
) -> EntryRefusal | None:
    """Why the contact may not enter now, or None if it may.

    Raises:
        ValueError: ``once_per_period`` without a positive ``period``, or a naive ``now``.
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    if limit == "once" and prior.count > 0:
        return "already_entered_once"
    if limit == "once_per_period":
        if period is None or period <= timedelta(0):
            raise ValueError("once_per_period needs a positive entry_period")
        if prior.last_entered_at is not None and now < prior.last_entered_at + period:
            return "period_not_elapsed"
    if prior.live:
        return "already_active"
    return None


def next_entry_at(
    limit: EntryLimit, prior: PriorEntries, *, period: timedelta | None = None
) -> datetime | None:
    """The earliest instant the count rule lets the contact in again.

    None means "no time bound": either it may enter now (``unlimited``, or no entry
    yet) or never again (``once`` after an entry; check :func:`entry_refusal`). A live
    run still refuses until it ends, whatever this says.

    Raises:
        ValueError: ``once_per_period`` without a positive ``period``.
    """
    if limit != "once_per_period" or prior.last_entered_at is None:
        return None
    if period is None or period <= timedelta(0):
        raise ValueError("once_per_period needs a positive entry_period")
    return prior.last_entered_at + period


def after_entry(prior: PriorEntries, entered_at: datetime) -> PriorEntries:
    """``prior`` once the contact has entered (a new live run) at ``entered_at``."""
    return PriorEntries(count=prior.count + 1, last_entered_at=entered_at, live=True)


def entry_ordinal(prior: PriorEntries) -> int:
    """The 1-based number of the next entry (part of a deterministic enrollment id)."""
    return prior.count + 1
