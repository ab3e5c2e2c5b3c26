"""Bodies of the admin suppression routes (``/v1/admin/suppressions``)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import ConfigDict, Field, field_validator

from hogsend.api.schemas.common import ApiModel, Text
from hogsend.api.schemas.events import CursorQuery
from hogsend.core.identity import MAX_EMAIL_LENGTH, normalize_email
from hogsend.db.repos.suppressions import SuppressionRecord

ReasonOut = Literal["hard_bounce", "soft_bounce", "complaint", "manual", "import"]
MAX_NOTE_LENGTH = 1000


class SuppressionOut(ApiModel):
    """One address's suppression state and delivery history."""

    email: str
    suppressed: bool = Field(description="Every send to this address is refused.")
    reason: ReasonOut | None = Field(description="Why it is suppressed (null when it is not).")
    suppressed_at: datetime | None
    bounce_count: int = Field(description="Bounces ever reported.")
    soft_bounce_streak: int = Field(description="Soft bounces since the last delivery.")
    complaint_count: int = Field(description="Spam complaints ever reported.")
    last_bounce_at: datetime | None
    last_bounce_type: str | None = Field(description="`hard`, `soft` or `message`.")
    last_complaint_at: datetime | None
    note: str | None
    created_at: datetime = Field(description="When the address first got a record.")
    updated_at: datetime


def suppression_out(record: SuppressionRecord) -> SuppressionOut:
    """The admin form of an address's row."""
    health = record.health
    return SuppressionOut(
        email=record.email,
        suppressed=health.suppressed,
        reason=health.reason,
        suppressed_at=health.suppressed_at,
        bounce_count=health.bounce_count,
        soft_bounce_streak=health.soft_bounce_streak,
        complaint_count=health.complaint_count,
        last_bounce_at=health.last_bounce_at,
        last_bounce_type=health.last_bounce_type,
        last_complaint_at=health.last_complaint_at,
        note=record.note,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


class SuppressionQuery(CursorQuery):
    """Filters of the suppression listing; every given filter must match."""

    status: Literal["suppressed", "unsuppressed", "all"] = Field(
        default="suppressed",
        description="`suppressed` (default), `unsuppressed` (bounces or complaints on record "
        "but sendable) or `all`.",
    )
    reason: ReasonOut | None = Field(default=None, description="Only this reason.")
    search: Text | None = Field(
        default=None,
        max_length=MAX_EMAIL_LENGTH,
        description="Part of the address, case-insensitive.",
    )


class SuppressionPage(ApiModel):
    """A page of addresses, newest record first."""

    suppressions: list[SuppressionOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page.")


class CreateSuppression(ApiModel):
    """Suppress one address by hand (reason `manual`)."""

    model_config = ConfigDict(extra="forbid")

    email: Text = Field(
        min_length=1,
        max_length=MAX_EMAIL_LENGTH,
        description="The address.",
        json_schema_extra={"format": "email"},
    )
    note: Text | None = Field(
        default=None, max_length=MAX_NOTE_LENGTH, description="Why (shown to other admins)."
    )

    @field_validator("email")
    @classmethod
    def _address(cls, value: str) -> str:
        email = normalize_email(value)
        if email is None:
            raise ValueError("is blank")
        return email


class SuppressionChange(ApiModel):
    """The address after an add or remove."""

    suppression: SuppressionOut
    changed: bool = Field(
        description="False when it was already in the requested state (nothing changed "
        "but the note)."
    )


class ImportLineError(ApiModel):
    """One refused line of an import."""

    line: int = Field(description="1-based line number in the file.")
    field: Literal["email", "reason", "note", "line"]
    value: str | None = Field(description="The refused value (cut to 200 characters).")
    message: str


class ImportReport(ApiModel):
    """What a CSV import did."""

    received: int = Field(description="Data rows read (blank lines and the header excluded).")
    suppressed: int = Field(description="Addresses suppressed by this import.")
    already_suppressed: int = Field(description="Valid addresses that were suppressed already.")
    duplicates: int = Field(description="Rows repeating an address of an earlier row.")
    invalid: int = Field(description="Rows refused; see `errors`.")
    errors: list[ImportLineError] = Field(description="The refused rows (at most 1,000).")
    errors_truncated: bool = Field(description="More rows were refused than `errors` lists.")
