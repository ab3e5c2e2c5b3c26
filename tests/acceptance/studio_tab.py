"""Headless Chromium on Studio, for the browser tests: one tab, its console, page visits.

Debian's ``/usr/bin/chromium`` driven by Playwright with ``executable_path`` (``make
test`` installs the package when it is missing; Playwright's own browsers are never
downloaded). Every visit asserts a 200, one ``<nav>`` and a clean console, and can save
a screenshot.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from playwright.sync_api import ConsoleMessage, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class Console:
    """Every console error and page error of the browser context, per page visited."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text} ({message.location})")

    def on_page_error(self, error: Any) -> None:
        self.errors.append(f"page error: {error}")

    def take(self) -> list[str]:
        taken, self.errors = self.errors, []
        return taken


@dataclass
class StudioTab:
    """A browser tab on a live server at ``base``."""

    page: Page
    console: Console
    base: str
    screenshots: Path

    def visit(self, path: str, shot: str | None = None) -> None:
        """Open ``path``: a 200, one ``<nav>``, no console error; ``shot`` saves a screenshot."""
        response = self.page.goto(self.base + path)
        assert response is not None
        assert response.status == 200, f"{path}: {response.status}"
        self.page.wait_for_load_state("networkidle")
        assert self.page.locator("nav").count() == 1, path
        if shot:
            self.shoot(shot)
        assert self.console.take() == [], path

    def shoot(self, name: str) -> None:
        """Save the whole page as ``<screenshots>/<name>.png``."""
        self.page.screenshot(path=str(self.screenshots / f"{name}.png"), full_page=True)


@contextmanager
def studio_tab(base: str, screenshots: Path) -> Iterator[StudioTab]:
    """Launch Chromium and open one tab (1280 by 860) that records console errors."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make chromium`"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 860})
            console = Console()
            context.on("console", console.on_console)
            context.on("weberror", lambda error: console.on_page_error(error.error))
            yield StudioTab(context.new_page(), console, base, screenshots)
        finally:
            browser.close()
