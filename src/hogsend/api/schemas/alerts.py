"""Bodies of /v1/admin/alerts/*."""

from __future__ import annotations

import math
import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from hogsend.api.schemas.common import ApiModel, Page, PageQuery, Text

RuleType = Literal[
    "bounce_rate_exceeded",
    "high_complaint_rate",
    "dispatcher_lag",
    "journey_failure_spike",
    "worker_down",
]
Channel = Literal["email", "webhook"]
MAX_MINUTES = 10_080  # a week


class ChannelConfig(ApiModel):
    """Where notifications go: `to` (+ optional `template`, default `alert`) for email,
    `url` + `secret` (`whsec_<base64>`, Standard Webhooks) for webhook."""

    model_config = ConfigDict(extra="forbid")

    to: Text | None = Field(default=None, max_length=320, description="Email: the address.")
    template: Text | None = Field(
        default=None, max_length=200, description="Email: the template key (default `alert`)."
    )
    url: Text | None = Field(default=None, max_length=2000, description="Webhook: http(s) URL.")
    secret: Text | None = Field(
        default=None, max_length=200, description="Webhook: signing secret (never returned)."
    )


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class AlertRuleIn(ApiModel):
    """A new rule. `threshold` is a share (0..1) for the rate types, seconds for
    `dispatcher_lag`, failed runs for `journey_failure_spike`, and the least number of
    live workers for `worker_down`."""

    model_config = ConfigDict(extra="forbid")

    name: Text = Field(min_length=1, max_length=200)
    type: RuleType
    threshold: float = Field(ge=0, le=1_000_000_000)
    window_minutes: int = Field(default=60, ge=1, le=MAX_MINUTES)
    min_volume: int = Field(
        default=20, ge=0, le=1_000_000_000, description="Rates: least messages sent in the window."
    )
    channel: Channel
    channel_config: ChannelConfig
    cooldown_minutes: int = Field(
        default=60, ge=1, le=MAX_MINUTES, description="Least time between two notifications."
    )
    enabled: bool = True

    _threshold = field_validator("threshold")(_finite)


class AlertRulePatch(ApiModel):
    """Fields to change; `type` and `channel` are fixed once created."""

    model_config = ConfigDict(extra="forbid")

    name: Text | None = Field(default=None, min_length=1, max_length=200)
    threshold: float | None = Field(default=None, ge=0, le=1_000_000_000)
    window_minutes: int | None = Field(default=None, ge=1, le=MAX_MINUTES)
    min_volume: int | None = Field(default=None, ge=0, le=1_000_000_000)
    channel_config: ChannelConfig | None = None
    cooldown_minutes: int | None = Field(default=None, ge=1, le=MAX_MINUTES)
    enabled: bool | None = None

    @field_validator("threshold")
    @classmethod
    def _finite_threshold(cls, value: float | None) -> float | None:
        return None if value is None else _finite(value)


class AlertRuleOut(ApiModel):
    """A rule, its firing state and its last evaluation (the webhook secret is omitted)."""

    id: uuid.UUID
    name: str
    type: str
    threshold: float
    window_minutes: int
    min_volume: int
    channel: str
    channel_config: dict[str, Any]
    enabled: bool
    cooldown_minutes: int
    firing: bool
    firing_since: datetime | None
    last_fired_at: datetime | None = Field(description="When it last notified.")
    last_evaluated_at: datetime | None
    last_value: float | None
    created_at: datetime
    updated_at: datetime


class AlertRulePage(Page):
    """Rules newest first."""

    rules: list[AlertRuleOut]


class AlertHistoryQuery(PageQuery):
    """History filters."""

    rule_id: uuid.UUID | None = None


class AlertDeliveryOut(ApiModel):
    """One notification attempt."""

    id: uuid.UUID
    rule_id: uuid.UUID
    payload: dict[str, Any] | None
    delivery_status: Literal["sent", "failed"]
    error: str | None
    created_at: datetime


class AlertHistoryPage(Page):
    """Notification attempts newest first."""

    history: list[AlertDeliveryOut]


class DeletedAlertRule(ApiModel):
    """The answer of a delete."""

    deleted: bool
