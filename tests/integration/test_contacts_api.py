"""/v1/contacts and /v1/admin/contacts, /v1/admin/events over HTTP against real Postgres."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

RowCounts = Callable[[], Awaitable[dict[str, int]]]
FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


async def put(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.put("/v1/contacts", json=body, headers=bearer(key))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def event(client: httpx.AsyncClient, key: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/v1/events", json=body, headers=bearer(key))
    assert response.status_code == 202, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_upsert_creates_then_patches_properties(
    client: httpx.AsyncClient, ingest_key: str, read_key: str, fetch_all: FetchAll
) -> None:
    created = await put(
        client,
        ingest_key,
        {
            "userId": "u-1",
            "properties": {"plan": "pro", "seats": 2},
            "lists": {"newsletter": True},
        },
    )
    assert created == {
        "id": created["id"],
        "created": True,
        "linked": False,
        "merged": False,
        "conflicts": [],
    }
    again = await put(
        client, ingest_key, {"userId": "u-1", "properties": {"plan": None, "team": "a"}}
    )
    assert again == {**created, "created": False}
    response = await client.get(f"/v1/contacts/{created['id']}", headers=bearer(read_key))
    assert response.status_code == 200
    contact = response.json()
    assert contact["externalId"] == "u-1"
    assert contact["properties"] == {"seats": 2, "team": "a"}
    assert await fetch_all("SELECT list_id, subscribed, source FROM list_subscriptions") == [
        {"list_id": "newsletter", "subscribed": True, "source": "api"}
    ]


async def test_identifying_a_visitor_keeps_its_history(
    client: httpx.AsyncClient, ingest_key: str, read_key: str
) -> None:
    first = await event(client, ingest_key, {"name": "viewed", "anonymousId": "anon-1"})
    await event(client, ingest_key, {"name": "added_to_cart", "anonymousId": "anon-1"})
    linked = await put(client, ingest_key, {"userId": "u-9", "anonymousId": "anon-1"})
    assert linked["id"] == first["contactId"]
    assert (linked["created"], linked["linked"], linked["merged"]) == (False, True, False)
    page = await client.get(f"/v1/contacts/{linked['id']}/events", headers=bearer(read_key))
    events = page.json()["events"]
    assert sorted(e["event"] for e in events) == ["added_to_cart", "viewed"]
    assert {e["userId"] for e in events} == {"u-9"}


async def test_two_identified_contacts_merge_with_history_lists_and_preferences(
    client: httpx.AsyncClient,
    ingest_key: str,
    read_key: str,
    engine: AsyncEngine,
    fetch_all: FetchAll,
) -> None:
    by_user = await event(client, ingest_key, {"name": "signed_up", "userId": "u-1"})
    by_email = await event(
        client,
        ingest_key,
        {"name": "newsletter_form", "email": "ann@example.com", "lists": {"newsletter": False}},
    )
    assert by_user["contactId"] != by_email["contactId"]
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO email_preferences (contact_id, unsubscribed_all, source)"
                " VALUES (:id, true, 'preference_center')"
            ),
            {"id": by_email["contactId"]},
        )
    merged = await put(client, ingest_key, {"userId": "u-1", "email": "ann@example.com"})
    assert merged["merged"] is True
    assert merged["id"] == by_user["contactId"]
    events = await client.get(f"/v1/contacts/{merged['id']}/events", headers=bearer(read_key))
    assert sorted(e["event"] for e in events.json()["events"]) == ["newsletter_form", "signed_up"]
    assert await fetch_all("SELECT contact_id, subscribed FROM list_subscriptions") == [
        {"contact_id": uuid.UUID(merged["id"]), "subscribed": False}
    ]
    prefs = await fetch_all("SELECT contact_id, unsubscribed_all FROM email_preferences")
    assert prefs == [{"contact_id": uuid.UUID(merged["id"]), "unsubscribed_all": True}]
    # The merged-away id still answers, with the survivor.
    old = await client.get(f"/v1/contacts/{by_email['contactId']}", headers=bearer(read_key))
    assert old.json()["id"] == merged["id"]


async def test_conflicting_keys_are_reported(client: httpx.AsyncClient, ingest_key: str) -> None:
    await put(client, ingest_key, {"userId": "u-1", "email": "a@x.io"})
    result = await put(client, ingest_key, {"userId": "u-1", "email": "b@x.io"})
    assert result["conflicts"] == [{"field": "email", "given": "b@x.io", "existing": "a@x.io"}]
    assert result["linked"] is False


async def test_concurrent_upserts_of_a_new_person_create_one_contact(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    responses = await asyncio.gather(
        *(
            client.put(
                "/v1/contacts",
                json={"email": "Race@Example.com", "properties": {"n": i}},
                headers=bearer(ingest_key),
            )
            for i in range(12)
        )
    )
    assert {r.status_code for r in responses} == {200}
    assert sum(r.json()["created"] for r in responses) == 1
    assert len(await fetch_all("SELECT id FROM contacts")) == 1


async def test_find_by_any_key_following_merges(
    client: httpx.AsyncClient, ingest_key: str, read_key: str
) -> None:
    ann = await put(client, ingest_key, {"userId": "u-1", "email": "Ann@Example.com"})
    visitor = await put(client, ingest_key, {"anonymousId": "anon-5"})
    found = await client.get("/v1/contacts/find?email=ann@EXAMPLE.com", headers=bearer(read_key))
    assert [c["id"] for c in found.json()["contacts"]] == [ann["id"]]
    both = await client.get(
        "/v1/contacts/find",
        params={"userId": "u-1", "anonymousId": "anon-5"},
        headers=bearer(read_key),
    )
    assert {c["id"] for c in both.json()["contacts"]} == {ann["id"], visitor["id"]}
    assert both.json()["contacts"][0]["anonymousId"] is None
    # anon-5 is folded into u-1: looking it up finds the survivor.
    await put(client, ingest_key, {"userId": "u-1", "anonymousId": "anon-5"})
    after = await client.get("/v1/contacts/find?anonymousId=anon-5", headers=bearer(read_key))
    assert [c["id"] for c in after.json()["contacts"]] == [ann["id"]]
    none = await client.get("/v1/contacts/find?userId=nobody", headers=bearer(read_key))
    assert none.json() == {"contacts": []}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("", "query"),
        ("?email=%20", "query"),
        ("?email=broken", "query.email"),
        ("?userId=u&mail=x", "query.mail"),
    ],
)
async def test_find_needs_a_valid_key(
    client: httpx.AsyncClient, read_key: str, query: str, field: str
) -> None:
    response = await client.get(f"/v1/contacts/find{query}", headers=bearer(read_key))
    assert response.status_code == 422
    assert field in [e["field"] for e in response.json()["errors"]]


async def test_get_contact_errors(client: httpx.AsyncClient, read_key: str) -> None:
    missing = await client.get(f"/v1/contacts/{uuid.uuid4()}", headers=bearer(read_key))
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    not_uuid = await client.get("/v1/contacts/u-1", headers=bearer(read_key))
    assert not_uuid.status_code == 422


async def test_delete_is_soft_and_erase_removes_personal_data(
    client: httpx.AsyncClient, ingest_key: str, read_key: str, fetch_all: FetchAll
) -> None:
    kept = await event(
        client, ingest_key, {"name": "a", "userId": "u-1", "contactProperties": {"x": 1}}
    )
    response = await client.request(
        "DELETE", "/v1/contacts", json={"userId": "u-1"}, headers=bearer(ingest_key)
    )
    assert response.status_code == 200
    assert response.json() == {"deleted": True, "contactIds": [kept["contactId"]], "erased": False}
    assert len(await fetch_all("SELECT id FROM user_events")) == 1
    gone = await client.get(f"/v1/contacts/{kept['contactId']}", headers=bearer(read_key))
    assert gone.status_code == 404
    again = await client.request(
        "DELETE", "/v1/contacts", json={"userId": "u-1"}, headers=bearer(ingest_key)
    )
    assert again.status_code == 404

    erased = await event(
        client,
        ingest_key,
        {"name": "b", "email": "gdpr@example.com", "contactProperties": {"y": 2}},
    )
    response = await client.request(
        "DELETE",
        "/v1/contacts",
        json={"email": "GDPR@example.com", "erase": True},
        headers=bearer(ingest_key),
    )
    assert response.json()["erased"] is True
    [row] = await fetch_all(
        "SELECT email, properties, erased_at FROM contacts WHERE id = :id", id=erased["contactId"]
    )
    assert row["email"] is None
    assert row["properties"] == {}
    assert row["erased_at"] is not None
    assert (
        await fetch_all("SELECT id FROM user_events WHERE contact_id = :id", id=erased["contactId"])
        == []
    )


async def test_contact_events_are_cursor_paged(
    client: httpx.AsyncClient, ingest_key: str, read_key: str
) -> None:
    first = await event(
        client, ingest_key, {"name": "e0", "userId": "u", "timestamp": "2026-01-01T00:00:00Z"}
    )
    for i in range(1, 7):
        await event(
            client,
            ingest_key,
            {"name": f"e{i}", "userId": "u", "timestamp": f"2026-01-0{i + 1}T00:00:00Z"},
        )
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        response = await client.get(
            f"/v1/contacts/{first['contactId']}/events", params=params, headers=bearer(read_key)
        )
        assert response.status_code == 200
        page = response.json()
        seen += [e["event"] for e in page["events"]]
        pages += 1
        cursor = page["nextCursor"]
        if cursor is None:
            break
    assert seen == [f"e{i}" for i in range(6, -1, -1)]
    assert pages == 3
    bad = await client.get(
        f"/v1/contacts/{first['contactId']}/events?cursor=garbage", headers=bearer(read_key)
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "query.cursor"


BAD_WRITES: list[tuple[str, str, dict[str, Any], str]] = [
    ("PUT", "unknown field", {"userId": "u", "props": {}}, "body.props"),
    ("PUT", "no identity", {"properties": {"a": 1}}, "body"),
    ("PUT", "bad email", {"email": "a@b"}, "body.email"),
    ("PUT", "unknown list", {"userId": "u", "lists": {"ghost": True}}, "body.lists.ghost"),
    ("PUT", "properties not an object", {"userId": "u", "properties": "x"}, "body.properties"),
    ("DELETE", "no identity", {"erase": True}, "body"),
    ("DELETE", "erase not a boolean", {"userId": "u", "erase": "yes please"}, "body.erase"),
]


@pytest.mark.parametrize(
    ("method", "case", "body", "field"), BAD_WRITES, ids=[f"{c[0]} {c[1]}" for c in BAD_WRITES]
)
async def test_bad_contact_writes_are_422_and_write_nothing(
    client: httpx.AsyncClient,
    ingest_key: str,
    row_counts: RowCounts,
    method: str,
    case: str,
    body: dict[str, Any],
    field: str,
) -> None:
    await put(client, ingest_key, {"userId": "u"})
    before = await row_counts()
    response = await client.request(method, "/v1/contacts", json=body, headers=bearer(ingest_key))
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]
    assert await row_counts() == before


# --------------------------------------------------------------------------- admin


async def test_admin_contact_list_search_and_cursor(
    client: httpx.AsyncClient, ingest_key: str, admin_key: str
) -> None:
    for i in range(5):
        await put(client, ingest_key, {"userId": f"user_{i}", "email": f"p{i}@example.com"})
    await put(client, ingest_key, {"userId": "user%x"})
    listed = await client.get("/v1/admin/contacts?limit=4", headers=bearer(admin_key))
    page = listed.json()
    assert len(page["contacts"]) == 4
    assert page["contacts"][0]["externalId"] == "user%x"  # newest first
    rest = await client.get(
        "/v1/admin/contacts",
        params={"limit": 4, "cursor": page["nextCursor"]},
        headers=bearer(admin_key),
    )
    assert len(rest.json()["contacts"]) == 2
    assert rest.json()["nextCursor"] is None
    literal = await client.get(
        "/v1/admin/contacts", params={"search": "%"}, headers=bearer(admin_key)
    )
    assert [c["externalId"] for c in literal.json()["contacts"]] == ["user%x"]
    by_email = await client.get("/v1/admin/contacts?search=P3@EXAMPLE", headers=bearer(admin_key))
    assert [c["externalId"] for c in by_email.json()["contacts"]] == ["user_3"]


async def test_admin_contact_detail_and_timeline(
    client: httpx.AsyncClient, ingest_key: str, admin_key: str, engine: AsyncEngine
) -> None:
    visitor = await event(client, ingest_key, {"name": "viewed", "anonymousId": "anon-1"})
    other = await put(client, ingest_key, {"email": "ann@example.com"})
    merged = await put(
        client,
        ingest_key,
        {
            "userId": "u-1",
            "anonymousId": "anon-1",
            "email": "ann@example.com",
            "lists": {"newsletter": True},
        },
    )
    assert merged["merged"] is True
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO email_suppressions (email, suppressed, reason, suppressed_at,"
                " bounce_count) VALUES ('ANN@example.com', true, 'hard_bounce', now(), 1)"
            )
        )
    response = await client.get(f"/v1/admin/contacts/{merged['id']}", headers=bearer(admin_key))
    assert response.status_code == 200
    detail = response.json()
    assert detail["contact"]["key"] == "u-1"
    assert detail["contact"]["anonymousId"] == "anon-1"
    # The email contact survives (identified beats anonymous); the visitor's key is an alias.
    assert merged["id"] == other["id"]
    assert ("anonymous", "anon-1", "merge") in {
        (a["kind"], a["value"], a["reason"]) for a in detail["aliases"]
    }
    assert [(s["listId"], s["subscribed"]) for s in detail["lists"]] == [("newsletter", True)]
    assert detail["suppression"]["suppressed"] is True
    assert detail["suppression"]["reason"] == "hard_bounce"
    assert detail["unsubscribedAll"] is False
    assert visitor["contactId"] != merged["id"]

    timeline = await client.get(
        f"/v1/admin/contacts/{merged['id']}/timeline", headers=bearer(admin_key)
    )
    entries = timeline.json()["entries"]
    assert [e["kind"] for e in entries] == ["event"]
    assert entries[0]["data"]["name"] == "viewed"
    assert "idempotencyKey" in entries[0]["data"]
    missing = await client.get(f"/v1/admin/contacts/{uuid.uuid4()}", headers=bearer(admin_key))
    assert missing.status_code == 404


async def test_admin_events_filters_and_read(
    client: httpx.AsyncClient, ingest_key: str, admin_key: str
) -> None:
    a = await event(
        client, ingest_key, {"name": "paid", "userId": "a", "timestamp": "2026-01-01T00:00:00Z"}
    )
    await event(
        client, ingest_key, {"name": "paid", "userId": "b", "timestamp": "2026-01-02T00:00:00Z"}
    )
    await event(
        client, ingest_key, {"name": "left", "userId": "a", "timestamp": "2026-01-03T00:00:00Z"}
    )
    headers = bearer(admin_key)
    paid = await client.get("/v1/admin/events?event=paid", headers=headers)
    assert [e["userId"] for e in paid.json()["events"]] == ["b", "a"]
    of_a = await client.get(f"/v1/admin/events?contactId={a['contactId']}", headers=headers)
    assert [e["event"] for e in of_a.json()["events"]] == ["left", "paid"]
    window = await client.get(
        "/v1/admin/events",
        params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-02T23:59:59+00:00"},
        headers=headers,
    )
    assert [e["userId"] for e in window.json()["events"]] == ["b"]
    first = await client.get("/v1/admin/events?limit=2", headers=headers)
    second = await client.get(
        "/v1/admin/events",
        params={"limit": 2, "cursor": first.json()["nextCursor"]},
        headers=headers,
    )
    assert len(first.json()["events"]) == 2
    assert [e["event"] for e in second.json()["events"]] == ["paid"]
    one = await client.get(f"/v1/admin/events/{a['eventId']}", headers=headers)
    assert one.json()["event"] == "paid"
    assert one.json()["contactId"] == a["contactId"]
    assert one.json()["source"] == "api"
    assert (
        await client.get(f"/v1/admin/events/{uuid.uuid4()}", headers=headers)
    ).status_code == 404
    naive = await client.get("/v1/admin/events?from=2026-01-02T00:00:00", headers=headers)
    assert naive.status_code == 422
