"""Studio's Campaigns and Email pages in a real browser against a live ``hogsend dev --seed-demo``.

Headless Chromium (Debian's) through Playwright: the seeded campaigns render and the
running one moves on its own (htmx progress polling, a worker really sending); a
campaign is created through the form (with the template preview swapped in by htmx)
and paused; a test send lands in the dev outbox; an address is suppressed; a forged
POST without the CSRF token and a viewer's POST are refused. Every change is checked
through the HTTP API. No page may log a console error.

Screenshots go to ``$STUDIO_SCREENSHOTS`` when set (``make screenshots``), else into
the test's temporary directory.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect
from studio_tab import CHROMIUM, studio_tab
from test_studio_browser import (
    ADMIN,
    VIEWER,
    screenshots,  # noqa: F401 (fixture)
    wait_for,
)

from hogsend.db.repos.demo_activity import FINISHED_CAMPAIGN, RUNNING_CAMPAIGN

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture
def live(dev_factory: Any, harness: Any, database_url: str) -> dict[str, Any]:
    """A running ``hogsend dev --seed-demo`` with an admin and a viewer; URL and dev key."""
    dev = dev_factory("studio-campaigns")
    env = harness.clean_env(HOGSEND_DATA_DIR=str(dev.data_dir), HOGSEND_DATABASE_URL=database_url)
    dev.start("--seed-demo", env=env)
    dev.wait_healthy(timeout=180)
    key = re.search(r"^\s+(hsk_\S+)\s*$", dev.last_run_output(), re.MULTILINE)
    assert key is not None, dev.last_run_output()
    for email, password, role in ((*ADMIN, "admin"), (*VIEWER, "viewer")):
        made = harness.run_cli(
            "studio", "create-user", "--email", email, "--password", password, "--role", role,
            env=env,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
    return {"base": dev.base_url, "key": {"Authorization": f"Bearer {key.group(1)}"}}


def test_campaigns_and_email_in_a_real_browser(
    live: dict[str, Any],
    screenshots: Path,  # noqa: F811
) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make chromium`"
    base = live["base"]
    api = httpx.Client(base_url=base, headers=live["key"], timeout=10)
    running = api.get(f"/v1/campaigns/{RUNNING_CAMPAIGN}").json()
    assert running["totalRecipients"] > 0

    with studio_tab(base, screenshots) as tab:
        page, console, visit = tab.page, tab.console, tab.visit

        def sign_in(email: str, password: str) -> None:
            page.goto(base + "/studio/login")
            page.get_by_label("Email").fill(email)
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            page.wait_for_url(base + "/studio/")

        sign_in(*ADMIN)

        # -- the seeded campaigns, and the running one moving without a reload --------
        visit("/studio/campaigns", "campaigns")
        expect(page.get_by_role("link", name="February product news")).to_be_visible()
        expect(page.get_by_role("link", name="Spring launch")).to_be_visible()
        visit(f"/studio/campaigns/{FINISHED_CAMPAIGN}")
        assert page.locator("svg.funnel rect.bar").count() == 5
        assert page.get_by_role("button", name="Pause").count() == 0  # it is over
        visit(f"/studio/campaigns/{RUNNING_CAMPAIGN}")
        bar = page.locator("#campaign-bar")
        first = int(bar.get_attribute("value") or "0")
        # The worker's reaper hands the stale demo run to a new one (one send per 4 s);
        # htmx swaps the progress block in place.
        wait_for(
            lambda: int(page.locator("#campaign-bar").get_attribute("value") or "0") > first,
            "the running campaign to move on the page",
            timeout=150,
        )
        assert page.url.endswith(str(RUNNING_CAMPAIGN))  # no navigation happened
        page.screenshot(path=str(screenshots / "campaign.png"), full_page=True)
        assert console.take() == []

        # -- create a campaign through the form, then pause it -------------------------
        visit("/studio/campaigns/new")
        page.get_by_label("Name").fill("Browser-made launch")
        page.get_by_label("a list").check()
        page.get_by_label("List", exact=True).select_option("product-updates")
        page.get_by_label("Template", exact=True).select_option("welcome")
        expect(page.locator("#template-preview iframe")).to_have_attribute(
            "title", "Preview of welcome"
        )
        page.get_by_label("Template", exact=True).select_option("newsletter")
        expect(page.locator("#template-preview iframe")).to_have_attribute(
            "title", "Preview of newsletter"
        )
        example = page.locator("#template-preview pre").text_content() or ""
        page.get_by_label("Props (optional JSON object)").fill(json.dumps(json.loads(example)))
        page.get_by_label("Send at (UTC; empty: now)").fill("2099-06-01T08:00")
        page.get_by_label("Throttle (optional: at most this many messages per second)").fill("20")
        page.get_by_role("button", name="Create campaign").click()
        page.wait_for_url(re.compile(r".*/studio/campaigns/[0-9a-f-]{36}\?notice=created"))
        campaign_id = page.url.split("/campaigns/")[1].split("?")[0]
        made = api.get(f"/v1/campaigns/{campaign_id}").json()
        assert made["status"] == "scheduled"
        assert made["name"] == "Browser-made launch"
        assert made["audienceId"] == "product-updates"
        assert made["throttle"] == 20.0
        page.get_by_role("button", name="Pause").click()
        page.wait_for_url(re.compile(r".*notice=pause"))
        assert api.get(f"/v1/campaigns/{campaign_id}").json()["status"] == "paused"
        assert console.take() == []

        # -- a forged POST without the CSRF token is refused ---------------------------
        forged = page.request.post(f"{base}/studio/campaigns/{campaign_id}/cancel", form={})
        assert forged.status == 403
        assert api.get(f"/v1/campaigns/{campaign_id}").json()["status"] == "paused"

        # -- templates: previews, and a test send that lands in the outbox -------------
        visit("/studio/email", "email")
        assert page.locator("iframe.thumb").count() >= 7
        visit("/studio/email/templates/welcome")
        frame = page.frame_locator("iframe[title='Desktop preview of welcome']")
        expect(frame.locator("body")).to_contain_text("Welcome")
        page.get_by_label("Send to").fill("qa-browser@example.com")
        page.get_by_role("button", name="Send test").click()
        page.wait_for_url(re.compile(r".*decision=(sent|redirected)"))
        outbox = api.get("/v1/admin/outbox", params={"to": "qa-browser@example.com"}).json()
        [message] = outbox["messages"]
        assert message["subject"].startswith("[Test] ")
        visit("/studio/email/outbox", "outbox")
        page.get_by_role("link", name=message["subject"]).first.click()
        page.wait_for_load_state("networkidle")
        expect(page.get_by_role("heading", name="Headers")).to_be_visible()
        assert "/t/o/" not in page.frame_locator("iframe.email-frame").locator("html").inner_html()
        assert console.take() == []

        # -- suppress an address through the form --------------------------------------
        visit("/studio/email/suppressions", "suppressions")
        page.get_by_label("Address", exact=True).fill("blocked-in-browser@example.com")
        page.get_by_label("Note", exact=True).fill("asked us by phone")
        page.get_by_role("button", name="Suppress", exact=True).click()
        page.wait_for_url(re.compile(r".*done=added"))
        found = api.get("/v1/admin/suppressions", params={"search": "blocked-in-browser"}).json()[
            "suppressions"
        ]
        assert [s["reason"] for s in found] == ["manual"]
        assert console.take() == []

        # -- a viewer reads and cannot change anything ---------------------------------
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(r".*/studio/login.*"))
        sign_in(*VIEWER)
        visit("/studio/campaigns")
        assert page.get_by_role("link", name="New campaign").count() == 0
        visit(f"/studio/campaigns/{campaign_id}")
        assert page.get_by_role("button", name="Resume").count() == 0
        token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
        assert token
        refused = page.request.post(
            f"{base}/studio/campaigns/{campaign_id}/resume", form={"csrf_token": token}
        )
        assert refused.status == 403
        refused = page.request.post(
            f"{base}/studio/email/suppressions",
            form={"csrf_token": token, "email": "viewer-made@example.com"},
        )
        assert refused.status == 403
        assert api.get(f"/v1/campaigns/{campaign_id}").json()["status"] == "paused"
        assert (
            api.get("/v1/admin/suppressions", params={"search": "viewer-made"}).json()[
                "suppressions"
            ]
            == []
        )
        audit = api.get("/v1/admin/audit-logs").json()["logs"]
        mine = {e["action"] for e in audit if e["actor"] == f"studio:{ADMIN[0]}"}
        assert {
            "campaigns.create",
            "campaigns.pause",
            "templates.send-test",
            "suppressions.create",
        } <= mine
        assert console.take() == []
