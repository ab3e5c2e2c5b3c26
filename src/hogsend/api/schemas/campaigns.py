"""Bodies and answers of ``/v1/campaigns``: create, read, list and control broadcasts."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import ConfigDict, Field

from hogsend.api.schemas.common import ApiModel, IsoDateTime, Page, PageQuery
from hogsend.api.schemas.emails import HeaderText, Mailbox
from hogsend.api.schemas.events import IdempotencyKey, JsonObject, StoredText
from hogsend.db.tables.campaigns import CAMPAIGN_STATUSES, Campaign

CampaignStatus = Literal["queued", "scheduled", "sending", "paused", "sent", "cancelled", "failed"]
assert set(CampaignStatus.__args__) == set(CAMPAIGN_STATUSES)  # type: ignore[attr-defined]

MAX_THROTTLE = 100_000.0


class CampaignIn(ApiModel):
    """One template to an audience: exactly one of `list`, `bucket` or `criteria`."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"list": "newsletter", "template": "june-news", "throttle": 50},
                {
                    "criteria": {
                        "type": "property",
                        "property": "plan",
                        "op": "equals",
                        "value": "pro",
                    },
                    "template": "pro-launch",
                    "sendAt": "2026-06-01T08:00:00Z",
                    "localTime": "09:00",
                },
            ]
        },
    )

    name: StoredText | None = Field(
        default=None, min_length=1, max_length=200, description="Default `Campaign to <kind> <id>`."
    )
    list_: StoredText | None = Field(
        default=None, alias="list", min_length=1, max_length=64, description="A list id."
    )
    bucket: StoredText | None = Field(
        default=None, min_length=1, max_length=64, description="A bucket id (active members)."
    )
    criteria: JsonObject | None = Field(
        default=None, description="A conditions-engine expression (docs/conditions.md)."
    )
    template: StoredText = Field(min_length=1, max_length=64, description="The template key.")
    props: JsonObject = Field(default_factory=dict, description="The template's props.")
    from_: Mailbox | None = Field(default=None, alias="from", description="The From header.")
    subject: HeaderText | None = Field(
        default=None, min_length=1, max_length=998, description="Replaces the template's."
    )
    send_at: IsoDateTime | None = Field(
        default=None, description="When to start (absent: now). ISO 8601 with an offset."
    )
    local_time: str | None = Field(
        default=None,
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="`HH:MM`: deliver at this time in each recipient's time zone (UTC when "
        "unknown), the first such time at or after `sendAt`.",
    )
    throttle: float | None = Field(
        default=None, gt=0, le=MAX_THROTTLE, description="At most this many messages per second."
    )
    idempotency_key: IdempotencyKey | None = None


class CampaignAccepted(ApiModel):
    """The campaign was created (or found by its idempotency key); nothing waited for it."""

    campaign_id: UUID
    status: CampaignStatus


class CampaignOut(ApiModel):
    """A campaign and how far it got."""

    id: UUID
    name: str
    status: CampaignStatus
    audience_kind: Literal["list", "bucket", "criteria"]
    audience_id: str | None = Field(description="The list or bucket id; null for criteria.")
    criteria: dict[str, Any] | None
    template_key: str
    send_at: datetime | None
    local_time: str | None
    throttle: float | None
    total_recipients: int
    sent_count: int
    skipped_count: int
    failed_count: int
    pending_count: int = Field(description="Recipients not yet sent, skipped or failed.")
    skip_reasons: dict[str, int] = Field(description="Skipped recipients per mailer decision.")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    snapshot_at: datetime | None
    resume_at: datetime | None = Field(
        description="While a sending campaign waits for recipients due later (`localTime`)"
        " with no run in progress: when a worker takes it up again; null otherwise."
    )
    paused_at: datetime | None
    completed_at: datetime | None
    cancelled_at: datetime | None


def campaign_out(row: Campaign) -> CampaignOut:
    """The API shape of a campaign row."""
    done = row.sent_count + row.skipped_count + row.failed_count
    return CampaignOut(
        id=row.id,
        name=row.name,
        status=row.status,
        audience_kind=row.audience_kind,
        audience_id=row.audience.get("id"),
        criteria=row.audience.get("criteria"),
        template_key=row.template_key,
        send_at=row.send_at,
        local_time=row.local_time,
        throttle=row.throttle_per_second,
        total_recipients=row.total_recipients,
        sent_count=row.sent_count,
        skipped_count=row.skipped_count,
        failed_count=row.failed_count,
        pending_count=max(row.total_recipients - done, 0),
        skip_reasons={str(k): int(v) for k, v in (row.skip_reasons or {}).items()},
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        snapshot_at=row.snapshot_at,
        resume_at=row.resume_at,
        paused_at=row.paused_at,
        completed_at=row.completed_at,
        cancelled_at=row.cancelled_at,
    )


class CampaignQuery(PageQuery):
    """Filters of the campaign list."""

    status: CampaignStatus | None = Field(default=None, description="Only this status.")


class CampaignPage(Page):
    """A page of campaigns, newest first."""

    campaigns: list[CampaignOut]
