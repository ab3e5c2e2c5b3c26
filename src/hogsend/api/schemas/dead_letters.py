"""Bodies of /v1/admin/dlq."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import Field

from hogsend.api.schemas.common import ApiModel, Page, PageQuery, Text

DeadLetterStatus = Literal["pending", "retried", "discarded"]


class DeadLetterOut(ApiModel):
    """Work that failed past its retries."""

    id: UUID
    source: str = Field(
        description="What gave up: `dispatcher` for events, `journey` for a journey run "
        "whose replay diverged from edited code."
    )
    source_id: str | None = Field(description="The failed item; for `dispatcher`, the event id.")
    payload: dict[str, Any] = Field(
        description="What is needed to understand and retry it. For `dispatcher`: the event "
        "(`eventId`, `event`, `contactId`, `properties`, ...), the failing `consumer`, the "
        "`consumersDone` before it, and the `traceback`."
    )
    error: str = Field(description="The last error, `<consumer>: <exception>: <message>`.")
    attempts: int = Field(description="Attempts made before giving up.")
    status: DeadLetterStatus = Field(
        description="`pending` until an operator retries or discards it."
    )
    retried_at: datetime | None
    resolved_at: datetime | None = Field(description="When it was retried or discarded.")
    created_at: datetime
    updated_at: datetime


class DeadLetterQuery(PageQuery):
    """Filters of the dead-letter listing; every given filter must match."""

    source: Text | None = Field(
        default=None, max_length=200, description="Exact, e.g. `dispatcher`."
    )
    status: DeadLetterStatus | None = Field(default=None)


class DeadLetterPage(Page):
    """A page of dead-letter entries, newest first."""

    entries: list[DeadLetterOut]


class RetriedDeadLetter(ApiModel):
    """Outcome of a retry: the work is back in line."""

    retried: bool
    run_id: UUID | None = Field(
        default=None,
        description="For a `journey` entry: the new run, started from the beginning under "
        "the current code (`GET /v1/admin/journeys/runs/{runId}`).",
    )
    workflow_id: str | None = Field(
        default=None, description="For a `journey` entry: the new run's workflow id."
    )


class DiscardedDeadLetter(ApiModel):
    """Outcome of a discard."""

    discarded: bool
