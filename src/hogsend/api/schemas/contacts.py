"""Bodies of the contact routes (data plane ``/v1/contacts`` and admin ``/v1/admin/contacts``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import ConfigDict, Field

from hogsend.api.schemas.common import ApiModel, Text
from hogsend.api.schemas.events import (
    ConflictOut,
    CursorQuery,
    IdentityFields,
    JsonObject,
    StoredText,
)
from hogsend.core.contact import Contact
from hogsend.core.identity import MAX_EMAIL_LENGTH, MAX_ID_LENGTH


class ContactUpsert(IdentityFields):
    """Create, link or merge the contact the keys name, and patch its properties."""

    model_config = ConfigDict(extra="forbid")

    properties: JsonObject | None = Field(
        default=None, description="A shallow patch; a `null` value deletes the key."
    )
    lists: dict[StoredText, bool] | None = Field(
        default=None,
        description="List id → subscribed. Every id must be a list the app registers.",
    )


class ContactUpserted(ApiModel):
    """What the upsert did."""

    id: UUID = Field(description="The contact (the survivor, after a merge).")
    created: bool = Field(description="A new contact was created.")
    linked: bool = Field(description="A key was attached, or contacts were merged.")
    merged: bool = Field(description="Other contacts were folded into this one.")
    conflicts: list[ConflictOut] = Field(
        description="Given keys not applied: the contact holds another value there."
    )


class ContactDelete(IdentityFields):
    """Which contacts to delete, and how thoroughly."""

    model_config = ConfigDict(extra="forbid")

    erase: bool = Field(
        default=False,
        description="GDPR erasure: also wipe keys and properties and delete the events "
        "(see docs/events-and-identity.md). Default: a soft delete keeping history.",
    )


class ContactsDeleted(ApiModel):
    """The contacts deleted."""

    deleted: bool = Field(description="Always true (none matched is a 404).")
    contact_ids: list[UUID]
    erased: bool = Field(description="Whether the contacts were erased (GDPR).")


class FindContactsQuery(ApiModel):
    """Keys to look up (at least one); aliases of merged keys are followed."""

    model_config = ConfigDict(extra="forbid")

    email: Text | None = Field(default=None, max_length=MAX_EMAIL_LENGTH)
    user_id: Text | None = Field(default=None, max_length=MAX_ID_LENGTH)
    anonymous_id: Text | None = Field(default=None, max_length=MAX_ID_LENGTH)


class ContactOut(ApiModel):
    """A contact."""

    id: UUID
    external_id: str | None = Field(description="The `userId` you gave it.")
    email: str | None
    anonymous_id: str | None
    properties: dict[str, Any]
    first_seen_at: datetime | None
    last_seen_at: datetime | None
    created_at: datetime | None
    updated_at: datetime | None


class AdminContactOut(ContactOut):
    """A contact as the admin API shows it."""

    key: str = Field(description="The resolved key its history is stored under.")
    timezone: str | None


def contact_out(contact: Contact) -> ContactOut:
    """The public form of a contact."""
    return ContactOut(
        id=contact.id,
        external_id=contact.user_id,
        email=contact.email,
        anonymous_id=contact.anonymous_id,
        properties=dict(contact.properties),
        first_seen_at=contact.first_seen_at,
        last_seen_at=contact.last_seen_at,
        created_at=contact.created_at,
        updated_at=contact.updated_at,
    )


def admin_contact_out(contact: Contact) -> AdminContactOut:
    """The admin form of a contact."""
    return AdminContactOut(
        **contact_out(contact).model_dump(), key=contact.key, timezone=contact.timezone
    )


class FoundContacts(ApiModel):
    """Live contacts holding any of the keys (0 to 3)."""

    contacts: list[ContactOut]


class AdminContactQuery(CursorQuery):
    """Admin contact listing: newest first, optionally searched."""

    search: Text | None = Field(
        default=None,
        max_length=500,
        description="Substring of the email, userId or anonymousId (case-insensitive), "
        "or a whole contact id.",
    )


class AdminContactPage(ApiModel):
    """A page of contacts, newest first."""

    contacts: list[AdminContactOut]
    next_cursor: str | None


class AliasOut(ApiModel):
    """A key the contact still answers to (merged in, or promoted)."""

    kind: Literal["external", "email", "anonymous"]
    value: str
    reason: str = Field(description="`merge` or `promote`.")
    from_contact_id: UUID | None
    created_at: datetime


class ListSubscriptionOut(ApiModel):
    """The contact's explicit choice for one list."""

    list_id: str
    subscribed: bool
    source: str | None
    subscribed_at: datetime | None
    unsubscribed_at: datetime | None
    updated_at: datetime


class SuppressionOut(ApiModel):
    """The health of the contact's address."""

    suppressed: bool
    reason: str | None
    suppressed_at: datetime | None
    bounce_count: int
    complaint_count: int
    last_bounce_at: datetime | None
    last_complaint_at: datetime | None


class AdminContactDetail(ApiModel):
    """A contact with its aliases, list choices and email state."""

    contact: AdminContactOut
    aliases: list[AliasOut]
    lists: list[ListSubscriptionOut]
    unsubscribed_all: bool = Field(description="Globally unsubscribed from email.")
    unsubscribed_at: datetime | None
    suppression: SuppressionOut | None = Field(
        description="Bounce/complaint state of the address; null if it never bounced."
    )


class TimelineEntryOut(ApiModel):
    """One thing that happened to a contact."""

    kind: str = Field(
        description="`event`, `bucket_entered`, `bucket_left`, `journey`, `journey_step` or "
        "`email`."
    )
    at: datetime
    id: str = Field(description="The source row's id.")
    data: dict[str, Any]


class TimelinePage(ApiModel):
    """A page of the timeline, newest first."""

    entries: list[TimelineEntryOut]
    next_cursor: str | None
