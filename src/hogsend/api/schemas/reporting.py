"""Bodies of the admin reporting routes (/v1/admin/metrics/*, /v1/admin/event-search)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, model_validator

from hogsend.api.schemas.common import ApiModel, IsoDateTime, PageQuery, Text

CampaignStatus = Literal["queued", "scheduled", "sending", "paused", "sent", "cancelled", "failed"]


class WindowQuery(ApiModel):
    """An optional ``from``..``to`` window (inclusive)."""

    model_config = ConfigDict(extra="forbid")

    from_: IsoDateTime | None = Field(default=None, alias="from", description="At or after.")
    to: IsoDateTime | None = Field(default=None, description="At or before.")

    @model_validator(mode="after")
    def _ordered(self) -> WindowQuery:
        if self.from_ is not None and self.to is not None and self.from_ > self.to:
            raise ValueError("`from` must not be after `to`")
        return self


class TemplateQuery(WindowQuery):
    """The template stats window, optionally narrowed to one template."""

    template: Text | None = Field(default=None, max_length=200, description="Exact key.")


class DaysQuery(ApiModel):
    """How many UTC days back a daily series reaches (today included)."""

    model_config = ConfigDict(extra="forbid")

    days: int = Field(default=30, ge=1, le=366, description="1..366, default 30.")


class Rates(ApiModel):
    """Shares rounded to 4 places; null when the denominator is 0."""

    delivery_rate: float | None
    open_rate: float | None = Field(description="Opened / delivered (sent if none delivered).")
    click_rate: float | None = Field(description="Clicked / delivered (sent if none delivered).")
    bounce_rate: float | None
    complaint_rate: float | None


class OutcomesOut(ApiModel):
    """Messages that went out and what became of them."""

    sent: int
    delivered: int
    opened: int
    clicked: int
    bounced: int
    complained: int
    rates: Rates


class OverviewOut(ApiModel):
    """The engine at a glance (30-day email numbers count attempts made in the last 30 days)."""

    total_contacts: int
    running_journey_runs: int
    active_buckets: int = Field(description="Buckets with at least one active member.")
    bucket_members: int
    unsubscribed_contacts: int
    emails_sent_24h: int = Field(alias="emailsSent24h")
    emails_sent_7d: int = Field(alias="emailsSent7d")
    emails_30d: OutcomesOut = Field(alias="emails30d")
    gated_30d: dict[str, int] = Field(
        alias="gated30d", description="Attempts a gate stopped, by decision."
    )
    dispatcher_lag_seconds: float
    dispatcher_pending: int
    workers_alive: int
    pending_dead_letters: int


class JourneyFunnelOut(ApiModel):
    """Runs of one journey that reached each step (runs started in the window)."""

    journey_id: str
    enrolled: int
    sent: int = Field(description="Runs that sent at least one message.")
    opened: int = Field(description="Runs with at least one opened message.")
    clicked: int = Field(description="Runs with at least one clicked message.")
    completed: int
    exited: int
    failed: int
    running: int
    messages: int = Field(description="Messages the runs sent.")
    window: WindowQuery


class TemplateStatsOut(ApiModel):
    """One template's messages in the window."""

    template_key: str
    outcomes: OutcomesOut
    gated: int = Field(description="Attempts a gate stopped (suppressed, capped ...).")


class TemplateStatsList(ApiModel):
    """Templates, most sent first."""

    templates: list[TemplateStatsOut]
    window: WindowQuery


class TrendPointOut(ApiModel):
    """One UTC day of messages and their outcomes."""

    date: date
    outcomes: OutcomesOut


class DeliverabilityOut(ApiModel):
    """Sent, bounced and complained (and the rest) per UTC day, oldest first."""

    days: int
    points: list[TrendPointOut]
    totals: OutcomesOut


class CampaignQuery(PageQuery):
    """Campaign list filters."""

    status: CampaignStatus | None = None


class CampaignSummaryOut(ApiModel):
    """One campaign with its status and counts."""

    id: uuid.UUID
    name: str
    status: str
    template_key: str
    audience_kind: str
    total_recipients: int
    sent: int
    skipped: int
    failed: int
    opened: int
    clicked: int
    send_at: datetime | None
    started_at: datetime | None
    completed_at: datetime | None
    created_at: datetime


class CampaignSummaryPage(ApiModel):
    """Campaigns newest first."""

    campaigns: list[CampaignSummaryOut]
    total: int
    limit: int
    offset: int


class CampaignFunnelOut(ApiModel):
    """audience → sent → delivered → opened → clicked, and the opt-outs and failures."""

    campaign_id: uuid.UUID
    name: str
    status: str
    template_key: str
    audience: int = Field(description="Recipients in the audience snapshot.")
    pending: int = Field(description="Recipients not attempted yet.")
    sent: int
    delivered: int
    opened: int
    clicked: int
    unsubscribed: int = Field(description="Recipients who opted out after their message.")
    bounced: int
    complained: int
    failed: int
    skipped: dict[str, int] = Field(description="Recipients a gate stopped, by decision.")


class BucketDayOut(ApiModel):
    """Entries and exits of one UTC day."""

    date: date
    entered: int
    left: int


class BucketActivityOut(ApiModel):
    """A bucket's size and its entries/exits per day, oldest first."""

    bucket_id: str
    size: int
    points: list[BucketDayOut]


class EventSearchQuery(PageQuery):
    """Event search: every given filter must match."""

    q: Text | None = Field(
        default=None, max_length=200, description="A case-insensitive part of the event name."
    )
    email: Text | None = Field(default=None, max_length=320, description="The contact's email.")
    # Its own pattern replaces Text's, so it says "no NUL" too: the schema then tells
    # clients (and the API fuzz test) what the 422 enforces.
    property: Text | None = Field(
        default=None,
        max_length=500,
        pattern=r"^[^=\x00]+=[^\x00]*$",
        description="`key=value`: the event's properties contain it (value as JSON, else text).",
    )
    from_: IsoDateTime | None = Field(default=None, alias="from", description="At or after.")
    to: IsoDateTime | None = Field(default=None, description="At or before.")


class FoundEventOut(ApiModel):
    """One event found."""

    id: uuid.UUID
    name: str
    contact_id: uuid.UUID | None
    user_id: str
    email: str | None
    properties: dict[str, Any]
    source: str | None
    occurred_at: datetime


class EventSearchPage(ApiModel):
    """Matching events newest first; ``hasMore`` when another page follows."""

    events: list[FoundEventOut]
    limit: int
    offset: int
    has_more: bool
