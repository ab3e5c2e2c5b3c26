"""Studio in a real browser: headless Chromium (Debian's) against a live ``hogsend dev``.

The test starts ``hogsend dev --seed-demo`` in a subprocess (on the test Postgres, with
the quickstart app plus one consumer that fails on ``checkout_failed`` until told to
heal, so there is a real dead-letter entry to retry), then drives Studio through
Playwright like a person: setup, every page, creating and revoking a key, retrying the
dead letter and the demo's diverged journey run, unsubscribing a contact, the live
event tail, sign-out, and a viewer who cannot change anything. Every change is checked
through the HTTP API afterwards. No page may log a console error (a CSP violation, a
failed request, a script error).

Screenshots of every page go to ``$STUDIO_SCREENSHOTS`` when set (``make screenshots``
points it at docs/screenshots), else into the test's temporary directory.

Chromium is a system package (``make chromium``); when it is missing this test fails.
"""

from __future__ import annotations

import os
import re
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from studio_tab import CHROMIUM, studio_tab

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ADMIN = ("ada@example.com", "correct horse battery")
VIEWER = ("vic@example.com", "viewer password 123")

APP = textwrap.dedent(
    """
    from pathlib import Path

    from examples.quickstart.app import app
    from hogsend.runtime.dispatcher import add_extra_consumers

    HEALED = Path({healed!r})


    class Picky:
        name = "studio-picky"

        async def consume(self, event, session):
            if event.name == "checkout_failed" and not HEALED.exists():
                raise RuntimeError("the payment service is down")


    add_extra_consumers(app, [Picky()])
    """
)


def wait_for(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    target = Path(os.environ.get("STUDIO_SCREENSHOTS") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target


@pytest.fixture
def live(dev_factory: Any, harness: Any, database_url: str, tmp_path: Path) -> dict[str, Any]:
    """A running ``hogsend dev --seed-demo`` with the picky consumer; its URL and dev key."""
    package = tmp_path / "pkg"
    package.mkdir()
    healed = tmp_path / "healed"
    (package / "studioapp.py").write_text(APP.format(healed=str(healed)))
    dev = dev_factory("studio")
    env = harness.clean_env(
        HOGSEND_DATA_DIR=str(dev.data_dir),
        HOGSEND_DATABASE_URL=database_url,
        HOGSEND_APP="studioapp:app",
        HOGSEND_DISPATCHER_MAX_ATTEMPTS="1",
        PYTHONPATH=str(package),
    )
    dev.start("--seed-demo", env=env)
    dev.wait_healthy(timeout=180)
    key = re.search(r"^\s+(hsk_\S+)\s*$", dev.last_run_output(), re.MULTILINE)
    assert key is not None, dev.last_run_output()
    return {
        "base": dev.base_url,
        "key": {"Authorization": f"Bearer {key.group(1)}"},
        "healed": healed,
        "env": env,
        "dev": dev,
    }


def test_studio_in_a_real_browser(live: dict[str, Any], harness: Any, screenshots: Path) -> None:
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: run `make chromium` (apt-get install chromium)"
    )
    base, key = live["base"], live["key"]
    api = httpx.Client(base_url=base, headers=key, timeout=10)

    # A real dead letter: an event the picky consumer refuses (one attempt allowed).
    sent = api.post("/v1/events", json={"name": "checkout_failed", "userId": "demo-0011"})
    assert sent.status_code == 202, sent.text

    def pending_entries() -> list[dict[str, Any]]:
        # This event's entry only: the demo seed parks a dead letter of its own.
        entries = api.get("/v1/admin/dlq", params={"status": "pending"}).json()["entries"]
        return [e for e in entries if e["sourceId"] == sent.json()["eventId"]]

    wait_for(lambda: len(pending_entries()) == 1, "the dead-letter entry")
    [dead] = pending_entries()

    with studio_tab(base, screenshots) as tab:
        page, console, visit = tab.page, tab.console, tab.visit

        # -- setup: the first visit asks for the first admin --------------------------
        page.goto(base + "/studio")
        assert page.url.endswith("/studio/setup")
        page.screenshot(path=str(screenshots / "setup.png"), full_page=True)
        page.locator("#email").fill(ADMIN[0])
        page.locator("#password").fill(ADMIN[1])
        page.get_by_label("Password again").fill(ADMIN[1])
        page.get_by_role("button", name="Create the admin account").click()
        page.wait_for_url(base + "/studio/")
        assert console.take() == []

        # A viewer made with the CLI, against the same database (once an admin exists).
        made = harness.run_cli(
            "studio",
            "create-user",
            "--email",
            VIEWER[0],
            "--password",
            VIEWER[1],
            "--role",
            "viewer",
            env=live["env"],
        )
        assert made.returncode == 0, made.stderr
        assert "created Studio viewer" in made.stdout

        # -- every page renders with data, without console errors ---------------------
        visit("/studio/", "overview")
        assert page.locator("dl.tiles dd").first.inner_text() == "200"
        assert page.locator("svg.bars rect.bar").count() >= 30
        visit("/studio/contacts", "contacts")
        assert page.locator("tbody tr").count() == 50
        visit("/studio/contacts?prop=plan&value=enterprise")
        visit("/studio/events", "events")
        visit(f"/studio/dlq/{dead['id']}", "dead-letter")
        visit("/studio/dlq", "dead-letters")
        visit("/studio/audit")
        # Journeys and Buckets: tests/acceptance/test_studio_journeys_browser.py; Campaigns
        # and Email: tests/acceptance/test_studio_campaigns_browser.py

        # -- a contact's page, with the Explain box answered through htmx -------------
        page.goto(base + "/studio/contacts?q=demo-0007")
        page.locator("tbody a").first.click()
        page.wait_for_load_state("networkidle")
        contact_url = page.url
        contact_id = contact_url.rsplit("/", 1)[1]
        page.get_by_label("Template").select_option("welcome")
        page.get_by_role("button", name="Explain").click()
        page.locator("#explain-result").get_by_text("an attempt now would be").wait_for()
        assert "explain=" not in page.url  # htmx swapped the result in, no navigation
        page.screenshot(path=str(screenshots / "contact.png"), full_page=True)
        assert console.take() == []

        # -- unsubscribe the contact, checked through the API -------------------------
        before = api.get(f"/v1/admin/contacts/{contact_id}").json()
        if before["unsubscribedAll"]:  # the demo unsubscribed this one already
            page.get_by_role("link", name="Resubscribe…").click()
            page.get_by_role("button", name="Resubscribe").click()
            page.wait_for_url(re.compile(r".*notice=resubscribed"))
        page.get_by_role("link", name="Unsubscribe from all…").click()
        assert "Unsubscribe from all email" in page.content()
        page.get_by_role("button", name="Unsubscribe").click()
        page.wait_for_url(re.compile(r".*notice=unsubscribed"))
        assert api.get(f"/v1/admin/contacts/{contact_id}").json()["unsubscribedAll"] is True
        assert console.take() == []

        # -- create a key (shown once), use it, revoke it -----------------------------
        visit("/studio/api-keys")
        page.get_by_label("Name").fill("browser-made")
        page.get_by_label("read", exact=True).check()
        page.get_by_role("button", name="Create key").click()
        raw = page.locator("#new-key").input_value()
        assert raw.startswith("hsk_")
        page.screenshot(path=str(screenshots / "api-keys.png"), full_page=True)
        assert (
            httpx.get(f"{base}/v1/whoami", headers={"Authorization": f"Bearer {raw}"}).status_code
            == 200
        )
        visit("/studio/api-keys")
        assert raw not in page.content()
        page.locator("tr", has_text="browser-made").get_by_role("link", name="Revoke…").click()
        page.get_by_role("button", name="Revoke key").click()
        page.wait_for_url(re.compile(r".*notice=revoked"))
        assert (
            httpx.get(f"{base}/v1/whoami", headers={"Authorization": f"Bearer {raw}"}).status_code
            == 401
        )
        keys = api.get("/v1/admin/api-keys", params={"includeRevoked": "true"}).json()["keys"]
        made_key = next(k for k in keys if k["name"] == "browser-made")
        assert made_key["revokedAt"] is not None
        assert console.take() == []

        # -- retry the dead letter: the event is really processed afterwards ----------
        dead_before = int(api.get("/v1/admin/metrics/dispatcher").json()["dead"])
        live["healed"].write_text("yes")
        visit(f"/studio/dlq/{dead['id']}")
        page.get_by_role("button", name="Retry").click()
        page.wait_for_url(re.compile(r".*notice=retried"))
        assert api.get(f"/v1/admin/dlq/{dead['id']}").json()["status"] == "retried"

        def drained() -> bool:
            metrics = api.get("/v1/admin/metrics/dispatcher").json()
            return bool(metrics["dead"] == dead_before - 1 and metrics["pending"] == 0)

        wait_for(drained, "the retried event to be processed")
        assert pending_entries() == []

        # -- retry the demo's diverged journey run: a new run really starts -------------
        [journey_entry] = api.get(
            "/v1/admin/dlq", params={"status": "pending", "source": "journey"}
        ).json()["entries"]
        failed_run = journey_entry["payload"]["runId"]
        visit(f"/studio/dlq/{journey_entry['id']}")
        assert "starts a new run of the journey" in page.content()
        page.get_by_role("button", name="Retry").click()
        page.wait_for_url(re.compile(r".*notice=retried-journey"))
        assert api.get(f"/v1/admin/dlq/{journey_entry['id']}").json()["status"] == "retried"
        retried_by = api.get(f"/v1/admin/journeys/runs/{failed_run}").json()["retriedBy"]
        assert retried_by is not None

        def started() -> bool:
            run = api.get(f"/v1/admin/journeys/runs/{retried_by}").json()
            # The worker started its workflow: it sent the welcome and sleeps two days.
            return bool(run["status"] == "waiting" and run["retryOf"] == failed_run)

        wait_for(started, "the retried journey run to start")
        page.get_by_role("link", name=retried_by).click()
        page.wait_for_load_state("networkidle")
        assert f"/studio/journeys/runs/{retried_by}" in page.url
        assert console.take() == []

        # -- the live tail shows a new event without a reload -------------------------
        visit("/studio/events")
        api.post("/v1/events", json={"name": "tail_check", "userId": "demo-0012"})
        page.locator("#event-rows").get_by_text("tail_check").wait_for(timeout=15_000)
        assert console.take() == []

        # -- the audit log has all of it, by this user ----------------------------------
        visit("/studio/audit", "audit-log")
        audit = api.get("/v1/admin/audit-logs").json()["logs"]
        studio_actions = {e["action"] for e in audit if e["actor"] == f"studio:{ADMIN[0]}"}
        assert {"contacts.unsubscribe", "api-keys.create", "api-keys.revoke", "dlq.retry"} <= (
            studio_actions
        )

        # -- a forged POST without the CSRF token is refused --------------------------
        forged = page.request.post(
            base + "/studio/api-keys", form={"name": "forged", "scopes": "full-admin"}
        )
        assert forged.status == 403
        assert not [
            k for k in api.get("/v1/admin/api-keys").json()["keys"] if k["name"] == "forged"
        ]

        # -- sign out -------------------------------------------------------------------
        page.get_by_role("button", name="Sign out").click()
        page.wait_for_url(re.compile(r".*/studio/login\?notice=signed-out"))
        page.screenshot(path=str(screenshots / "login.png"), full_page=True)
        page.goto(base + "/studio/contacts")
        assert "/studio/login" in page.url
        assert console.take() == []

        # -- a viewer reads, and cannot change anything -------------------------------
        page.get_by_label("Email").fill(VIEWER[0])
        page.get_by_label("Password").fill(VIEWER[1])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(base + "/studio/contacts")
        visit("/studio/api-keys")
        assert page.get_by_role("button", name="Create key").count() == 0
        token = page.locator('input[name="csrf_token"]').first.get_attribute("value")
        assert token
        refused = page.request.post(
            base + "/studio/api-keys",
            form={"csrf_token": token, "name": "viewer-made", "scopes": "read"},
        )
        assert refused.status == 403
        page.goto(f"{contact_url}/erase")
        assert "viewer" in page.content()
        refused = page.request.post(f"{contact_url}/erase", form={"csrf_token": token})
        assert refused.status == 403
        assert api.get(f"/v1/admin/contacts/{contact_id}").status_code == 200
        assert not [
            k for k in api.get("/v1/admin/api-keys").json()["keys"] if k["name"] == "viewer-made"
        ]
        # the 403 pages themselves are errors the browser reports; nothing else may be
        assert all("403" in line for line in console.take())
