"""The Segment-spec routes under /segment/v1 over HTTP against real Postgres."""

from __future__ import annotations

import base64
import gzip
import json
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from fastapi import FastAPI

from hogsend.db.repos import events as events_repo

RowCounts = Callable[[], Awaitable[dict[str, int]]]
FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]
MintKey = Callable[..., Awaitable[str]]


def basic(key: str) -> dict[str, str]:
    """What segment-analytics-python and rudder-sdk-python send: the key as the username."""
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def context(**extra: Any) -> dict[str, Any]:
    return {"library": {"name": "analytics-python", "version": "2.4.0"}, **extra}


async def send(
    client: httpx.AsyncClient, key: str, path: str, message: dict[str, Any]
) -> httpx.Response:
    return await client.post(f"/segment/v1/{path}", json=message, headers=basic(key))


async def test_the_write_key_works_as_basic_bearer_or_body_field(
    client: httpx.AsyncClient, ingest_key: str, read_key: str, fetch_all: FetchAll
) -> None:
    message = {"userId": "u-1", "event": "Signed Up", "context": context()}
    assert (await send(client, ingest_key, "track", message)).json() == {"success": True}
    bearer = await client.post(
        "/segment/v1/track", json=message, headers={"Authorization": f"Bearer {ingest_key}"}
    )
    assert bearer.status_code == 200
    in_body = await client.post(
        "/segment/v1/track",
        content=json.dumps({**message, "writeKey": ingest_key}),
        headers={"Content-Type": "text/plain"},
    )
    assert in_body.status_code == 200, in_body.text
    assert len(await fetch_all("SELECT id FROM user_events")) == 3

    missing = await client.post("/segment/v1/track", json=message)
    assert missing.status_code == 401
    assert "Basic" in missing.headers["www-authenticate"]
    wrong = await client.post("/segment/v1/batch", json={"batch": []}, headers=basic("hsk_nope"))
    assert wrong.status_code == 401
    weak = await send(client, read_key, "track", message)
    assert weak.status_code == 403
    garbage = await client.post(
        "/segment/v1/track", json=message, headers={"Authorization": "Basic !!!"}
    )
    assert garbage.status_code == 401


async def test_track_maps_onto_an_event_and_message_id_deduplicates(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    message = {
        "type": "track",
        "event": "Order Completed",
        "userId": 42,
        "anonymousId": "anon-1",
        "properties": {"total": 99.5, "items": [{"sku": "a"}]},
        "messageId": "msg-1",
        "timestamp": "2026-01-31T12:00:00+01:00",
        "context": context(ip="1.2.3.4"),
        "integrations": {"All": True},
        "_metadata": {"bundled": []},
    }
    assert (await send(client, ingest_key, "track", message)).status_code == 200
    assert (await send(client, ingest_key, "track", message)).status_code == 200
    [row] = await fetch_all("SELECT * FROM user_events")
    assert row["event"] == "Order Completed"
    assert row["properties"] == {"total": 99.5, "items": [{"sku": "a"}]}
    assert row["user_id"] == "42"
    assert row["idempotency_key"] == "segment:msg-1"
    assert row["source"] == "segment"
    assert row["occurred_at"] == datetime(2026, 1, 31, 11, tzinfo=UTC)
    [contact] = await fetch_all("SELECT external_id, anonymous_id FROM contacts")
    assert contact == {"external_id": "42", "anonymous_id": "anon-1"}


async def test_identify_sets_traits_and_the_email_identity(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    await send(client, ingest_key, "page", {"anonymousId": "anon-1", "name": "Home"})
    response = await send(
        client,
        ingest_key,
        "identify",
        {
            "userId": "u-1",
            "anonymousId": "anon-1",
            "traits": {"email": "Ann@Example.com", "plan": "pro", "name": "Ann"},
            "context": context(traits={"company": "Acme", "plan": "free"}),
        },
    )
    assert response.status_code == 200
    [contact] = await fetch_all("SELECT * FROM contacts")
    assert contact["external_id"] == "u-1"
    assert contact["email"] == "Ann@example.com"
    assert contact["anonymous_id"] == "anon-1"
    # Explicit traits win over context.traits; the email is the identity, not a property.
    assert contact["properties"] == {"plan": "pro", "name": "Ann", "company": "Acme"}
    events = await fetch_all("SELECT event, properties FROM user_events ORDER BY received_at")
    assert [e["event"] for e in events] == ["page", "identify"]
    assert events[0]["properties"] == {"name": "Home"}
    assert events[1]["properties"]["plan"] == "pro"


async def test_alias_folds_the_visitor_and_merges_identified_users(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    await send(client, ingest_key, "track", {"anonymousId": "anon-1", "event": "Viewed"})
    alias = {"previousId": "anon-1", "userId": "u-1", "messageId": "alias-1"}
    assert (await send(client, ingest_key, "alias", alias)).status_code == 200
    assert (await send(client, ingest_key, "alias", alias)).status_code == 200
    [contact] = await fetch_all("SELECT id, external_id, anonymous_id FROM contacts")
    assert (contact["external_id"], contact["anonymous_id"]) == ("u-1", "anon-1")
    events = await fetch_all("SELECT event, contact_id, user_id FROM user_events ORDER BY event")
    assert [(e["event"], e["user_id"]) for e in events] == [("Viewed", "u-1"), ("alias", "u-1")]

    await send(client, ingest_key, "track", {"userId": "old-id", "event": "Legacy"})
    await send(client, ingest_key, "alias", {"previousId": "old-id", "userId": "u-1"})
    live = await fetch_all("SELECT id FROM contacts WHERE deleted_at IS NULL")
    assert len(live) == 1
    owners = await fetch_all("SELECT DISTINCT contact_id FROM user_events")
    assert owners == [{"contact_id": live[0]["id"]}]


async def test_page_screen_and_group_are_stored_as_events(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    await send(
        client,
        ingest_key,
        "page",
        {"userId": "u", "name": "Pricing", "category": "Docs", "properties": {"path": "/p"}},
    )
    await send(client, ingest_key, "screen", {"userId": "u", "name": "Settings"})
    await send(
        client, ingest_key, "group", {"userId": "u", "groupId": 7, "traits": {"name": "Acme"}}
    )
    rows = await fetch_all("SELECT event, properties FROM user_events ORDER BY received_at, event")
    assert {r["event"]: r["properties"] for r in rows} == {
        "page": {"path": "/p", "name": "Pricing", "category": "Docs"},
        "screen": {"name": "Settings"},
        "group": {"groupId": "7", "traits": {"name": "Acme"}},
    }
    [contact] = await fetch_all("SELECT properties FROM contacts")
    assert contact["properties"] == {}  # group traits describe the group, not the person


async def test_timestamps_the_segment_way(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    now = datetime.now(UTC)
    skewed_clock = now + timedelta(hours=1)  # the device's clock is an hour fast
    batch = {
        "batch": [
            {
                "type": "track",
                "event": "skewed",
                "userId": "u",
                "originalTimestamp": (skewed_clock - timedelta(minutes=5)).isoformat(),
            },
            {"type": "track", "event": "naive", "userId": "u", "timestamp": "2026-01-01T08:00:00"},
            {
                "type": "track",
                "event": "explicit",
                "userId": "u",
                "timestamp": "2026-01-01T08:00:00-05:00",
                "originalTimestamp": "2020-01-01T00:00:00Z",
            },
        ],
        "sentAt": skewed_clock.isoformat(),
    }
    response = await client.post("/segment/v1/batch", json=batch, headers=basic(ingest_key))
    assert response.json()["stored"] == 3
    rows = {r["event"]: r["occurred_at"] for r in await fetch_all("SELECT * FROM user_events")}
    assert abs(rows["skewed"] - (now - timedelta(minutes=5))) < timedelta(seconds=30)
    assert rows["naive"] == datetime(2026, 1, 1, 8, tzinfo=UTC)
    assert rows["explicit"] == datetime(2026, 1, 1, 13, tzinfo=UTC)


async def test_a_batch_keeps_order_and_never_fails_for_one_bad_message(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    batch = [
        {"type": "track", "event": "Viewed", "anonymousId": "anon-9", "messageId": "m1"},
        {"type": "track", "event": "", "userId": "u"},
        {"type": "identify", "userId": "u-9", "anonymousId": "anon-9", "messageId": "m2"},
        {"type": "alias", "userId": "u-9"},
        {"type": "track", "event": "Bought", "userId": "u-9", "messageId": "m3"},
        {"type": "bogus", "userId": "u"},
        {"event": "untyped", "userId": "u"},
        {"type": "track", "event": "Viewed", "anonymousId": "anon-9", "messageId": "m1"},
        "not an object",
        {"type": "identify", "userId": "u-9", "traits": {"email": "nope"}},
        {"type": "page", "name": "No one"},
    ]
    response = await client.post(
        "/segment/v1/batch",
        json={"batch": batch, "sentAt": datetime.now(UTC).isoformat(), "context": context()},
        headers=basic(ingest_key),
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert (body["stored"], body["duplicates"], body["rejected"]) == (3, 1, 7)
    rejected = {r["index"]: r["errors"][0]["field"] for r in body["rejections"]}
    assert rejected == {
        1: "event",
        3: "previousId",
        5: "type",
        6: "type",
        8: "message",
        9: "traits.email",
        10: "userId",
    }
    [contact] = await fetch_all("SELECT id, external_id FROM contacts WHERE deleted_at IS NULL")
    assert contact["external_id"] == "u-9"
    events = await fetch_all("SELECT event, contact_id FROM user_events")
    assert sorted(e["event"] for e in events) == ["Bought", "Viewed", "identify"]
    assert {e["contact_id"] for e in events} == {contact["id"]}


async def test_gzip_batches_like_rudderstack_sends_them(
    client: httpx.AsyncClient, ingest_key: str, fetch_all: FetchAll
) -> None:
    body = {"batch": [{"type": "track", "event": f"e{i}", "userId": "u"} for i in range(50)]}
    response = await client.post(
        "/segment/v1/batch",
        content=gzip.compress(json.dumps(body).encode()),
        headers={
            **basic(ingest_key),
            "Content-Encoding": "gzip",
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 50
    assert len(await fetch_all("SELECT id FROM user_events")) == 50


@pytest.mark.parametrize(
    ("path", "message", "field"),
    [
        ("track", {"userId": "u"}, "body.event"),
        ("track", {"event": "x"}, "body.userId"),
        ("track", {"event": "x", "userId": "u", "properties": [1]}, "body.properties"),
        ("track", {"event": "x", "userId": "u", "timestamp": "yesterday"}, "body.timestamp"),
        ("identify", {"userId": "u", "traits": {"email": "no-at-sign"}}, "body.traits.email"),
        ("identify", {"userId": "u", "context": {"traits": "x"}}, "body.context.traits"),
        ("alias", {"userId": "u"}, "body.previousId"),
        ("group", {"userId": "u"}, "body.groupId"),
        ("track", {"event": "x", "userId": True}, "body.userId"),
    ],
)
async def test_a_bad_single_message_is_a_422_and_writes_nothing(
    client: httpx.AsyncClient,
    ingest_key: str,
    row_counts: RowCounts,
    path: str,
    message: dict[str, Any],
    field: str,
) -> None:
    before = await row_counts()
    response = await send(client, ingest_key, path, message)
    assert response.status_code == 422, response.text
    fields = [e["field"] for e in response.json()["errors"]]
    assert any(f.startswith(field) for f in fields), fields
    assert await row_counts() == before


async def test_malformed_bodies_and_limits(
    api_factory: Callable[..., FastAPI], ingest_key: str, row_counts: RowCounts
) -> None:
    api = api_factory(batch_max_events=2)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        before = await row_counts()
        malformed = await client.post(
            "/segment/v1/batch", content=b'{"batch": [', headers=basic(ingest_key)
        )
        assert malformed.status_code == 400
        not_a_list = await client.post(
            "/segment/v1/batch", json={"batch": {"a": 1}}, headers=basic(ingest_key)
        )
        assert not_a_list.status_code == 422
        too_many = await client.post(
            "/segment/v1/batch",
            json={"batch": [{"type": "track", "event": "x", "userId": "u"}] * 3},
            headers=basic(ingest_key),
        )
        assert too_many.status_code == 422
        assert too_many.json()["errors"][0]["field"] == "body.batch"
        single_too_big = await client.post(
            "/segment/v1/track",
            json={"event": "x", "userId": "u", "properties": {"b": "x" * 1_100_000}},
            headers=basic(ingest_key),
        )
        assert single_too_big.status_code == 413
        assert await row_counts() == before
    await api.state.driver_pool.close()


async def test_message_ids_are_kept_apart_from_other_idempotency_keys(
    client: httpx.AsyncClient, ingest_key: str
) -> None:
    own = await client.post(
        "/v1/events",
        json={"name": "x", "userId": "u", "idempotencyKey": "shared-id"},
        headers={"Authorization": f"Bearer {ingest_key}"},
    )
    assert own.json()["stored"] is True
    await send(client, ingest_key, "track", {"event": "x", "userId": "u", "messageId": "shared-id"})
    found = await client.post(
        "/v1/events",
        json={"name": "x", "userId": "u", "idempotencyKey": "segment:shared-id"},
        headers={"Authorization": f"Bearer {ingest_key}"},
    )
    assert found.json()["duplicate"] is True
    assert uuid.UUID(found.json()["eventId"]) != uuid.UUID(own.json()["eventId"])


async def test_a_deadlock_on_the_driver_connection_retries_the_batch(
    client: httpx.AsyncClient,
    ingest_key: str,
    fetch_all: FetchAll,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The batch's claim runs on the psycopg connection, so Postgres's deadlock arrives as
    # psycopg's own error, not SQLAlchemy's wrapper: the transaction must still be retried.
    claim = events_repo._claim
    failures = iter([True])

    async def deadlocking(*args: Any, **kwargs: Any) -> set[int]:
        if next(failures, False):
            raise psycopg.errors.DeadlockDetected("deadlock detected")
        return await claim(*args, **kwargs)

    monkeypatch.setattr(events_repo, "_claim", deadlocking)
    batch = {
        "batch": [
            {"type": "track", "event": "Opened", "userId": "u-1", "messageId": "dl-1"},
            {"type": "track", "event": "Opened", "userId": "u-2", "messageId": "dl-2"},
        ]
    }
    response = await client.post("/segment/v1/batch", json=batch, headers=basic(ingest_key))
    assert response.status_code == 200, response.text
    assert response.json()["stored"] == 2
    rows = await fetch_all("SELECT idempotency_key FROM user_events ORDER BY idempotency_key")
    assert [r["idempotency_key"] for r in rows] == ["segment:dl-1", "segment:dl-2"]
