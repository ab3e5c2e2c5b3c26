"""POST /v1/events through its fast lane answers exactly like the route, and hands back
everything it must not take (real Postgres, the ASGI app over httpx).

The lane serves a request only once the key cache vouches for its key; an API built
with ``api_key_cache_seconds=0`` therefore always goes through the FastAPI route, which
makes it the reference the lane is compared with.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from tests.integration.conftest import MintKey

from hogsend.api import fast_lane
from hogsend.api.fast_lane import FastLane

EVENT = {
    "name": "signed_up",
    "userId": "lane-1",
    "eventProperties": {"plan": "pro"},
    "contactProperties": {"tier": "gold"},
}


@pytest.fixture
def lane_calls(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """One entry per request the lane looked at: True when it served it itself."""
    calls: list[bool] = []
    original = FastLane._admissible

    def spy(self: FastLane, request: Any, body: bytes) -> Any:
        item = original(self, request, body)
        calls.append(item is not None)
        return item

    monkeypatch.setattr(fast_lane.FastLane, "_admissible", spy)
    return calls


async def _client(api: FastAPI) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


@pytest.fixture
async def route_only(api_factory: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    api = api_factory(api_key_cache_seconds=0)
    async with await _client(api) as client:
        yield client
    await api.state.driver_pool.close()


def _auth(key: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **extra}


async def _warm(client: httpx.AsyncClient, key: str) -> None:
    """One request through the route, so that the key cache knows the key."""
    warm = {"name": "warm", "userId": "warm"}
    response = await client.post("/v1/events", json=warm, headers=_auth(key))
    assert response.status_code == 202


async def _stored(engine: AsyncEngine, user_id: str) -> dict[str, Any]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT c.properties AS contact_properties, e.event, e.properties,"
                    " e.source, e.idempotency_key, o.event AS outbox_event"
                    " FROM contacts c JOIN user_events e ON e.contact_id = c.id"
                    " JOIN event_outbox o ON o.event_id = e.id WHERE c.external_id = :u"
                ),
                {"u": user_id},
            )
        ).one()
    return dict(row._mapping)


async def test_the_lane_stores_what_the_route_stores(
    client: httpx.AsyncClient,
    route_only: httpx.AsyncClient,
    ingest_key: str,
    engine: AsyncEngine,
    lane_calls: list[bool],
) -> None:
    await _warm(client, ingest_key)
    lane = await client.post(
        "/v1/events", json=EVENT, headers=_auth(ingest_key, **{"Idempotency-Key": "lane-a"})
    )
    route = await route_only.post(
        "/v1/events",
        json={**EVENT, "userId": "lane-2"},
        headers=_auth(ingest_key, **{"Idempotency-Key": "lane-b"}),
    )
    # The warm-up and the cache-less API's request went to the route; ours did not.
    assert lane_calls == [False, True, False]
    assert lane.status_code == route.status_code == 202
    assert lane.headers["content-type"] == route.headers["content-type"] == "application/json"
    for name in ("x-request-id", "ratelimit-limit", "ratelimit-remaining", "ratelimit-policy"):
        assert name in lane.headers
        assert name in route.headers
    assert set(lane.json()) == set(route.json()) == {"stored", "eventId", "contactId"}
    assert lane.json()["stored"] is route.json()["stored"] is True
    ours, theirs = await _stored(engine, "lane-1"), await _stored(engine, "lane-2")
    assert ours.pop("idempotency_key") == "lane-a"
    assert theirs.pop("idempotency_key") == "lane-b"
    assert (
        ours
        == theirs
        == {
            "contact_properties": {"tier": "gold"},
            "event": "signed_up",
            "properties": {"plan": "pro"},
            "source": "api",
            "outbox_event": "signed_up",
        }
    )

    # A repeat through the lane is the route's duplicate: the original, nothing changed.
    again = await client.post(
        "/v1/events",
        json={**EVENT, "contactProperties": {"tier": "tin"}},
        headers=_auth(ingest_key, **{"Idempotency-Key": "lane-a"}),
    )
    assert again.status_code == 202
    assert again.json() == {**lane.json(), "stored": False, "duplicate": True}
    assert (await _stored(engine, "lane-1"))["contact_properties"] == {"tier": "gold"}


@pytest.mark.parametrize(
    ("body", "headers", "status", "field"),
    [
        ({**EVENT, "surprise": 1}, {}, 422, "body.surprise"),
        ({"name": "x"}, {}, 422, "body"),
        ({**EVENT, "lists": {"nope": True}}, {}, 422, "body.lists.nope"),
        (EVENT, {"Idempotency-Key": "k" * 513}, 422, "header.Idempotency-Key"),
        ("[1, 2]", {}, 422, "body"),
        ('{"name": ', {}, 400, None),
    ],
)
async def test_what_the_lane_refuses_is_the_routes_error_counted_once(
    client: httpx.AsyncClient,
    ingest_key: str,
    row_counts: Any,
    lane_calls: list[bool],
    body: Any,
    headers: dict[str, str],
    status: int,
    field: str | None,
) -> None:
    await _warm(client, ingest_key)
    before = await row_counts()
    content = body if isinstance(body, str) else json.dumps(body)
    first = await client.post(
        "/v1/events",
        content=content,
        headers=_auth(ingest_key, **{"Content-Type": "application/json", **headers}),
    )
    second = await client.post(
        "/v1/events",
        content=content,
        headers=_auth(ingest_key, **{"Content-Type": "application/json", **headers}),
    )
    assert lane_calls[-2:] == [False, False]  # handed back to the route
    assert first.status_code == status, first.text
    assert first.headers["content-type"] == "application/problem+json"
    if field is not None:
        assert field in [e["field"] for e in first.json()["errors"]]
    if status == 422:
        # Counted once per request: the lane never counts what it hands back.
        remaining = int(first.headers["ratelimit-remaining"])
        assert int(second.headers["ratelimit-remaining"]) == remaining - 1
    assert await row_counts() == before


async def test_unknown_keys_scopes_and_other_encodings_go_to_the_route(
    client: httpx.AsyncClient,
    ingest_key: str,
    mint_key: MintKey,
    lane_calls: list[bool],
) -> None:
    await _warm(client, ingest_key)
    reader = await mint_key("read")
    await client.get("/v1/whoami", headers=_auth(reader))  # cached, but without `ingest`
    refused = await client.post("/v1/events", json=EVENT, headers=_auth(reader))
    assert refused.status_code == 403
    assert refused.json()["type"].endswith(":forbidden")
    unknown = await client.post("/v1/events", json=EVENT, headers=_auth("hsk_nope"))
    assert unknown.status_code == 401
    assert lane_calls[-2:] == [False, False]

    zipped = await client.post(
        "/v1/events",
        content=gzip.compress(json.dumps({**EVENT, "userId": "gz"}).encode()),
        headers=_auth(
            ingest_key, **{"Content-Type": "application/json"}, **{"Content-Encoding": "gzip"}
        ),
    )
    assert zipped.status_code == 202  # the route (and its gzip middleware) took it
    assert len(lane_calls) == 3  # the lane never looked at the compressed body


async def test_the_lane_answers_429_like_the_route(
    api_factory: Callable[..., FastAPI], ingest_key: str, lane_calls: list[bool]
) -> None:
    api = api_factory(rate_limit_data_plane=2, rate_limit_backend="memory")
    async with await _client(api) as client:
        await _warm(client, ingest_key)
        ok = await client.post("/v1/events", json=EVENT, headers=_auth(ingest_key))
        limited = await client.post(
            "/v1/events", json={**EVENT, "userId": "lane-3"}, headers=_auth(ingest_key)
        )
    await api.state.driver_pool.close()
    assert lane_calls == [False, True, True]  # the warm-up took the route
    assert ok.status_code == 202
    assert limited.status_code == 429
    assert limited.headers["content-type"] == "application/problem+json"
    assert limited.json()["type"].endswith(":rate-limited")
    assert int(limited.headers["retry-after"]) >= 1
    assert limited.headers["ratelimit-remaining"] == "0"
    assert limited.json()["requestId"] == limited.headers["x-request-id"]


async def test_list_choices_take_the_general_path_through_the_lane(
    client: httpx.AsyncClient, ingest_key: str, engine: AsyncEngine, lane_calls: list[bool]
) -> None:
    await _warm(client, ingest_key)
    body = {"name": "joined", "userId": "lane-4", "lists": {"newsletter": True}}
    response = await client.post("/v1/events", json=body, headers=_auth(ingest_key))
    assert lane_calls[-1] is True
    assert response.status_code == 202
    async with engine.connect() as conn:
        subscribed = await conn.scalar(
            text(
                "SELECT s.subscribed FROM list_subscriptions s JOIN contacts c"
                " ON c.id = s.contact_id WHERE c.external_id = 'lane-4'"
            )
        )
    assert subscribed is True
