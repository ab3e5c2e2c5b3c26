"""Studio's Journeys and Buckets pages in a real browser against a live ``hogsend dev``.

``hogsend dev --seed-demo`` runs the quickstart app on the test Postgres; a few
``signed_up`` events through the API start real ``welcome`` runs (they send, then sleep
for two days), and the worker's bucket sweeper fills the criteria buckets. Headless
Chromium (Debian's) then renders every Journeys and Buckets page without a console
error, disables a journey and cancels a run with the pages' own forms, and both are
checked through the HTTP API. Screenshots go to ``$STUDIO_SCREENSHOTS`` (``make
screenshots`` points it at docs/screenshots) or the test's temporary directory.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from studio_tab import CHROMIUM, studio_tab
from test_studio_browser import ADMIN, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SIGN_UPS = ("browser-ann", "browser-bob", "browser-cyd")


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture
def live(dev_factory: Any, harness: Any, database_url: str) -> dict[str, Any]:
    """A running ``hogsend dev --seed-demo`` of the quickstart; its URL and dev key."""
    dev = dev_factory("studio-journeys")
    env = harness.clean_env(
        HOGSEND_DATA_DIR=str(dev.data_dir),
        HOGSEND_DATABASE_URL=database_url,
        HOGSEND_APP="examples.quickstart.app:app",
    )
    dev.start("--seed-demo", env=env)
    dev.wait_healthy(timeout=180)
    key = re.search(r"^\s+(hsk_\S+)\s*$", dev.last_run_output(), re.MULTILINE)
    assert key is not None, dev.last_run_output()
    return {"base": dev.base_url, "key": {"Authorization": f"Bearer {key.group(1)}"}}


def test_journeys_and_buckets_in_a_real_browser(live: dict[str, Any], screenshots: Path) -> None:
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: run `make chromium`"
    base = live["base"]
    api = httpx.Client(base_url=base, headers=live["key"], timeout=10)
    for user in SIGN_UPS:
        sent = api.post(
            "/v1/events",
            json={
                "name": "signed_up",
                "userId": user,
                "email": f"{user}@example.com",
                "contactProperties": {"plan": "trial"},
            },
        )
        assert sent.status_code == 202, sent.text

    def runs(status: str | None = None) -> list[dict[str, Any]]:
        params = {"journeyId": "welcome", "limit": 100}
        if status:
            params["status"] = status
        body = api.get("/v1/admin/journeys/runs", params=params).json()
        return [r for r in body["runs"] if r["userId"] in SIGN_UPS]

    wait_for(lambda: len(runs("waiting")) == len(SIGN_UPS), "the welcome runs to sleep")

    def trial_members() -> int:
        return int(api.get("/v1/admin/buckets/trial-users").json()["memberCount"])

    wait_for(lambda: trial_members() >= len(SIGN_UPS), "the trial bucket to fill")

    with studio_tab(base, screenshots) as tab:
        page, console, visit = tab.page, tab.console, tab.visit

        page.goto(base + "/studio")
        assert page.url.endswith("/studio/setup")
        page.locator("#email").fill(ADMIN[0])
        page.locator("#password").fill(ADMIN[1])
        page.get_by_label("Password again").fill(ADMIN[1])
        page.get_by_role("button", name="Create the admin account").click()
        page.wait_for_url(base + "/studio/")

        # -- the pages, with data ---------------------------------------------------
        visit("/studio/journeys", "journeys")
        assert page.get_by_role("link", name="Welcome").count() == 1
        visit("/studio/journeys/welcome", "journey")
        assert page.locator("figure.funnel svg rect.bar").count() == 6
        assert "signed_up" in page.content()
        assert "account_deleted" in page.content()
        page.locator("tbody tr", has_text="browser-ann").get_by_role("link").first.click()
        page.wait_for_load_state("networkidle")
        assert "Step log" in page.content()
        assert "send_email" in page.content()
        page.screenshot(path=str(screenshots / "journey-run.png"), full_page=True)
        assert console.take() == []
        visit("/studio/buckets", "buckets")
        assert page.locator("svg.bars").count() == 2
        visit("/studio/buckets/trial-users", "bucket")
        assert "contact property plan is" in page.content()
        assert "browser-ann@example.com" in page.content()
        page.get_by_role("button", name="Preview").click()
        page.wait_for_load_state("networkidle")
        assert "contacts match now." in page.content()
        assert console.take() == []

        # -- disable the journey with its switch, checked through the API ------------
        visit("/studio/journeys")
        page.get_by_role("button", name="Disable Welcome").click()
        page.wait_for_url(re.compile(r".*/studio/journeys\?notice=disabled"))
        [welcome] = [
            j for j in api.get("/v1/admin/journeys").json()["journeys"] if j["id"] == "welcome"
        ]
        assert welcome["enabled"] is False
        assert console.take() == []

        # -- cancel a run, checked through the API ------------------------------------
        [bob] = [r for r in runs() if r["userId"] == "browser-bob"]
        visit(f"/studio/journeys/runs/{bob['id']}")
        page.get_by_role("button", name="Cancel this run").click()
        page.wait_for_url(re.compile(r".*notice=cancelled"))
        cancelled = api.get(f"/v1/admin/journeys/runs/{bob['id']}").json()
        assert (cancelled["status"], cancelled["exitReason"]) == ("exited", "admin")
        assert page.get_by_role("button", name="Cancel this run").count() == 0
        assert console.take() == []

        # -- a forged POST (no CSRF token) is refused ----------------------------------
        [cyd] = [r for r in runs() if r["userId"] == "browser-cyd"]
        forged = page.request.post(base + f"/studio/journeys/runs/{cyd['id']}/cancel", form={})
        assert forged.status == 403
        assert api.get(f"/v1/admin/journeys/runs/{cyd['id']}").json()["status"] == "waiting"

    audit = api.get("/v1/admin/audit-logs").json()["logs"]
    assert {"journeys.switch", "journey-runs.cancel"} <= {
        e["action"] for e in audit if e["actor"] == f"studio:{ADMIN[0]}"
    }
