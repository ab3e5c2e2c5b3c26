"""Answers of ``/v1/admin/imports``: the dry-run report and an import job's progress."""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import Field

from hogsend.api.schemas.common import ApiModel
from hogsend.db.tables.imports import ImportJob


class LineError(ApiModel):
    """One rejected line of the file."""

    line: int = Field(description="1-based line number in the file (the header is line 1).")
    reason: str


class DryRunReport(ApiModel):
    """What an import would do; nothing was written."""

    dry_run: Literal[True] = True
    total_rows: int
    valid_rows: int
    failed_rows: int
    mapping: dict[str, str] = Field(description="Column → field used (CSV).")
    errors: list[LineError] = Field(description="The first 100 rejected lines.")


class ImportAccepted(ApiModel):
    """The import job was created; a worker imports it."""

    job_id: UUID
    status: Literal["pending"]


class ImportJobOut(ApiModel):
    """An import job and its progress."""

    id: UUID
    file_name: str | None
    format: str
    status: str
    total_rows: int | None
    processed_rows: int
    failed_rows: int
    created_contacts: int
    updated_contacts: int
    errors: list[LineError] = Field(description="The first 100 rejected lines.")
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


def job_out(job: ImportJob) -> ImportJobOut:
    """The API shape of a job row."""
    return ImportJobOut(
        id=job.id,
        file_name=job.file_name,
        format=job.format,
        status=job.status,
        total_rows=job.total_rows,
        processed_rows=job.processed_rows,
        failed_rows=job.failed_rows,
        created_contacts=job.created_contacts,
        updated_contacts=job.updated_contacts,
        errors=[LineError(line=e["line"], reason=e["reason"]) for e in job.errors or []],
        error=job.error,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
    )
