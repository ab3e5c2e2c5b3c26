"""/v1/admin/buckets over HTTP: listing, members, the switch, manual members, preview."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.integration.conftest import FetchAll, MintKey, api_settings

from hogsend import Hogsend, days, define_bucket, where
from hogsend.api import create_api
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import buckets as repo
from hogsend.runtime.bucket_membership import BucketMembershipConsumer
from hogsend.runtime.dispatcher import Dispatcher

pytestmark = pytest.mark.timeout(120)

VIP = define_bucket(id="vip", name="VIP", criteria=where.property("plan").equals("vip"))
BETA = define_bucket(id="beta", name="Beta testers", kind="manual", description="Hand-picked.")


@VIP.on_dwell(every=days(7))
async def weekly(contact: object, ctx: object) -> None:
    return None


APP = Hogsend(buckets=[VIP, BETA])


@pytest.fixture
async def api(engine: AsyncEngine, database_url: str) -> AsyncIterator[FastAPI]:
    built = create_api(APP, api_settings(database_url), engine=engine)
    yield built
    await built.state.driver_pool.close()


@pytest.fixture
async def keys(mint_key: MintKey) -> dict[str, dict[str, str]]:
    return {
        name: {"Authorization": f"Bearer {await mint_key(*scopes, name=name)}"}
        for name, scopes in (
            ("ingest", ("ingest",)),
            ("read", ("admin:read",)),
            ("write", ("admin:write",)),
        )
    }


async def ingest(client: httpx.AsyncClient, key: dict[str, str], **body: Any) -> str:
    response = await client.post("/v1/events", json={"name": "seen", **body}, headers=key)
    assert response.status_code == 202, response.text
    return str(response.json()["eventId"])


async def dispatch(engine: AsyncEngine, database_url: str) -> None:
    await Dispatcher(
        engine, api_settings(database_url), [BucketMembershipConsumer(APP.buckets)], worker_id="t"
    ).drain()


async def contact_of(fetch_all: FetchAll, email: str) -> str:
    [row] = await fetch_all("SELECT id FROM contacts WHERE email = :e", e=email)
    return str(row["id"])


async def test_listing_members_and_a_contacts_memberships(
    client: httpx.AsyncClient,
    keys: dict[str, dict[str, str]],
    engine: AsyncEngine,
    database_url: str,
    fetch_all: FetchAll,
) -> None:
    for n in range(3):
        await ingest(
            client, keys["ingest"], email=f"v{n}@x.test", contactProperties={"plan": "vip"}
        )
    await ingest(client, keys["ingest"], userId="u-free", contactProperties={"plan": "free"})
    await dispatch(engine, database_url)
    listing = (await client.get("/v1/admin/buckets", headers=keys["read"])).json()
    vip, beta = listing["buckets"]
    assert vip["id"] == "vip"
    assert vip["memberCount"] == 3
    assert vip["enabled"] is True
    assert vip["enabledOverride"] is None
    assert vip["criteria"] == {
        "type": "property",
        "property": "plan",
        "op": "equals",
        "value": "vip",
    }
    assert [t["kind"] for t in vip["recentTransitions"]] == ["entered"] * 3
    assert vip["reactions"] == [
        {
            "kind": "dwell",
            "event": "bucket:dwell:vip:every-7d",
            "journeyId": "bucket-vip-on-dwell-every-7d",
            "label": "every-7d",
            "afterSeconds": None,
            "everySeconds": 604800.0,
        }
    ]
    assert beta["kind"] == "manual"
    assert beta["memberCount"] == 0
    assert beta["description"] == "Hand-picked."

    page = await client.get("/v1/admin/buckets/vip/members?limit=2", headers=keys["read"])
    body = page.json()
    assert len(body["members"]) == 2
    assert body["nextCursor"]
    rest = await client.get(
        "/v1/admin/buckets/vip/members",
        params={"limit": 2, "cursor": body["nextCursor"]},
        headers=keys["read"],
    )
    assert len(rest.json()["members"]) == 1
    assert rest.json()["nextCursor"] is None
    emails = {m["email"] for m in body["members"] + rest.json()["members"]}
    assert emails == {"v0@x.test", "v1@x.test", "v2@x.test"}

    contact = await contact_of(fetch_all, "v1@x.test")
    one = await client.get(
        "/v1/admin/buckets/vip/members", params={"contactId": contact}, headers=keys["read"]
    )
    assert [m["contactId"] for m in one.json()["members"]] == [contact]
    left = await client.get("/v1/admin/buckets/vip/members?status=left", headers=keys["read"])
    assert left.json()["members"] == []
    unknown = await client.get("/v1/admin/buckets/vip/members?userId=nobody", headers=keys["read"])
    assert unknown.json() == {"members": [], "nextCursor": None}

    mine = await client.get(f"/v1/admin/contacts/{contact}/buckets", headers=keys["read"])
    assert [(m["bucketId"], m["status"], m["epoch"]) for m in mine.json()["memberships"]] == [
        ("vip", "active", 1)
    ]
    assert (
        await client.get(f"/v1/admin/contacts/{uuid.uuid4()}/buckets", headers=keys["read"])
    ).status_code == 404
    assert (await client.get("/v1/admin/buckets/nope", headers=keys["read"])).status_code == 404
    bad_cursor = await client.get("/v1/admin/buckets/vip/members?cursor=zz", headers=keys["read"])
    assert bad_cursor.status_code == 422


async def test_the_switch_is_persisted_audited_and_read(
    client: httpx.AsyncClient,
    keys: dict[str, dict[str, str]],
    engine: AsyncEngine,
    database_url: str,
    fetch_all: FetchAll,
) -> None:
    assert (
        await client.patch("/v1/admin/buckets/vip", json={"enabled": False}, headers=keys["read"])
    ).status_code == 403
    bad = await client.patch("/v1/admin/buckets/vip", json={"enabled": "no"}, headers=keys["write"])
    assert bad.status_code == 422
    off = await client.patch(
        "/v1/admin/buckets/vip", json={"enabled": False}, headers=keys["write"]
    )
    assert off.status_code == 200
    assert off.json()["enabled"] is False
    assert off.json()["enabledOverride"] is False
    await ingest(client, keys["ingest"], userId="u1", contactProperties={"plan": "vip"})
    await dispatch(engine, database_url)
    assert await fetch_all("SELECT id FROM bucket_memberships") == []
    on = await client.patch("/v1/admin/buckets/vip", json={"enabled": None}, headers=keys["write"])
    assert on.json()["enabled"] is True
    await ingest(client, keys["ingest"], userId="u1")
    await dispatch(engine, database_url)
    assert len(await fetch_all("SELECT id FROM bucket_memberships")) == 1
    audit = await fetch_all(
        "SELECT action, resource, resource_id, detail FROM audit_logs ORDER BY created_at"
    )
    assert [(a["action"], a["resource_id"], a["detail"]) for a in audit] == [
        (
            "buckets.update",
            "vip",
            {
                "enabled": False,
                "before": {"enabled": True, "override": None},
                "after": {"enabled": False, "override": False},
            },
        ),
        (
            "buckets.update",
            "vip",
            {
                "enabled": None,
                "before": {"enabled": False, "override": False},
                "after": {"enabled": True, "override": None},
            },
        ),
    ]


async def test_manual_members_add_and_remove(
    client: httpx.AsyncClient,
    keys: dict[str, dict[str, str]],
    fetch_all: FetchAll,
    engine: AsyncEngine,
) -> None:
    await ingest(client, keys["ingest"], email="m@x.test")
    contact = await contact_of(fetch_all, "m@x.test")
    path = "/v1/admin/buckets/beta/members"
    added = await client.post(path, json={"contactId": contact}, headers=keys["write"])
    assert added.status_code == 201, added.text
    assert added.json()["source"] == "manual"
    assert added.json()["epoch"] == 1
    again = await client.post(path, json={"contactId": contact}, headers=keys["write"])
    assert again.status_code == 200
    assert again.json()["id"] == added.json()["id"]
    removed = await client.delete(f"{path}/{contact}", headers=keys["write"])
    assert removed.json() == {"removed": True}
    assert (await client.delete(f"{path}/{contact}", headers=keys["write"])).status_code == 404
    readded = await client.post(path, json={"contactId": contact}, headers=keys["write"])
    assert readded.json()["epoch"] == 2
    events = await fetch_all(
        "SELECT event, idempotency_key, properties->>'reason' AS reason FROM user_events"
        " WHERE event LIKE 'bucket:%' ORDER BY received_at"
    )
    assert [(e["event"], e["idempotency_key"], e["reason"]) for e in events] == [
        ("bucket:entered:beta", f"bucket:entered:beta:{contact}:1", None),
        ("bucket:left:beta", f"bucket:left:beta:{contact}:1", "manual"),
        ("bucket:entered:beta", f"bucket:entered:beta:{contact}:2", None),
    ]
    # Criteria buckets take no hand-made members; unknown contacts and bodies are refused.
    criteria = await client.post(
        "/v1/admin/buckets/vip/members", json={"contactId": contact}, headers=keys["write"]
    )
    assert criteria.status_code == 409
    ghost = await client.post(path, json={"contactId": str(uuid.uuid4())}, headers=keys["write"])
    assert ghost.status_code == 404
    bad = await client.post(path, json={"contactId": "x"}, headers=keys["write"])
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"
    # A disabled manual bucket refuses changes.
    async with make_sessionmaker(engine)() as session, session.begin():
        await repo.set_enabled(session, "beta", False, now=datetime.now(UTC))
    disabled = await client.delete(f"{path}/{contact}", headers=keys["write"])
    assert disabled.status_code == 409
    actions = await fetch_all("SELECT action FROM audit_logs ORDER BY created_at")
    assert [a["action"] for a in actions] == [
        "buckets.members.add",
        "buckets.members.add",
        "buckets.members.remove",
        "buckets.members.add",
    ]


async def test_preview_counts_without_saving(
    client: httpx.AsyncClient, keys: dict[str, dict[str, str]], fetch_all: FetchAll
) -> None:
    for n, plan in enumerate(("vip", "vip", "free")):
        await ingest(client, keys["ingest"], userId=f"p{n}", contactProperties={"plan": plan})
    criteria = {"type": "property", "property": "plan", "op": "equals", "value": "vip"}
    response = await client.get(
        "/v1/admin/criteria/preview",
        params={"criteria": json.dumps(criteria), "sample": 1},
        headers=keys["read"],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 2
    assert [s["userId"] for s in body["sample"]] in (["p0"], ["p1"])
    assert await fetch_all("SELECT id FROM bucket_memberships") == []
    bad = await client.get(
        "/v1/admin/criteria/preview",
        params={
            "criteria": json.dumps({"type": "property", "property": "n", "op": "gt", "value": "x"})
        },
        headers=keys["read"],
    )
    assert bad.status_code == 422
    assert "criteria" in bad.text
    not_json = await client.get(
        "/v1/admin/criteria/preview", params={"criteria": "{"}, headers=keys["read"]
    )
    assert not_json.status_code == 422
