"""Every error is application/problem+json with the same shape, and request ids flow through."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import Body, FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend.api import create_api
from hogsend.api.middleware import MAX_BODY_BYTES_EXTRA
from hogsend.app import Hogsend
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import api_keys
from hogsend.settings import Settings

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance", "requestId"}


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def api(engine: AsyncEngine, database_url: str) -> FastAPI:
    settings = Settings(env="test", database_url=database_url, max_body_bytes=2048)
    api = create_api(Hogsend(), settings, engine=engine)

    async def boom() -> None:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    async def echo(payload: dict[str, Any] = Body()) -> dict[str, Any]:
        return payload

    # Test-only routes, open on purpose (this app is not the one the scope matrix walks).
    api.add_api_route("/test/boom", boom, methods=["GET"])
    api.add_api_route("/test/echo", echo, methods=["POST"])
    api.add_api_route(
        "/test/big-echo", echo, methods=["POST"], openapi_extra={MAX_BODY_BYTES_EXTRA: 100_000}
    )
    return api


@pytest.fixture
async def client(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    await api.state.driver_pool.close()


async def mint(engine: AsyncEngine, *scopes: str) -> str:
    async with make_sessionmaker(engine)() as session:
        _, raw = await api_keys.create_key(session, name="k", scopes=scopes)
        await session.commit()
    return raw


def assert_problem(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body.keys() >= PROBLEM_KEYS
    assert body["status"] == status
    assert body["type"] == f"urn:hogsend:problem:{code}"
    assert body["instance"] == response.request.url.path
    assert body["requestId"] == response.headers["x-request-id"]
    assert body["title"]
    assert body["detail"]
    return body


async def test_401_and_403(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/admin/api-keys"), 401, "unauthorized")
    raw = await mint(engine, "ingest")
    body = assert_problem(
        await client.get("/v1/admin/api-keys", headers={"Authorization": f"Bearer {raw}"}),
        403,
        "forbidden",
    )
    assert "admin:read" in body["detail"]


async def test_404_and_405(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/no-such-thing"), 404, "not-found")
    response = await client.put("/v1/health")
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET"


async def test_422_lists_each_bad_field(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    raw = await mint(engine, "full-admin")
    response = await client.post(
        "/v1/admin/api-keys",
        json={"name": "", "scopes": ["read", "root"]},
        headers={"Authorization": f"Bearer {raw}"},
    )
    body = assert_problem(response, 422, "validation")
    assert {e["field"] for e in body["errors"]} == {"body.name", "body.scopes[1]"}
    assert all(e["message"] for e in body["errors"])

    query = await client.get(
        "/v1/admin/api-keys", params={"limit": 0}, headers={"Authorization": f"Bearer {raw}"}
    )
    assert [e["field"] for e in assert_problem(query, 422, "validation")["errors"]] == [
        "query.limit"
    ]


async def test_malformed_json_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/test/echo", content=b'{"a": ', headers={"content-type": "application/json"}
    )
    body = assert_problem(response, 400, "malformed-json")
    assert "errors" not in body


async def test_413_by_content_length_and_by_streamed_bytes(client: httpx.AsyncClient) -> None:
    big = b'{"a": "' + b"x" * 4000 + b'"}'
    headers = {"content-type": "application/json"}
    assert_problem(
        await client.post("/test/echo", content=big, headers=headers), 413, "payload-too-large"
    )

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 500):
            yield big[start : start + 500]

    streamed = await client.post("/test/echo", content=chunks(), headers=headers)
    assert "content-length" not in streamed.request.headers
    assert_problem(streamed, 413, "payload-too-large")

    small = await client.post("/test/echo", json={"a": "b"})
    assert small.status_code == 200
    # a route may raise its own limit
    raised = await client.post("/test/big-echo", content=big, headers=headers)
    assert raised.status_code == 200
    assert len(raised.json()["a"]) == 4000


async def test_500_hides_the_exception(client: httpx.AsyncClient) -> None:
    response = await client.get("/test/boom")
    body = assert_problem(response, 500, "internal")
    assert "secret" not in response.text
    assert "hunter2" not in response.text
    assert "RuntimeError" not in response.text
    assert body["title"] == "Internal Server Error"


async def test_request_ids_are_echoed_or_generated(client: httpx.AsyncClient) -> None:
    mine = await client.get("/v1/health", headers={"X-Request-Id": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    generated = await client.get("/v1/health", headers={"X-Request-Id": "has spaces\tand tabs"})
    assert generated.headers["x-request-id"] != "has spaces\tand tabs"
    assert len(generated.headers["x-request-id"]) == 32
    other = await client.get("/v1/health")
    assert other.headers["x-request-id"] != generated.headers["x-request-id"]
    failed = await client.get("/nope", headers={"X-Request-Id": "trace-me"})
    assert failed.json()["requestId"] == "trace-me"


async def test_openapi_documents_the_problem_format(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert "Problem" in document["components"]["schemas"]
    assert "HTTPValidationError" not in document["components"]["schemas"]
    scheme = document["components"]["securitySchemes"]["apiKey"]
    assert scheme["type"] == "http"
    assert scheme["scheme"] == "bearer"
    operation = document["paths"]["/v1/admin/api-keys"]["post"]
    assert operation["x-required-scope"] == "full-admin"
    for status in ("400", "401", "403", "413", "422", "429", "500"):
        content = operation["responses"][status]["content"]
        assert content == {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        }
    health = document["paths"]["/v1/health"]["get"]
    assert "security" not in health
    assert "401" not in health["responses"]


def _patterns(node: object) -> list[str]:
    """Every ``pattern`` of a string schema anywhere in an OpenAPI document."""
    if isinstance(node, dict):
        found = [node["pattern"]] if isinstance(node.get("pattern"), str) else []
        return found + [p for value in node.values() for p in _patterns(value)]
    if isinstance(node, list):
        return [p for value in node for p in _patterns(value)]
    return []


async def test_no_documented_pattern_lets_a_nul_character_through(
    client: httpx.AsyncClient,
) -> None:
    # Postgres text holds no NUL, so the API refuses it everywhere; a field's own pattern
    # replaces the NUL-free one of its type and must refuse it too, or the schema allows
    # what the API answers with 422 (event search's `property` did).
    document = (await client.get("/openapi.json")).json()
    patterns = _patterns(document)
    assert patterns
    probes = ["\x00", "a\x00", "\x00a", "k=\x00", "k=a\x00b", "a b\x00"]
    for pattern in patterns:
        matched = [probe for probe in probes if re.fullmatch(pattern, probe)]
        assert not matched, (pattern, matched)
