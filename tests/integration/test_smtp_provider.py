"""The SMTP provider against a real aiosmtpd server: MIME, TLS, AUTH, pooling, error classes."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import aiosmtplib.protocol
import pytest
import trustme
from aiosmtpd.controller import Controller

from hogsend.channels.email import OutgoingEmail, PacedProvider, ProviderResult, SmtpProvider
from hogsend.channels.email import smtp as smtp_module
from hogsend.channels.email.message import GateClosed, send_when
from hogsend.errors import PermanentProviderError, TransientProviderError
from mail_sink import OffersPipelining, SecuredServer, free_port, secured_sink

# The implicit-TLS server requires AUTH without aiosmtpd knowing its socket is TLS.
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


@dataclass
class Sink(OffersPipelining):
    """An aiosmtpd handler that keeps every message and refuses chosen recipients."""

    messages: list[tuple[tuple[str, int], EmailMessage]] = field(default_factory=list)
    tls_sessions: list[bool] = field(default_factory=list)
    # Per message: MAIL FROM, its options, RCPT TO and the DATA's length in bytes.
    envelopes: list[tuple[str, list[str], list[str], int]] = field(default_factory=list)
    # Offer PIPELINING (RFC 2920) in the EHLO reply, as Postfix, Exim and SES do.
    pipelining: bool = False
    quits: int = 0

    async def handle_QUIT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        self.quits += 1
        return "221 Bye"

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, options: Any
    ) -> str:
        local = address.split("@")[0]
        if local == "slow":
            await asyncio.sleep(1.0)  # longer than the provider's timeout in the test
        if local.startswith("reply"):
            code = local.removeprefix("reply")
            return f"{code} 4.7.0 refused by test ({code})"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((session.peer, parsed))
        self.envelopes.append(
            (
                envelope.mail_from,
                list(envelope.mail_options),
                list(envelope.rcpt_tos),
                len(envelope.original_content),
            )
        )
        self.tls_sessions.append(server.transport.get_extra_info("sslcontext") is not None)
        return "250 Message accepted"


@dataclass
class Server:
    sink: Sink
    port: int
    client_tls: ssl.SSLContext | None = None


@pytest.fixture(params=["sequential", "pipelining"])
def plain(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A plain server; every test using it runs with and without PIPELINING offered."""
    sink = Sink(pipelining=request.param == "pipelining")
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield Server(sink, controller.port)
    controller.stop()


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def starttls(ca: trustme.CA) -> Iterator[SecuredServer]:
    # Pipelining over TLS: the pipeline takes over the TLS transport.
    yield from secured_sink(Sink(pipelining=True), ca, "starttls")


def message(to: str = "ada@example.com", **overrides: Any) -> OutgoingEmail:
    values: dict[str, Any] = {
        "from_email": "Acme <hello@acme.test>",
        "to": to,
        "subject": "Welcome, Ada — café",
        "html": "<p>Hello <b>Ada</b></p>",
        "text": "Hello Ada\n",
        "reply_to": "support@acme.test",
        "headers": {
            "List-Unsubscribe": "<https://acme.test/u?t=abc>, <mailto:u@acme.test>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Custom": "yes",
        },
        "idempotency_key": "wf-1:3",
    }
    values.update(overrides)
    return OutgoingEmail(**values)


async def test_plain_send_has_both_parts_and_headers(plain: Server) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none")
    result = await provider.send(message())
    await provider.aclose()
    ((_, received),) = plain.sink.messages
    assert received.get_content_type() == "multipart/alternative"
    parts = [part.get_content_type() for part in received.iter_parts()]
    assert parts == ["text/plain", "text/html"]
    text_part = received.get_body(("plain",))
    html_part = received.get_body(("html",))
    assert text_part is not None
    assert html_part is not None
    assert text_part.get_content().rstrip() == "Hello Ada"
    assert "<b>Ada</b>" in html_part.get_content()
    assert received["Subject"] == "Welcome, Ada — café"
    assert received["From"] == "Acme <hello@acme.test>"
    assert received["To"] == "ada@example.com"
    assert received["Reply-To"] == "support@acme.test"
    assert received["List-Unsubscribe"] == "<https://acme.test/u?t=abc>, <mailto:u@acme.test>"
    assert received["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert received["X-Custom"] == "yes"
    assert received["Date"] is not None
    # The Message-ID is what the provider reports, and stable for the idempotency key.
    assert received["Message-ID"] == result.message_id
    assert result.message_id.endswith("@acme.test>")
    assert message().message_id() == result.message_id
    assert result.provider == "smtp"


async def test_the_envelope_is_the_one_sendmail_gives(plain: Server) -> None:
    # Bare addresses take the provider's own MAIL/RCPT/DATA; others go through sendmail.
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none", pool_size=1)
    await provider.send(message(to="ada@example.com"))
    await provider.send(message(to='"ada lovelace"@example.com', idempotency_key="k2"))
    await provider.send(message(to="grace@example.com", idempotency_key="k3"))
    await provider.aclose()
    assert provider.connections_opened == 1
    sent = [
        (mail_from, [o.split("=")[0].upper() for o in options], rcpt)
        for mail_from, options, rcpt, _ in plain.sink.envelopes
    ]
    assert sent == [
        ("hello@acme.test", ["SIZE"], ["ada@example.com"]),
        ("hello@acme.test", ["SIZE"], ['"ada lovelace"@example.com']),
        ("hello@acme.test", ["SIZE"], ["grace@example.com"]),
    ]
    for _, options, _, length in plain.sink.envelopes:
        # The SIZE announced is the message's: its bytes plus the CRLF before the dot.
        [size] = [int(o.split("=")[1]) for o in options if o.upper().startswith("SIZE=")]
        assert size in (length, length + 2)
    assert [received["To"] for _, received in plain.sink.messages] == [
        "ada@example.com",
        '"ada lovelace"@example.com',
        "grace@example.com",
    ]


async def test_a_refused_recipient_fails_alone(plain: Server) -> None:
    # The refused transaction leaves nothing behind: the next message goes out alone.
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none", pool_size=1)
    await provider.send(message(to="first@example.com", idempotency_key="k0"))
    with pytest.raises(PermanentProviderError) as info:
        await provider.send(message(to="reply550@example.com", idempotency_key="k1"))
    assert info.value.status == 550
    await provider.send(message(to="after@example.com", idempotency_key="k2"))
    await provider.aclose()
    assert [rcpt for _, _, rcpt, _ in plain.sink.envelopes] == [
        ["first@example.com"],
        ["after@example.com"],
    ]


async def test_text_only_message(plain: Server) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none")
    await provider.send(message(html=None, idempotency_key=None))
    await provider.aclose()
    ((_, received),) = plain.sink.messages
    assert received.get_content_type() == "text/plain"


async def test_pool_reuses_connections(plain: Server) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none", pool_size=2)
    for i in range(5):
        await provider.send(message(to=f"user{i}@example.com", idempotency_key=f"k{i}"))
    await provider.aclose()
    assert len(plain.sink.messages) == 5
    assert provider.connections_opened == 1
    # Closing says QUIT on the connection, whether or not it pipelined.
    assert plain.sink.quits == 1
    assert len({peer for peer, _ in plain.sink.messages}) == 1


async def test_concurrent_sends_stay_within_the_pool(plain: Server) -> None:
    import asyncio

    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none", pool_size=3)
    await asyncio.gather(
        *(provider.send(message(to=f"u{i}@example.com", idempotency_key=None)) for i in range(12))
    )
    await provider.aclose()
    assert len(plain.sink.messages) == 12
    assert provider.connections_opened <= 3


@pytest.mark.parametrize("code", [421, 450, 451, 452])
async def test_4xx_is_transient(plain: Server, code: int) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none")
    with pytest.raises(TransientProviderError) as info:
        await provider.send(message(to=f"reply{code}@example.com"))
    assert info.value.status == code
    assert info.value.throttled  # a PacedProvider pauses every send on it
    # The failed connection is dropped; the next send opens a fresh one and works.
    await provider.send(message())
    await provider.aclose()
    assert len(plain.sink.messages) == 1


@pytest.mark.parametrize("code", [550, 553])
async def test_5xx_is_permanent(plain: Server, code: int) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none")
    with pytest.raises(PermanentProviderError) as info:
        await provider.send(message(to=f"reply{code}@example.com"))
    assert info.value.status == code
    await provider.aclose()


async def test_unreachable_server_is_transient() -> None:
    provider = SmtpProvider(host="127.0.0.1", port=free_port(), tls="none", timeout=5)
    with pytest.raises(TransientProviderError, match="connection") as info:
        await provider.send(message())
    assert not info.value.throttled  # nothing said to slow down: retried, no pause


async def test_starttls_with_auth(starttls: SecuredServer) -> None:
    provider = SmtpProvider(
        host="127.0.0.1",
        port=starttls.port,
        tls="starttls",
        username="ada",
        password="s3cret",
        tls_context=starttls.client_tls,
    )
    await provider.send(message())
    await provider.send(message(to="bob@example.com"))
    await provider.aclose()
    assert [m["To"] for _, m in starttls.sink.messages] == ["ada@example.com", "bob@example.com"]
    assert provider.connections_opened == 1


async def test_server_refuses_plain_when_starttls_is_required(starttls: SecuredServer) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=starttls.port, tls="none")
    with pytest.raises(PermanentProviderError):
        await provider.send(message())


@pytest.fixture
def implicit_tls(ca: trustme.CA) -> Iterator[SecuredServer]:
    """Port-465 style: TLS from the first byte, then AUTH."""
    yield from secured_sink(Sink(pipelining=True), ca, "implicit")


async def test_implicit_tls_with_auth(implicit_tls: SecuredServer) -> None:
    provider = SmtpProvider(
        host="127.0.0.1",
        port=implicit_tls.port,
        tls="tls",
        username="ada",
        password="s3cret",
        tls_context=implicit_tls.client_tls,
    )
    await provider.send(message())
    await provider.send(message(to="bob@example.com"))
    await provider.aclose()
    assert [m["To"] for _, m in implicit_tls.sink.messages] == [
        "ada@example.com",
        "bob@example.com",
    ]
    assert implicit_tls.sink.tls_sessions == [True, True]
    assert provider.connections_opened == 1


async def test_implicit_tls_from_settings(
    implicit_tls: SecuredServer, ca: trustme.CA, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HOGSEND_SMTP_TLS=tls as deployed: the system trust store (here: the test CA)."""
    from hogsend.channels.email import build_provider
    from hogsend.settings import Settings

    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    settings = Settings(
        env="test",
        email_provider="smtp",
        smtp_host="127.0.0.1",
        smtp_port=implicit_tls.port,
        smtp_tls="tls",
        smtp_username="ada",
        smtp_password="s3cret",
    )
    provider = build_provider(settings)
    result = await provider.send(message())
    await provider.aclose()
    [(_, received)] = implicit_tls.sink.messages
    assert received["Message-ID"] == result.message_id
    assert implicit_tls.sink.tls_sessions == [True]


async def test_untrusted_certificate_is_permanent(implicit_tls: SecuredServer) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=implicit_tls.port, tls="tls", timeout=5)
    with pytest.raises(PermanentProviderError, match="CERTIFICATE_VERIFY_FAILED") as info:
        await provider.send(message())
    assert "HOGSEND_SMTP_TLS" in str(info.value)
    assert implicit_tls.sink.messages == []


async def test_tls_to_a_plain_port_is_permanent(plain: Server) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="tls", timeout=5)
    with pytest.raises(PermanentProviderError, match="WRONG_VERSION_NUMBER"):
        await provider.send(message())


async def test_starttls_missing_on_the_server_is_permanent(plain: Server) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="starttls", timeout=5)
    with pytest.raises(PermanentProviderError, match="STARTTLS extension not supported"):
        await provider.send(message())
    assert plain.sink.messages == []


async def test_auth_missing_on_the_server_is_permanent(plain: Server) -> None:
    provider = SmtpProvider(
        host="127.0.0.1", port=plain.port, tls="none", username="ada", password="x", timeout=5
    )
    with pytest.raises(PermanentProviderError, match="AUTH extension is not supported"):
        await provider.send(message())


@pytest.mark.parametrize("fixture", ["starttls", "implicit_tls"])
async def test_wrong_password_is_permanent_and_says_so(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    server: Server = request.getfixturevalue(fixture)
    provider = SmtpProvider(
        host="127.0.0.1",
        port=server.port,
        tls="starttls" if fixture == "starttls" else "tls",
        username="ada",
        password="wrong",
        tls_context=server.client_tls,
        timeout=5,
    )
    with pytest.raises(PermanentProviderError) as info:
        await provider.send(message())
    await provider.aclose()
    assert info.value.status == 535
    assert str(info.value) == (
        "SMTP 535: authentication as 'ada' refused (5.7.8 Authentication credentials invalid);"
        " check HOGSEND_SMTP_USERNAME and HOGSEND_SMTP_PASSWORD"
    )
    assert server.sink.messages == []


class SevenBitSink(Sink):
    """A sink that does not offer 8BITMIME (aiosmtpd drops it when it decodes DATA)."""

    async def handle_DATA(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any
    ) -> str:
        envelope.content = envelope.original_content
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def seven_bit() -> Iterator[Server]:
    sink = SevenBitSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port(), decode_data=True)
    controller.start()
    yield Server(sink, controller.port)
    controller.stop()


NON_ASCII_BODY = "Grüße, Zoë — " + "\u034f\u200c" * 40 + "\n. a dot line\n"


@pytest.mark.parametrize(
    ("to", "path"),
    [("ada@example.com", "direct"), ('"ada lovelace"@example.com', "sendmail")],
)
async def test_8bit_parts_where_the_server_offers_8bitmime(
    plain: Server, to: str, path: str
) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none", pool_size=1)
    sent = message(to=to, text=NON_ASCII_BODY, html=f"<p>{NON_ASCII_BODY}</p>")
    await provider.send(sent)
    await provider.send(message(to=to, idempotency_key="ascii"))
    await provider.aclose()
    (_, received), (_, ascii_only) = plain.sink.messages
    [(_, options, _, _), (_, ascii_options, _, _)] = plain.sink.envelopes
    assert "BODY=8BITMIME" in options, path
    assert [p["Content-Transfer-Encoding"] for p in received.iter_parts()] == ["8bit", "8bit"]
    plain_part, html_part = received.get_body(("plain",)), received.get_body(("html",))
    assert plain_part is not None
    assert html_part is not None
    # Read as the wire carries it (CRLF); a mailbox stores an 8bit part's lines with LF.
    assert plain_part.get_content().replace("\r\n", "\n") == NON_ASCII_BODY
    assert html_part.get_content().replace("\r\n", "\n") == f"<p>{NON_ASCII_BODY}</p>\n"
    assert received["Subject"] == "Welcome, Ada — café"
    # An all-ASCII message says nothing of 8BITMIME.
    assert not any(o.upper().startswith("BODY") for o in ascii_options)
    assert ascii_only.get_body(("plain",)) is not None


async def test_quoted_printable_where_the_server_does_not_offer_8bitmime(
    seven_bit: Server,
) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=seven_bit.port, tls="none", pool_size=1)
    await provider.send(message(text=NON_ASCII_BODY, html=f"<p>{NON_ASCII_BODY}</p>"))
    await provider.aclose()
    [(_, received)] = seven_bit.sink.messages
    [(_, options, _, _)] = seven_bit.sink.envelopes
    assert not any(o.upper().startswith("BODY") for o in options)
    assert [p["Content-Transfer-Encoding"] for p in received.iter_parts()] == [
        "quoted-printable",
        "quoted-printable",
    ]
    plain_part = received.get_body(("plain",))
    assert plain_part is not None
    assert plain_part.get_content().replace("\r\n", "\n") == NON_ASCII_BODY


# --------------------------------------------------------------------------- gated sends


async def test_a_gated_message_is_accepted_only_once_its_gate_opens(plain: Server) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none", pool_size=1)
    gate: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    sending = asyncio.ensure_future(provider.send_gated(message(), gate))
    # The envelope and the message travel meanwhile; the server has accepted nothing.
    for _ in range(20):
        await asyncio.sleep(0.01)
        assert plain.sink.messages == []
        assert not sending.done()
    gate.set_result(True)
    result = await sending
    [(_, received)] = plain.sink.messages
    assert received["Message-ID"] == result.message_id
    assert received.get_body(("plain",)) is not None
    # The connection goes on serving: the next message needs no new one.
    await provider.send(message(idempotency_key="after"))
    await provider.aclose()
    assert provider.connections_opened == 1
    assert len(plain.sink.messages) == 2


async def test_a_gate_already_open_lets_the_message_end_in_the_same_write(
    plain: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    # MAIL, RCPT, DATA, then the message with its ending line: four writes, as an
    # ungated send. A gate still closed when the message is written costs a fifth.
    # With PIPELINING offered, MAIL, RCPT and DATA share one write: two and three.
    envelope_writes = 1 if plain.sink.pipelining else 3
    writes: list[bytes] = []
    loop = asyncio.get_running_loop()
    later: asyncio.Future[bool] = loop.create_future()

    def counting(write: Any) -> Any:
        def counted(self: Any, data: bytes) -> None:
            writes.append(data)
            write(self, data)
            if later_sent and len(writes) == envelope_writes + 1:
                later.set_result(True)  # opened once the message is out, before its end

        return counted

    later_sent = False
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none", pool_size=1)
    await provider.send(message(idempotency_key="connect"))
    for cls in (aiosmtplib.protocol.SMTPProtocol, smtp_module._Pipeline):
        monkeypatch.setattr(cls, "write", counting(cls.write))
    opened: asyncio.Future[bool] = loop.create_future()
    opened.set_result(True)
    await provider.send_gated(message(idempotency_key="open"), opened)
    assert len(writes) == envelope_writes + 1
    if plain.sink.pipelining:
        assert writes[0].startswith(b"MAIL FROM:<hello@acme.test>")
        assert writes[0].endswith(b"\r\nRCPT TO:<ada@example.com>\r\nDATA\r\n")
    assert writes[-1].endswith(b"\r\n.\r\n")
    writes.clear()
    later_sent = True
    await provider.send_gated(message(idempotency_key="later"), later)
    assert len(writes) == envelope_writes + 2
    assert writes[-1] == b".\r\n"
    await provider.aclose()
    assert len(plain.sink.messages) == 3


@pytest.mark.parametrize("closing", ["false", "error"])
async def test_a_closed_gate_leaves_the_message_unfinished(plain: Server, closing: str) -> None:
    # Both paths: the provider's own transaction and sendmail (a quoted local part).
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none", pool_size=1)
    for to in ("ada@example.com", '"ada lovelace"@example.com'):
        gate: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if closing == "false":
            gate.set_result(False)
            with pytest.raises(GateClosed):
                await provider.send_gated(message(to=to), gate)
        else:
            gate.set_exception(RuntimeError("commit failed"))
            with pytest.raises(RuntimeError, match="commit failed"):
                await provider.send_gated(message(to=to), gate)
    assert plain.sink.messages == []
    await provider.send(message(to="next@example.com"))
    await provider.aclose()
    assert [m["To"] for _, m in plain.sink.messages] == ["next@example.com"]


@pytest.mark.parametrize("gated", [True, False])
async def test_a_line_starting_with_a_dot_survives_the_data(plain: Server, gated: bool) -> None:
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none", pool_size=1)
    text = ".\n..two\n. three\nend\n"
    if gated:
        gate: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        gate.set_result(True)
        await provider.send_gated(message(text=text, html=None), gate)
    else:
        await provider.send(message(text=text, html=None))
    # And one without a dot at a line start (the message goes as written).
    await provider.send(message(text="plain.\nno dot first\n", html=None))
    await provider.aclose()
    [(_, received), (_, second)] = plain.sink.messages
    assert received.get_content().replace("\r\n", "\n") == text
    assert second.get_content().replace("\r\n", "\n") == "plain.\nno dot first\n"


async def test_a_reply_that_never_comes_times_out_and_the_connection_goes(plain: Server) -> None:
    # The provider's own transaction bounds each reply by the provider's timeout.
    provider = SmtpProvider(host="127.0.0.1", port=plain.port, tls="none", timeout=0.3)
    with pytest.raises(TransientProviderError, match="Timed out"):
        await provider.send(message(to="slow@example.com"))
    # The connection that timed out is not reused (its late reply would pair with the
    # next command): the next send opens a new one and goes out.
    await provider.send(message())
    await provider.aclose()
    assert provider.connections_opened == 2
    assert [m["To"] for _, m in plain.sink.messages] == ["ada@example.com"]


async def test_send_when_waits_for_the_gate_with_a_provider_that_cannot_stage() -> None:
    sent: list[str] = []

    class Plain:
        name = "plain"

        async def send(self, email_message: OutgoingEmail) -> ProviderResult:
            sent.append(email_message.to)
            return ProviderResult(provider="plain", message_id="<1@x>")

        async def aclose(self) -> None:
            """Nothing to release."""

    paced = PacedProvider(Plain())
    gate: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    sending = asyncio.ensure_future(send_when(paced, message(), gate))
    await asyncio.sleep(0.05)
    assert sent == []
    gate.set_result(True)
    assert (await sending).attempts == 1
    assert sent == ["ada@example.com"]
    closed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    closed.set_result(False)
    with pytest.raises(GateClosed):
        await send_when(Plain(), message(), closed)
    assert sent == ["ada@example.com"]


# --------------------------------------------------------------------------- pipelining


@dataclass
class Scripted:
    """A TCP server speaking just enough SMTP, with replies chosen per test.

    It offers PIPELINING and answers each command line from ``replies`` (by its first
    word), recording what it was sent; after a reply starting ``421`` it hangs up.
    """

    replies: dict[str, str]
    received: list[bytes] = field(default_factory=list)
    port: int = 0
    # Hang up after accepting a message (a server dropping an idle connection).
    hang_up_after_message: bool = False
    # Seconds before the reply to each message's ending line.
    acceptance_delay: float = 0.0
    accepted: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 scripted\r\n")
        in_data = False
        while line := await reader.readline():
            self.received.append(line)
            if in_data:
                if line == b".\r\n":
                    in_data = False
                    await asyncio.sleep(self.acceptance_delay)
                    self.accepted += 1
                    writer.write(b"250 accepted\r\n")
                    if self.hang_up_after_message:
                        await writer.drain()
                        writer.close()
                        return
                continue
            verb = line.split(b" ")[0].split(b":")[0].strip().upper().decode()
            if verb == "EHLO":
                writer.write(b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
                continue
            answer = self.replies.get(verb, "354 go ahead" if verb == "DATA" else "250 ok")
            writer.write(answer.encode() + b"\r\n")
            if verb == "DATA" and answer.startswith("354"):
                in_data = True
            if answer.startswith("421") or verb == "QUIT":
                await writer.drain()
                writer.close()
                return
            await writer.drain()


@contextlib.asynccontextmanager
async def scripted(replies: dict[str, str]) -> AsyncIterator[Scripted]:
    script = Scripted(replies)
    server = await asyncio.start_server(script.serve, "127.0.0.1", 0)
    script.port = server.sockets[0].getsockname()[1]
    async with server:
        yield script


async def test_a_354_after_a_refused_recipient_closes_the_connection() -> None:
    # A server that accepts the pipelined DATA although it refused the only recipient
    # would take whatever came next as the message: the connection must go.
    async with scripted({"RCPT": "550 no such user", "DATA": "354 go ahead"}) as server:
        provider = SmtpProvider(host="127.0.0.1", port=server.port, tls="none", pool_size=1)
        with pytest.raises(PermanentProviderError) as info:
            await provider.send(message(to="ada@example.com"))
        assert info.value.status == 550
        envelope = (b"MAIL FROM", b"RCPT TO")
        assert len([line for line in server.received if line.split(b":")[0] in envelope]) == 2
        # Nothing of the message was written after the 354, and no RSET either.
        assert not any(line.startswith((b"Subject", b"RSET")) for line in server.received)
        server.replies.clear()
        await provider.send(message(to="grace@example.com"))
        await provider.aclose()
        assert provider.connections_opened == 2


async def test_a_refused_sender_is_reported_with_its_own_code() -> None:
    # The group's later replies (503: no sender, no recipient) are not the error.
    refusals = {"MAIL": "553 sender not allowed", "RCPT": "503 need MAIL", "DATA": "503 no"}
    async with scripted(refusals) as server:
        provider = SmtpProvider(host="127.0.0.1", port=server.port, tls="none", pool_size=1)
        with pytest.raises(PermanentProviderError) as info:
            await provider.send(message())
        assert info.value.status == 553
        # MAIL, RCPT and DATA went out together, before any reply.
        verbs = [line.split(b" ")[0].split(b":")[0].strip() for line in server.received]
        assert verbs[verbs.index(b"MAIL") :][:3] == [b"MAIL", b"RCPT", b"DATA"]
        server.replies.clear()
        await provider.send(message(to="grace@example.com"))
        await provider.aclose()
        # A failed connection is never reused (the provider's rule, pipelining or not).
        assert provider.connections_opened == 2
        assert server.received[-1] == b"QUIT\r\n"


async def test_a_421_that_hangs_up_mid_group_is_reported_as_421() -> None:
    # The server refuses MAIL with 421 and closes before answering RCPT and DATA: the
    # error carries the 421 (the pacer backs off on it), not a bare lost connection.
    async with scripted({"MAIL": "421 too busy, try later"}) as server:
        provider = SmtpProvider(host="127.0.0.1", port=server.port, tls="none", pool_size=1)
        with pytest.raises(TransientProviderError) as info:
            await provider.send(message())
        assert info.value.status == 421
        assert info.value.throttled
        server.replies.clear()
        await provider.send(message(to="grace@example.com"))
        await provider.aclose()
        assert provider.connections_opened == 2


async def test_replies_split_and_joined_anyhow_pair_with_their_commands() -> None:
    # The pipeline's parser against replies arriving a byte at a time or all at once,
    # multi-line ones included.
    inner = aiosmtplib.protocol.SMTPProtocol()
    transport = _NullTransport(inner)
    pipeline = smtp_module._Pipeline(inner)
    wire = b"250-first\r\n250 second\r\n251 forwarded\r\n354 go\r\n"
    for chunk in [wire[i : i + 1] for i in range(len(wire))]:
        pipeline.data_received(chunk)
    pipeline.data_received(wire)
    first, forwarded, go = await pipeline.read(3)
    assert (first.code, first.message) == (250, "first\nsecond")
    assert (forwarded.code, go.code) == (251, 354)
    assert [r.code for r in await pipeline.read(3)] == [250, 251, 354]
    pipeline.data_received(b"25x nonsense\r\n")
    with pytest.raises(aiosmtplib.SMTPResponseException, match="Malformed"):
        await pipeline.read()
    assert transport.closed


class _NullTransport(asyncio.Transport):
    def __init__(self, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self.protocol = protocol
        self.closed = False
        protocol.connection_made(self)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.protocol = protocol

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Nothing listens."""


async def test_a_pipelining_connection_the_server_dropped_is_replaced_once() -> None:
    async with scripted({}) as server:
        server.hang_up_after_message = True
        provider = SmtpProvider(host="127.0.0.1", port=server.port, tls="none", pool_size=1)
        await provider.send(message())
        await asyncio.sleep(0.05)  # the hang-up arrives while the connection is idle
        await provider.send(message(to="grace@example.com"))
        # And when the next send is already writing as the hang-up arrives.
        await provider.send(message(to="alan@example.com"))
        await provider.aclose()
        assert server.accepted == 3
        assert provider.connections_opened == 3


async def test_each_reply_has_its_own_timeout_and_the_gate_is_not_timed() -> None:
    # One timer per connection, moved lazily: it must neither cut a reply short because
    # an earlier reply set it, nor count the wait for the gate, nor let a silent
    # server hold a send forever.
    async with scripted({}) as server:
        provider = SmtpProvider(
            host="127.0.0.1", port=server.port, tls="none", pool_size=1, timeout=1.0
        )
        loop = asyncio.get_running_loop()

        async def gated(key: str, opens_after: float, reply_after: float) -> ProviderResult:
            server.acceptance_delay = reply_after
            gate: asyncio.Future[bool] = loop.create_future()
            loop.call_later(opens_after, gate.set_result, True)
            return await provider.send_gated(message(idempotency_key=key), gate)

        await provider.send(message(idempotency_key="connect"))
        # The envelope's reply sets the timer for 1.0 s; the message's reply, asked for
        # at 0.6 s, comes at 1.4 s: within its own second.
        await gated("rearmed", opens_after=0.6, reply_after=0.8)
        # A gate slower than the timeout, then a reply within it.
        await gated("slow-gate", opens_after=1.2, reply_after=0.5)
        assert server.accepted == 3
        assert provider.connections_opened == 1
        started = loop.time()
        with pytest.raises(TransientProviderError, match="Timed out"):
            await gated("silent", opens_after=0.0, reply_after=5.0)
        assert loop.time() - started < 4.0
        server.acceptance_delay = 0.0
        await provider.send(message(idempotency_key="after"))
        await provider.aclose()
        # The connection that timed out is not reused.
        assert provider.connections_opened == 2
