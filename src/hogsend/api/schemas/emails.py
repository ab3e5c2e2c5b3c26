"""Bodies of ``POST /v1/emails`` (the transactional API) and the admin test send.

Every address field is checked where it is read: a recipient with the identity rules
(:func:`~hogsend.core.identity.normalize_email`), ``from`` and ``replyTo`` as mailboxes
(``Name <user@example.com>``) with no line breaks, so nothing a caller sends can add a
header to the message.
"""

from __future__ import annotations

from email.utils import getaddresses
from typing import Annotated, Literal
from uuid import UUID

from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
)

from hogsend.api.schemas.common import ApiModel
from hogsend.api.schemas.events import IdempotencyKey, JsonObject, StoredText
from hogsend.api.schemas.sends import DecisionOut
from hogsend.core.identity import (
    MAX_EMAIL_LENGTH,
    MAX_ID_LENGTH,
    IdentityError,
    normalize_email,
    normalize_id,
)

MAX_SUBJECT_LENGTH = 998
"""RFC 5322's limit on a header line."""
MAX_MAILBOX_LENGTH = 320
MAX_REPLY_TO = 10


def _no_line_breaks(value: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("cannot contain line breaks or other control characters")
    return value


def _mailbox(value: str) -> str:
    value = _no_line_breaks(value.strip())
    found = getaddresses([value])
    if len(found) != 1 or not found[0][1]:
        raise ValueError("must be one address: user@example.com or Name <user@example.com>")
    address = found[0][1]
    try:
        normalized = normalize_email(address)
    except IdentityError as exc:
        raise ValueError(exc.reason) from None
    if normalized is None:
        raise ValueError("must be one address: user@example.com or Name <user@example.com>")
    return value


HeaderText = Annotated[StoredText, AfterValidator(_no_line_breaks)]
"""Text that goes into a header: no CR, LF or other control characters."""
Mailbox = Annotated[StoredText, Field(max_length=MAX_MAILBOX_LENGTH), AfterValidator(_mailbox)]
"""One address, optionally with a display name: ``Acme <hello@acme.io>``."""


def _listed(value: object) -> object:
    return [value] if isinstance(value, str) else value


_MAILBOX_SCHEMA = {"type": "string", "maxLength": MAX_MAILBOX_LENGTH}
ReplyTo = Annotated[
    list[Mailbox],
    BeforeValidator(_listed),
    Field(min_length=1, max_length=MAX_REPLY_TO),
    WithJsonSchema(
        {
            "anyOf": [
                _MAILBOX_SCHEMA,
                {
                    "type": "array",
                    "items": _MAILBOX_SCHEMA,
                    "minItems": 1,
                    "maxItems": MAX_REPLY_TO,
                },
            ]
        }
    ),
]
"""One mailbox or a list of them (a single one is read as a list of one)."""
Category = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="A list id or category: letters, digits, `-` and `_`.",
    ),
]


def _recipient(value: str | None) -> str | None:
    """A recipient address as stored (trimmed, domain lower-cased); blank is absent."""
    try:
        return normalize_email(value)
    except IdentityError as exc:
        raise ValueError(exc.reason) from None


class EmailIn(ApiModel):
    """One transactional email to one person, from a template."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"to": "ada@example.com", "template": "welcome", "props": {"name": "Ada"}},
                {
                    "userId": "user-42",
                    "template": "receipt",
                    "props": {"amount": 42},
                    "replyTo": "Support <help@example.com>",
                    "idempotencyKey": "order-1234-receipt",
                },
            ]
        },
    )

    to: StoredText | None = Field(
        default=None,
        max_length=MAX_EMAIL_LENGTH,
        description="Where the message goes. Without it, the address of the contact "
        "`userId` names.",
    )
    user_id: StoredText | None = Field(
        default=None,
        max_length=MAX_ID_LENGTH,
        description="Whose message it is: the contact (by your id) the send is logged "
        "under, and whose address is used when `to` is absent.",
    )
    template: StoredText = Field(
        min_length=1, max_length=64, description="The template key, e.g. `password-reset`."
    )
    props: JsonObject = Field(
        default_factory=dict,
        description="The template's props; checked against its props model when it has one.",
    )
    from_: Mailbox | None = Field(
        default=None, alias="from", description="The From header; default `HOGSEND_EMAIL_FROM`."
    )
    subject: HeaderText | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SUBJECT_LENGTH,
        description="A literal subject replacing the template's.",
    )
    reply_to: ReplyTo | None = Field(
        default=None, description="The Reply-To header: one address or a list of up to 10."
    )
    category: Category | None = Field(
        default=None,
        description="Default: the template's. Without one, or `transactional`, the send "
        "is transactional; any other category makes it a marketing send to that list or "
        "category (see docs/email.md).",
    )
    idempotency_key: IdempotencyKey | None = None
    skip_preference_check: bool = Field(
        default=False,
        description="Needs a `full-admin` key: treat the send as transactional whatever "
        "its category. Suppressed addresses are never sent to.",
    )

    @field_validator("to")
    @classmethod
    def _check_to(cls, value: str | None) -> str | None:
        return _recipient(value)

    @field_validator("user_id")
    @classmethod
    def _check_user_id(cls, value: str | None) -> str | None:
        try:
            return normalize_id(value)
        except IdentityError as exc:
            raise ValueError(exc.reason) from None

    def reply_to_header(self) -> str | None:
        """The Reply-To header's value."""
        return ", ".join(self.reply_to) if self.reply_to else None


EmailStatus = Literal[
    "queued",
    "sent",
    "delivered",
    "opened",
    "clicked",
    "bounced",
    "complained",
    "failed",
    "suppressed",
    "unsubscribed",
    "skipped",
]


class EmailAccepted(ApiModel):
    """What became of the request: handed to a worker, or stopped by a gate."""

    email_send_id: UUID = Field(
        description="The send (its decision row); for a repeated idempotency key, the "
        "original send."
    )
    status: EmailStatus = Field(
        description="`queued`: passed every gate, a worker delivers it; `suppressed`, "
        "`unsubscribed`, `skipped`: stopped by a gate (see `decision`). For a repeated key, "
        "the original's delivery status (`queued`, `sent`, `delivered`, `failed` ...)."
    )
    decision: DecisionOut = Field(
        description="The mailer's reason code (docs/email.md); for a repeated key, the original's."
    )
    duplicate: bool | None = Field(
        default=None, description="`true` when the idempotency key was used before."
    )


class SendTestIn(ApiModel):
    """A test send of a template to one address."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"to": "qa@example.com", "props": {"name": "Ada"}}]},
    )

    to: StoredText = Field(max_length=MAX_EMAIL_LENGTH, description="Where the test goes.")
    props: JsonObject | None = Field(
        default=None, description="Props; default: the template's example props."
    )
    contact_id: UUID | None = Field(
        default=None, description="Render for this contact (the message still goes to `to`)."
    )

    @field_validator("to")
    @classmethod
    def _check_to(cls, value: str) -> str:
        address = _recipient(value)
        if address is None:
            raise ValueError("must be an email address")
        return address


class SendTestOut(ApiModel):
    """The outcome of a test send (made at once, not handed to a worker)."""

    email_send_id: UUID
    status: Literal["sent", "failed", "skipped"] = Field(
        description="`skipped` when a gate stopped it (a suppressed address)."
    )
    decision: DecisionOut
    subject: str | None = Field(description="The subject as sent, with its `[Test]` prefix.")
    error: str | None = Field(default=None, description="The provider's error, if it failed.")
