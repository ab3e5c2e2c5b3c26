"""Bodies of /v1/admin/buckets."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import ConfigDict, Field, StrictBool

from hogsend.api.schemas.common import ApiModel, Text
from hogsend.api.schemas.events import CursorQuery


class BucketReactionOut(ApiModel):
    """A reaction registered in code (run by the journeys feature)."""

    kind: Literal["enter", "leave", "dwell"]
    event: str = Field(description="The transition event that triggers it.")
    journey_id: str = Field(description="The id of the journey it runs as.")
    label: str | None = Field(default=None, description="Dwell schedules only.")
    after_seconds: float | None = None
    every_seconds: float | None = None


class TransitionOut(ApiModel):
    """A stored transition event."""

    event_id: UUID
    kind: str = Field(description="`entered` or `left`.")
    contact_id: UUID
    user_id: str = Field(description="The contact's resolved key when it happened.")
    occurred_at: datetime
    properties: dict[str, Any]


class BucketOut(ApiModel):
    """A bucket defined in code, with its admin state and current size."""

    id: str
    name: str
    description: str
    kind: Literal["criteria", "manual"]
    criteria: dict[str, Any] | None = Field(description="The JSON form of the criteria.")
    enabled: bool = Field(description="Whether it runs now (the override, else the code's).")
    enabled_in_code: bool
    enabled_override: bool | None = Field(description="The admin override; null = none.")
    time_based: bool
    min_dwell_seconds: float | None
    max_dwell_seconds: float | None
    fast_expiry: bool
    entry_limit: int | None
    member_count: int = Field(description="Active members (live contacts).")
    reactions: list[BucketReactionOut]
    recent_transitions: list[TransitionOut] = Field(description="Latest first, up to 10.")


class BucketList(ApiModel):
    """Every bucket of the app, in registration order."""

    buckets: list[BucketOut]


class BucketPatch(ApiModel):
    """Change a bucket's admin state."""

    model_config = ConfigDict(extra="forbid")

    enabled: StrictBool | None = Field(
        description="true / false overrides the code's `enabled`; null removes the override."
    )


class MembershipOut(ApiModel):
    """One stay of a contact in a bucket."""

    id: UUID
    bucket_id: str
    contact_id: UUID
    user_id: str = Field(description="The contact's resolved key when the row was written.")
    email: str | None
    status: Literal["active", "left"]
    entered_at: datetime
    left_at: datetime | None
    left_reason: str | None
    epoch: int = Field(description="1 for the contact's first stay in the bucket, then 2, ...")
    source: str | None
    max_dwell_at: datetime | None


class MemberQuery(CursorQuery):
    """Filters of a bucket's member listing."""

    status: Literal["active", "left"] = Field(default="active")
    user_id: Text | None = Field(
        default=None, max_length=512, description="Only this contact (its userId or any key)."
    )
    contact_id: UUID | None = Field(default=None, description="Only this contact.")


class MemberPage(ApiModel):
    """A page of memberships, newest stay first."""

    members: list[MembershipOut]
    next_cursor: str | None


class ContactMemberships(ApiModel):
    """Every stay of one contact, newest first."""

    memberships: list[MembershipOut]


class MemberAdd(ApiModel):
    """Add a contact to a manual bucket."""

    model_config = ConfigDict(extra="forbid")

    contact_id: UUID


class MemberRemoved(ApiModel):
    """Outcome of a removal."""

    removed: bool


class PreviewQuery(ApiModel):
    """A criteria to try; nothing is saved."""

    model_config = ConfigDict(extra="forbid")

    criteria: Text = Field(
        max_length=65_536,
        description="The condition's JSON form (docs/conditions.md).",
        examples=['{"type": "event", "event": "signed_up", "check": "exists"}'],
    )
    sample: int = Field(default=10, ge=0, le=100, description="How many matches to show.")


class PreviewContact(ApiModel):
    """A contact matching a previewed criteria."""

    contact_id: UUID
    user_id: str | None
    email: str | None


class PreviewOut(ApiModel):
    """How many live contacts match the criteria now, and a few of them."""

    count: int
    sample: list[PreviewContact]
