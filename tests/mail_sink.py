"""A real SMTP server (aiosmtpd) that keeps what it receives: the mail sink of the tests.

Tests that send email point the SMTP provider at :func:`running_sink`'s port and read
``Sink.messages`` afterwards. ``Sink.script`` lets a test make the server answer the next
DATA commands with a reply of its choosing (a 451 to exercise retries, a 550 for a
permanent failure) before it goes back to accepting.
"""

from __future__ import annotations

import email
import email.policy
import socket
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

# The one login the secured servers accept.
SMTP_LOGIN = ("ada", "s3cret")


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OffersPipelining:
    """An aiosmtpd handler whose EHLO reply offers PIPELINING while ``pipelining`` is set."""

    pipelining: bool

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if not self.pipelining:
            return responses
        return [*responses[:-1], "250-PIPELINING", responses[-1]]


@dataclass
class Sink(OffersPipelining):
    """Keeps every message; answers DATA from ``script`` first (e.g. a 451), then 250.

    Each kept message carries the envelope recipients in ``X-Test-Envelope-To``, because
    the headers alone don't say who the server was asked to deliver to.
    """

    messages: list[EmailMessage] = field(default_factory=list)
    script: list[str] = field(default_factory=list)
    # Offer PIPELINING (RFC 2920), as Postfix, Exim, Amazon SES and Gmail do, so the
    # provider's pipelined transaction is what the tests exercise.
    pipelining: bool = True

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        if self.script:
            return self.script.pop(0)
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        parsed["X-Test-Envelope-To"] = ",".join(envelope.rcpt_tos)
        self.accepted(parsed)
        self.messages.append(parsed)
        return "250 Message accepted"

    def accepted(self, message: EmailMessage) -> None:
        """Called for each message before it is kept; subclasses look at it here."""


def running_sink(handler: Sink | None = None) -> Iterator[tuple[Sink, int]]:
    """Run an aiosmtpd server on a free port while the generator is alive.

    Use it as a pytest fixture body (``yield from running_sink()``) or with
    ``contextlib.contextmanager``.
    """
    handler = handler or Sink()
    controller = Controller(handler, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        yield handler, controller.port
    finally:
        controller.stop()


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = isinstance(data, LoginPassword) and (data.login, data.password) == tuple(
        part.encode() for part in SMTP_LOGIN
    )
    # handled=False: aiosmtpd answers a failure itself (535); True would leave it unanswered.
    return AuthResult(success=ok, handled=False)


@dataclass
class SecuredServer:
    """A TLS + AUTH server: its handler, its port, and a client context that trusts it."""

    sink: Any
    port: int
    client_tls: ssl.SSLContext


def secured_sink(
    handler: Any, ca: trustme.CA, tls: Literal["starttls", "implicit"]
) -> Iterator[SecuredServer]:
    """A server requiring AUTH (:data:`SMTP_LOGIN`) over TLS, with a certificate from ``ca``.

    ``starttls`` is a submission port (587): plain first, STARTTLS required before AUTH.
    ``implicit`` is port-465 style: TLS from the first byte.
    """
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    options: dict[str, Any] = (
        {"tls_context": server_ctx, "require_starttls": True}
        if tls == "starttls"
        # aiosmtpd counts only STARTTLS as TLS for AUTH; this connection is TLS throughout.
        else {"ssl_context": server_ctx, "auth_require_tls": False}
    )
    controller = Controller(
        handler,
        hostname="127.0.0.1",
        port=free_port(),
        authenticator=_authenticate,
        auth_required=True,
        **options,
    )
    controller.start()
    try:
        yield SecuredServer(handler, controller.port, client_ctx)
    finally:
        controller.stop()
