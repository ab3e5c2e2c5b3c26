"""What the mailer hands a provider, what it gets back, and the Protocol between them."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from email.utils import make_msgid, parseaddr
from typing import Protocol, runtime_checkable
from uuid import UUID

from hogsend.core.slot_init import slot_init


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingEmail:
    """One fully rendered message for one recipient.

    Attributes:
        from_email: the From header (``Name <addr>`` or a bare address).
        to: the recipient's address.
        subject: the Subject header.
        html: the HTML part (None for a text-only message).
        text: the plain-text part (None for an HTML-only message).
        reply_to: the Reply-To header.
        headers: extra headers, passed through verbatim (List-Unsubscribe,
            List-Unsubscribe-Post, X-Hogsend-Original-To in test mode ...).
        idempotency_key: the send's key; providers that support one (Resend) get it,
            and SMTP derives the Message-ID from it so a resend carries the same id.
        tags: name/value labels for providers that support them (Resend tags).
        email_send_id: the ``email_sends`` row this message belongs to, if any.
    """

    from_email: str
    to: str
    subject: str
    html: str | None = None
    text: str | None = None
    reply_to: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    email_send_id: UUID | None = None

    def __post_init__(self) -> None:
        if self.html is None and self.text is None:
            raise ValueError("an email needs an HTML part, a text part or both")

    def message_id(self) -> str:
        """The Message-ID header: stable for an idempotency key, random otherwise."""
        domain = _message_id_domain(self.from_email)
        if self.idempotency_key is None:
            return make_msgid(domain=domain)
        digest = hashlib.sha256(self.idempotency_key.encode()).hexdigest()[:32]
        return f"<{digest}@{domain}>"


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class ProviderResult:
    """A provider accepted a message.

    Attributes:
        provider: ``smtp``, ``resend`` or ``outbox``.
        message_id: the provider's id for it (Resend id, SMTP Message-ID, outbox row id),
            which delivery webhooks later refer to.
        accepted: whether the provider took it (False only for fakes that drop).
        waited_seconds: time pacing held the message back (rate limit and back-off).
        attempts: provider calls made, counting retries after a ``retry_after``.
    """

    provider: str
    message_id: str
    accepted: bool = True
    waited_seconds: float = 0.0
    attempts: int = 1


@runtime_checkable
class EmailProvider(Protocol):
    """Something that delivers an :class:`OutgoingEmail`.

    ``send`` returns a :class:`ProviderResult` or raises
    :class:`~hogsend.errors.TransientProviderError` (retry later, maybe after
    ``retry_after`` seconds) or :class:`~hogsend.errors.PermanentProviderError`.
    """

    name: str

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        """Deliver one message."""
        ...

    async def aclose(self) -> None:
        """Release connections; the provider is not used afterwards."""
        ...


class GateClosed(Exception):
    """A gated send stopped before the provider could accept its message (see :func:`send_when`)."""

    def __init__(self) -> None:
        super().__init__("the message was not sent: its gate closed")


async def send_when(
    provider: EmailProvider, message: OutgoingEmail, gate: Awaitable[bool]
) -> ProviderResult:
    """Send ``message``, letting the provider accept it only once ``gate`` gives True.

    A provider with a ``send_gated(message, gate)`` method does what it can before
    awaiting ``gate`` (SMTP: the envelope and the message, all but the line that ends
    it); any other is called after. ``gate`` must be awaitable more than once (a future
    or task). The batch path's lanes gate each message on the commit of the lane's
    previous outcome, so the provider's round trips overlap that commit while a lane
    still never has more than one accepted message unrecorded.

    Raises:
        GateClosed: ``gate`` gave False; the provider accepted nothing.
    """
    staged = getattr(provider, "send_gated", None)
    if staged is not None:
        result: ProviderResult = await staged(message, gate)
        return result
    if not await gate:
        raise GateClosed()
    return await provider.send(message)


@functools.lru_cache(maxsize=256)
def _message_id_domain(from_email: str) -> str:
    # Cached: parsing the From header costs more than the rest of the Message-ID.
    return parseaddr(from_email)[1].rpartition("@")[2] or "hogsend.local"
