"""Telling people from machines on the tracking routes. No I/O.

Mail security gateways fetch every link (and often every image) of a message on
delivery to check it; link unfurlers and HTTP libraries do the same later. Their hits
must not count as a person opening or clicking, nor start journeys. :func:`classify`
applies these rules, in order, and names the first that matches:

``head``
    A HEAD request: browsers GET; link checkers HEAD.
``no_user_agent``
    Every browser and mail client sends a User-Agent; scripts often do not.
``scanner:<name>``
    A User-Agent naming a known scanner, unfurler, headless browser or HTTP library
    (:data:`SCANNER_AGENTS`), or any agent calling itself a bot, crawler or spider.
``too_soon``
    (clicks) A click within ``click_min_seconds`` of the send: gateways click on
    delivery, people need longer to read.
``all_links``
    (clicks) Every tracked link of a message (at least ``all_links_min`` of them) hit
    within ``all_links_span``: people click one or two links, scanners click all.

Image proxies are not bots: Gmail (``GoogleImageProxy``) and Yahoo fetch the pixel
when the person opens the message, so those opens count (:func:`image_proxy` names
them). Apple Mail Privacy Protection prefetches every image of every message on
delivery from generic agents and Apple addresses; it cannot be told apart here, so
opens from Apple Mail users are over-counted (clicks are not affected).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

HitKind = Literal["open", "click"]

SCANNER_AGENTS: tuple[tuple[str, str], ...] = (
    # Mail security gateways that fetch links and images to check them.
    ("barracuda", "barracuda"),
    ("mimecast", "mimecast"),
    ("proofpoint", "proofpoint"),
    # Microsoft Safe Links and Outlook's link preview have announced themselves so.
    ("bingpreview", "bingpreview"),
    ("symantec", "symantec"),
    ("messagelabs", "messagelabs"),
    ("trendmicro", "trend micro"),
    ("trendmicro", "trendmicro"),
    ("fortinet", "fortiguard"),
    ("sophos", "sophos"),
    ("ironport", "ironport"),
    ("zscaler", "zscaler"),
    ("forcepoint", "forcepoint"),
    # Chat and social unfurlers: someone pasted the link, nobody clicked it.
    ("facebook", "facebookexternalhit"),
    ("skype", "skypeuripreview"),
    ("whatsapp", "whatsapp/"),
    # Headless browsers and HTTP libraries: automation, not a mail client.
    ("headless", "headlesschrome"),
    ("phantomjs", "phantomjs"),
    ("python", "python-requests"),
    ("python", "python-urllib"),
    ("python", "python-httpx"),
    ("python", "aiohttp"),
    ("curl", "curl/"),
    ("wget", "wget/"),
    ("go", "go-http-client"),
    ("java", "java/"),
    ("java", "apache-httpclient"),
    ("okhttp", "okhttp"),
    ("perl", "libwww-perl"),
)
"""(name, lower-case substring of the User-Agent) pairs; the name goes into the reason."""

# Words ending in bot/crawler/spider that are not automation: CUBOT is a phone brand.
_NOT_BOTS = frozenset({"cubot"})
_SELF_DECLARED = re.compile(r"[a-z0-9_.-]*(?:bot|crawler|spider)\b")

IMAGE_PROXIES: tuple[tuple[str, str], ...] = (
    ("google", "googleimageproxy"),
    ("yahoo", "yahoomailproxy"),
)
"""(name, substring) of image proxies that fetch the pixel when a person opens."""


@dataclass(frozen=True, slots=True, kw_only=True)
class BotRules:
    """The tunable thresholds.

    Attributes:
        click_min_seconds: a click sooner than this after the send is a scanner's.
        all_links_span: how close together all of a message's links must be hit.
        all_links_min: the fewest links a message must have for the all-links rule.
    """

    click_min_seconds: float = 5.0
    all_links_span: timedelta = timedelta(seconds=3)
    all_links_min: int = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Hit:
    """One request to a tracking route, with what is known about its message.

    Attributes:
        kind: ``open`` (pixel) or ``click``.
        method: the HTTP method.
        user_agent: the User-Agent header, if any.
        at: when it arrived.
        sent_at: when the message went to the provider (None: it is going right now).
        link_id: the clicked link.
        message_links: every tracked link of the message.
        recent_clicks: earlier clicks on the message's links within the all-links span,
            as (link id, when).
    """

    kind: HitKind
    method: str
    user_agent: str | None
    at: datetime
    sent_at: datetime | None
    link_id: uuid.UUID | None = None
    message_links: frozenset[uuid.UUID] = frozenset()
    recent_clicks: tuple[tuple[uuid.UUID, datetime], ...] = field(default=())


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """Whether a hit looks automated, and the rule that said so.

    Attributes:
        is_bot: the hit is a machine's.
        reason: the rule's code (see the module docstring); None for people.
        proxy: the image proxy that fetched an open on a person's behalf, if known.
    """

    is_bot: bool
    reason: str | None = None
    proxy: str | None = None


HUMAN = Verdict(is_bot=False)


def scanner_name(user_agent: str) -> str | None:
    """The scanner a User-Agent names, or None when it looks like a person's client."""
    lowered = user_agent.lower()
    for name, needle in SCANNER_AGENTS:
        if needle in lowered:
            return name
    for match in _SELF_DECLARED.finditer(lowered):
        word = match.group()
        if word not in _NOT_BOTS:
            return word
    return None


def image_proxy(user_agent: str | None) -> str | None:
    """The mail provider's image proxy a User-Agent names (an open by a person)."""
    if not user_agent:
        return None
    lowered = user_agent.lower()
    for name, needle in IMAGE_PROXIES:
        if needle in lowered:
            return name
    return None


def _all_links_hit(hit: Hit, rules: BotRules) -> bool:
    if hit.link_id is None or len(hit.message_links) < rules.all_links_min:
        return False
    since = hit.at - rules.all_links_span
    clicked: set[uuid.UUID] = {hit.link_id}
    clicked.update(link for link, at in hit.recent_clicks if at >= since)
    return hit.message_links <= clicked


def classify(hit: Hit, rules: BotRules | None = None) -> Verdict:
    """Apply the rules of the module docstring to ``hit``; the first match wins."""
    rules = rules or BotRules()
    if hit.method.upper() == "HEAD":
        return Verdict(is_bot=True, reason="head")
    agent = (hit.user_agent or "").strip()
    if not agent:
        return Verdict(is_bot=True, reason="no_user_agent")
    proxy = image_proxy(agent) if hit.kind == "open" else None
    if proxy is not None:
        return Verdict(is_bot=False, proxy=proxy)
    scanner = scanner_name(agent)
    if scanner is not None:
        return Verdict(is_bot=True, reason=f"scanner:{scanner}")
    if hit.kind == "click":
        elapsed = (hit.at - hit.sent_at).total_seconds() if hit.sent_at is not None else 0.0
        if elapsed < rules.click_min_seconds:
            return Verdict(is_bot=True, reason="too_soon")
        if _all_links_hit(hit, rules):
            return Verdict(is_bot=True, reason="all_links")
    return HUMAN
