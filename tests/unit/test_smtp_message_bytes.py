"""The SMTP provider's direct MIME writer, read back by the stdlib's strict parser."""

from __future__ import annotations

import binascii
import email
import email.policy
import re
from email.message import EmailMessage
from unittest import mock

import pytest
from aiosmtplib.email import flatten_message
from hypothesis import given, settings
from hypothesis import strategies as st

from hogsend.channels.email.message import OutgoingEmail
from hogsend.channels.email.smtp import (
    _address_header,
    _boundary,
    _header_line,
    _headers,
    build_mime,
    message_bytes,
)
from hogsend.core.ids import _BATCH

LONG_URL = "https://mail.example.test/v1/email/one-click?token=" + "x" * 300


def parse(data: bytes) -> EmailMessage:
    # As a mailbox stores it: CRLF on the wire, LF on disk.
    parsed = email.message_from_bytes(data.replace(b"\r\n", b"\n"), policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def written(message: OutgoingEmail) -> tuple[bytes, EmailMessage]:
    data = message_bytes(message)
    assert data is not None
    data.decode("ascii")  # 7-bit clean
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")  # CRLF only
    return data, parse(data)


def sample(**changes: object) -> OutgoingEmail:
    values: dict[str, object] = {
        "from_email": "Quickstart <hello@quickstart.test>",
        "to": "ann@example.com",
        "subject": "Your trial ends in 3 days",
        "html": '<p>Hello</p>\n<p><a href="https://example.com/a?b=c">Go</a></p>',
        "text": "Hello\n\nGo: https://example.com/a?b=c",
        "reply_to": "help@quickstart.test",
        "headers": {
            "List-Unsubscribe": f"<{LONG_URL}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Hogsend-Send-Id": "0b5c7a52-6f8e-4f61-9d53-3d3b3fbc1f6a",
        },
        "idempotency_key": "journey:ann:1",
        **changes,
    }
    return OutgoingEmail(**values)  # type: ignore[arg-type]


def test_reads_back_like_the_stdlib_built_message() -> None:
    message = sample()
    _, mine = written(message)
    theirs = parse(bytes(build_mime(message)))
    for name in ("From", "To", "Subject", "Reply-To", "Message-ID", "List-Unsubscribe"):
        assert mine[name] == theirs[name], name
    assert mine["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert mine["MIME-Version"] == "1.0"
    assert mine.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in mine.iter_parts()] == ["text/plain", "text/html"]
    for subtype in ("plain", "html"):
        body, reference = mine.get_body((subtype,)), theirs.get_body((subtype,))
        assert body is not None
        assert reference is not None
        assert body.get_content() == reference.get_content()
        assert body.get_content_charset() == "utf-8"
    assert not mine.defects
    assert all(not part.defects for part in mine.walk())
    assert mine["List-Unsubscribe"] == f"<{LONG_URL}>"  # unfolds to the exact URL


def test_non_ascii_names_subjects_and_bodies() -> None:
    body = "Grüße, Zoë — " + "é" * 200 + "\nline = two\n. a dot line\n"
    message = sample(
        from_email="Zoë Ünal <zoe@example.com>",
        subject="Ihre Testphase endet — schöne Grüße " + "ä" * 40,
        text=body,
        html=f"<p>{body}</p>",
    )
    _, parsed = written(message)
    assert parsed["Subject"] == message.subject
    assert parsed["From"].addresses[0].display_name == "Zoë Ünal"
    assert parsed["From"].addresses[0].addr_spec == "zoe@example.com"
    plain = parsed.get_body(("plain",))
    assert plain is not None
    assert plain.get_content() == body
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert not any(part.defects for part in parsed.walk())


def test_single_part_and_display_names_needing_quotes() -> None:
    _, parsed = written(sample(html=None, from_email='"Acme, Inc." <news@acme.test>'))
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content() == "Hello\n\nGo: https://example.com/a?b=c\n"
    assert parsed["From"].addresses[0].display_name == "Acme, Inc."
    _, html_only = written(sample(text=None))
    assert html_only.get_content_type() == "text/html"


def test_a_long_line_is_quoted_printable_and_survives() -> None:
    text = "x" * 2000
    _, parsed = written(sample(text=text, html=None))
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable"
    assert parsed.get_content() == text + "\n"


def test_header_injection_is_refused() -> None:
    with pytest.raises(ValueError, match="line break"):
        message_bytes(sample(subject="Hi\r\nBcc: victim@example.com"))
    with pytest.raises(ValueError, match="line break"):
        message_bytes(sample(headers={"X-Extra": "a\nb"}))


def test_the_stdlib_path_refuses_header_injection_too() -> None:
    with pytest.raises(ValueError, match="line break"):
        build_mime(sample(headers={"X-Extra": "a\r\nBcc: victim@example.com"}))


def test_the_stdlib_path_folds_list_unsubscribe_without_encoded_words() -> None:
    # A non-ASCII address goes through build_mime and aiosmtplib's flattening; the
    # email package alone would write the long URIs as RFC 2047 encoded words, which
    # mailbox providers do not decode in List-Unsubscribe.
    both = f"<{LONG_URL}>, <mailto:unsubscribe@quickstart.test?subject=unsubscribe%20{'y' * 300}>"
    message = sample(to="zoë@exämple.com", headers={"List-Unsubscribe": both})
    data = flatten_message(build_mime(message), utf8=True)
    assert b"=?" not in data.split(b"\r\n\r\n")[0]
    lines = data.split(b"\r\n")
    assert all(len(line) <= 998 for line in lines)
    at = next(i for i, line in enumerate(lines) if line.startswith(b"List-Unsubscribe:"))
    assert lines[at] == f"List-Unsubscribe: <{LONG_URL}>,".encode()
    assert lines[at + 1].startswith(b" <mailto:")
    assert parse(data)["List-Unsubscribe"] == both
    # The same lines as the direct writer's.
    direct = message_bytes(sample(headers={"List-Unsubscribe": both}))
    assert direct is not None
    assert b"\r\n".join(lines[at : at + 2]) in direct


def test_several_reply_to_addresses() -> None:
    _, parsed = written(sample(reply_to='help@acme.test, "Ops, Team" <ops@acme.test>'))
    assert [a.addr_spec for a in parsed["Reply-To"].addresses] == [
        "help@acme.test",
        "ops@acme.test",
    ]
    assert parsed["Reply-To"].addresses[1].display_name == "Ops, Team"


def test_a_non_ascii_address_is_left_to_the_stdlib() -> None:
    assert message_bytes(sample(to="zoë@exämple.com")) is None


def test_the_message_id_is_the_given_one() -> None:
    _, parsed = written(sample())
    assert parsed["Message-ID"] == sample().message_id()
    data = message_bytes(sample(idempotency_key=None), message_id="<fixed@quickstart.test>")
    assert data is not None
    assert parse(data)["Message-ID"] == "<fixed@quickstart.test>"


@pytest.mark.parametrize(
    "to",
    [
        "ann@example.com",
        "ann.lee+news@mail.example.co.uk",
        "o'brien@example.com",
        "Ann Lee <ann@example.com>",
        '"Lee, Ann" <ann@example.com>',
        "Zoë Lee <zoe@example.com>",
    ],
)
def test_recipient_headers_read_back_as_the_stdlib_writes_them(to: str) -> None:
    # Bare addresses skip the email package's parser; the rest still go through it.
    _, parsed = written(sample(to=to))
    expected = build_mime(sample(to=to))
    assert parsed["To"].addresses == expected["To"].addresses
    assert parsed["From"].addresses == expected["From"].addresses


def test_the_envelope_sender_is_the_from_address() -> None:
    from hogsend.channels.email.smtp import envelope_sender

    assert envelope_sender("Quickstart <hello@quickstart.test>") == "hello@quickstart.test"
    assert envelope_sender("hello@quickstart.test") == "hello@quickstart.test"
    assert sample().message_id().endswith("@quickstart.test>")
    assert sample(from_email="").message_id().endswith("@hogsend.local>")


# --------------------------------------------------------------------------- 8BITMIME

PREHEADER_FILL = "\u034f\u200c&nbsp;" * 30  # what the quickstart's preheader pads with


def written_8bit(message: OutgoingEmail) -> tuple[bytes, EmailMessage]:
    data = message_bytes(message, eight_bit=True)
    assert data is not None
    head, _, _ = data.partition(b"\r\n\r\n")
    head.decode("ascii")  # the headers stay ASCII; only an 8bit part's text is not
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert b"\x00" not in data
    return data, parse(data)


def encodings(parsed: EmailMessage) -> list[str]:
    return [str(part["Content-Transfer-Encoding"]) for part in parsed.iter_parts()]


def test_8bit_parts_read_back_like_the_stdlib_built_message() -> None:
    # Byte for byte different (8bit text, not quoted-printable), parse for parse the same.
    html = (
        '<!DOCTYPE html><html lang="en"><body style="margin: 0;font-family: Helvetica, '
        'Arial, sans-serif;color: #1f2328;line-height: 1.5;"><div style="display:none">'
        f"Choose a plan before March 14.{PREHEADER_FILL}</div>\n"
        '<p>Grüße, Zoë — <a href="https://mail.example.test/c/abc?u=1&amp;v=2">Plans</a></p>\n'
        "<p>. a line that starts with a dot</p>\n"
    )
    text = "Grüße, Zoë — trial ends soon\n\n. a dot line\nUnsubscribe · Preferences\n"
    message = sample(html=html, text=text, subject="Ihre Testphase endet — schöne Grüße")
    data, mine = written_8bit(message)
    theirs = parse(bytes(build_mime(message)))
    assert encodings(mine) == ["8bit", "8bit"]
    for name in ("From", "To", "Subject", "Reply-To", "Message-ID", "List-Unsubscribe"):
        assert mine[name] == theirs[name], name
    for subtype in ("plain", "html"):
        body, reference = mine.get_body((subtype,)), theirs.get_body((subtype,))
        assert body is not None
        assert reference is not None
        assert body.get_content() == reference.get_content()
    assert all(not part.defects for part in mine.walk())
    # Smaller than the 7-bit writing of the same message, in fewer lines.
    seven = message_bytes(message)
    assert seven is not None
    assert len(data) < len(seven)
    assert data.count(b"\r\n") < seven.count(b"\r\n")


def test_8bit_is_only_for_what_needs_it() -> None:
    # An ASCII part with short lines stays 7bit (the message stays ASCII: no BODY=8BITMIME).
    data, parsed = written_8bit(sample())
    assert data.isascii()
    assert encodings(parsed) == ["7bit", "7bit"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("é" * 500, "a line of 1,000 octets (500 characters)"),
        ("x" * 999, "a long ASCII line"),
        ("é\x00é", "a NUL"),
    ],
)
def test_8bit_falls_back_to_quoted_printable(text: str, why: str) -> None:
    _, parsed = written_8bit(sample(text=text, html=None))
    assert parsed["Content-Transfer-Encoding"] == "quoted-printable", why
    assert parsed.get_content() == text + "\n", why


def test_a_line_of_exactly_998_octets_goes_8bit() -> None:
    text = "é" * 499  # 998 octets
    data, parsed = written_8bit(sample(text=text, html=None))
    assert parsed["Content-Transfer-Encoding"] == "8bit"
    assert text.encode() in data.split(b"\r\n")
    assert parsed.get_content() == text + "\n"


@pytest.mark.parametrize("eight_bit", [False, True])
def test_line_breaks_are_the_email_packages(eight_bit: bool) -> None:
    # CR, LF and CRLF break lines; a form feed, U+2028 or NEL stays in its line.
    text = "a\r\nb\rc\nform\x0cfeed\u2028same line\x85é\n"
    data = message_bytes(sample(text=text, html=None), eight_bit=eight_bit)
    assert data is not None
    mine = parse(data)
    theirs = parse(bytes(build_mime(sample(text=text, html=None))))
    assert mine.get_content() == theirs.get_content()
    assert mine.get_content() == "a\nb\nc\nform\x0cfeed\u2028same line\x85é\n"


@pytest.mark.parametrize(
    ("text", "encoding"),
    [
        # Long ASCII line, a few multibyte characters elsewhere: fits by the whole
        # body's count of extra octets.
        ("x" * 900 + "\n" + "é" * 60, "8bit"),
        # Too many extra octets in all for that count, yet no line over 998 octets.
        ("x" * 900 + "\n" + "é" * 200, "8bit"),
        # The multibyte characters in the long line itself: 1,000 octets.
        ("x" * 700 + "é" * 150, "quoted-printable"),
    ],
)
def test_long_lines_with_multibyte_characters(text: str, encoding: str) -> None:
    _, parsed = written_8bit(sample(text=text, html=None))
    assert parsed["Content-Transfer-Encoding"] == encoding
    assert parsed.get_content() == text + "\n"


def test_the_date_header_is_now() -> None:
    # Formatted once per second and shared: still this second's, as formatdate gives.
    import time
    from email.utils import parsedate_to_datetime

    for _ in range(2):
        before = int(time.time())
        data, parsed = written(sample())
        after = time.time()
        sent = parsedate_to_datetime(parsed["Date"]).timestamp()
        assert before <= sent <= after
        assert b" GMT\r\n" in data


# -- the writer against the one it replaced ----------------------------------------------
# Session 10 moved the parts to bytes (one encoding per part, the line limit counted in
# octets directly). The writer below is the text-based one it replaced, kept here to
# show that every message is written to the same bytes.


def _reference_part(body: str, subtype: str, eight_bit: bool) -> list[str]:
    if "\r" in body:
        body = body.replace("\r\n", "\n").replace("\r", "\n")
    if not body.endswith("\n"):
        body += "\n"
    lines = body[:-1].split("\n")
    longest = max(map(len, lines))
    if "\x00" in body:
        encoding = "quoted-printable"
    elif body.isascii() and longest <= 998:
        encoding = "7bit"
    elif eight_bit and max(len(line.encode()) for line in lines) <= 998:
        encoding = "8bit"
    else:
        encoding = "quoted-printable"
    if encoding == "quoted-printable":
        text = binascii.b2a_qp(body.encode("utf-8"), istext=True).decode("ascii")[:-1]
    else:
        text = body[:-1]
    return [
        f'Content-Type: text/{subtype}; charset="utf-8"',
        f"Content-Transfer-Encoding: {encoding}",
        "",
        text.replace("\n", "\r\n"),
    ]


_ADDRESSES = ("From", "To", "Reply-To")


def _reference_bytes(message: OutgoingEmail, boundary: str, eight_bit: bool) -> bytes:
    lines = [
        _header_line(name, _address_header(value) or "" if name in _ADDRESSES else value)
        for name, value in _headers(message, message.message_id())
    ]
    lines.append("MIME-Version: 1.0")
    parts = [(b, s) for b, s in ((message.text, "plain"), (message.html, "html")) if b is not None]
    if len(parts) == 2:
        lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
        lines.append("")
        for body, subtype in parts:
            lines.append(f"--{boundary}")
            lines.extend(_reference_part(body, subtype, eight_bit))
            lines.append("")
        lines.append(f"--{boundary}--")
    else:
        lines.extend(_reference_part(parts[0][0], parts[0][1], eight_bit))
    lines.append("")
    return "\r\n".join(lines).encode("utf-8")


# Pieces that move the writer's choices: line breaks of each kind, NUL, dots, the
# quoted-printable escape, multibyte characters, and runs long enough to pass 998 octets.
_PIECE = st.one_of(
    st.text(alphabet="ab .=\t\r\n\x00\x0c\u2028é—😀", max_size=12),
    st.builds(
        lambda char, count: char * count,
        st.sampled_from("xé—😀 "),
        # Near 998 octets in each width (997, 998, 999 of x; 998 and 1,000 of é ...).
        st.integers(0, 1100) | st.sampled_from([249, 250, 332, 333, 499, 500, 997, 998, 999]),
    ),
)
_BODY = st.lists(_PIECE, max_size=6).map("".join)
DATE = "Sun, 29 Nov 2026 21:30:00 GMT"


@settings(max_examples=300, deadline=None)
@given(text=st.none() | _BODY, html=st.none() | _BODY, eight_bit=st.booleans())
def test_the_same_bytes_as_the_text_based_writer(
    text: str | None, html: str | None, eight_bit: bool
) -> None:
    if text is None and html is None:
        text = ""
    message = sample(text=text, html=html)
    # One Date for both writers (the clock may pass a second between them).
    with mock.patch("hogsend.channels.email.smtp._date_header", return_value=DATE):
        data = message_bytes(message, eight_bit=eight_bit)
        assert data is not None
        found = re.search(rb'boundary="([^"]+)"', data)
        boundary = found.group(1).decode() if found else ""
        assert data == _reference_bytes(message, boundary, eight_bit)


def test_boundaries_are_random_and_never_repeat_across_batches() -> None:
    # More than one batch of random bytes: the refill must not start over.
    boundaries = [_boundary() for _ in range(3 * _BATCH + 5)]
    assert len(set(boundaries)) == len(boundaries)
    assert all(re.fullmatch(r"=_[0-9a-f]{32}", b) for b in boundaries)
    written = [message_bytes(sample()) or b"" for _ in range(2)]
    found = [re.search(rb'boundary="(=_[0-9a-f]{32})"', data) for data in written]
    assert found[0] is not None
    assert found[1] is not None
    assert found[0].group(1) != found[1].group(1)
