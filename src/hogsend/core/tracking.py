"""Open and click tracking without I/O: signed tracking ids and the HTML rewrite.

A tracking token names one row (an ``email_sends`` id for the open pixel, a
``tracked_links`` id for a click) and proves that hogsend minted it: it is the 16 bytes
of the id followed by the first 16 bytes of HMAC-SHA256 over a per-kind tag and the id,
base64url without padding (43 characters). The tag makes an open token useless as a
click token and vice versa. Ids are random UUIDs, so the token is unguessable twice
over, and the redirect target is never in the token: a click goes only to the URL
recorded for the link when the message was sent.

:func:`track_html` rewrites every ``http(s)`` ``href`` of ``<a>`` and ``<area>`` tags
(parsed, so any quoting and entity-encoded URLs work) to a click URL, one link per
distinct URL, and adds the open pixel before ``</body>``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html as html_lib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Literal

from hogsend.core.tokens import InvalidToken, hmac_sha256

TrackingKind = Literal["open", "click"]

OPEN_PATH = "/t/o/"
CLICK_PATH = "/t/c/"
TRACK_ATTRIBUTE = "data-hogsend-track"
"""``<a href="..." data-hogsend-track="off">`` leaves that link alone (the attribute is
removed from the message either way)."""

TOKEN_LENGTH = 43
_MAC_BYTES = 16
_TAGS: dict[TrackingKind, bytes] = {
    "open": b"hogsend.track.open:",
    "click": b"hogsend.track.click:",
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _mac(kind: TrackingKind, ident: uuid.UUID, secret: bytes) -> bytes:
    return hmac_sha256(secret, _TAGS[kind] + ident.bytes)[:_MAC_BYTES]


def sign_id(kind: TrackingKind, ident: uuid.UUID, secret: bytes) -> str:
    """The token of ``ident`` for ``kind`` under ``secret``."""
    return _b64(ident.bytes + _mac(kind, ident, secret))


def verify_id(kind: TrackingKind, token: str, secret: bytes) -> uuid.UUID:
    """The id a genuine ``kind`` token names.

    Raises:
        InvalidToken: not a token of that kind signed with ``secret`` (any change to
            any character, another kind's token, another key, bad length or alphabet).
    """
    if len(token) != TOKEN_LENGTH:
        raise InvalidToken("malformed tracking token")
    try:
        raw = base64.urlsafe_b64decode(token + "=")
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed tracking token") from None
    # The last character carries two spare bits: only the canonical spelling is valid,
    # so exactly one string names each id.
    if len(raw) != 16 + _MAC_BYTES or _b64(raw) != token:
        raise InvalidToken("malformed tracking token")
    ident = uuid.UUID(bytes=raw[:16])
    # compare_digest: the time taken must not reveal how much of a forgery matched.
    if not hmac.compare_digest(raw[16:], _mac(kind, ident, secret)):
        raise InvalidToken("bad tracking token signature")
    return ident


def open_url(public_url: str, send_id: uuid.UUID, secret: bytes) -> str:
    """The open pixel's URL for one send."""
    return f"{public_url}{OPEN_PATH}{sign_id('open', send_id, secret)}"


def click_url(public_url: str, link_id: uuid.UUID, secret: bytes) -> str:
    """The click URL of one tracked link."""
    return f"{public_url}{CLICK_PATH}{sign_id('click', link_id, secret)}"


def is_trackable(url: str) -> bool:
    """Whether ``url`` is an absolute http(s) URL (mailto:, tel:, #anchors, relative: no)."""
    lowered = url.lower()
    return lowered.startswith(("http://", "https://")) and len(lowered) > len("https://")


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackedLink:
    """One distinct URL of a message and the id its click URL names."""

    id: uuid.UUID
    url: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TrackedHtml:
    """A message's HTML after tracking, and the links to record before it is sent.

    Attributes:
        html: the HTML to send.
        links: one entry per distinct rewritten URL, in order of first appearance.
    """

    html: str
    links: tuple[TrackedLink, ...]


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
    click_url_of: Callable[[uuid.UUID], str] | None,
    pixel_url: str | None,
    skip: Callable[[str], bool] = lambda url: False,
    new_id: Callable[[], uuid.UUID] = uuid.uuid4,
) -> TrackedHtml:
    """Rewrite the links of ``source`` and add the open pixel.

    Args:
        source: the rendered HTML part.
        click_url_of: the click URL of a link id; None leaves every link as it is.
        pixel_url: the open pixel's URL; None adds no pixel.
        skip: URLs to leave alone (the unsubscribe and preference links).
        new_id: makes the id of each distinct URL (random in production).

    Links inside HTML comments (Outlook's conditional blocks) are not seen and stay as
    they are; so do non-http(s) links and any tag marked ``data-hogsend-track="off"``.
    """
    links: dict[str, TrackedLink] = {}
    edits: list[tuple[int, int, str]] = []
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
            changed = marked
            if click_url_of is not None and not off:
                for index, (key, value) in enumerate(attrs):
                    if key != "href" or value is None:
                        continue
                    url = value.strip()  # browsers strip it too before following
                    if is_trackable(url) and not skip(url):
                        link = links.get(url)
                        if link is None:
                            link = links[url] = TrackedLink(id=new_id(), url=url)
                        attrs[index] = (key, click_url_of(link.id))
                        changed = True
                    break  # browsers follow the first href only
            if changed:
                name = tag[1:].split(None, 1)[0].split("/", 1)[0].rstrip(">")
                rebuilt = _start_tag(name, attrs, tag.rstrip("> \t\r\n").endswith("/"))
                edits.append((match.start(), match.end(), rebuilt))
    out: list[str] = []
    position = 0
    for start, end, replacement in edits:
        out += [source[position:start], replacement]
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
    return TrackedHtml(html=result, links=tuple(links.values()))


_OPEN_PIXEL = re.compile(
    r"<img\b[^>]*\bsrc\s*=\s*(?:\"[^\"]*/t/o/[^\"]*\"|'[^']*/t/o/[^']*')[^>]*>",
    re.IGNORECASE,
)


def strip_open_pixel(html: str) -> str:
    """``html`` without its open pixel: showing a sent message must not count as an open."""
    return _OPEN_PIXEL.sub("", html)
