"""The SMTP provider: aiosmtplib with a small pool of reused, authenticated connections."""

from __future__ import annotations

import asyncio
import binascii
import collections
import contextlib
import functools
import re
import ssl
import time
from collections.abc import Awaitable
from email.header import Header
from email.message import EmailMessage
from email.policy import Policy
from email.utils import formataddr, formatdate, getaddresses, parseaddr
from typing import Literal, cast

import aiosmtplib
from aiosmtplib import SMTPStatus

from hogsend.channels.email.message import GateClosed, OutgoingEmail, ProviderResult
from hogsend.core.ids import new_uuid4
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
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} may not contain a line break")
        mime[name] = _Folded(name, value) if value.isascii() else value
    if message.text is not None:
        mime.set_content(message.text, subtype="plain", charset="utf-8")
        if message.html is not None:
            mime.add_alternative(message.html, subtype="html", charset="utf-8")
    elif message.html is not None:
        mime.set_content(message.html, subtype="html", charset="utf-8")
    return mime


class _Folded(str):
    """A header value the ``email`` package writes folded as :func:`message_bytes` does.

    Its own folding turns a word longer than a line (the URLs of ``List-Unsubscribe``)
    into RFC 2047 encoded words, which no mailbox provider decodes in a header of URIs;
    :func:`_header_line` folds at spaces only. The package takes a value with a ``name``
    and a ``fold`` for a header object of its own, stored and written as is.
    """

    name: str

    def __new__(cls, name: str, value: str) -> _Folded:
        folded = super().__new__(cls, value)
        folded.name = name
        return folded

    def fold(self, *, policy: Policy) -> str:
        """The header line, folded, with the policy's line ends."""
        line = _header_line(self.name, str(self))
        return line.replace("\r\n", policy.linesep) + policy.linesep


_ADDRESS_HEADERS = frozenset({"from", "to", "reply-to"})
_FOLD_AT = 78
_LONGEST_LINE = 998


def message_bytes(
    message: OutgoingEmail, *, message_id: str | None = None, eight_bit: bool = False
) -> bytes | None:
    """The message as SMTP DATA, written directly: what :func:`build_mime` gives, cheaper.

    ``build_mime`` and flattening cost ~2 ms of CPU per message (the ``email`` package
    parses every header it is handed); this writes the same structure in a tenth of it.
    ASCII header values are folded at spaces; others become RFC 2047 encoded words
    (display names through ``formataddr``). A part that is ASCII with short lines goes
    as 7bit; any other as quoted-printable, or, with ``eight_bit``, as 8bit UTF-8 when
    no line is longer than 998 octets and it has no NUL. The headers stay ASCII. The
    boundary starts with ``=_``, which quoted-printable never produces.

    Args:
        message: the message.
        message_id: its Message-ID (default: ``message.message_id()``).
        eight_bit: the server offers ``8BITMIME``. A part sent as 8bit is its text as
            is (smaller than quoted-printable, in which CSS-inlined HTML's every ``=``
            becomes ``=3D``, and in a third fewer lines, each a unit of work for the
            server), and the message then needs ``BODY=8BITMIME`` on its ``MAIL FROM``
            (its bytes are not ASCII).

    Returns:
        The bytes, or None when an address is not ASCII (it needs SMTPUTF8: the caller
        uses :func:`build_mime` and ``send_message``, which negotiate it).

    Raises:
        ValueError: a header value contains CR or LF (header injection), like
            ``build_mime``.
    """
    lines: list[str] = []
    for name, value in _headers(message, message_id or message.message_id()):
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name!r} may not contain a line break")
        if name.lower() in _ADDRESS_HEADERS:
            formatted = _address_header(value)
            if formatted is None:
                return None
            value = formatted
        lines.append(_header_line(name, value))
    lines.append("MIME-Version: 1.0")
    parts = [
        (body, sub)
        for body, sub in ((message.text, "plain"), (message.html, "html"))
        if body is not None
    ]
    # Each part's body is encoded once, by _part; the text around it here.
    pieces: list[bytes] = []
    if len(parts) == 2:
        boundary = _boundary()
        lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        lines.append("")
        for body, subtype in parts:
            lines.append(f"--{boundary}")
            headers, text = _part(body, subtype, eight_bit)
            lines.append(headers)
            pieces.append("\r\n".join(lines).encode("utf-8"))
            pieces.append(text)
            # The body's last line break; the next CRLF is the boundary's.
            lines = [""]
        lines.append(f"--{boundary}--")
    else:
        [(body, subtype)] = parts
        headers, text = _part(body, subtype, eight_bit)
        lines.append(headers)
        pieces.append("\r\n".join(lines).encode("utf-8"))
        pieces.append(text)
        lines = []
    lines.append("")
    pieces.append("\r\n".join(lines).encode("utf-8"))
    return b"\r\n".join(pieces)


def _boundary() -> str:
    """A multipart boundary: ``=_`` and 32 random hex digits.

    From :func:`~hogsend.core.ids.new_uuid4` (random bytes drawn a batch at a time):
    ``uuid4()``, a system call per message, cost a sixth of writing the message.
    """
    return "=_" + new_uuid4().hex


# A bare ASCII address, which formats as itself: the usual To, parsed without the
# email package (its address parser costs more than the rest of the message).
_BARE_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")


def _address_header(value: str) -> str | None:
    """An address header's value as written, or None when an address is not ASCII."""
    if _BARE_ADDRESS.fullmatch(value):
        return value
    return _formatted_addresses(value)


@functools.lru_cache(maxsize=256)
def _formatted_addresses(value: str) -> str | None:
    # Cached: the From and Reply-To of a sender are the same on every message.
    pairs = getaddresses([value])
    if not pairs or any(not addr or not addr.isascii() for _, addr in pairs):
        return None
    return ", ".join(formataddr(pair, charset="utf-8") for pair in pairs)


@functools.lru_cache(maxsize=256)
def envelope_sender(from_email: str) -> str:
    """The address of a From header (``Name <a@b>`` gives ``a@b``), for MAIL FROM."""
    return parseaddr(from_email)[1]


def _headers(message: OutgoingEmail, message_id: str) -> list[tuple[str, str]]:
    """The headers in :func:`build_mime`'s order, before MIME-Version."""
    headers = [("From", message.from_email), ("To", message.to), ("Subject", message.subject)]
    if message.reply_to:
        headers.append(("Reply-To", message.reply_to))
    headers.append(("Date", _date_header()))
    headers.append(("Message-ID", message_id))
    headers.extend(
        (name, value) for name, value in message.headers.items() if name.lower() not in _OWN_HEADERS
    )
    return headers


_DATE: tuple[int, str] = (0, "")
"""The last Date header written and its second: every message of that second shares it."""


def _date_header() -> str:
    """``formatdate(usegmt=True)`` of now, formatted once per second (it has no finer part)."""
    global _DATE
    second = int(time.time())
    if _DATE[0] != second:
        _DATE = (second, formatdate(second, usegmt=True))
    return _DATE[1]


def _header_line(name: str, value: str) -> str:
    """``Name: value``, folded at spaces past 78 columns; encoded words when not ASCII."""
    if not value.isascii():
        return f"{name}: " + Header(value, "utf-8", header_name=name).encode(linesep="\r\n")
    line = f"{name}: {value}"
    if len(line) <= _FOLD_AT:
        return line
    folded: list[str] = []
    first, *words = value.split(" ")
    current = f"{name}: {first}"  # never folded right after the colon
    for word in words:
        if current and len(current) + 1 + len(word) > _FOLD_AT:
            folded.append(current)
            current = word
        else:
            current = f"{current} {word}"
    folded.append(current)
    if any(len(piece) > _LONGEST_LINE for piece in folded):
        # A token this long cannot be folded; encoded words split it safely.
        return f"{name}: " + Header(value, "us-ascii", header_name=name).encode(linesep="\r\n")
    return "\r\n ".join(folded)


def _part(body: str, subtype: str, eight_bit: bool = False) -> tuple[str, bytes]:
    """One text part: its headers, and its body (7bit, 8bit or quoted-printable) as bytes.

    The headers end with a line break (the caller's join with CRLF makes the blank line
    after them); the body has CRLF line breaks, its last one left out (the same join
    writes it).
    Line breaks are CR, LF or CRLF, as the ``email`` package reads them (not the other
    characters ``str.splitlines`` breaks at, such as a form feed or U+2028).
    """
    if "\r" in body:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    # Encoded once: the line limit is in octets, and the body goes out as these bytes.
    octets = body.encode("utf-8")
    if b"\x00" in octets:
        encoding = "quoted-printable"  # neither 7bit nor 8bit may carry a NUL
    elif _lines_fit(octets):
        encoding = "7bit" if octets.isascii() else "8bit" if eight_bit else "quoted-printable"
    else:
        encoding = "quoted-printable"
    if encoding == "quoted-printable":
        # The body ends with a line break, so its encoding does too.
        text = binascii.b2a_qp(octets, istext=True)[:-1]
    else:
        text = octets[:-1]
    headers = (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n"
    )
    return headers, text.replace(b"\n", b"\r\n")


_BLOCK = (_LONGEST_LINE + 1) // 2
"""A line longer than 998 octets holds a whole aligned block this long (2 * 499 - 1 < 999)."""


def _lines_fit(octets: bytes) -> bool:
    """Whether no line of ``octets`` is longer than 998 octets.

    Looks for a line break in each aligned 499-octet block, without splitting: a body
    (HTML with inlined CSS) is mostly lines far shorter, and splitting it into a list
    cost three times as much. Only a block without one needs the lines measured.
    """
    if len(octets) <= _LONGEST_LINE:
        return True
    find = octets.find
    for start in range(0, len(octets), _BLOCK):
        if find(b"\n", start, start + _BLOCK) < 0:
            return max(map(len, octets.split(b"\n"))) <= _LONGEST_LINE
    return True


class SmtpProvider:
    """Send through an SMTP server, reusing up to ``pool_size`` connections.

    Args:
        host: server host.
        port: server port (587 for STARTTLS, 465 for implicit TLS, 25 for none).
        tls: ``none``, ``starttls`` or ``tls``.
        username: AUTH user; no AUTH when None.
        password: AUTH password.
        pool_size: most connections open at once (and most concurrent sends).
        timeout: seconds for connecting and for each command's reply.
        tls_context: the SSL context (e.g. trusting a private CA); default: system CAs.

    Replies 4xx, lost connections and timeouts raise TransientProviderError (``throttled``
    for 421 and 45x, which pause every send of a ``PacedProvider``); 5xx replies
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
            if client.is_ehlo_or_helo_needed:
                # Greeted now (as sendmail would on the first message), so every message
                # on this connection can take the direct transaction (see _transmit).
                try:
                    await client.ehlo()
                except aiosmtplib.SMTPHeloError:
                    await client.helo()
        except BaseException:
            client.close()
            raise
        return client

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        """Deliver ``message``; retries once on a fresh connection if a reused one died."""
        return await self._send(message, None)

    async def send_gated(self, message: OutgoingEmail, gate: Awaitable[bool]) -> ProviderResult:
        """:meth:`send`, the server accepting the message only once ``gate`` gives True.

        ``MAIL``, ``RCPT``, ``DATA`` and the message go out at once; the line ending the
        message (after which the server has accepted it) waits for ``gate``. When it
        gives False the connection is closed with the message unfinished, which the
        server discards, and :class:`~hogsend.channels.email.message.GateClosed` is
        raised. See :func:`~hogsend.channels.email.message.send_when`.
        """
        return await self._send(message, gate)

    async def _send(self, message: OutgoingEmail, gate: Awaitable[bool] | None) -> ProviderResult:
        if self._closed:
            raise RuntimeError("the SMTP provider is closed")
        message_id = message.message_id()
        sender = envelope_sender(message.from_email)
        async with self._slots:
            client = self._idle.pop() if self._idle else None
            if client is not None and not client.is_connected:
                client = None
            reused = client is not None
            try:
                if client is None:
                    client = await self._connect()
                try:
                    sent_id = await _transmit(client, sender, message, message_id, gate)
                except aiosmtplib.SMTPServerDisconnected:
                    if not reused:
                        raise
                    # The server dropped an idle connection: one more try on a new one.
                    client.close()
                    client = await self._connect()
                    sent_id = await _transmit(client, sender, message, message_id, gate)
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                if client is not None:
                    client.close()
                raise _classify(exc, username=self.username) from exc
            except BaseException:
                if client is not None:
                    client.close()
                raise
            self._idle.append(client)
        return ProviderResult(provider=self.name, message_id=sent_id)

    async def aclose(self) -> None:
        """Say QUIT on every idle connection."""
        self._closed = True
        idle, self._idle = self._idle, []
        for client in idle:
            _give_back(client)
            try:
                await client.quit()
            except (aiosmtplib.SMTPException, OSError):
                client.close()


async def _transmit(
    client: aiosmtplib.SMTP,
    sender: str,
    message: OutgoingEmail,
    message_id: str,
    gate: Awaitable[bool] | None = None,
) -> str:
    """Send ``message`` on ``client``; the Message-ID it went out with.

    Written for this connection: 8bit parts where the server offers ``8BITMIME``
    (:func:`message_bytes`), through the ``email`` package where an address is not
    ASCII. With a ``gate``, the direct transaction waits for it before the message's
    last line; the other ways wait for it before they start.
    """
    eight_bit = client.supports_extension("8bitmime")
    data = message_bytes(message, message_id=message_id, eight_bit=eight_bit)
    direct = (
        data is not None
        and not client.is_ehlo_or_helo_needed
        and _BARE_ADDRESS.fullmatch(sender) is not None
        and _BARE_ADDRESS.fullmatch(message.to) is not None
    )
    if gate is not None and not direct and not await gate:
        raise GateClosed()
    if not direct:
        _give_back(client)  # sendmail and send_message read replies on aiosmtplib's protocol
    if data is None:
        mime = build_mime(message)
        await client.send_message(mime, recipients=[message.to])
        return str(mime["Message-ID"])
    # An 8bit part makes the bytes non-ASCII; the server must be told (RFC 6152).
    options = [] if data.isascii() else ["BODY=8BITMIME"]
    if direct:
        await _mail_transaction(client, sender, message.to, data, options, gate)
    else:
        await client.sendmail(sender, [message.to], data, mail_options=options)
    return message_id


async def _mail_transaction(
    client: aiosmtplib.SMTP,
    sender: str,
    to: str,
    data: bytes,
    mail_options: list[str],
    gate: Awaitable[bool] | None = None,
) -> None:
    """MAIL, RCPT and DATA for one bare ASCII sender and recipient: what ``sendmail`` sends.

    ``sendmail`` parses each address four times with the ``email`` package and scans
    the message twice to size it; the addresses here are already checked (a bare
    address has no space, bracket or control character to inject with) and
    :func:`message_bytes` writes CRLF line ends only, so its length is the SIZE. The
    errors are ``sendmail``'s, and a refused command resets the envelope as it does.

    The replies are read on :class:`_Pipeline`, which bounds each by the connection's
    timeout. Where the server offers ``PIPELINING`` (RFC 2920: Postfix, Exim, Amazon
    SES and Gmail do), MAIL, RCPT and DATA go out in one write and their three replies
    are read together: two round trips per message instead of four. Otherwise each
    command waits for its reply, as ``execute_command`` does, without its per-command
    lock (the pool lends a connection to one send at a time) and injection scan (the
    arguments are checked above).

    With a ``gate``, only the line ending the message waits for it; when the gate has
    already opened as the message is written, the message and its ending line go out
    in one write. A reply that times out, a lost connection and 421 close the
    connection, as ``execute_command`` does; so does a 354 to a pipelined DATA whose
    MAIL or RCPT was refused (the server would take what follows as the message), and
    a gate that does not open (the server discards the unfinished message).
    """
    pipeline = _Pipeline.on(client)
    options = b" SIZE=%d" % len(data) if client.supports_extension("size") else b""
    for option in mail_options:
        options += b" " + option.encode("ascii")
    mail = b"MAIL FROM:<" + sender.encode("ascii") + b">" + options + b"\r\n"
    rcpt = b"RCPT TO:<" + to.encode("ascii") + b">\r\n"
    try:
        if client.supports_extension("pipelining"):
            response = await _pipelined_envelope(client, pipeline, mail + rcpt, sender, to)
        else:
            _check_sender(await pipeline.exchange(mail), sender)
            _check_recipient(await pipeline.exchange(rcpt), to)
            response = await pipeline.exchange(b"DATA\r\n")
        if response.code != SMTPStatus.start_input:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
        # A line starting with a dot gets one more (RFC 5321 4.5.2), as aiosmtplib's
        # data() does; most messages have none, so look first.
        if data.startswith(b".") or b"\n." in data:
            data = _LEADING_DOT.sub(b"..", data)
        if gate is None or _opened(gate):
            response = await pipeline.exchange(data + b".\r\n")
        else:
            # The server accepts a message at its ending line: until then nothing is
            # delivered, so the message travels (and the server reads it) while the
            # gate is awaited. Closed unfinished when the gate says no.
            pipeline.write(data)
            try:
                go = await gate
            except BaseException:
                client.close()
                raise
            if not go:
                client.close()
                raise GateClosed()
            response = await pipeline.exchange(b".\r\n")
        if response.code != SMTPStatus.completed:
            raise aiosmtplib.SMTPDataError(response.code, response.message)
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        # A reply given up on would pair with the next command: never reuse this one.
        client.close()
        raise
    except (aiosmtplib.SMTPResponseException, aiosmtplib.SMTPRecipientsRefused) as exc:
        if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
            code = exc.recipients[0].code if exc.recipients else None
        else:
            code = exc.code
        if code == SMTPStatus.domain_unavailable:
            client.close()  # as execute_command: the server is going away
        # The original error is the one worth reporting, not a failed reset.
        if client.is_connected:
            _give_back(client)
            with contextlib.suppress(ConnectionError, aiosmtplib.SMTPException):
                await client.rset()
        raise


async def _pipelined_envelope(
    client: aiosmtplib.SMTP, pipeline: _Pipeline, envelope: bytes, sender: str, to: str
) -> aiosmtplib.SMTPResponse:
    """MAIL and RCPT (``envelope``) and DATA in one write; the reply to DATA.

    Raises what ``sendmail`` raises for a refused sender or recipient.
    """
    pipeline.write(envelope + b"DATA\r\n")
    try:
        sent, received, response = await pipeline.read(3)
    except aiosmtplib.SMTPServerDisconnected:
        # A server going away answers the command it refuses (421) and hangs up: that
        # answer is the error to report.
        early = pipeline.unread()
        if early:
            _check_sender(early[0], sender)
        if len(early) > 1:
            _check_recipient(early[1], to)
        raise
    try:
        _check_sender(sent, sender)
        _check_recipient(received, to)
    except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPRecipientsRefused):
        if response.code == SMTPStatus.start_input:
            client.close()  # it waits for a message we will not send
        raise
    return response


def _check_sender(response: aiosmtplib.SMTPResponse, sender: str) -> None:
    if response.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPSenderRefused(response.code, response.message, sender)


def _check_recipient(response: aiosmtplib.SMTPResponse, to: str) -> None:
    if response.code not in (SMTPStatus.completed, SMTPStatus.will_forward):
        raise aiosmtplib.SMTPRecipientsRefused(
            [aiosmtplib.SMTPRecipientRefused(response.code, response.message, to)]
        )


_REPLY_LIMIT = 1 << 16
"""Most bytes of replies kept unread; a server sending more without a line end is broken."""


class _Pipeline(asyncio.Protocol):
    """A pooled connection's protocol for our transactions: replies queue, none is dropped.

    aiosmtplib's protocol keeps one reply and drops whatever arrives before it is read,
    so commands sent together (RFC 2920) would lose their later replies. This protocol
    takes over the connection's transport after aiosmtplib has connected, secured,
    authenticated and greeted it, and parses every complete reply into a queue.
    :func:`_give_back` hands the transport back (only ever between transactions, with
    nothing unread) before aiosmtplib's own commands (``sendmail``, ``RSET``, ``QUIT``)
    use it. A lost connection and flow control are passed on to aiosmtplib's protocol,
    so the client knows it is closed.

    Each :meth:`read` must be answered within ``timeout`` seconds of its start, or the
    connection fails with ``SMTPReadTimeoutError`` and closes. One timer per connection
    enforces that lazily: a read only moves the deadline, and the timer, when it fires,
    times the read out if the deadline has passed and is set again for the deadline if
    not (an ``asyncio.timeout`` per transaction, rescheduled per reply, was about 3% of
    the campaign worker's main thread).
    """

    def __init__(
        self, inner: aiosmtplib.protocol.SMTPProtocol, timeout: float | None = None
    ) -> None:
        self.inner = inner
        self.transport = cast(asyncio.Transport, inner.transport)
        self._buffer = b""
        self._replies: collections.deque[aiosmtplib.SMTPResponse] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._wanted = 0
        self._failure: aiosmtplib.SMTPException | None = None
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def on(cls, client: aiosmtplib.SMTP) -> _Pipeline:
        """The connection's pipeline, installed on its transport when it has none yet."""
        inner = client.protocol
        if inner is None or inner.transport is None:
            raise aiosmtplib.SMTPServerDisconnected("Server not connected")
        current = inner.transport.get_protocol()
        if isinstance(current, _Pipeline):
            return current
        pipeline = cls(inner, client.timeout)
        inner.transport.set_protocol(pipeline)
        return pipeline

    def write(self, data: bytes) -> None:
        if self._failure is not None:
            raise self._failure
        if self.transport.is_closing():
            raise aiosmtplib.SMTPServerDisconnected("Connection lost")
        self.transport.write(data)

    async def exchange(self, line: bytes) -> aiosmtplib.SMTPResponse:
        """Write ``line``; its one reply."""
        self.write(line)
        [reply] = await self.read()
        return reply

    async def read(self, count: int = 1) -> list[aiosmtplib.SMTPResponse]:
        """The next ``count`` replies, in order."""
        replies = self._replies
        if len(replies) < count:
            if self._failure is not None:
                raise self._failure
            loop = self._loop
            if self._timeout is not None:
                self._deadline = loop.time() + self._timeout
                if self._timer is None:
                    self._timer = loop.call_at(self._deadline, self._check_deadline)
            self._wanted = count
            self._waiter = loop.create_future()
            try:
                # Woken once ``count`` replies are in (data_received) or on a failure.
                await self._waiter
            finally:
                self._waiter = None
        return [replies.popleft() for _ in range(count)]

    def _check_deadline(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None or waiter.done():
            return  # no read waiting: the next one sets the timer again
        if self._loop.time() < self._deadline:
            self._timer = self._loop.call_at(self._deadline, self._check_deadline)
            return
        self._fail(aiosmtplib.SMTPReadTimeoutError("Timed out waiting for server response"))

    def unread(self) -> list[aiosmtplib.SMTPResponse]:
        """The replies received and not read yet (taking them)."""
        replies = list(self._replies)
        self._replies.clear()
        return replies

    def data_received(self, data: bytes) -> None:
        if self._buffer:
            data = self._buffer + data
        start = 0  # where the first reply not yet complete begins
        at = 0
        lines: list[bytes] = []
        while (end := data.find(b"\n", at)) >= 0:
            line = data[at : end + 1]
            at = end + 1
            code = line[:3]
            if not code.isdigit():
                self._fail(
                    aiosmtplib.SMTPResponseException(
                        SMTPStatus.invalid_response,
                        f"Malformed SMTP response line: {line.decode('utf-8', 'replace')}",
                    )
                )
                return
            lines.append(line[4:].strip(b" \t\r\n"))
            if line[3:4] != b"-":
                text = b"\n".join(lines).decode("utf-8", "surrogateescape")
                self._replies.append(aiosmtplib.SMTPResponse(int(code), text))
                lines = []
                start = at
        # A reply not complete yet is parsed again, whole, when the rest arrives.
        self._buffer = data[start:]
        if len(self._buffer) > _REPLY_LIMIT:
            self._fail(
                aiosmtplib.SMTPResponseException(SMTPStatus.invalid_response, "Response too long")
            )
            return
        waiter = self._waiter
        if waiter is not None and not waiter.done() and len(self._replies) >= self._wanted:
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self._fail(aiosmtplib.SMTPServerDisconnected("Unexpected EOF received"), close=False)
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._failure is None:
            lost = aiosmtplib.SMTPServerDisconnected("Connection lost")
            lost.__cause__ = exc
            self._fail(lost, close=False)
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def _fail(self, exc: aiosmtplib.SMTPException, *, close: bool = True) -> None:
        self._failure = exc
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if close:
            self.transport.close()


def _give_back(client: aiosmtplib.SMTP) -> None:
    """Hand a pipelining connection's transport back to aiosmtplib's protocol."""
    inner = client.protocol
    if (
        inner is not None
        and inner.transport is not None
        and isinstance(inner.transport.get_protocol(), _Pipeline)
    ):
        inner.transport.set_protocol(inner)


# A line starting with a dot gets one more (RFC 5321 4.5.2), as aiosmtplib's data() does.
_LEADING_DOT = re.compile(rb"(?m)^\.")


def _opened(gate: Awaitable[bool]) -> bool:
    """Whether ``gate`` is a future that has already given True (nothing to wait for)."""
    return (
        isinstance(gate, asyncio.Future)
        and gate.done()
        and not gate.cancelled()
        and gate.exception() is None
        and gate.result() is True
    )


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
    return TransientProviderError(
        label, provider="smtp", status=code, throttled=code is not None and _throttles(code)
    )


def _throttles(code: int) -> bool:
    """Whether a reply says the server wants fewer messages for a while, not this one
    refused: 421 (service not available, too many connections) and the 45x replies
    (450 mailbox or rate limit busy, 451 local error or "try later", 452 insufficient
    storage or too many messages, 454 temporary TLS or AUTH failure ...)."""
    return code == SMTPStatus.domain_unavailable or 450 <= code < 460


def _needs_new_settings(exc: BaseException) -> bool:
    # aiosmtplib raises the bare base class for a missing STARTTLS or AUTH extension.
    if type(exc) is aiosmtplib.SMTPException or isinstance(exc, aiosmtplib.SMTPNotSupported):
        return True
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return True
    return isinstance(cause, ssl.SSLError) and cause.reason == "WRONG_VERSION_NUMBER"
