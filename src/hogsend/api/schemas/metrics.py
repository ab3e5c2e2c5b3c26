"""Bodies of /v1/admin/metrics/*."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from hogsend.api.schemas.common import ApiModel


class DispatcherMetrics(ApiModel):
    """The event outbox as the dispatchers see it."""

    pending: int = Field(description="Events not processed yet, including those retrying.")
    leased: int = Field(description="Pending events claimed by a dispatcher right now.")
    retrying: int = Field(description="Pending events that failed at least once.")
    dead: int = Field(description="Events that gave up and wait in the dead-letter queue.")
    oldest_pending_at: datetime | None = Field(
        description="When the oldest pending event was stored."
    )
    lag_seconds: float = Field(description="Age of the oldest pending event; 0 when none.")
    lag_threshold_seconds: float = Field(
        description="HOGSEND_DISPATCHER_LAG_THRESHOLD_SECONDS: more lag degrades /v1/health."
    )
    lagging: bool = Field(description="Whether `lagSeconds` exceeds the threshold.")
    processed_last_minute: int = Field(description="Events processed in the last minute.")
    processed_last_hour: int = Field(
        description="Events processed in the last hour (at most the retention period)."
    )
