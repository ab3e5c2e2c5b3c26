"""The SMTP provider: aiosmtplib with a small pool of reused, authenticated connections."""

from __future__ import annotations

import asyncio
import ssl
from email.message import EmailMessage
from email.utils import formatdate
from typing import Literal

import aiosmtplib

from hogsend.channels.email.message import OutgoingEmail, ProviderResult
from hogsend.errors import PermanentProviderError, ProviderError, TransientProviderError

TlsMode = Literal["none", "starttls", "tls"]
# Headers we set ourselves; a caller's copy of one of these would make a duplicate.
_OWN_HEADERS = frozenset({"from", "to", "subject", "reply-to", "message-id", "date"})


def build_mime(message: OutgoingEmail) -> EmailMessage:
    """The MIME message: multipart/alternative (text first, then HTML) when both exist."""
    mime = EmailMessage()
    mime["From"] = message.from_email
    mime["To"] = message.to
    mime["Subject"] = message.subject
    if message.reply_to:
        mime["Reply-To"] = message.reply_to
    mime["Date"] = formatdate(localtime=False, usegmt=True)
    mime["Message-ID"] = message.message_id()
    for name, value in message.headers.items():
        if name.lower() in _OWN_HEADERS:
            continue
        mime[name] = value
    if message.text is not None:
        mime.set_content(message.text, subtype="plain", charset="utf-8")
        if message.html is not None:
            mime.add_alternative(message.html, subtype="html", charset="utf-8")
    elif message.html is not None:
        mime.set_content(message.html, subtype="html", charset="utf-8")
    return mime


class SmtpProvider:
    """Send through an SMTP server, reusing up to ``pool_size`` connections.

    Args:
        host: server host.
        port: server port (587 for STARTTLS, 465 for implicit TLS, 25 for none).
        tls: ``none``, ``starttls`` or ``tls``.
        username: AUTH user; no AUTH when None.
        password: AUTH password.
        pool_size: most connections open at once (and most concurrent sends).
        timeout: seconds for connecting and for each command.
        tls_context: the SSL context (e.g. trusting a private CA); default: system CAs.

    Replies 4xx, lost connections and timeouts raise TransientProviderError; 5xx replies
    (535: bad credentials) and setups no retry can fix (no STARTTLS or AUTH on the
    server, an unverifiable certificate, TLS to a plain port) raise
    PermanentProviderError. A connection that failed is closed, never reused.
    """

    name = "smtp"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        tls: TlsMode = "starttls",
        username: str | None = None,
        password: str | None = None,
        pool_size: int = 4,
        timeout: float = 30.0,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.host = host
        self.port = port
        self.tls = tls
        self.username = username
        self.password = password
        self.pool_size = pool_size
        self.timeout = timeout
        self.tls_context = tls_context
        self._idle: list[aiosmtplib.SMTP] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._closed = False
        self.connections_opened = 0

    async def _connect(self) -> aiosmtplib.SMTP:
        client = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            use_tls=self.tls == "tls",
            start_tls=self.tls == "starttls",
            tls_context=self.tls_context,
            timeout=self.timeout,
        )
        await client.connect()
        self.connections_opened += 1
        try:
            if self.username is not None:
                await client.login(self.username, self.password or "")
        except BaseException:
            client.close()
            raise
        return client

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        """Deliver ``message``; retries once on a fresh connection if a reused one died."""
        if self._closed:
            raise RuntimeError("the SMTP provider is closed")
        mime = build_mime(message)
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            if client is not None and not client.is_connected:
                client = None
            reused = client is not None
            try:
                if client is None:
                    client = await self._connect()
                try:
                    await client.send_message(mime, recipients=[message.to])
                except aiosmtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    # The server dropped an idle connection: one more try on a new one.
                    client.close()
                    client = await self._connect()
                    await client.send_message(mime, recipients=[message.to])
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                if client is not None:
                    client.close()
                raise _classify(exc, username=self.username) from exc
            except BaseException:
                if client is not None:
                    client.close()
                raise
            self._idle.append(client)
        return ProviderResult(provider=self.name, message_id=str(mime["Message-ID"]))

    async def aclose(self) -> None:
        """Say QUIT on every idle connection."""
        self._closed = True
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


def _classify(exc: BaseException, *, username: str | None = None) -> ProviderError:
    """Transient (retry later) or permanent (retrying cannot help), with a clear message.

    Codes decide first: 4xx transient, 5xx permanent. Without a code, lost connections
    and timeouts are transient, while what only new settings can fix is permanent: the
    server lacks STARTTLS or AUTH, the certificate does not verify, or TLS spoke to a
    plain port.
    """
    code: int | None = None
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        code = exc.recipients[0].code
        text = exc.recipients[0].message
    elif isinstance(exc, aiosmtplib.SMTPResponseException):
        code = exc.code
        text = exc.message
    else:
        text = str(exc) or type(exc).__name__
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        who = f" as {username!r}" if username is not None else ""
        text = (
            f"authentication{who} refused ({text}); "
            "check HOGSEND_SMTP_USERNAME and HOGSEND_SMTP_PASSWORD"
        )
    if code is not None and 500 <= code < 600:
        return PermanentProviderError(f"SMTP {code}: {text}", provider="smtp", status=code)
    if code is None and _needs_new_settings(exc):
        return PermanentProviderError(
            f"SMTP setup: {text} (check HOGSEND_SMTP_TLS, HOGSEND_SMTP_PORT and the "
            "credentials: 465 is usually tls, 587 starttls)",
            provider="smtp",
        )
    label = f"SMTP {code}: {text}" if code is not None else f"SMTP connection: {text}"
    return TransientProviderError(label, provider="smtp", status=code)


def _needs_new_settings(exc: BaseException) -> bool:
    # aiosmtplib raises the bare base class for a missing STARTTLS or AUTH extension.
    if type(exc) is aiosmtplib.SMTPException or isinstance(exc, aiosmtplib.SMTPNotSupported):
        return True
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return True
    return isinstance(cause, ssl.SSLError) and cause.reason == "WRONG_VERSION_NUMBER"
