"""Bodies of POST /v1/admin/buckets/{id}/backfill."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hogsend.api.schemas.common import ApiModel


class BackfillRequested(ApiModel):
    """A backfill was asked for; a worker's next bucket sweep performs it."""

    bucket_id: str
    status: Literal["pending", "running"] = Field(
        description="`pending` until a worker claims it; `running` when a run was already "
        "in progress (it continues, nothing new is queued)."
    )
    processed: int = Field(description="Contacts the run in progress has looked at.")
    total: int | None = Field(description="Contacts the run in progress will look at.")
