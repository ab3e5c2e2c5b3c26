"""Bodies of the admin journeys API (``/v1/admin/journeys``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import ConfigDict, Field

from hogsend.api.schemas.common import ApiModel, Text
from hogsend.api.schemas.events import CursorQuery
from hogsend.db.repos.journeys import JourneyLogEntry, JourneyRun

RunStatus = Literal["enrolled", "active", "waiting", "completed", "exited", "failed"]


class JourneyOut(ApiModel):
    """One journey defined in code, its effective switch and its runs per status."""

    id: str
    name: str
    description: str
    trigger: str = Field(description="The event name the journey starts on.")
    entry_limit: str
    enabled: bool = Field(description="Effective: the admin override if set, else the code's.")
    enabled_in_code: bool
    enabled_override: bool | None = Field(description="The admin override (null = none).")
    counts: dict[str, int] = Field(description="Runs per status.")


class JourneyList(ApiModel):
    """Every journey of the app."""

    journeys: list[JourneyOut]


class JourneyRunQuery(CursorQuery):
    """Filters of the run listing; every given filter must match."""

    journey_id: Text | None = Field(default=None, max_length=200, description="One journey.")
    status: RunStatus | None = Field(default=None, description="One status.")
    contact_id: UUID | None = Field(default=None, description="One contact's runs.")


class JourneyRunOut(ApiModel):
    """One run (enrollment) of a journey."""

    id: UUID
    journey_id: str
    workflow_id: str
    contact_id: UUID
    user_id: str
    status: str
    entry_count: int
    current_step: str | None
    next_wake_at: datetime | None
    waiting_for_event: str | None
    exit_reason: str | None
    error_message: str | None
    trigger_event_id: UUID | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    exited_at: datetime | None
    failed_at: datetime | None
    retry_of: UUID | None = Field(
        default=None, description="The failed run this run retries (a dead-letter retry)."
    )
    retried_by: UUID | None = Field(
        default=None, description="The run a dead-letter retry of this failed run started."
    )


class JourneyRunPage(ApiModel):
    """A page of runs, newest first."""

    runs: list[JourneyRunOut]
    next_cursor: str | None


class JourneyStepOut(ApiModel):
    """One row of a run's step log."""

    id: int
    step: str | None
    action: str
    detail: dict[str, Any]
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None


class JourneyRunDetail(JourneyRunOut):
    """One run with its step log."""

    steps: list[JourneyStepOut]


class JourneySwitch(ApiModel):
    """Turn a journey on or off (null clears the override: the code's default applies)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool | None


def run_out(run: JourneyRun) -> JourneyRunOut:
    """The API shape of a run."""
    return JourneyRunOut(
        id=run.id,
        journey_id=run.journey_id,
        workflow_id=run.workflow_id,
        contact_id=run.contact_id,
        user_id=run.user_id,
        status=run.status,
        entry_count=run.entry_count,
        current_step=run.current_step,
        next_wake_at=run.next_wake_at,
        waiting_for_event=run.waiting_for_event,
        exit_reason=run.exit_reason,
        error_message=run.error_message,
        trigger_event_id=run.trigger_event_id,
        created_at=run.created_at,
        updated_at=run.updated_at,
        completed_at=run.completed_at,
        exited_at=run.exited_at,
        failed_at=run.failed_at,
        retry_of=(run.context.get("retry") or {}).get("of"),
        retried_by=run.context.get("retriedBy"),
    )


def step_out(entry: JourneyLogEntry) -> JourneyStepOut:
    """The API shape of a step log row."""
    return JourneyStepOut(
        id=entry.id,
        step=entry.step,
        action=entry.action,
        detail=dict(entry.detail),
        started_at=entry.started_at,
        finished_at=entry.finished_at,
        duration_ms=entry.duration_ms,
    )
