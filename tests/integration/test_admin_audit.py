"""Every admin mutation's audit row names actor, action, target and the state before/after.

One walk over the admin API (real Postgres, the real ASGI app, a real SMTP sink for the
test send): each call is one audited mutation, and the row it wrote must carry ``before``
and ``after``. A few rows are checked field by field. Routes the walk leaves out are named
with the test that checks their rows, so a new audited route cannot slip by unwalked.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from test_emails_api import bearer, make_app, new_contact, settings_for

from hogsend import Hogsend, define_bucket, where
from hogsend.api import create_api
from hogsend.api.audit import route_audit_action
from hogsend.api.routing import iter_api_routes
from mail_sink import Sink

pytestmark = pytest.mark.timeout(120)

BETA = define_bucket(id="beta", name="Beta testers", kind="manual")
VIP = define_bucket(id="vip", name="VIP", criteria=where.property("plan").equals("vip"))

# Audited routes this walk does not call, and where their before/after is asserted.
WALKED_ELSEWHERE = {
    "journeys.switch": "tests/integration/test_journeys.py",
    "journey-runs.cancel": "tests/integration/test_journeys.py",
    "dlq.retry": "tests/integration/test_journeys_dlq_retry.py",
    "dlq.discard": "tests/integration/test_dispatcher.py",
}


@pytest.fixture
async def walk_env(
    tmp_path: Path, engine: AsyncEngine, database_url: str, sink: tuple[Sink, int]
) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    base = make_app(tmp_path / "templates")
    app = Hogsend(lists=base.lists, templates=base.templates, buckets=[BETA, VIP])
    api = create_api(app, settings_for(database_url, sink[1]), engine=engine)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield api, client
    mailer = getattr(api.state, "mailer", None)
    if mailer is not None:
        await mailer.provider.aclose()
    await api.state.driver_pool.close()


async def test_every_admin_mutation_audits_before_and_after(
    walk_env: tuple[FastAPI, httpx.AsyncClient],
    engine: AsyncEngine,
    mint_key: Any,
    fetch_all: Any,
) -> None:
    api, client = walk_env
    full = bearer(await mint_key("full-admin", "ingest", name="ops"))
    ada = await new_contact(engine, "ada@example.com")
    walked: list[str] = []

    async def call(action: str, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await client.request(method, path, headers=full | kwargs.pop("h", {}), **kwargs)
        assert response.status_code < 300, (action, response.text)
        walked.append(action)
        return dict(response.json())

    await call("buckets.update", "PATCH", "/v1/admin/buckets/beta", json={"enabled": False})
    await call("buckets.update", "PATCH", "/v1/admin/buckets/beta", json={"enabled": None})
    await call("buckets.members.add", "POST", "/v1/admin/buckets/beta/members",
               json={"contactId": str(ada)})  # fmt: skip
    await call("buckets.members.remove", "DELETE", f"/v1/admin/buckets/beta/members/{ada}")
    await call("buckets.backfill", "POST", "/v1/admin/buckets/vip/backfill")
    await call("contacts.preferences.update", "PUT", f"/v1/admin/contacts/{ada}/preferences",
               json={"unsubscribedAll": True, "lists": {"newsletter": False}})  # fmt: skip
    await call("suppressions.create", "POST", "/v1/admin/suppressions",
               json={"email": "Bob@Example.com", "note": "asked"})  # fmt: skip
    await call("suppressions.delete", "DELETE", "/v1/admin/suppressions/bob@example.com")
    await call("suppressions.import", "POST", "/v1/admin/suppressions/import",
               content=b"email\ncy@example.com\nada@example.com\n",
               h={"Content-Type": "text/csv"})  # fmt: skip
    await call("imports.create", "POST", "/v1/admin/imports",
               content=b"email\ndee@example.com\n", h={"Content-Type": "text/csv"})  # fmt: skip
    await call("templates.send-test", "POST", "/v1/admin/templates/welcome/send-test",
               json={"to": "qa@example.com"})  # fmt: skip
    await call("outbox.clear", "DELETE", "/v1/admin/outbox")
    key = await call("api-keys.create", "POST", "/v1/admin/api-keys",
                     json={"name": "temp", "scopes": ["ingest"]})  # fmt: skip
    await call("api-keys.revoke", "DELETE", f"/v1/admin/api-keys/{key['id']}")
    rule = await call("alert-rules.create", "POST", "/v1/admin/alerts/rules",
                      json={"name": "Lag", "type": "dispatcher_lag", "threshold": 120,
                            "channel": "webhook",
                            "channelConfig": {"url": "https://ops.example.com/hook",
                                              "secret": "s" * 32}})  # fmt: skip
    await call("alert-rules.update", "PATCH", f"/v1/admin/alerts/rules/{rule['id']}",
               json={"name": "Lag!"})  # fmt: skip
    await call("alert-rules.delete", "DELETE", f"/v1/admin/alerts/rules/{rule['id']}")
    campaign = await call("campaigns.create", "POST", "/v1/campaigns",
                          json={"list": "newsletter", "template": "news"})  # fmt: skip
    for verb in ("pause", "resume", "cancel"):
        await call(f"campaigns.{verb}", "POST", f"/v1/campaigns/{campaign['campaignId']}/{verb}")

    rows = await fetch_all(
        "SELECT actor, action, resource, resource_id, detail FROM audit_logs"
        " ORDER BY created_at, id"
    )
    assert [r["action"] for r in rows] == walked
    for row in rows:
        assert row["actor"] == "ops", row
        assert row["resource"], row
        assert row["resource_id"], row
        assert {"before", "after"} <= set(row["detail"]), row
        # The outbox was empty (the test send went by SMTP): clearing it changed nothing.
        if row["action"] != "outbox.clear":
            assert row["detail"]["before"] != row["detail"]["after"], row

    # Every audited admin route is walked here or named with the test that walks it.
    audited = {
        action
        for mounted in iter_api_routes(api.routes)
        if (action := route_audit_action(mounted.route)) is not None
    }
    assert audited - set(walked) == set(WALKED_ELSEWHERE), audited - set(walked)

    by_action: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_action.setdefault(row["action"], []).append(row["detail"])
    off, back = by_action["buckets.update"]
    assert (off["before"], off["after"]) == (
        {"enabled": True, "override": None},
        {"enabled": False, "override": False},
    )
    assert back["after"] == {"enabled": True, "override": None}
    [added] = by_action["buckets.members.add"]
    assert (added["before"], added["after"]) == (
        {"member": False, "epoch": None},
        {"member": True, "epoch": 1},
    )
    [removed] = by_action["buckets.members.remove"]
    assert removed["after"] == {"member": False, "epoch": None}
    [prefs] = by_action["contacts.preferences.update"]
    assert prefs["before"] == {"unsubscribedAll": False, "lists": {}}
    assert prefs["after"] == {"unsubscribedAll": True, "lists": {"newsletter": False}}
    [suppressed] = by_action["suppressions.create"]
    assert suppressed["before"]["suppressed"] is False
    assert (suppressed["after"]["reason"], suppressed["after"]["note"]) == ("manual", "asked")
    [lifted] = by_action["suppressions.delete"]
    assert (lifted["before"]["reason"], lifted["after"]["suppressed"]) == ("manual", False)
    [imported] = by_action["suppressions.import"]
    assert (imported["before"], imported["after"]) == (
        {"suppressedOfFile": 0},
        {"suppressedOfFile": 2},
    )
    statuses = [
        (d["before"]["status"], d["after"]["status"])
        for action in ("campaigns.pause", "campaigns.resume", "campaigns.cancel")
        for d in by_action[action]
    ]
    assert statuses == [("queued", "paused"), ("paused", "queued"), ("queued", "cancelled")]
    assert by_action["campaigns.create"][0]["after"] == {"status": "queued"}
    [cleared] = by_action["outbox.clear"]
    assert cleared["after"] == {"matching": 0}
    assert uuid.UUID(by_action["imports.create"][0]["after"]["job"])
