"""The preference centre and the one-click page in a real headless Chromium.

A live uvicorn serves the API on 127.0.0.1; the real mailer sends a newsletter to a real
aiosmtpd server with ``HOGSEND_PUBLIC_URL`` pointing at that server, and the browser
opens the links found in the delivered message, ticks boxes and presses buttons, with
JavaScript on and off. Debian's ``/usr/bin/chromium`` is driven through Playwright
(``make test`` installs it; without it this test fails rather than skips).
"""

from __future__ import annotations

import asyncio
import os
import re
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from sqlalchemy import text
from studio_tab import CHROMIUM, CHROMIUM_ARGS

from hogsend import Hogsend, define_list
from hogsend.api import create_api
from hogsend.channels.email import SmtpProvider
from hogsend.channels.mailer import Mailer, SendRequest
from hogsend.db.engine import make_async_engine
from hogsend.settings import Settings
from live_server import live_server
from mail_sink import Sink, free_port

SECRET = "b" * 40
T = TypeVar("T")

pytestmark = pytest.mark.slow


def in_own_loop(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` to completion in a thread of its own: Playwright's sync API keeps an
    event loop running in this one, where asyncio.run refuses to start."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(work())).result()


def make_app(root: Path) -> Hogsend:
    templates = root / "templates"
    templates.mkdir()
    (templates / "news.html").write_text(
        "{#---\nsubject: Our news\ncategory: newsletter\n---#}\n<p>News</p>"
        '<p><a href="{{ preferences_url }}">Email preferences</a></p>'
    )
    return Hogsend(
        lists=[
            define_list(
                id="newsletter",
                name="Newsletter",
                description="Product news, monthly",
                default_opt_in=True,
            ),
            define_list(id="beta", name="Beta programme"),
        ],
        templates=templates,
    )


@dataclass
class World:
    app: Hogsend
    settings: Settings
    base: str
    sink: Sink
    smtp_port: int
    database_url: str

    def mail_newsletter(self, address: str) -> tuple[uuid.UUID, dict[str, str]]:
        """A new contact, sent the newsletter for real: its id and the message's links."""
        return in_own_loop(lambda: self._mail(address))

    async def _mail(self, address: str) -> tuple[uuid.UUID, dict[str, str]]:
        engine = make_async_engine(self.database_url)
        provider = SmtpProvider(host="127.0.0.1", port=self.smtp_port, tls="none", pool_size=1)
        try:
            async with engine.begin() as conn:
                contact_id = (
                    await conn.execute(
                        text("INSERT INTO contacts (email) VALUES (:e) RETURNING id"),
                        {"e": address},
                    )
                ).scalar_one()
            mailer = Mailer(self.app, self.settings, engine, provider)
            outcome = await mailer.send(
                SendRequest(template="news", contact_id=contact_id, kind="campaign")
            )
            assert outcome.decision == "sent"
        finally:
            await provider.aclose()
            await engine.dispose()
        message = self.sink.messages[-1]
        assert message["To"] == address
        html = message.get_body(("html",))
        assert html is not None
        [preferences] = [
            unescape(href)
            for href in re.findall(r'href="([^"]+)"', html.get_content())
            if "/v1/email/preferences" in href
        ]
        return contact_id, {
            "preferences": preferences,
            "one_click": message["List-Unsubscribe"][1:-1],
        }

    def query(self, sql: str, **params: object) -> list[dict[str, Any]]:
        async def run() -> list[dict[str, Any]]:
            engine = make_async_engine(self.database_url)
            try:
                async with engine.connect() as conn:
                    return [dict(r._mapping) for r in await conn.execute(text(sql), params)]
            finally:
                await engine.dispose()

        return in_own_loop(run)


@pytest.fixture
def world(tmp_path: Path, database_url: str, sink: tuple[Sink, int]) -> Iterator[World]:
    port = free_port()
    settings = Settings(
        env="test",
        database_url=database_url,
        secret_key=SECRET,
        public_url=f"http://127.0.0.1:{port}",
        log_level="warning",
    )
    app = make_app(tmp_path)
    with live_server(create_api(app, settings), port) as base:
        assert httpx.get(base + "/v1/health", timeout=5).status_code == 200
        yield World(app, settings, base, *sink, database_url)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def open_page(browser: Browser, *, javascript: bool) -> tuple[Page, list[str]]:
    """A fresh context (no cookies) and the URLs of every request the page makes."""
    context = browser.new_context(java_script_enabled=javascript)
    page = context.new_page()
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    return page, requested


def choices(world: World, contact_id: uuid.UUID) -> dict[str, tuple[bool, str]]:
    rows = world.query(
        "SELECT list_id, subscribed, source FROM list_subscriptions WHERE contact_id = :c",
        c=contact_id,
    )
    return {r["list_id"]: (r["subscribed"], r["source"]) for r in rows}


@pytest.mark.parametrize("javascript", [True, False], ids=["js", "no-js"])
def test_toggle_lists_and_unsubscribe_from_all_in_chromium(
    world: World, browser: Browser, javascript: bool
) -> None:
    contact_id, links = world.mail_newsletter(f"reader-{javascript}@example.com")
    assert links["preferences"].startswith(world.base + "/v1/email/preferences?token=")
    page, requested = open_page(browser, javascript=javascript)

    page.goto(links["preferences"])
    assert page.title() == "Email preferences"
    newsletter = page.get_by_label("Newsletter")
    beta = page.get_by_label("Beta programme")
    everything = page.get_by_role("switch", name="Unsubscribe from all marketing email")
    assert newsletter.is_checked()  # a default_opt_in list
    assert not beta.is_checked()
    assert not everything.is_checked()
    assert page.get_by_text("Product news, monthly").is_visible()

    newsletter.uncheck()
    beta.check()
    page.get_by_role("button", name="Save preferences").click()
    page.get_by_role("status").wait_for()
    assert page.get_by_role("status").inner_text() == "Your preferences are saved."
    assert choices(world, contact_id) == {
        "newsletter": (False, "preference_center"),
        "beta": (True, "preference_center"),
    }
    assert world.query("SELECT * FROM email_preferences") == []
    # The page after the redirect shows what was stored.
    assert not page.get_by_label("Newsletter").is_checked()
    assert page.get_by_label("Beta programme").is_checked()

    page.get_by_role("switch", name="Unsubscribe from all marketing email").check()
    page.get_by_role("button", name="Save preferences").click()
    page.get_by_text("Untick to get the lists above again.").wait_for()
    [prefs] = world.query(
        "SELECT unsubscribed_all, source FROM email_preferences WHERE contact_id = :c",
        c=contact_id,
    )
    assert prefs == {"unsubscribed_all": True, "source": "preference_center"}

    page.get_by_role("switch", name="Unsubscribe from all marketing email").uncheck()
    page.get_by_role("button", name="Save preferences").click()
    page.get_by_role("status").wait_for()
    [prefs] = world.query(
        "SELECT unsubscribed_all, resubscribed_at FROM email_preferences WHERE contact_id = :c",
        c=contact_id,
    )
    assert prefs["unsubscribed_all"] is False
    assert prefs["resubscribed_at"] is not None
    # Lists kept their own choices through the global switch.
    assert choices(world, contact_id) == {
        "newsletter": (False, "preference_center"),
        "beta": (True, "preference_center"),
    }
    # Nothing was loaded from anywhere else (no CDN, no fonts, no script).
    assert requested
    assert all(url.startswith(world.base + "/") for url in requested), requested
    page.context.close()


def test_one_click_page_button_works_without_javascript(world: World, browser: Browser) -> None:
    contact_id, links = world.mail_newsletter("clicker@example.com")
    page, _ = open_page(browser, javascript=False)
    page.goto(links["one_click"])
    assert page.get_by_text("clicker@example.com").is_visible()
    assert choices(world, contact_id) == {}  # opening the link changed nothing
    page.get_by_role("button", name="Unsubscribe").click()
    page.get_by_role("heading", name="You are unsubscribed").wait_for()
    assert choices(world, contact_id) == {"newsletter": (False, "one_click")}
    page.get_by_role("link", name="Manage all your email preferences").click()
    assert not page.get_by_label("Newsletter").is_checked()
    page.context.close()
