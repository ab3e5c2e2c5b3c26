"""Email providers: one Protocol, SMTP / Resend / outbox implementations, pacing.

::

    provider = build_provider(settings, engine)      # paced, chosen by settings
    result = await provider.send(OutgoingEmail(...))  # ProviderResult or a ProviderError
    await provider.aclose()

A provider raises :class:`~hogsend.errors.TransientProviderError` for failures worth
retrying and :class:`~hogsend.errors.PermanentProviderError` for refusals; the mailer
records either in the send's decision row.
"""

from hogsend.channels.email.factory import build_provider as build_provider
from hogsend.channels.email.message import EmailProvider as EmailProvider
from hogsend.channels.email.message import OutgoingEmail as OutgoingEmail
from hogsend.channels.email.message import ProviderResult as ProviderResult
from hogsend.channels.email.outbox import OutboxProvider as OutboxProvider
from hogsend.channels.email.pacing import PacedProvider as PacedProvider
from hogsend.channels.email.pacing import TokenBucket as TokenBucket
from hogsend.channels.email.resend import ResendProvider as ResendProvider
from hogsend.channels.email.smtp import SmtpProvider as SmtpProvider

__all__ = [
    "EmailProvider",
    "OutboxProvider",
    "OutgoingEmail",
    "PacedProvider",
    "ProviderResult",
    "ResendProvider",
    "SmtpProvider",
    "TokenBucket",
    "build_provider",
]
