"""Bodies of the list routes (``/v1/lists``) and of the admin preferences route."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import ConfigDict, Field

from hogsend.api.schemas.common import ApiModel
from hogsend.api.schemas.events import IdentityFields, StoredText


class ListOut(ApiModel):
    """A list the app registers, with how many contacts a send to it reaches now."""

    id: str
    name: str
    description: str
    default_opt_in: bool = Field(
        description="True: everyone is subscribed until they unsubscribe. False: only "
        "contacts who subscribed explicitly."
    )
    subscriber_count: int = Field(
        description="Live contacts with an address, not unsubscribed from all email, not "
        "suppressed, and subscribed under the list's default."
    )


class ListsOut(ApiModel):
    """Every registered list, in registration order."""

    lists: list[ListOut]


class ListMembershipIn(IdentityFields):
    """Whose subscription to change: `contactId`, or the keys of `PUT /v1/contacts`."""

    model_config = ConfigDict(extra="forbid")

    contact_id: UUID | None = Field(
        default=None,
        description="An existing contact (a merged one is followed to its survivor). "
        "Not together with userId, email or anonymousId.",
    )


class ListMembershipOut(ApiModel):
    """The contact's choice for the list after the request."""

    list: str = Field(description="The list id.")
    subscribed: bool = Field(description="The contact's explicit choice, now.")
    contact_id: UUID = Field(description="The contact (created when the keys named nobody).")
    unsubscribed_all: bool = Field(
        description="The contact unsubscribed from all email: a list subscription does not "
        "take that back, so nothing but transactional email reaches it."
    )


class PreferencesIn(ApiModel):
    """A change to a contact's preferences; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    unsubscribed_all: bool | None = Field(
        default=None, description="Unsubscribe from (true) or resubscribe to (false) all email."
    )
    lists: dict[StoredText, bool] | None = Field(
        default=None,
        description="List id → subscribed. Every id must be a list the app registers.",
    )


class ListPreferenceOut(ApiModel):
    """One list as the contact's preferences see it."""

    id: str
    name: str
    subscribed: bool = Field(description="Whether a send to the list passes its list check.")
    choice: bool | None = Field(description="The explicit choice; null: the list's default.")


class PreferencesOut(ApiModel):
    """A contact's email preferences."""

    contact_id: UUID
    email: str | None
    unsubscribed_all: bool
    unsubscribed_at: datetime | None
    resubscribed_at: datetime | None
    lists: list[ListPreferenceOut]
