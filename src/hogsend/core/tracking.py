"""Open and click tracking without I/O: signed tracking tokens and the HTML rewrite.

An open token names one ``email_sends`` row and proves that hogsend minted it: the 16
bytes of the id followed by the first 16 bytes of HMAC-SHA256 over a per-kind tag and
the id, base64url without padding (43 characters).

A click token names one link of one message: the send's id, the id of the message's
:class:`LinkSet` (its tracked URLs in order, stored once in ``tracked_link_sets`` for
every message with the same URLs) and the link's number in it, followed by the MAC of
all three (67 characters). The redirect target is never in the token: a click goes
only to the URL the set recorded before the message was sent, and changing the send,
the set or the number breaks the MAC. Click tokens made before migration 0017 are 43
characters naming a ``tracked_links`` row, and still verify (:func:`verify_click`).
Each kind has its own MAC tag, so no token stands in for another kind's.

:func:`track_html` rewrites every ``http(s)`` ``href`` of ``<a>`` and ``<area>`` tags
(parsed, so any quoting and entity-encoded URLs work) to a click URL, one link number
per distinct URL, and adds the open pixel before ``</body>``.
"""

from __future__ import annotations

import binascii
import hashlib
import hmac
import html as html_lib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Literal

from hogsend.core.tokens import InvalidToken, b64url, hmac_sha256, unb64url

TrackingKind = Literal["open", "click"]

OPEN_PATH = "/t/o/"
CLICK_PATH = "/t/c/"
TRACK_ATTRIBUTE = "data-hogsend-track"
"""``<a href="..." data-hogsend-track="off">`` leaves that link alone (the attribute is
removed from the message either way)."""

TOKEN_LENGTH = 43
"""An open token's length (and a click token's from before migration 0017)."""
CLICK_TOKEN_LENGTH = 67
"""A click token's length: send id, link set id, link number (2 bytes) and the MAC."""
MAX_LINKS = 1 << 16
"""Distinct URLs tracked per message (a link number is 2 bytes); later ones stay as they are."""
_MAC_BYTES = 16
_TAGS: dict[TrackingKind, bytes] = {
    "open": b"hogsend.track.open:",
    "click": b"hogsend.track.click:",
}
_LINK_TAG = b"hogsend.track.link:"
_CLICK_PAYLOAD = 16 + 16 + 2


def _mac(kind: TrackingKind, ident: uuid.UUID, secret: bytes) -> bytes:
    return hmac_sha256(secret, _TAGS[kind] + ident.bytes)[:_MAC_BYTES]


def sign_id(kind: TrackingKind, ident: uuid.UUID, secret: bytes) -> str:
    """The token of ``ident`` for ``kind`` under ``secret``."""
    return b64url(ident.bytes + _mac(kind, ident, secret))


def verify_id(kind: TrackingKind, token: str, secret: bytes) -> uuid.UUID:
    """The id a genuine ``kind`` token names.

    Raises:
        InvalidToken: not a token of that kind signed with ``secret`` (any change to
            any character, another kind's token, another key, bad length or alphabet).
    """
    raw = _decode(token, TOKEN_LENGTH, 16 + _MAC_BYTES)
    ident = uuid.UUID(bytes=raw[:16])
    # compare_digest: the time taken must not reveal how much of a forgery matched.
    if not hmac.compare_digest(raw[16:], _mac(kind, ident, secret)):
        raise InvalidToken("bad tracking token signature")
    return ident


def _decode(token: str, length: int, size: int) -> bytes:
    if len(token) != length:
        raise InvalidToken("malformed tracking token")
    try:
        raw = unb64url(token)
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed tracking token") from None
    # The last character carries spare bits: only the canonical spelling is valid, so
    # exactly one string names each id.
    if len(raw) != size or b64url(raw) != token:
        raise InvalidToken("malformed tracking token")
    return raw


@dataclass(frozen=True, slots=True, kw_only=True)
class LinkSet:
    """The tracked URLs of a message in order, named by their content.

    Every message with the same URLs (a campaign's, a template's) shares one set, so
    storing it once serves them all; a click token names the set and a link number.
    """

    id: uuid.UUID
    urls: tuple[str, ...]


def link_set(urls: tuple[str, ...]) -> LinkSet:
    """The set of ``urls``: its id is the first 16 bytes of SHA-256 over them.

    Each URL is length-prefixed, so no two lists hash the same input.
    """
    digest = hashlib.sha256()
    for url in urls:
        data = url.encode()
        digest.update(len(data).to_bytes(4, "big"))
        digest.update(data)
    return LinkSet(id=uuid.UUID(bytes=digest.digest()[:16]), urls=urls)


def link_id(send_id: uuid.UUID, number: int) -> uuid.UUID:
    """The id of link ``number`` of one message (``linkId`` of ``email.clicked``).

    Derived, not stored: one per link per message, as each link's row id was before
    link sets.
    """
    return uuid.uuid5(send_id, str(number))


@dataclass(frozen=True, slots=True, kw_only=True)
class SignedClick:
    """What a genuine click token names: link ``number`` of ``link_set_id``, in one send."""

    send_id: uuid.UUID
    link_set_id: uuid.UUID
    number: int


def _click_payload(send_id: uuid.UUID, link_set_id: uuid.UUID, number: int) -> bytes:
    return send_id.bytes + link_set_id.bytes + number.to_bytes(2, "big")


def _click_mac(payload: bytes, secret: bytes) -> bytes:
    return hmac_sha256(secret, _LINK_TAG + payload)[:_MAC_BYTES]


def sign_click(send_id: uuid.UUID, link_set_id: uuid.UUID, number: int, secret: bytes) -> str:
    """The click token of link ``number`` of a set, in the message of ``send_id``."""
    payload = _click_payload(send_id, link_set_id, number)
    return b64url(payload + _click_mac(payload, secret))


def verify_click(token: str, secret: bytes) -> SignedClick | uuid.UUID:
    """What a genuine click token names.

    A :class:`SignedClick`, or for a token made before migration 0017 the id of its
    ``tracked_links`` row. Whether the set has that many links is the caller's check.

    Raises:
        InvalidToken: not a click token signed with ``secret`` (as :func:`verify_id`).
    """
    if len(token) == TOKEN_LENGTH:
        return verify_id("click", token, secret)
    raw = _decode(token, CLICK_TOKEN_LENGTH, _CLICK_PAYLOAD + _MAC_BYTES)
    payload = raw[:_CLICK_PAYLOAD]
    if not hmac.compare_digest(raw[_CLICK_PAYLOAD:], _click_mac(payload, secret)):
        raise InvalidToken("bad tracking token signature")
    return SignedClick(
        send_id=uuid.UUID(bytes=payload[:16]),
        link_set_id=uuid.UUID(bytes=payload[16:32]),
        number=int.from_bytes(payload[32:], "big"),
    )


def open_url(public_url: str, send_id: uuid.UUID, secret: bytes) -> str:
    """The open pixel's URL for one send."""
    return f"{public_url}{OPEN_PATH}{sign_id('open', send_id, secret)}"


def click_url(
    public_url: str, send_id: uuid.UUID, links: LinkSet, number: int, secret: bytes
) -> str:
    """The click URL of link ``number`` of ``links`` in the message of ``send_id``."""
    return f"{public_url}{CLICK_PATH}{sign_click(send_id, links.id, number, secret)}"


def is_trackable(url: str) -> bool:
    """Whether ``url`` is an absolute http(s) URL (mailto:, tel:, #anchors, relative: no)."""
    lowered = url.lower()
    return lowered.startswith(("http://", "https://")) and len(lowered) > len("https://")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackedHtml:
    """A message's HTML after tracking, and the links to record before it is sent.

    Attributes:
        html: the HTML to send.
        links: the distinct rewritten URLs in order of first appearance (link number =
            position); None when no link was rewritten.
    """

    html: str
    links: LinkSet | None


# One pass finds link start tags, stepping over the parts of a document whose "<a"
# is not a tag: comments (Outlook's conditional blocks included) and raw-text elements.
_SCAN = re.compile(
    r"""(?P<opaque><!--.*?(?:-->|\Z)"""
    r"""|<(?P<raw>script|style|textarea|title)(?=[\s/>]).*?(?:</(?P=raw)\s*>|\Z))"""
    r"""|(?P<tag><(?:a|area)(?=[\s/>])(?:[^>"']|"[^"]*"|'[^']*')*>)""",
    re.IGNORECASE | re.DOTALL,
)


class _TagAttributes(HTMLParser):
    """Parses one start tag's attributes exactly as the standard library's parser does."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.name = ""
        self.attrs: list[tuple[str, str | None]] = []

    def read(self, tag: str) -> list[tuple[str, str | None]]:
        self.reset()
        self.name, self.attrs = "", []
        self.feed(tag)
        self.close()
        return self.attrs

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.name, self.attrs = tag, attrs

    handle_startendtag = handle_starttag


def _start_tag(name: str, attrs: list[tuple[str, str | None]], self_closing: bool) -> str:
    parts = [f"<{name}"]
    for key, value in attrs:
        parts.append(f" {key}" if value is None else f' {key}="{html_lib.escape(value)}"')
    parts.append(" />" if self_closing else ">")
    return "".join(parts)


def _pixel(url: str) -> str:
    return (
        f'<img src="{html_lib.escape(url)}" width="1" height="1" alt="" border="0"'
        ' style="display:block;width:1px;height:1px;border:0;margin:0;padding:0" />'
    )


def track_html(
    source: str,
    *,
    click_url_of: Callable[[LinkSet, int], str] | None,
    pixel_url: str | None,
    skip: Callable[[str], bool] = lambda url: False,
) -> TrackedHtml:
    """Rewrite the links of ``source`` and add the open pixel.

    Args:
        source: the rendered HTML part.
        click_url_of: the click URL of a link number of the message's set; None leaves
            every link as it is.
        pixel_url: the open pixel's URL; None adds no pixel.
        skip: URLs to leave alone (the unsubscribe and preference links).

    Links inside HTML comments (Outlook's conditional blocks) are not seen and stay as
    they are; so do non-http(s) links, any tag marked ``data-hogsend-track="off"`` and
    distinct URLs past :data:`MAX_LINKS`.
    """
    numbers: dict[str, int] = {}
    # (start, end, tag name, attributes, self-closing, (href index, link number) or None)
    edits: list[tuple[int, int, str, list[tuple[str, str | None]], bool, tuple[int, int] | None]]
    edits = []
    lowered = source.lower()
    if (click_url_of is not None and "href" in lowered) or TRACK_ATTRIBUTE in lowered:
        parser = _TagAttributes()
        for match in _SCAN.finditer(source):
            tag = match.group("tag")
            if tag is None:
                continue  # a comment or raw text: nothing in it is a link
            attrs = parser.read(tag)
            marked = any(key == TRACK_ATTRIBUTE for key, _ in attrs)
            off = any(
                key == TRACK_ATTRIBUTE and (value or "").strip().lower() == "off"
                for key, value in attrs
            )
            attrs = [(key, value) for key, value in attrs if key != TRACK_ATTRIBUTE]
            link: tuple[int, int] | None = None
            if click_url_of is not None and not off:
                for index, (key, value) in enumerate(attrs):
                    if key != "href" or value is None:
                        continue
                    url = value.strip()  # browsers strip it too before following
                    if is_trackable(url) and not skip(url):
                        number = numbers.get(url)
                        if number is None and len(numbers) < MAX_LINKS:
                            number = numbers[url] = len(numbers)
                        if number is not None:
                            link = (index, number)
                    break  # browsers follow the first href only
            if marked or link is not None:
                name = tag[1:].split(None, 1)[0].split("/", 1)[0].rstrip(">")
                closed = tag.rstrip("> \t\r\n").endswith("/")
                edits.append((match.start(), match.end(), name, attrs, closed, link))
    # The click URLs name the set, known once every link is found.
    links = link_set(tuple(numbers)) if numbers else None
    out: list[str] = []
    position = 0
    for start, end, name, attrs, closed, link in edits:
        if link is not None and links is not None and click_url_of is not None:
            index, number = link
            attrs[index] = ("href", click_url_of(links, number))
        out += [source[position:start], _start_tag(name, attrs, closed)]
        position = end
    out.append(source[position:])
    result = "".join(out)
    if pixel_url is not None:
        body_end = (result.lower() if edits else lowered).rfind("</body")
        pixel = _pixel(pixel_url)
        if body_end == -1:
            result += pixel
        else:
            result = result[:body_end] + pixel + result[body_end:]
    return TrackedHtml(html=result, links=links)


_OPEN_PIXEL = re.compile(
    r"<img\b[^>]*\bsrc\s*=\s*(?:\"[^\"]*/t/o/[^\"]*\"|'[^']*/t/o/[^']*')[^>]*>",
    re.IGNORECASE,
)


def strip_open_pixel(html: str) -> str:
    """``html`` without its open pixel: showing a sent message must not count as an open."""
    return _OPEN_PIXEL.sub("", html)
