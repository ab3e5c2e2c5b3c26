"""The bot and scanner rules of the tracking routes (pure code)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from hogsend.core.bots import BotRules, Hit, Verdict, classify, image_proxy, scanner_name

SENT = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
LATER = SENT + timedelta(minutes=5)
CHROME = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/124.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15"
    " (KHTML, like Gecko) Mobile/15E148"
)
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
CUBOT_PHONE = (
    "Mozilla/5.0 (Linux; Android 10; CUBOT_X30) AppleWebKit/537.36 (KHTML, like Gecko)"
    " Chrome/120.0 Mobile Safari/537.36"
)
A, B, C = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)


def click(**changes: object) -> Hit:
    values: dict[str, object] = {
        "kind": "click",
        "method": "GET",
        "user_agent": CHROME,
        "at": LATER,
        "sent_at": SENT,
        "link_id": A,
        "message_links": frozenset({A, B, C}),
    }
    values.update(changes)
    return Hit(**values)  # type: ignore[arg-type]


def opened(**changes: object) -> Hit:
    values: dict[str, object] = {
        "kind": "open",
        "method": "GET",
        "user_agent": CHROME,
        "at": SENT + timedelta(seconds=1),
        "sent_at": SENT,
    }
    values.update(changes)
    return Hit(**values)  # type: ignore[arg-type]


def test_people() -> None:
    assert classify(click()) == Verdict(is_bot=False)
    assert classify(click(user_agent=IPHONE)) == Verdict(is_bot=False)
    assert classify(click(user_agent=CUBOT_PHONE)) == Verdict(is_bot=False)
    # an open seconds after sending is a person (the delay rule is for clicks)
    assert classify(opened()) == Verdict(is_bot=False)


def test_head_is_a_bot_whatever_else() -> None:
    assert classify(click(method="HEAD")) == Verdict(is_bot=True, reason="head")
    assert classify(opened(method="head")) == Verdict(is_bot=True, reason="head")


@pytest.mark.parametrize("agent", [None, "", "   "])
def test_no_user_agent(agent: str | None) -> None:
    assert classify(click(user_agent=agent)) == Verdict(is_bot=True, reason="no_user_agent")
    assert classify(opened(user_agent=agent)).reason == "no_user_agent"


@pytest.mark.parametrize(
    ("agent", "name"),
    [
        ("Mozilla/5.0 (compatible; Barracuda Sentinel)", "barracuda"),
        ("Mimecast-URL-Protect/1.0", "mimecast"),
        ("Proofpoint URL Defense", "proofpoint"),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko)"
            " BingPreview/1.0b",
            "bingpreview",
        ),
        ("facebookexternalhit/1.1", "facebook"),
        ("Mozilla/5.0 HeadlessChrome/120.0.0.0 Safari/537.36", "headless"),
        ("python-requests/2.31.0", "python"),
        ("curl/8.5.0", "curl"),
        ("Go-http-client/1.1", "go"),
        ("Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)", "slackbot"),
        ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", "googlebot"),
        ("SomeCrawler/3.0", "somecrawler"),
    ],
)
def test_scanner_agents(agent: str, name: str) -> None:
    assert scanner_name(agent) == name
    assert classify(click(user_agent=agent)) == Verdict(is_bot=True, reason=f"scanner:{name}")
    assert classify(opened(user_agent=agent)).is_bot


def test_image_proxies_are_people_opening() -> None:
    assert image_proxy(GMAIL_PROXY) == "google"
    assert image_proxy("YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html")
    assert image_proxy(CHROME) is None
    assert image_proxy(None) is None
    assert classify(opened(user_agent=GMAIL_PROXY)) == Verdict(is_bot=False, proxy="google")
    # but a proxy does not click
    assert classify(click(user_agent=GMAIL_PROXY)).is_bot is False  # no rule matches it either


def test_too_soon_after_the_send() -> None:
    soon = click(at=SENT + timedelta(seconds=4.9))
    assert classify(soon) == Verdict(is_bot=True, reason="too_soon")
    assert classify(click(at=SENT + timedelta(seconds=5))).is_bot is False
    # still being sent (no sent_at yet): too soon by definition
    assert classify(click(sent_at=None)).reason == "too_soon"
    # the threshold is configurable, and 0 turns the rule off
    assert classify(soon, BotRules(click_min_seconds=0)).is_bot is False
    assert classify(click(), BotRules(click_min_seconds=600)).reason == "too_soon"


def test_all_links_within_the_span() -> None:
    recent = ((B, LATER - timedelta(seconds=3)), (C, LATER - timedelta(seconds=0.5)))
    assert classify(click(recent_clicks=recent)) == Verdict(is_bot=True, reason="all_links")
    # one link short, or one of them outside the span
    assert not classify(click(recent_clicks=recent[:1])).is_bot
    stale = ((B, LATER - timedelta(seconds=3.1)), (C, LATER - timedelta(seconds=1)))
    assert not classify(click(recent_clicks=stale)).is_bot
    # the same link again does not complete the set
    again = ((A, LATER - timedelta(seconds=1)), (B, LATER - timedelta(seconds=1)))
    assert not classify(click(recent_clicks=again)).is_bot
    # a one-link message is never "all links"
    assert not classify(click(message_links=frozenset({A}))).is_bot
    wider = BotRules(all_links_span=timedelta(seconds=30))
    assert classify(click(recent_clicks=stale), wider).reason == "all_links"


def test_rule_order() -> None:
    # HEAD first, then the agent, then timing
    assert classify(click(method="HEAD", user_agent=None, sent_at=None)).reason == "head"
    assert classify(click(user_agent="curl/8", sent_at=None)).reason == "scanner:curl"
