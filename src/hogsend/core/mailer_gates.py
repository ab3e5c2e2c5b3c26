"""The mailer's gates: which decision an attempt gets, from a snapshot of facts. No I/O.

The mailer gathers :class:`SendFacts` in one transaction and calls :func:`decide`; the
admin ``explain`` route calls the same function on the same facts as a dry run, so
"why didn't X get Y" is answered by the code that made the decision.

The gates run in one fixed order (:data:`GATE_ORDER`); the first that stops an attempt
names its decision:

1. ``duplicate`` — the idempotency key is held by another attempt;
2. ``skipped_deleted`` — the contact was deleted or erased;
3. ``suppressed`` — the address hard-bounced, complained or was suppressed by hand
   (applies to every kind of send, even with ``skip_preference_check``);
4. ``unsubscribed`` — global unsubscribe, or not subscribed to the send's list or
   category under the list's polarity (transactional sends are exempt);
5. ``capped`` — the journey's ``suppress`` gap, or the global frequency cap
   (transactional sends are exempt);
6. ``deferred`` — outside the send window; :attr:`GateResult.deferred_until` says when
   it opens;
7. ``redirected`` (test mode) or ``sent`` — the attempt goes to the provider, where it
   may still end as ``provider_error``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

# SendWindow lives with the other window code; re-exported for the mailer's imports.
from hogsend.core.send_windows import SendWindow as SendWindow
from hogsend.core.slot_init import slot_init

Decision = Literal[
    "duplicate",
    "skipped_deleted",
    "suppressed",
    "unsubscribed",
    "capped",
    "deferred",
    "redirected",
    "sent",
    "provider_error",
]
SendKind = Literal["transactional", "journey", "campaign", "test"]
"""Who sends: ``test`` is an admin test send (always with ``skip_preference_check``)."""

GATE_ORDER: tuple[Decision, ...] = (
    "duplicate",
    "skipped_deleted",
    "suppressed",
    "unsubscribed",
    "capped",
    "deferred",
    "redirected",
)
"""The gates, in the order they run; ``sent`` is what passes them all."""

GATED: frozenset[Decision] = frozenset(GATE_ORDER) - {"redirected"}
"""Decisions after which nothing is handed to a provider."""

TRANSACTIONAL_CATEGORY = "transactional"


def journey_send_kind(template_category: str | None) -> SendKind:
    """The kind of a journey's send of a template with ``template_category``.

    A template marked ``category: transactional`` (a receipt, a payment notice) is
    transactional mail whoever sends it: from a journey too it reaches a contact who
    unsubscribed from marketing, is neither capped nor counted by the cap, and carries
    no unsubscribe links. Any other template is a ``journey`` send.
    """
    return "transactional" if template_category == TRANSACTIONAL_CATEGORY else "journey"


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SendFacts:
    """Everything the gates look at, read in one transaction.

    Attributes:
        now: the instant of the decision.
        kind: transactional, journey, campaign or test.
        list_id: the list or category whose subscription the send needs (None: none).
        list_default_opt_in: the list's polarity; None for an id no list registers
            (built-in and free-form categories count as opt-out-by-choice, i.e.
            subscribed until an explicit unsubscribe).
        list_choice: the contact's explicit choice for ``list_id``, None if it made none.
        skip_preference_check: bypass the unsubscribe and cap gates (admin test sends).
        duplicate_of: the attempt holding the idempotency key, if another one does.
        contact_deleted: the contact was deleted, merged away without survivor, or erased.
        suppressed: the address is suppressed; ``suppression_reason`` says why.
        unsubscribed_all: the contact unsubscribed from all non-transactional email.
        journey_last_sent_at: when this journey last sent to this contact.
        suppress_gap: the journey's ``suppress``: the least time between two of its sends.
        recent_sends: messages that went to this address within the cap window.
        frequency_cap_count: messages allowed per window (0: no cap).
        frequency_cap_window: the cap's window.
        send_window: when the send may go out (None: any time).
        contact_timezone: the contact's IANA zone, for a window without its own.
        test_mode: redirect instead of sending.
    """

    now: datetime
    kind: SendKind
    list_id: str | None = None
    list_default_opt_in: bool | None = None
    list_choice: bool | None = None
    skip_preference_check: bool = False
    duplicate_of: UUID | None = None
    contact_deleted: bool = False
    suppressed: bool = False
    suppression_reason: str | None = None
    unsubscribed_all: bool = False
    journey_last_sent_at: datetime | None = None
    suppress_gap: timedelta | None = None
    recent_sends: int = 0
    frequency_cap_count: int = 0
    frequency_cap_window: timedelta = timedelta(days=1)
    send_window: SendWindow | None = None
    contact_timezone: str | None = None
    test_mode: bool = False


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class GateResult:
    """The decision, the facts behind it (for ``decision_detail``) and, if deferred, until when."""

    decision: Decision
    detail: Mapping[str, Any] = field(default_factory=dict)
    deferred_until: datetime | None = None
    duplicate_of: UUID | None = None

    @property
    def goes_out(self) -> bool:
        """Whether the attempt is handed to a provider (``sent`` or ``redirected``)."""
        return self.decision in ("sent", "redirected")


def is_subscribed(*, default_opt_in: bool | None, choice: bool | None) -> bool:
    """The polarity rule: an explicit choice wins; else the list's default.

    Lists that default to opted-in (and ids no list registers) need an explicit
    unsubscribe; opt-in lists need an explicit subscribe.
    """
    if choice is not None:
        return choice
    return True if default_opt_in is None else default_opt_in


def unsubscribe_gate(facts: SendFacts) -> GateResult | None:
    """``unsubscribed`` when the person opted out of this send (transactional: never)."""
    if facts.kind == "transactional" or facts.skip_preference_check:
        return None
    if facts.unsubscribed_all:
        return GateResult(decision="unsubscribed", detail={"gate": "unsubscribed", "scope": "all"})
    if facts.list_id is None or facts.list_id == TRANSACTIONAL_CATEGORY:
        return None
    if is_subscribed(default_opt_in=facts.list_default_opt_in, choice=facts.list_choice):
        return None
    why = "unsubscribed" if facts.list_choice is False else "opt-in list, never subscribed"
    return GateResult(
        decision="unsubscribed",
        detail={"gate": "unsubscribed", "scope": "list", "listId": facts.list_id, "why": why},
    )


def cap_gate(facts: SendFacts) -> GateResult | None:
    """``capped`` by the journey's suppress gap, then the global frequency cap."""
    if facts.kind == "transactional" or facts.skip_preference_check:
        return None
    if facts.suppress_gap is not None and facts.journey_last_sent_at is not None:
        allowed_at = facts.journey_last_sent_at + facts.suppress_gap
        if facts.now < allowed_at:
            return GateResult(
                decision="capped",
                detail={
                    "gate": "capped",
                    "rule": "journey_suppress",
                    "lastSentAt": facts.journey_last_sent_at.isoformat(),
                    "gapSeconds": facts.suppress_gap.total_seconds(),
                    "allowedAt": allowed_at.isoformat(),
                },
            )
    if facts.frequency_cap_count > 0 and facts.recent_sends >= facts.frequency_cap_count:
        return GateResult(
            decision="capped",
            detail={
                "gate": "capped",
                "rule": "frequency_cap",
                "count": facts.recent_sends,
                "limit": facts.frequency_cap_count,
                "windowSeconds": facts.frequency_cap_window.total_seconds(),
            },
        )
    return None


def window_gate(facts: SendFacts) -> GateResult | None:
    """``deferred`` to the next opening when the send window is closed."""
    if facts.send_window is None:
        return None
    opens = facts.send_window.next_open(facts.now, contact_timezone=facts.contact_timezone)
    if opens is None:
        return None
    return GateResult(
        decision="deferred",
        detail={"gate": "deferred", "deferredUntil": opens.isoformat()},
        deferred_until=opens,
    )


def decide(facts: SendFacts) -> GateResult:
    """Run the gates in :data:`GATE_ORDER`; the first that stops the attempt decides."""
    if facts.now.utcoffset() is None:
        raise ValueError("facts.now must be timezone-aware")
    if facts.duplicate_of is not None:
        return GateResult(
            decision="duplicate",
            detail={"gate": "duplicate", "duplicateOf": str(facts.duplicate_of)},
            duplicate_of=facts.duplicate_of,
        )
    if facts.contact_deleted:
        return GateResult(decision="skipped_deleted", detail={"gate": "skipped_deleted"})
    if facts.suppressed:
        return GateResult(
            decision="suppressed",
            detail={"gate": "suppressed", "reason": facts.suppression_reason},
        )
    for gate in (unsubscribe_gate, cap_gate, window_gate):
        stopped = gate(facts)
        if stopped is not None:
            return stopped
    if facts.test_mode:
        return GateResult(decision="redirected", detail={"gate": "redirected"})
    return GateResult(decision="sent")
