"""Bodies of the admin send-log routes (``/v1/admin/contacts/{id}/sends`` and ``/explain``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import ConfigDict, Field

from hogsend.api.schemas.common import ApiModel, Text
from hogsend.api.schemas.events import CursorQuery
from hogsend.core.mailer_gates import SendFacts
from hogsend.db.repos.sends import SendRecord

DecisionOut = Literal[
    "queued",
    "sent",
    "duplicate",
    "skipped_deleted",
    "suppressed",
    "unsubscribed",
    "capped",
    "deferred",
    "redirected",
    "provider_error",
]


class SendAttemptOut(ApiModel):
    """One send attempt and the mailer's decision about it."""

    id: UUID
    created_at: datetime
    updated_at: datetime
    decision: DecisionOut = Field(
        description="The reason code (see docs/email.md); `queued` while at the provider."
    )
    status: str = Field(description="Delivery status: skipped, queued, sent, failed, delivered ...")
    detail: dict[str, Any] | None = Field(
        description="The facts behind the decision: the gate, the rule that hit, the window "
        "it was deferred to, the provider error ..."
    )
    to_email: str
    from_email: str
    redirected_to: str | None = Field(description="Test mode: where it really went.")
    subject: str | None
    template_key: str | None
    category: str | None
    journey_id: str | None
    journey_state_id: UUID | None
    campaign_id: UUID | None
    duplicate_of_id: UUID | None = Field(description="For `duplicate`: the attempt it repeats.")
    idempotency_key: str | None
    provider: str | None
    provider_message_id: str | None
    attempts: int = Field(description="Provider calls made, retries included.")
    last_error: str | None
    sent_at: datetime | None
    kind: Literal["transactional", "journey", "campaign", "test"] = Field(
        default="transactional",
        description="Who sent it; transactional and test sends skip unsubscribes and the cap.",
    )


def send_attempt_out(record: SendRecord) -> SendAttemptOut:
    """The admin form of a send attempt."""
    return SendAttemptOut(
        id=record.id,
        created_at=record.created_at,
        updated_at=record.updated_at,
        decision=record.decision,
        status=record.status,
        detail=record.detail,
        to_email=record.to_email,
        from_email=record.from_email,
        redirected_to=record.redirected_to,
        subject=record.subject,
        template_key=record.template_key,
        category=record.category,
        journey_id=record.journey_id,
        journey_state_id=record.journey_state_id,
        campaign_id=record.campaign_id,
        duplicate_of_id=record.duplicate_of_id,
        idempotency_key=record.idempotency_key,
        provider=record.provider,
        provider_message_id=record.provider_message_id,
        attempts=record.attempts,
        last_error=record.last_error,
        sent_at=record.sent_at,
        kind=record.kind,
    )


class SendAttemptQuery(CursorQuery):
    """Paging, and optional filters, of a contact's send attempts."""

    template: Text | None = Field(default=None, max_length=64, description="One template key.")
    journey: Text | None = Field(default=None, max_length=200, description="One journey id.")


class SendAttemptPage(ApiModel):
    """A page of attempts, newest first."""

    sends: list[SendAttemptOut]
    next_cursor: str | None
    merged_into: UUID | None = Field(
        default=None,
        description="The contact asked about was merged into this one: these are its attempts.",
    )


class ExplainQuery(ApiModel):
    """What to explain: a template, a journey, both (that journey sending that template), or
    neither (any non-transactional email at all)."""

    model_config = ConfigDict(extra="forbid")

    template: Text | None = Field(
        default=None,
        max_length=64,
        description="A template key: explains a send of it (transactional if its category "
        "is `transactional`, else a campaign-style send to its category).",
    )
    journey: Text | None = Field(
        default=None, max_length=200, description="A journey id: explains its next message."
    )


class ExplainFacts(ApiModel):
    """The facts the gates saw."""

    kind: Literal["transactional", "journey", "campaign", "test"]
    list_id: str | None = Field(description="The list or category the send needs.")
    list_default_opt_in: bool | None = Field(
        description="The list's polarity; null for an id no list registers (subscribed "
        "until an explicit unsubscribe)."
    )
    list_choice: bool | None = Field(description="The contact's explicit choice, if any.")
    contact_deleted: bool
    suppressed: bool
    suppression_reason: str | None
    unsubscribed_all: bool
    journey_last_sent_at: datetime | None
    suppress_gap_seconds: float | None
    recent_sends: int = Field(description="Messages to the address within the cap window.")
    frequency_cap_count: int
    frequency_cap_window_seconds: float
    test_mode: bool


def explain_facts_out(facts: SendFacts) -> ExplainFacts:
    """The admin form of the gates' facts."""
    return ExplainFacts(
        kind=facts.kind,
        list_id=facts.list_id,
        list_default_opt_in=facts.list_default_opt_in,
        list_choice=facts.list_choice,
        contact_deleted=facts.contact_deleted,
        suppressed=facts.suppressed,
        suppression_reason=facts.suppression_reason,
        unsubscribed_all=facts.unsubscribed_all,
        journey_last_sent_at=facts.journey_last_sent_at,
        suppress_gap_seconds=(
            facts.suppress_gap.total_seconds() if facts.suppress_gap is not None else None
        ),
        recent_sends=facts.recent_sends,
        frequency_cap_count=facts.frequency_cap_count,
        frequency_cap_window_seconds=facts.frequency_cap_window.total_seconds(),
        test_mode=facts.test_mode,
    )


class ExplainOut(ApiModel):
    """Whether the contact would get the message now, why not, and what happened before."""

    would_send: bool = Field(description="An attempt made now would go to the provider.")
    decision: DecisionOut = Field(description="The decision an attempt made now would get.")
    detail: dict[str, Any] = Field(description="The facts behind that decision.")
    deferred_until: datetime | None = Field(description="For `deferred`: when it could go.")
    facts: ExplainFacts
    recent: list[SendAttemptOut] = Field(
        description="The latest attempts for this template or journey, newest first."
    )
    merged_into: UUID | None = Field(
        default=None,
        description="The contact asked about was merged into this one, which is what a send "
        "to it would address: the explanation is this contact's.",
    )
