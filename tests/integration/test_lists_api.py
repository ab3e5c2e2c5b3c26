"""/v1/lists and the admin preferences route, through the ASGI app on real Postgres.

The app of tests/integration/conftest.py registers ``newsletter`` (an opt-in list:
explicit subscribers only) and ``product-updates`` (``default_opt_in``: everyone not
unsubscribed).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]
MintKey = Callable[..., Awaitable[str]]
RowCounts = Callable[[], Awaitable[dict[str, int]]]

PROBLEM = "application/problem+json"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def upsert(client: httpx.AsyncClient, key: str, **body: Any) -> uuid.UUID:
    response = await client.put("/v1/contacts", json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    return uuid.UUID(response.json()["id"])


async def execute(engine: AsyncEngine, sql: str, **params: object) -> None:
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def counts(client: httpx.AsyncClient, key: str) -> dict[str, int]:
    response = await client.get("/v1/lists", headers=bearer(key))
    assert response.status_code == 200, response.text
    return {item["id"]: item["subscriberCount"] for item in response.json()["lists"]}


async def test_lists_with_their_definitions_and_audiences(
    client: httpx.AsyncClient, ingest_key: str, read_key: str, engine: AsyncEngine
) -> None:
    response = await client.get("/v1/lists", headers=bearer(read_key))
    assert response.status_code == 200
    assert response.json() == {
        "lists": [
            {
                "id": "newsletter",
                "name": "Newsletter",
                "description": "",
                "defaultOptIn": False,
                "subscriberCount": 0,
            },
            {
                "id": "product-updates",
                "name": "Product updates",
                "description": "",
                "defaultOptIn": True,
                "subscriberCount": 0,
            },
        ]
    }

    # a: both lists; b: no choice (only the default_opt_in list); c: opted out of
    # product-updates; then people a send reaches nowhere.
    await upsert(client, ingest_key, email="a@example.com", lists={"newsletter": True})
    await upsert(client, ingest_key, email="b@example.com")
    await upsert(
        client,
        ingest_key,
        email="c@example.com",
        lists={"newsletter": True, "product-updates": False},
    )
    assert await counts(client, read_key) == {"newsletter": 2, "product-updates": 2}

    everywhere = {"newsletter": True, "product-updates": True}
    gone = await upsert(client, ingest_key, email="d@example.com", lists=everywhere)
    await execute(
        engine,
        "INSERT INTO email_preferences (contact_id, unsubscribed_all) VALUES (:c, true)",
        c=gone,
    )
    await upsert(client, ingest_key, email="E@Example.com", lists=everywhere)
    await execute(
        engine,
        "INSERT INTO email_suppressions (email, suppressed, reason, suppressed_at)"
        " VALUES ('e@example.com', true, 'complaint', now())",
    )
    await upsert(client, ingest_key, anonymousId="anon-1", lists=everywhere)  # no address
    deleted = await upsert(client, ingest_key, email="f@example.com", lists=everywhere)
    await execute(engine, "UPDATE contacts SET deleted_at = now() WHERE id = :c", c=deleted)
    assert await counts(client, read_key) == {"newsletter": 2, "product-updates": 2}

    # A contact unsubscribed from all is counted again once it resubscribes.
    await execute(
        engine,
        "UPDATE email_preferences SET unsubscribed_all = false WHERE contact_id = :c",
        c=gone,
    )
    assert await counts(client, read_key) == {"newsletter": 3, "product-updates": 3}


async def test_list_routes_check_scopes(
    client: httpx.AsyncClient, ingest_key: str, read_key: str
) -> None:
    refused = await client.get("/v1/lists", headers=bearer(ingest_key))
    assert refused.status_code == 403
    body = {"email": "x@example.com"}
    for action in ("subscribe", "unsubscribe"):
        path = f"/v1/lists/newsletter/{action}"
        assert (await client.post(path, json=body)).status_code == 401
        weak = await client.post(path, json=body, headers=bearer(read_key))
        assert weak.status_code == 403
        assert weak.headers["content-type"] == PROBLEM


async def test_subscribe_creates_the_contact_and_is_idempotent(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    path = "/v1/lists/newsletter/subscribe"
    first = await client.post(path, json={"email": "New@Example.com"}, headers=bearer(ingest_key))
    assert first.status_code == 200, first.text
    answer = first.json()
    assert answer["list"] == "newsletter"
    assert answer["subscribed"] is True
    assert answer["unsubscribedAll"] is False
    contact_id = answer["contactId"]
    [contact] = await fetch_all("SELECT id, email FROM contacts")
    assert str(contact["id"]) == contact_id
    assert contact["email"] == "New@example.com"
    rows = "SELECT * FROM list_subscriptions ORDER BY list_id"
    [row] = await fetch_all(rows)
    assert (row["list_id"], row["subscribed"], row["source"]) == ("newsletter", True, "api")
    assert row["subscribed_at"] is not None
    assert row["unsubscribed_at"] is None

    again = await client.post(path, json={"contactId": contact_id}, headers=bearer(ingest_key))
    assert again.status_code == 200
    assert again.json() == answer
    assert await fetch_all(rows) == [row]  # nothing rewritten: same times, same source
    assert len(await fetch_all("SELECT id FROM contacts")) == 1

    off = await client.post(
        "/v1/lists/newsletter/unsubscribe",
        json={"email": "new@example.com"},
        headers=bearer(ingest_key),
    )
    assert off.status_code == 200
    assert off.json() == {**answer, "subscribed": False}
    [row] = await fetch_all(rows)
    assert row["subscribed"] is False
    assert row["unsubscribed_at"] is not None
    again_off = await client.post(
        "/v1/lists/newsletter/unsubscribe",
        json={"userId": None, "email": "new@example.com"},
        headers=bearer(ingest_key),
    )
    assert again_off.status_code == 200
    assert await fetch_all(rows) == [row]


async def test_unknown_lists_contacts_and_bad_bodies_write_nothing(
    client: httpx.AsyncClient, ingest_key: str, row_counts: RowCounts
) -> None:
    existing = await upsert(client, ingest_key, email="kept@example.com")
    before = await row_counts()
    headers = bearer(ingest_key)

    unknown_list = await client.post(
        "/v1/lists/nope/subscribe", json={"email": "x@example.com"}, headers=headers
    )
    assert unknown_list.status_code == 404
    assert unknown_list.headers["content-type"] == PROBLEM
    assert "nope" in unknown_list.json()["detail"]

    unknown_contact = await client.post(
        "/v1/lists/newsletter/subscribe", json={"contactId": str(uuid.uuid4())}, headers=headers
    )
    assert unknown_contact.status_code == 404
    assert unknown_contact.headers["content-type"] == PROBLEM

    cases: list[tuple[Any, str]] = [
        ({}, "body"),
        ({"email": "   "}, "body"),
        ({"email": "not an address"}, "body.email"),
        ({"contactId": str(existing), "email": "kept@example.com"}, "body.contactId"),
        ({"contactId": "not-a-uuid"}, "body.contactId"),
        ({"email": "x@example.com", "lists": {}}, "body.lists"),
    ]
    for body, field in cases:
        response = await client.post("/v1/lists/newsletter/subscribe", json=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"] == PROBLEM
        assert field in {e["field"] for e in response.json()["errors"]}, (body, response.json())
    assert await row_counts() == before


async def test_subscribe_follows_a_merge_and_keeps_a_global_unsubscribe(
    client: httpx.AsyncClient, ingest_key: str, engine: AsyncEngine, fetch_all: FetchAll
) -> None:
    loser = await upsert(client, ingest_key, anonymousId="visitor-9")
    survivor = await upsert(client, ingest_key, userId="u-9", email="nine@example.com")
    merged = await upsert(client, ingest_key, userId="u-9", anonymousId="visitor-9")
    assert merged == survivor
    await execute(
        engine,
        "INSERT INTO email_preferences (contact_id, unsubscribed_all) VALUES (:c, true)",
        c=survivor,
    )
    response = await client.post(
        "/v1/lists/newsletter/subscribe",
        json={"contactId": str(loser)},
        headers=bearer(ingest_key),
    )
    assert response.status_code == 200
    assert response.json()["contactId"] == str(survivor)
    assert response.json()["unsubscribedAll"] is True
    rows = await fetch_all("SELECT contact_id, subscribed FROM list_subscriptions")
    assert rows == [{"contact_id": survivor, "subscribed": True}]
    [prefs] = await fetch_all("SELECT unsubscribed_all FROM email_preferences")
    assert prefs["unsubscribed_all"] is True


async def test_admin_changes_global_unsubscribe_and_lists(
    client: httpx.AsyncClient, ingest_key: str, mint_key: MintKey, fetch_all: FetchAll
) -> None:
    contact = await upsert(client, ingest_key, email="sup@example.com")
    writer = bearer(await mint_key("admin:write"))
    path = f"/v1/admin/contacts/{contact}/preferences"
    refused = await client.put(path, json={"unsubscribedAll": True}, headers=bearer(ingest_key))
    assert refused.status_code == 403

    response = await client.put(
        path, json={"unsubscribedAll": True, "lists": {"newsletter": True}}, headers=writer
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["unsubscribedAll"] is True
    assert body["unsubscribedAt"] is not None
    assert {item["id"]: item["subscribed"] for item in body["lists"]} == {
        "newsletter": True,
        "product-updates": True,
    }
    [prefs] = await fetch_all("SELECT * FROM email_preferences")
    assert (prefs["unsubscribed_all"], prefs["source"]) == (True, "admin")
    [audit] = await fetch_all("SELECT action, resource_id FROM audit_logs")
    assert audit == {"action": "contacts.preferences.update", "resource_id": str(contact)}

    back = await client.put(path, json={"unsubscribedAll": False}, headers=writer)
    assert back.status_code == 200
    assert back.json()["unsubscribedAll"] is False
    assert back.json()["resubscribedAt"] is not None
    read = await client.get(path, headers=bearer(await mint_key("admin:read")))
    assert read.json() == back.json()

    unknown = await client.put(path, json={"lists": {"nope": True}}, headers=writer)
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "body.lists.nope"
    missing = await client.put(
        f"/v1/admin/contacts/{uuid.uuid4()}/preferences", json={}, headers=writer
    )
    assert missing.status_code == 404
    assert len(await fetch_all("SELECT id FROM audit_logs")) == 2
