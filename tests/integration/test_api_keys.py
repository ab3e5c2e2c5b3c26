"""API keys end to end: minting, use, last-used time, expiry, revocation, listing, audit."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend.api import create_api
from hogsend.api.deps import DriverPool
from hogsend.app import Hogsend
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import api_keys
from hogsend.settings import Settings


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_async_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def client(engine: AsyncEngine, database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    # These tests change keys behind the API's back and expect the database's answer on
    # the next request, so the key cache is off here (test_api_key_cache.py covers it).
    settings = Settings(env="test", database_url=database_url, api_key_cache_seconds=0)
    api = create_api(Hogsend(), settings, engine=engine)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    await api.state.driver_pool.close()


async def mint(engine: AsyncEngine, *scopes: str, name: str = "root") -> str:
    async with make_sessionmaker(engine)() as session:
        _, raw = await api_keys.create_key(session, name=name, scopes=scopes)
        await session.commit()
    return raw


def bearer(raw: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {raw}"}


async def key_row(engine: AsyncEngine, raw: str) -> dict[str, object]:
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                text("SELECT * FROM api_keys WHERE key_hash = :h"),
                {"h": hashlib.sha256(raw.encode()).hexdigest()},
            )
        ).one()
    return dict(row._mapping)


async def test_minted_key_is_shown_once_and_stored_hashed(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    root = await mint(engine, "full-admin")
    response = await client.post(
        "/v1/admin/api-keys",
        json={"name": "backend", "scopes": ["ingest", "read", "ingest"]},
        headers=bearer(root),
    )
    assert response.status_code == 201, response.text
    body = response.json()
    raw = body["key"]
    assert raw.startswith("hsk_")
    assert len(raw) == 47
    assert body["keyPrefix"] == raw[:12]
    assert body["scopes"] == ["ingest", "read"]
    assert body["createdBy"] == "root"
    assert body["expiresAt"] is None

    row = await key_row(engine, raw)
    assert row["key_hash"] == hashlib.sha256(raw.encode()).hexdigest()
    assert raw not in {str(v) for v in row.values()}

    listed = (await client.get("/v1/admin/api-keys", headers=bearer(root))).json()
    assert all("key" not in k for k in listed["keys"])
    assert {k["name"] for k in listed["keys"]} == {"root", "backend"}


async def test_whoami_describes_the_calling_key(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    raw = await mint(engine, "read", "ingest", name="svc")
    response = await client.get("/v1/whoami", headers=bearer(raw))
    assert response.status_code == 200
    body = response.json()
    assert body["name"] == "svc"
    assert body["keyPrefix"] == raw[:12]
    assert body["scopes"] == ["ingest", "read"]


async def test_last_used_at_is_refreshed_at_most_once_a_minute(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    raw = await mint(engine, "read", name="busy")
    assert (await key_row(engine, raw))["last_used_at"] is None

    assert (await client.get("/v1/whoami", headers=bearer(raw))).status_code == 200
    first = (await key_row(engine, raw))["last_used_at"]
    assert isinstance(first, datetime)

    assert (await client.get("/v1/whoami", headers=bearer(raw))).status_code == 200
    assert (await key_row(engine, raw))["last_used_at"] == first

    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE api_keys SET last_used_at = now() - interval '2 minutes' "
                "WHERE name = 'busy'"
            )
        )
    assert (await client.get("/v1/whoami", headers=bearer(raw))).status_code == 200
    refreshed = (await key_row(engine, raw))["last_used_at"]
    assert isinstance(refreshed, datetime)
    assert refreshed > datetime.now(UTC) - timedelta(seconds=30)


async def test_expired_key_is_refused(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    root = await mint(engine, "full-admin")
    soon = datetime.now(UTC) + timedelta(hours=1)
    created = await client.post(
        "/v1/admin/api-keys",
        json={"name": "temp", "scopes": ["read"], "expiresAt": soon.isoformat()},
        headers=bearer(root),
    )
    assert created.status_code == 201, created.text
    raw = created.json()["key"]
    assert datetime.fromisoformat(created.json()["expiresAt"]) == soon
    assert (await client.get("/v1/whoami", headers=bearer(raw))).status_code == 200

    async with engine.begin() as conn:
        await conn.execute(
            text("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE name = 'temp'")
        )
    refused = await client.get("/v1/whoami", headers=bearer(raw))
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["www-authenticate"].startswith("Bearer")


async def test_expiry_in_the_past_or_without_offset_is_rejected(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    root = await mint(engine, "full-admin")
    for expires in ("2001-01-01T00:00:00Z", "2999-01-01T00:00:00"):
        response = await client.post(
            "/v1/admin/api-keys",
            json={"name": "x", "scopes": ["read"], "expiresAt": expires},
            headers=bearer(root),
        )
        assert response.status_code == 422, expires
        assert response.json()["errors"][0]["field"] == "body.expiresAt"


async def test_revocation_takes_effect_on_the_next_request(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    root = await mint(engine, "full-admin")
    created = (
        await client.post(
            "/v1/admin/api-keys", json={"name": "doomed", "scopes": ["read"]}, headers=bearer(root)
        )
    ).json()
    raw = created["key"]
    assert (await client.get("/v1/whoami", headers=bearer(raw))).status_code == 200

    revoked = await client.delete(f"/v1/admin/api-keys/{created['id']}", headers=bearer(root))
    assert revoked.status_code == 200
    assert revoked.json() == {"revoked": True}
    assert (await client.get("/v1/whoami", headers=bearer(raw))).status_code == 401

    again = await client.delete(f"/v1/admin/api-keys/{created['id']}", headers=bearer(root))
    assert again.status_code == 404
    assert again.json()["type"] == "urn:hogsend:problem:not-found"


async def test_auth_survives_postgres_dropping_connections(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    raw = await mint(engine, "read")
    assert (await client.get("/v1/whoami", headers=bearer(raw))).status_code == 200
    async with engine.connect() as conn:
        killed = await conn.scalar(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        )
    assert killed
    assert (await client.get("/v1/whoami", headers=bearer(raw))).status_code == 200


async def test_unusable_credentials_get_401(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    raw = await mint(engine, "full-admin")
    for headers in (
        {},
        {"Authorization": "Bearer hsk_" + "A" * 43},
        {"Authorization": "Bearer not-a-key"},
        {"Authorization": f"Basic {raw}"},
        {"Authorization": f"Bearer {raw}x"},
        {"Authorization": "Bearer"},
    ):
        response = await client.get("/v1/whoami", headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"].startswith('Bearer realm="hogsend"')


async def test_only_full_admin_mints_and_revokes(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    writer = await mint(engine, "admin:write", "admin:read", "ingest", "read", name="writer")
    response = await client.post(
        "/v1/admin/api-keys", json={"name": "x", "scopes": ["full-admin"]}, headers=bearer(writer)
    )
    assert response.status_code == 403
    assert "insufficient_scope" in response.headers["www-authenticate"]
    # admin:write implies admin:read
    reader = await mint(engine, "admin:write", name="writer-only")
    assert (await client.get("/v1/admin/api-keys", headers=bearer(reader))).status_code == 200


async def test_listing_paginates_and_hides_revoked_keys(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    root = await mint(engine, "full-admin")
    ids = []
    for n in range(3):
        created = await client.post(
            "/v1/admin/api-keys", json={"name": f"k{n}", "scopes": ["read"]}, headers=bearer(root)
        )
        ids.append(created.json()["id"])
    await client.delete(f"/v1/admin/api-keys/{ids[0]}", headers=bearer(root))

    active = (await client.get("/v1/admin/api-keys", headers=bearer(root))).json()
    assert active["total"] == 3  # root, k1, k2
    assert [k["name"] for k in active["keys"]] == ["k2", "k1", "root"]

    every = (
        await client.get(
            "/v1/admin/api-keys",
            params={"includeRevoked": "true", "limit": 2, "offset": 1},
            headers=bearer(root),
        )
    ).json()
    assert (every["total"], every["limit"], every["offset"]) == (4, 2, 1)
    assert [k["name"] for k in every["keys"]] == ["k1", "k0"]
    assert every["keys"][1]["revokedAt"] is not None


async def test_admin_mutations_are_audited_with_actor_and_request_id(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    root = await mint(engine, "full-admin", name="ops")
    whoami = (await client.get("/v1/whoami", headers=bearer(root))).json()
    created = await client.post(
        "/v1/admin/api-keys",
        json={"name": "audited", "scopes": ["read"]},
        headers={**bearer(root), "X-Request-Id": "req-create-1"},
    )
    key_id = created.json()["id"]
    await client.delete(f"/v1/admin/api-keys/{key_id}", headers=bearer(root))
    # failed mutations and reads leave no trace
    await client.delete(f"/v1/admin/api-keys/{key_id}", headers=bearer(root))
    await client.post("/v1/admin/api-keys", json={"name": ""}, headers=bearer(root))

    logs = (await client.get("/v1/admin/audit-logs", headers=bearer(root))).json()
    assert logs["total"] == 2
    revoke, create = logs["logs"]
    assert create["action"] == "api-keys.create"
    assert create["resource"] == "api-keys"
    assert create["resourceId"] == key_id
    assert create["actor"] == "ops"
    assert create["actorKeyId"] == whoami["id"]
    assert create["requestId"] == "req-create-1"
    assert create["ipAddress"] == "127.0.0.1"
    assert create["detail"] == {
        "name": "audited",
        "scopes": ["read"],
        "expiresAt": None,
        "before": None,
        "after": {"name": "audited", "scopes": ["read"], "revoked": False},
    }
    assert revoke["detail"] == {"before": {"revoked": False}, "after": {"revoked": True}}
    assert revoke["action"] == "api-keys.revoke"
    assert revoke["resourceId"] == key_id

    filtered = await client.get(
        "/v1/admin/audit-logs",
        params={"action": "api-keys.revoke", "from": create["createdAt"]},
        headers=bearer(root),
    )
    assert [e["action"] for e in filtered.json()["logs"]] == ["api-keys.revoke"]
    none_yet = await client.get(
        "/v1/admin/audit-logs", params={"to": "2000-01-01T00:00:00Z"}, headers=bearer(root)
    )
    assert none_yet.json()["total"] == 0


async def test_repository_rejects_bad_input(engine: AsyncEngine) -> None:
    async with make_sessionmaker(engine)() as session:
        with pytest.raises(ValueError, match="unknown scope"):
            await api_keys.create_key(session, name="x", scopes=["root"])
        with pytest.raises(ValueError, match="at least one scope"):
            await api_keys.create_key(session, name="x", scopes=[])
        with pytest.raises(ValueError, match="non-empty name"):
            await api_keys.create_key(session, name="  ", scopes=["read"])
        with pytest.raises(ValueError, match="timezone-aware"):
            await api_keys.create_key(
                session, name="x", scopes=["read"], expires_at=datetime(2999, 1, 1)
            )

    pool = DriverPool.for_engine(engine, max_size=1)
    try:
        async with pool.connect() as conn:
            assert await api_keys.authenticate(conn, "nope") is None
            assert await api_keys.authenticate(conn, "hsk_" + "x" * 200) is None
    finally:
        await pool.close()
