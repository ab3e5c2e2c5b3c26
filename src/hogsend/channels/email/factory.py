"""Choose and build the provider the settings name."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hogsend.channels.email.message import EmailProvider
from hogsend.channels.email.pacing import PacedProvider
from hogsend.errors import ConfigurationError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from hogsend.settings import Settings


def build_provider(settings: Settings, engine: AsyncEngine | None = None) -> PacedProvider:
    """The provider of ``HOGSEND_EMAIL_PROVIDER``, paced by ``HOGSEND_EMAIL_RATE_PER_SECOND``.

    Args:
        settings: the process settings.
        engine: the async engine; required by the outbox provider.

    Raises:
        ConfigurationError: the outbox without an engine, Resend without a key.
    """
    inner: EmailProvider
    if settings.email_provider == "smtp":
        from hogsend.channels.email.smtp import SmtpProvider

        inner = SmtpProvider(
            host=settings.smtp_host,
            port=settings.smtp_port,
            tls=settings.smtp_tls,
            username=settings.smtp_username,
            password=(
                settings.smtp_password.get_secret_value() if settings.smtp_password else None
            ),
            pool_size=settings.smtp_pool_size,
            timeout=settings.smtp_timeout_seconds,
        )
    elif settings.email_provider == "resend":
        from hogsend.channels.email.resend import ResendProvider

        if settings.resend_api_key is None:
            raise ConfigurationError("HOGSEND_RESEND_API_KEY is required for the resend provider")
        inner = ResendProvider(
            api_key=settings.resend_api_key.get_secret_value(),
            base_url=settings.resend_base_url,
        )
    else:
        from hogsend.channels.email.outbox import OutboxProvider

        if engine is None:
            raise ConfigurationError("the outbox provider needs a database engine")
        inner = OutboxProvider(engine)
    return PacedProvider(inner, rate_per_second=settings.email_rate_per_second)
