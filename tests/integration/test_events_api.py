"""POST /v1/events and /v1/events/batch over HTTP against real Postgres."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from hogsend.db.engine import libpq_url

RowCounts = Callable[[], Awaitable[dict[str, int]]]
FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


async def post_event(
    client: httpx.AsyncClient, key: str, body: dict[str, Any], **headers: str
) -> httpx.Response:
    return await client.post("/v1/events", json=body, headers={**bearer(key), **headers})


async def test_an_event_is_stored_with_its_contact_outbox_row_and_lists(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    response = await post_event(
        client,
        ingest_key,
        {
            "name": "signed_up",
            "userId": " u-1 ",
            "email": "Ann@Example.COM",
            "eventProperties": {"plan": "pro", "seats": 3, "tags": ["a"]},
            "contactProperties": {"name": "Ann"},
            "lists": {"newsletter": True, "product-updates": False},
            "timestamp": "2026-01-31T12:00:00+02:00",
        },
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["stored"] is True
    assert "duplicate" not in body
    assert "conflicts" not in body
    [event] = await fetch_all("SELECT * FROM user_events")
    assert str(event["id"]) == body["eventId"]
    assert str(event["contact_id"]) == body["contactId"]
    assert event["user_id"] == "u-1"
    assert event["event"] == "signed_up"
    assert event["properties"] == {"plan": "pro", "seats": 3, "tags": ["a"]}
    assert event["source"] == "api"
    assert event["occurred_at"].isoformat() == "2026-01-31T10:00:00+00:00"
    [contact] = await fetch_all("SELECT * FROM contacts")
    assert contact["external_id"] == "u-1"
    assert contact["email"] == "Ann@example.com"
    assert contact["properties"] == {"name": "Ann"}
    [outbox] = await fetch_all("SELECT * FROM event_outbox")
    assert str(outbox["event_id"]) == body["eventId"]
    lists = await fetch_all("SELECT list_id, subscribed FROM list_subscriptions ORDER BY list_id")
    assert lists == [
        {"list_id": "newsletter", "subscribed": True},
        {"list_id": "product-updates", "subscribed": False},
    ]


async def test_a_repeated_key_returns_the_original_and_changes_nothing(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll, row_counts: RowCounts
) -> None:
    first = await post_event(
        client,
        ingest_key,
        {"name": "paid", "userId": "u-1", "contactProperties": {"plan": "pro"}},
        **{"Idempotency-Key": "order-1"},
    )
    assert first.status_code == 202
    before = await row_counts()
    # The header wins over the body's key; the changed body must change nothing.
    again = await post_event(
        client,
        ingest_key,
        {
            "name": "paid",
            "userId": "u-1",
            "email": "new@example.com",
            "contactProperties": {"plan": "free"},
            "lists": {"newsletter": True},
            "idempotencyKey": "something-else",
        },
        **{"Idempotency-Key": "order-1"},
    )
    assert again.status_code == 202
    assert again.json() == {
        "stored": False,
        "duplicate": True,
        "eventId": first.json()["eventId"],
        "contactId": first.json()["contactId"],
    }
    assert await row_counts() == before
    [contact] = await fetch_all("SELECT email, properties FROM contacts")
    assert contact == {"email": None, "properties": {"plan": "pro"}}

    by_body = await post_event(
        client, ingest_key, {"name": "paid", "userId": "u-1", "idempotencyKey": "order-1"}
    )
    assert by_body.json()["duplicate"] is True


async def test_concurrent_duplicates_store_one_event(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    body = {"name": "checkout", "anonymousId": "visitor-9", "eventProperties": {"total": 10}}
    responses = await asyncio.gather(
        *(post_event(client, ingest_key, body, **{"Idempotency-Key": "cart-77"}) for _ in range(20))
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["eventId"] for r in responses}) == 1
    assert sum(r.json()["stored"] for r in responses) == 1
    assert len(await fetch_all("SELECT id FROM user_events")) == 1
    assert len(await fetch_all("SELECT id FROM event_outbox")) == 1
    assert len(await fetch_all("SELECT id FROM contacts")) == 1


async def test_concurrent_first_events_of_a_new_person_create_one_contact(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    responses = await asyncio.gather(
        *(
            post_event(client, ingest_key, {"name": f"e{i}", "email": "race@example.com"})
            for i in range(15)
        )
    )
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["contactId"] for r in responses}) == 1
    assert len(await fetch_all("SELECT id FROM contacts")) == 1
    assert len(await fetch_all("SELECT id FROM user_events")) == 15


async def test_anonymous_history_follows_the_visitor_when_identified(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    first = await post_event(client, ingest_key, {"name": "viewed", "anonymousId": "anon-1"})
    await post_event(client, ingest_key, {"name": "viewed", "anonymousId": "anon-1"})
    identified = await post_event(
        client,
        ingest_key,
        {"name": "signed_up", "userId": "u-1", "anonymousId": "anon-1", "email": "a@x.io"},
    )
    assert identified.json()["contactId"] == first.json()["contactId"]
    events = await fetch_all("SELECT DISTINCT contact_id, user_id FROM user_events")
    assert events == [{"contact_id": uuid.UUID(first.json()["contactId"]), "user_id": "u-1"}]


async def test_a_conflicting_key_is_reported_not_applied(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    await post_event(client, ingest_key, {"name": "a", "userId": "u-1", "email": "a@x.io"})
    response = await post_event(
        client, ingest_key, {"name": "b", "userId": "u-2", "email": "a@x.io"}
    )
    assert response.status_code == 202
    assert response.json()["conflicts"] == [{"field": "userId", "given": "u-2", "existing": "u-1"}]
    assert await fetch_all("SELECT external_id FROM contacts") == [{"external_id": "u-1"}]


BAD_BODIES: list[tuple[str, Any, str]] = [
    ("no identity", {"name": "x"}, "body"),
    ("blank identity", {"name": "x", "userId": "   ", "anonymousId": ""}, "body"),
    ("invalid email", {"name": "x", "email": "not-an-email"}, "body.email"),
    ("email without a dot", {"name": "x", "email": "ann@localhost"}, "body.email"),
    (
        "naive timestamp",
        {"name": "x", "userId": "u", "timestamp": "2026-01-01T10:00:00"},
        "body.timestamp",
    ),
    ("numeric timestamp", {"name": "x", "userId": "u", "timestamp": 1700000000}, "body.timestamp"),
    ("unknown field", {"name": "x", "userId": "u", "evnetProperties": {}}, "body.evnetProperties"),
    ("missing name", {"userId": "u"}, "body.name"),
    ("empty name", {"name": "", "userId": "u"}, "body.name"),
    (
        "properties not an object",
        {"name": "x", "userId": "u", "eventProperties": [1]},
        "body.eventProperties",
    ),
    (
        "NUL in a property",
        {"name": "x", "userId": "u", "eventProperties": {"a": "b\u0000"}},
        "body.eventProperties",
    ),
    ("NUL in the name", {"name": "a\u0000b", "userId": "u"}, "body.name"),
    ("control character in userId", {"name": "x", "userId": "a\nb"}, "body.userId"),
    (
        "unknown list",
        {"name": "x", "userId": "u", "lists": {"newsletter": True, "nope": True}},
        "body.lists.nope",
    ),
    (
        "list choice not a boolean",
        {"name": "x", "userId": "u", "lists": {"newsletter": "maybe"}},
        "body.lists.newsletter",
    ),
    ("userId not a string", {"name": "x", "userId": 12}, "body.userId"),
    ("body not an object", [1, 2], "body"),
]


@pytest.mark.parametrize(("case", "body", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
async def test_bad_input_is_a_422_naming_the_field_and_writes_nothing(
    client: httpx.AsyncClient,
    ingest_key: str,
    row_counts: RowCounts,
    case: str,
    body: Any,
    field: str,
) -> None:
    before = await row_counts()
    response = await client.post("/v1/events", json=body, headers=bearer(ingest_key))
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    fields = [e["field"] for e in response.json()["errors"]]
    assert field in fields, fields
    assert await row_counts() == before


async def test_nan_and_malformed_json_are_refused(
    client: httpx.AsyncClient, ingest_key: str, row_counts: RowCounts
) -> None:
    before = await row_counts()
    headers = {**bearer(ingest_key), "Content-Type": "application/json"}
    nan = await client.post(
        "/v1/events",
        content=b'{"name":"x","userId":"u","eventProperties":{"a":NaN}}',
        headers=headers,
    )
    assert nan.status_code == 422
    assert nan.json()["errors"][0]["field"] == "body.eventProperties"
    malformed = await client.post("/v1/events", content=b'{"name": "x", ', headers=headers)
    assert malformed.status_code == 400
    assert malformed.json()["type"] == "urn:hogsend:problem:malformed-json"
    assert await row_counts() == before


async def test_bodies_over_the_limit_are_413(
    client: httpx.AsyncClient, ingest_key: str, row_counts: RowCounts
) -> None:
    before = await row_counts()
    big = {"name": "x", "userId": "u", "eventProperties": {"blob": "x" * 1_100_000}}
    response = await client.post("/v1/events", json=big, headers=bearer(ingest_key))
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert await row_counts() == before


async def test_gzip_bodies_are_decoded_and_bounded(
    client: httpx.AsyncClient, ingest_key: str, row_counts: RowCounts
) -> None:
    headers = {**bearer(ingest_key), "Content-Type": "application/json", "Content-Encoding": "gzip"}
    body = gzip.compress(json.dumps({"name": "zipped", "userId": "u"}).encode())
    response = await client.post("/v1/events", content=body, headers=headers)
    assert response.status_code == 202, response.text

    before = await row_counts()
    bomb = gzip.compress(
        json.dumps({"name": "x", "userId": "u", "eventProperties": {"a": "0" * 5_000_000}}).encode()
    )
    assert len(bomb) < 100_000
    assert (await client.post("/v1/events", content=bomb, headers=headers)).status_code == 413
    broken = await client.post("/v1/events", content=b"not gzip at all", headers=headers)
    assert broken.status_code == 400
    unknown = await client.post(
        "/v1/events",
        content=b"{}",
        headers={**headers, "Content-Encoding": "br"},
    )
    assert unknown.status_code == 415
    assert await row_counts() == before


async def test_ingest_wakes_the_dispatcher(
    client: httpx.AsyncClient, ingest_key: str, database_url: str
) -> None:
    async with await psycopg.AsyncConnection.connect(
        libpq_url(database_url), autocommit=True
    ) as listener:
        await listener.execute("LISTEN hogsend_outbox")
        response = await post_event(client, ingest_key, {"name": "ping", "userId": "u"})
        assert response.status_code == 202
        notification = await asyncio.wait_for(anext(listener.notifies()), timeout=5)
        assert notification.channel == "hogsend_outbox"


# --------------------------------------------------------------------------- batch


async def post_batch(client: httpx.AsyncClient, key: str, events: Any) -> httpx.Response:
    return await client.post("/v1/events/batch", json={"events": events}, headers=bearer(key))


async def test_a_batch_stores_good_items_and_rejects_bad_ones_alone(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    await post_event(
        client, ingest_key, {"name": "old", "userId": "u-0"}, **{"Idempotency-Key": "k-old"}
    )
    response = await post_batch(
        client,
        ingest_key,
        [
            {"name": "a", "userId": "u-1", "idempotencyKey": "k-1"},
            {"name": "b", "email": "broken"},
            {"name": "c", "userId": "u-1", "idempotencyKey": "k-1"},
            {"name": "d", "userId": "u-0", "idempotencyKey": "k-old"},
            "not an object",
            {"name": "e", "anonymousId": "anon", "lists": {"ghost": True}},
            {"name": "f", "userId": "u-2", "timestamp": "2026-01-01T00:00:00"},
            {"name": "g", "userId": "u-2", "contactProperties": {"x": 1}},
        ],
    )
    assert response.status_code == 200, response.text
    body = response.json()
    statuses = [r["status"] for r in body["results"]]
    assert statuses == [
        "stored",
        "rejected",
        "duplicate",
        "duplicate",
        "rejected",
        "rejected",
        "rejected",
        "stored",
    ]
    assert [r["index"] for r in body["results"]] == list(range(8))
    assert (body["stored"], body["duplicates"], body["rejected"]) == (2, 2, 4)
    results = body["results"]
    assert results[1]["errors"][0]["field"] == "email"
    assert results[4]["errors"][0]["field"] == "item"
    assert results[5]["errors"][0]["field"] == "lists.ghost"
    assert results[6]["errors"][0]["field"] == "timestamp"
    assert results[2]["eventId"] == results[0]["eventId"]
    names = [r["event"] for r in await fetch_all("SELECT event FROM user_events ORDER BY event")]
    assert names == ["a", "g", "old"]
    assert len(await fetch_all("SELECT id FROM event_outbox")) == 3
    [contact] = await fetch_all("SELECT properties FROM contacts WHERE external_id = 'u-2'")
    assert contact["properties"] == {"x": 1}
    assert all(
        r["source"] == "batch"
        for r in await fetch_all("SELECT source FROM user_events WHERE event <> 'old'")
    )


async def test_batch_limits(
    api_factory: Callable[..., FastAPI], ingest_key: str, row_counts: RowCounts
) -> None:
    api = api_factory(batch_max_events=3, batch_max_body_bytes=2_000_000)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        before = await row_counts()
        too_many = await post_batch(client, ingest_key, [{"name": "x", "userId": "u"}] * 4)
        assert too_many.status_code == 422
        assert too_many.json()["errors"][0]["field"] == "body.events"
        # Over the single-request limit (1 MiB) but within the batch limit.
        blob = "x" * 400_000
        items = [{"name": "x", "userId": "u", "eventProperties": {"b": blob}}] * 3
        assert (await post_batch(client, ingest_key, items)).status_code == 200
        over = [{"name": "x", "userId": "u", "eventProperties": {"b": "x" * 700_000}}] * 3
        assert (await post_batch(client, ingest_key, over)).status_code == 413
        assert (await row_counts())["user_events"] == before["user_events"] + 3
        unknown = await client.post(
            "/v1/events/batch", json={"events": [], "extra": 1}, headers=bearer(ingest_key)
        )
        assert unknown.status_code == 422
    await api.state.driver_pool.close()


async def test_a_batch_of_a_thousand_is_set_based_and_complete(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    events = [
        {"name": "view", "userId": f"user-{i % 200}", "idempotencyKey": f"v-{i}"}
        for i in range(1000)
    ]
    response = await post_batch(client, ingest_key, events)
    assert response.status_code == 200
    assert response.json()["stored"] == 1000
    assert len(await fetch_all("SELECT id FROM contacts")) == 200
    again = await post_batch(client, ingest_key, events)
    assert again.json()["duplicates"] == 1000
    assert len(await fetch_all("SELECT id FROM user_events")) == 1000


async def test_an_event_with_a_merged_away_key_lands_on_the_survivor(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    user = await post_event(client, ingest_key, {"name": "a", "userId": "u-1"})
    await post_event(client, ingest_key, {"name": "b", "email": "old@example.com"})
    merged = await post_event(
        client, ingest_key, {"name": "c", "userId": "u-1", "email": "old@example.com"}
    )
    assert merged.json()["contactId"] == user.json()["contactId"]
    # The email now lives on u-1's contact; the merged-away contact's id is an alias.
    later = await post_event(client, ingest_key, {"name": "d", "email": "OLD@example.com"})
    assert later.json()["contactId"] == user.json()["contactId"]
    owners = await fetch_all("SELECT DISTINCT contact_id FROM user_events")
    assert owners == [{"contact_id": uuid.UUID(user.json()["contactId"])}]


async def test_single_and_batch_racing_for_one_key_store_it_once(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    async def race(i: int) -> list[httpx.Response]:
        return list(
            await asyncio.gather(
                post_event(
                    client,
                    ingest_key,
                    {"name": "x", "userId": f"a-{i}"},
                    **{"Idempotency-Key": f"k-{i}"},
                ),
                post_batch(
                    client,
                    ingest_key,
                    [{"name": "x", "userId": f"b-{i}", "idempotencyKey": f"k-{i}"}],
                ),
            )
        )

    for responses in await asyncio.gather(*(race(i) for i in range(10))):
        single, batch = responses
        assert single.status_code == 202
        assert batch.status_code == 200
        [item] = batch.json()["results"]
        assert item["eventId"] == single.json()["eventId"]
        assert {single.json()["stored"], item["status"] == "stored"} == {True, False}
    assert len(await fetch_all("SELECT id FROM user_events")) == 10
    # No contact was left behind by the loser of each race.
    orphans = await fetch_all(
        "SELECT id FROM contacts c WHERE NOT EXISTS"
        " (SELECT 1 FROM user_events e WHERE e.contact_id = c.id)"
    )
    assert orphans == []


async def test_a_bad_idempotency_key_header_is_a_422_naming_it(
    client: httpx.AsyncClient, ingest_key: str, row_counts: RowCounts
) -> None:
    before = await row_counts()
    for bad in ("", "k" * 513):
        response = await post_event(
            client, ingest_key, {"name": "x", "userId": "u"}, **{"Idempotency-Key": bad}
        )
        assert response.status_code == 422, bad
        assert response.json()["errors"][0]["field"] == "header.Idempotency-Key"
    assert await row_counts() == before
