"""Bucket memberships and their transitions: the values and the naming rules (no I/O).

Every producer of a transition (the per-event path, backfill, reconcile, the admin
API) names it the same way, so the same transition produced twice is stored once:

- join: event ``bucket:entered:<bucket>``, key ``bucket:entered:<bucket>:<contact>:<epoch>``
- leave: event ``bucket:left:<bucket>``, key ``bucket:left:<bucket>:<contact>:<epoch>``
- dwell ``after``: event ``bucket:dwell:<bucket>:<label>``, key
  ``bucket:dwell:<bucket>:<label>:<contact>:<epoch>``
- dwell ``every``: the same, the key + ``:<n>`` (the interval number, 1-based)

``<contact>`` is the contact id (never the external id, which a contact may not have)
and ``<epoch>`` the membership's ``entry_count``, so a re-join is a new transition and
its dwell clock starts again.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from hogsend.core.definitions import dwell_event, entered_event, left_event

MembershipStatus = Literal["active", "left"]
MembershipSource = Literal["event", "reconcile", "backfill", "manual"]
TransitionKind = Literal["entered", "left", "dwell"]
LeaveReasonCode = Literal["criteria", "maxDwell", "manual"]

LEAVE_REASON_CODES: tuple[LeaveReasonCode, ...] = ("criteria", "maxDwell", "manual")
"""The ``reason`` of a ``bucket:left`` event (camelCase on the wire, like the reference)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Membership:
    """One continuous stay of a contact in a bucket (a re-join is a new one).

    Attributes:
        id: the membership row.
        bucket_id: the bucket.
        contact_id: the contact (the key every query uses).
        contact_key: the contact's resolved key when the row was written.
        email: the contact's email when the row was written, if any.
        status: ``active`` or ``left``.
        entered_at: when the stay began.
        left_at: when it ended.
        left_reason: why (``criteria``, ``maxDwell``, ``manual``, ``merge`` ...).
        entry_count: the epoch: 1 for the first stay of the contact in the bucket.
        source: who created it (event, reconcile, backfill, manual).
        expires_at: criteria-window / deferred-leave deadline.
        max_dwell_at: forced leave deadline.
        dwell_anchor_at: when the dwell clock started, if not ``entered_at``.
        dwell_state: dwell label → ISO time of its last fire.
        last_evaluated_at: when the criteria were last checked for it.
    """

    id: uuid.UUID
    bucket_id: str
    contact_id: uuid.UUID
    contact_key: str
    email: str | None
    status: MembershipStatus
    entered_at: datetime
    left_at: datetime | None = None
    left_reason: str | None = None
    entry_count: int = 1
    source: str | None = None
    expires_at: datetime | None = None
    max_dwell_at: datetime | None = None
    dwell_anchor_at: datetime | None = None
    dwell_state: Mapping[str, Any] = field(default_factory=dict)
    last_evaluated_at: datetime | None = None

    @property
    def epoch(self) -> int:
        """The membership epoch (``entry_count``)."""
        return self.entry_count


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """A transition to emit as an event (see the module docstring for the names).

    Attributes:
        kind: ``entered``, ``left`` or ``dwell``.
        bucket_id: the bucket.
        contact_id: the contact.
        epoch: the membership's ``entry_count``.
        entered_at: when that membership began.
        reason: for ``left``: ``criteria``, ``maxDwell`` or ``manual``.
        label: for ``dwell``: the schedule's label.
        interval: for an ``every`` dwell: which interval (1-based); None for ``after``.
    """

    kind: TransitionKind
    bucket_id: str
    contact_id: uuid.UUID
    epoch: int
    entered_at: datetime
    reason: LeaveReasonCode | None = None
    label: str | None = None
    interval: int | None = None

    def __post_init__(self) -> None:
        if self.epoch < 1:
            raise ValueError("epoch must be at least 1")
        if (self.kind == "left") != (self.reason is not None):
            raise ValueError("a reason is given with, and only with, a left transition")
        if self.reason is not None and self.reason not in LEAVE_REASON_CODES:
            raise ValueError(f"unknown leave reason {self.reason!r}")
        if (self.kind == "dwell") != (self.label is not None):
            raise ValueError("a label is given with, and only with, a dwell transition")
        if self.interval is not None and (self.kind != "dwell" or self.interval < 1):
            raise ValueError("interval is a dwell's 1-based interval number")

    @classmethod
    def of(
        cls,
        kind: TransitionKind,
        membership: Membership,
        *,
        reason: LeaveReasonCode | None = None,
        label: str | None = None,
        interval: int | None = None,
    ) -> Transition:
        """The transition ``kind`` of ``membership``."""
        return cls(
            kind=kind,
            bucket_id=membership.bucket_id,
            contact_id=membership.contact_id,
            epoch=membership.entry_count,
            entered_at=membership.entered_at,
            reason=reason,
            label=label,
            interval=interval,
        )

    @property
    def event(self) -> str:
        """The event name."""
        if self.kind == "entered":
            return entered_event(self.bucket_id)
        if self.kind == "left":
            return left_event(self.bucket_id)
        return dwell_event(self.bucket_id, self.label or "")

    @property
    def idempotency_key(self) -> str:
        """The deterministic key every producer of this transition uses."""
        key = f"{self.event}:{self.contact_id}:{self.epoch}"
        return key if self.interval is None else f"{key}:{self.interval}"

    def properties(self) -> dict[str, Any]:
        """The event's properties: ``bucketId``, ``epoch``, ``enteredAt`` and, as they
        apply, ``reason``, ``label`` and ``interval``."""
        props: dict[str, Any] = {
            "bucketId": self.bucket_id,
            "epoch": self.epoch,
            "enteredAt": self.entered_at.isoformat(),
        }
        if self.reason is not None:
            props["reason"] = self.reason
        if self.label is not None:
            props["label"] = self.label
        if self.interval is not None:
            props["interval"] = self.interval
        return props


def dwell_interval(anchor: datetime, now: datetime, every: timedelta) -> int:
    """How many whole ``every`` intervals separate ``anchor`` from ``now`` (0 before the
    first ends): the ``interval`` of an ``every`` dwell due at ``now``. Missed intervals
    coalesce: after an outage only the current number fires."""
    if now <= anchor:
        return 0
    return int((now - anchor) // every)
