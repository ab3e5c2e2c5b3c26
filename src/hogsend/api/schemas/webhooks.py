"""Bodies of the provider webhooks (``/v1/webhooks/*``)."""

from __future__ import annotations

from typing import Literal
from uuid import UUID

from pydantic import ConfigDict, Field, field_validator

from hogsend.api.schemas.common import ApiModel, IsoDateTime, Text
from hogsend.core.identity import MAX_EMAIL_LENGTH, normalize_email

GenericType = Literal[
    "email.delivered", "email.bounced", "email.complained", "email.delivery_delayed"
]


class GenericReport(ApiModel):
    """One delivery report for ``POST /v1/webhooks/generic`` (SMTP setups, other providers).

    Name the message with ``sendId`` (the `X-Hogsend-Send-Id` header every message
    carries) or ``messageId`` (+ ``provider``), and/or the recipient with ``email``.
    """

    model_config = ConfigDict(extra="forbid")

    type: GenericType = Field(description="What happened to the message.")
    email: Text | None = Field(
        default=None,
        max_length=MAX_EMAIL_LENGTH,
        description="The recipient; the address whose health changes.",
    )
    send_id: UUID | None = Field(
        default=None, description="hogsend's send id (the message's `X-Hogsend-Send-Id`)."
    )
    message_id: Text | None = Field(
        default=None,
        min_length=1,
        max_length=998,
        description="The provider's message id (for SMTP, the `Message-ID` header).",
    )
    provider: Text | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Whose message id `messageId` is (`smtp`, `resend` ...); default: any.",
    )
    bounce_type: Literal["hard", "soft", "message"] | None = Field(
        default=None,
        description="Required for `email.bounced`: `hard` (the address does not exist), "
        "`soft` (it may recover) or `message` (this message was refused, the address is fine).",
    )
    reason: Text | None = Field(
        default=None, max_length=1000, description="The provider's explanation."
    )
    occurred_at: IsoDateTime | None = Field(
        default=None, description="When it happened (default: when it was received)."
    )

    @field_validator("email")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        return normalize_email(value)


class WebhookAck(ApiModel):
    """What a webhook delivery did."""

    ok: bool = Field(default=True, description="Always true: the delivery was accepted.")
    duplicate: bool = Field(
        default=False, description="This delivery id was seen before; nothing changed."
    )
    ignored: bool = Field(
        default=False, description="A type hogsend does not act on (opened, clicked, sent ...)."
    )
    type: str = Field(description="The report's type, as sent.")
    send_id: UUID | None = Field(default=None, description="The send it was matched to.")
    email: str | None = Field(default=None, description="The address it was about.")
    suppressed: bool | None = Field(
        default=None, description="Whether that address is suppressed now."
    )
    event_id: UUID | None = Field(
        default=None, description="The `email.*` event stored for the recipient's contact."
    )
