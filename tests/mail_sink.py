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
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Sink:
    """Keeps every message; answers DATA from ``script`` first (e.g. a 451), then 250.

    Each kept message carries the envelope recipients in ``X-Test-Envelope-To``, because
    the headers alone don't say who the server was asked to deliver to.
    """

    messages: list[EmailMessage] = field(default_factory=list)
    script: list[str] = field(default_factory=list)

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
