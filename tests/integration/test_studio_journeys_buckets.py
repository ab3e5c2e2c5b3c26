"""Studio's Journeys and Buckets pages on rows made by a real worker.

Events go in over HTTP; a worker (DBOS) runs the journey, sends into an aiosmtpd sink
and keeps the bucket's members. Studio is then read and driven like a browser would
(cookies, forms, CSRF tokens); what it changed is checked through the admin API.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_admin_reporting import onboard, write_templates
from test_emails_api import settings_for
from test_journeys import _end_running_runs
from test_studio import ADMIN, VIEWER, add_user, client_for, set_up_admin, sign_in, token_in

from hogsend import Hogsend, define_bucket, define_list, where
from hogsend.api.app import create_api
from hogsend.runtime.worker import Worker
from hogsend.studio import mount_studio
from mail_sink import Sink

pytestmark = pytest.mark.timeout(240)

pro_users = define_bucket(
    id="pro-users",
    name="Pro users",
    criteria=where.all(where.property("plan").equals("pro"), where.event("signed.up").exists()),
    description="Paying customers on the pro plan.",
)
vips = define_bucket(id="vips", name="VIPs", kind="manual")


@dataclass
class Env:
    api: FastAPI
    browser: httpx.AsyncClient
    engine: AsyncEngine
    worker: Worker
    key: str

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def api_get(self, path: str) -> Any:
        response = await self.browser.get(path, headers=self.headers())
        assert response.status_code == 200, response.text
        return response.json()

    async def page(self, path: str, **params: Any) -> str:
        response = await self.browser.get(path, params=params)
        assert response.status_code == 200, (path, response.status_code, response.text[:500])
        assert response.text.count("<nav") == 1
        return response.text

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            return [dict(r._mapping) for r in await conn.execute(text(sql), params)]


@pytest.fixture
async def env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    mint_key: Callable[..., Any],
) -> AsyncIterator[Env]:
    _, port = sink
    app = Hogsend(
        journeys=[onboard],
        buckets=[pro_users, vips],
        lists=[define_list(id="newsletter", name="Newsletter")],
        templates=write_templates(tmp_path / "templates"),
    )
    settings = settings_for(
        database_url,
        port,
        worker_id=f"studio-{uuid.uuid4().hex[:6]}",
        dispatcher_poll_seconds=0.05,
    )
    api = create_api(app, settings, engine=engine)
    mount_studio(api)
    worker = Worker(app, settings, engine=engine)
    key = await mint_key("ingest", "admin:read", "admin:write")
    await worker.start()
    try:
        async with client_for(api) as browser:
            built = Env(api, browser, engine, worker, key)
            for user, plan in (("ann", "pro"), ("bob", "pro"), ("cyd", "free")):
                response = await browser.post(
                    "/v1/events",
                    json={
                        "name": "signed.up",
                        "userId": user,
                        "email": f"{user}@example.com",
                        "contactProperties": {"plan": plan},
                    },
                    headers=built.headers(),
                )
                assert response.status_code == 202, response.text

            async def ready() -> bool:
                runs = await built.rows(
                    "SELECT id FROM journey_states WHERE waiting_for_event = 'activated'"
                )
                members = await built.rows(
                    "SELECT id FROM bucket_memberships WHERE status = 'active'"
                )
                return len(runs) == 3 and len(members) == 2

            for _ in range(600):
                if await ready():
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the worker did not enroll and join in time")
            await set_up_admin(browser)
            yield built
    finally:
        await _end_running_runs(engine, worker)
        await worker.stop()
        mailer = getattr(api.state, "mailer", None)
        if mailer is not None:
            await mailer.provider.aclose()
        await api.state.driver_pool.close()


async def _run_of(env: Env, email: str) -> str:
    [row] = await env.rows(
        "SELECT s.id FROM journey_states s JOIN contacts c ON c.id = s.contact_id"
        " WHERE c.email = :e",
        e=email,
    )
    return str(row["id"])


async def test_journey_pages_show_rules_funnel_runs_and_step_log(env: Env) -> None:
    listing = await env.page("/studio/journeys")
    assert "Onboard" in listing
    assert "<code>signed.up</code>" in listing
    assert re.search(r'status=waiting">3</a>', listing), listing
    assert "Disable Onboard" in listing  # an admin gets the switch

    page = await env.page("/studio/journeys/rp-onboard")
    for part in ("Rules", "event <code>churned</code>", "Funnel", "<svg", "enrolled", "Runs"):
        assert part in page, part
    assert "3 runs: 3 sent at least one email (3 emails)" in page
    filtered = await env.page("/studio/journeys/rp-onboard", status="completed")
    assert "No run matches." in filtered
    bad = await env.browser.get("/studio/journeys/rp-onboard", params={"contact": "nope"})
    assert bad.status_code == 400

    run_id = await _run_of(env, "ann@example.com")
    run = await env.page(f"/studio/journeys/runs/{run_id}")
    assert "Step log" in run
    assert "send_email" in run
    assert "enrolled" in run
    assert re.search(r"\d+ ms", run)
    assert "Cancel this run" in run
    missing = await env.browser.get("/studio/journeys/nope")
    assert missing.status_code == 404


async def test_toggle_a_journey_and_cancel_a_run_checked_through_the_api(env: Env) -> None:
    listing = await env.page("/studio/journeys")
    switched = await env.browser.post(
        "/studio/journeys/rp-onboard/enabled",
        data={"csrf_token": token_in(listing), "enabled": "off"},
    )
    assert switched.status_code == 303
    assert switched.headers["location"] == "/studio/journeys?notice=disabled"
    [journey] = (await env.api_get("/v1/admin/journeys"))["journeys"]
    assert (journey["enabled"], journey["enabledOverride"]) == (False, False)

    run_id = await _run_of(env, "bob@example.com")
    run_page = await env.page(f"/studio/journeys/runs/{run_id}")
    cancelled = await env.browser.post(
        f"/studio/journeys/runs/{run_id}/cancel", data={"csrf_token": token_in(run_page)}
    )
    assert cancelled.status_code == 303
    run = await env.api_get(f"/v1/admin/journeys/runs/{run_id}")
    assert (run["status"], run["exitReason"]) == ("exited", "admin")
    again = await env.browser.post(
        f"/studio/journeys/runs/{run_id}/cancel", data={"csrf_token": token_in(run_page)}
    )
    assert again.status_code == 409
    after = await env.page(f"/studio/journeys/runs/{run_id}")
    assert "Cancel this run" not in after

    audit = await env.rows(
        "SELECT action, actor, resource_id, detail FROM audit_logs"
        " WHERE resource IN ('journeys', 'journey-runs') ORDER BY created_at"
    )
    assert [a["action"] for a in audit] == ["journeys.switch", "journey-runs.cancel"]
    assert audit[0]["actor"] == f"studio:{ADMIN[0]}"
    assert audit[0]["detail"] == {
        "before": {"enabled": True, "override": None},
        "after": {"enabled": False, "override": False},
    }
    assert audit[1]["resource_id"] == run_id
    assert audit[1]["detail"]["after"] == {"status": "exited", "exitReason": "admin"}

    # back to the code's setting
    page = await env.page("/studio/journeys/rp-onboard")
    cleared = await env.browser.post(
        "/studio/journeys/rp-onboard/enabled?back=journey",
        data={"csrf_token": token_in(page), "enabled": "code"},
    )
    assert cleared.headers["location"] == "/studio/journeys/rp-onboard?notice=code"
    [journey] = (await env.api_get("/v1/admin/journeys"))["journeys"]
    assert (journey["enabled"], journey["enabledOverride"]) == (True, None)


async def test_bucket_pages_show_sizes_criteria_members_chart_and_preview(env: Env) -> None:
    listing = await env.page("/studio/buckets")
    assert "Pro users" in listing
    assert "VIPs" in listing
    assert "Entries per day" in listing
    assert "Exits per day" in listing
    assert re.search(r'<td class="num">2</td>\s*<td class="num">2</td>', listing), listing

    page = await env.page("/studio/buckets/pro-users")
    assert "all of:" in page
    assert "contact property plan is &#34;pro&#34;" in page
    assert "did event “signed.up” at least once" in page
    assert "ann@example.com" in page
    assert "bob@example.com" in page
    assert "cyd@example.com" not in page
    assert "Reconciled up to" in page
    assert "Criteria preview" in page

    preview = await env.page(
        "/studio/buckets/pro-users",
        criteria='{"type": "property", "property": "plan", "op": "equals", "value": "free"}',
    )
    assert "<strong>1</strong> contacts match now." in preview
    assert "cyd@example.com" in preview
    wrong = await env.page(
        "/studio/buckets/pro-users",
        criteria='{"type": "property", "property": "plan", "op": "resembles"}',
    )
    assert "Not a valid criteria" in wrong
    manual = await env.page("/studio/buckets/vips")
    assert "A manual bucket" in manual

    switched = await env.browser.post(
        "/studio/buckets/pro-users/enabled?back=bucket",
        data={"csrf_token": token_in(page), "enabled": "off"},
    )
    assert switched.headers["location"] == "/studio/buckets/pro-users?notice=disabled"
    bucket = await env.api_get("/v1/admin/buckets/pro-users")
    assert (bucket["enabled"], bucket["enabledOverride"]) == (False, False)


async def test_forged_and_viewer_posts_are_refused_and_change_nothing(env: Env) -> None:
    run_id = await _run_of(env, "cyd@example.com")
    forged = [
        ("/studio/journeys/rp-onboard/enabled", {"enabled": "off"}),
        (f"/studio/journeys/runs/{run_id}/cancel", {}),
        ("/studio/buckets/pro-users/enabled", {"enabled": "off"}),
    ]
    for path, data in forged:
        refused = await env.browser.post(path, data=data)  # no CSRF token
        assert refused.status_code == 403, path
        wrong = await env.browser.post(path, data={**data, "csrf_token": "forged"})
        assert wrong.status_code == 403, path

    await env.browser.post(
        "/studio/logout", data={"csrf_token": token_in(await env.page("/studio/journeys"))}
    )
    await add_user(env.engine, *VIEWER, "viewer")
    assert (await sign_in(env.browser, *VIEWER)).status_code == 303
    listing = await env.page("/studio/journeys")
    assert "Disable Onboard" not in listing
    run = await env.page(f"/studio/journeys/runs/{run_id}")
    assert "Cancel this run" not in run
    bucket = await env.page("/studio/buckets/pro-users")
    assert "Apply" not in bucket
    token = token_in(listing)
    for path, data in forged:
        refused = await env.browser.post(path, data={**data, "csrf_token": token})
        assert refused.status_code == 403, path
        assert "viewer" in refused.text

    [journey] = (await env.api_get("/v1/admin/journeys"))["journeys"]
    assert journey["enabled"] is True
    assert (await env.api_get(f"/v1/admin/journeys/runs/{run_id}"))["status"] == "waiting"
    assert (await env.api_get("/v1/admin/buckets/pro-users"))["enabled"] is True
    assert await env.rows("SELECT id FROM audit_logs WHERE resource <> 'studio-users'") == []
