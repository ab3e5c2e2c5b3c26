"""/v1/admin/suppressions through the real ASGI app and Postgres: list, add, remove, import."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

FetchAll = Callable[..., Awaitable[list[dict[str, Any]]]]
MintKey = Callable[..., Awaitable[str]]
TABLES = ("email_suppressions", "audit_logs")


@pytest.fixture
async def writer(mint_key: MintKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {await mint_key('admin:write', name='ops')}"}


@pytest.fixture
async def reader(mint_key: MintKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {await mint_key('admin:read', name='viewer')}"}


async def counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            table: (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()
            for table in TABLES
        }


async def suppressed(engine: AsyncEngine) -> dict[str, tuple[bool, str | None]]:
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT email, suppressed, reason FROM email_suppressions"))
        return {row.email: (row.suppressed, row.reason) for row in rows}


async def add(
    client: httpx.AsyncClient, headers: dict[str, str], address: str, **body: Any
) -> httpx.Response:
    return await client.post(
        "/v1/admin/suppressions", json={"email": address, **body}, headers=headers
    )


# --------------------------------------------------------------------------- add / remove


async def test_add_then_remove_is_audited_and_keeps_history(
    client: httpx.AsyncClient, writer: dict[str, str], engine: AsyncEngine, fetch_all: FetchAll
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO email_suppressions (email, bounce_count, soft_bounce_streak)"
                " VALUES ('ann@example.com', 2, 2)"
            )
        )

    created = await add(client, writer, "  Ann@EXAMPLE.com ", note="asked by phone")

    assert created.status_code == 200, created.text
    body = created.json()
    assert body["changed"] is True
    out = body["suppression"]
    assert (out["email"], out["suppressed"], out["reason"]) == ("ann@example.com", True, "manual")
    assert out["note"] == "asked by phone"
    assert out["bounceCount"] == 2

    again = await add(client, writer, "ann@example.com", note="second call")
    assert again.json()["changed"] is False
    assert again.json()["suppression"]["reason"] == "manual"
    assert again.json()["suppression"]["suppressedAt"] == out["suppressedAt"]
    assert again.json()["suppression"]["note"] == "second call"

    removed = await client.delete("/v1/admin/suppressions/ANN@example.com", headers=writer)

    assert removed.status_code == 200, removed.text
    lifted = removed.json()["suppression"]
    assert (lifted["suppressed"], lifted["reason"], lifted["suppressedAt"]) == (False, None, None)
    assert (lifted["bounceCount"], lifted["softBounceStreak"]) == (2, 0)
    audit = await fetch_all(
        "SELECT action, resource, resource_id, actor, detail FROM audit_logs ORDER BY created_at"
    )
    assert [(a["action"], a["resource_id"], a["actor"]) for a in audit] == [
        ("suppressions.create", "ann@example.com", "ops"),
        ("suppressions.create", "ann@example.com", "ops"),
        ("suppressions.delete", "ann@example.com", "ops"),
    ]
    lifted = audit[2]["detail"]
    assert (lifted["email"], lifted["previousReason"]) == ("ann@example.com", "manual")
    assert (lifted["before"]["suppressed"], lifted["after"]["suppressed"]) == (True, False)
    assert lifted["before"]["reason"] == "manual"


async def test_removing_an_address_that_is_not_suppressed_is_a_404_and_changes_nothing(
    client: httpx.AsyncClient, writer: dict[str, str], engine: AsyncEngine, fetch_all: FetchAll
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO email_suppressions (email, bounce_count, soft_bounce_streak)"
                " VALUES ('bob@example.com', 1, 1)"
            )
        )
    before = await counts(engine)
    for address in ("bob@example.com", "nobody@example.com"):
        response = await client.delete(f"/v1/admin/suppressions/{address}", headers=writer)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
    assert await counts(engine) == before
    [row] = await fetch_all("SELECT soft_bounce_streak FROM email_suppressions")
    assert row["soft_bounce_streak"] == 1  # the rolled-back lift left the streak alone


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not an address"}, "body.email"),
        ({"email": "   "}, "body.email"),
        ({}, "body.email"),
        ({"email": "a@example.com", "note": "n" * 1001}, "body.note"),
        ({"email": "a@example.com", "reason": "complaint"}, "body.reason"),
    ],
)
async def test_add_validates_and_writes_nothing(
    client: httpx.AsyncClient,
    writer: dict[str, str],
    engine: AsyncEngine,
    body: dict[str, Any],
    field: str,
) -> None:
    before = await counts(engine)
    response = await client.post("/v1/admin/suppressions", json=body, headers=writer)
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [field]
    assert await counts(engine) == before


async def test_remove_refuses_an_invalid_address(
    client: httpx.AsyncClient, writer: dict[str, str]
) -> None:
    response = await client.delete("/v1/admin/suppressions/no-at-sign", headers=writer)
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "path.email"


async def test_read_scope_lists_but_cannot_change(
    client: httpx.AsyncClient, reader: dict[str, str], engine: AsyncEngine
) -> None:
    before = await counts(engine)
    assert (await client.get("/v1/admin/suppressions", headers=reader)).status_code == 200
    assert (await add(client, reader, "x@example.com")).status_code == 403
    deleted = await client.delete("/v1/admin/suppressions/x@example.com", headers=reader)
    assert deleted.status_code == 403
    imported = await client.post(
        "/v1/admin/suppressions/import",
        content=b"x@example.com\n",
        headers={**reader, "content-type": "text/csv"},
    )
    assert imported.status_code == 403
    assert await counts(engine) == before


# --------------------------------------------------------------------------- list


async def test_listing_filters_and_pages(
    client: httpx.AsyncClient, writer: dict[str, str], reader: dict[str, str], engine: AsyncEngine
) -> None:
    for i in range(5):
        assert (await add(client, writer, f"user{i}@example.com")).status_code == 200
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO email_suppressions (email, suppressed, reason, suppressed_at)"
                " VALUES ('spam@other.test', true, 'complaint', now())"
            )
        )
        await conn.execute(
            text("INSERT INTO email_suppressions (email, bounce_count) VALUES ('ok@other.test', 1)")
        )

    async def listed(**params: Any) -> list[str]:
        emails: list[str] = []
        cursor = None
        while True:
            query = {**params, **({"cursor": cursor} if cursor else {})}
            response = await client.get("/v1/admin/suppressions", params=query, headers=reader)
            assert response.status_code == 200, response.text
            page = response.json()
            emails += [s["email"] for s in page["suppressions"]]
            cursor = page["nextCursor"]
            if cursor is None:
                return emails

    everything = await listed(limit=2)
    assert len(everything) == 6
    assert everything[0] == "spam@other.test"  # newest record first
    assert "ok@other.test" not in everything
    assert await listed(status="unsuppressed") == ["ok@other.test"]
    assert len(await listed(status="all", limit=3)) == 7
    assert await listed(reason="complaint") == ["spam@other.test"]
    assert await listed(search="USER3") == ["user3@example.com"]
    assert await listed(search="%") == []

    bad = await client.get("/v1/admin/suppressions", params={"cursor": "garbage"}, headers=reader)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "query.cursor"
    unknown = await client.get("/v1/admin/suppressions", params={"type": "x"}, headers=reader)
    assert unknown.status_code == 422


# --------------------------------------------------------------------------- import

CSV = (
    "email,reason,note\n"
    "one@example.com\n"
    "not-an-address,manual\n"
    "two@example.com,complaint,from the old ESP\n"
    "ONE@example.com,hard_bounce\n"
    "three@example.com,spam\n"
    "\n"
    "kept@example.com,import\n"
)


async def test_csv_import_reports_bad_lines_and_imports_the_rest(
    client: httpx.AsyncClient, writer: dict[str, str], engine: AsyncEngine, fetch_all: FetchAll
) -> None:
    await add(client, writer, "kept@example.com")
    response = await client.post(
        "/v1/admin/suppressions/import",
        content=CSV.encode(),
        headers={**writer, "content-type": "text/csv"},
    )

    assert response.status_code == 200, response.text
    report = response.json()
    assert report["received"] == 6
    assert report["suppressed"] == 2
    assert report["alreadySuppressed"] == 1
    assert report["duplicates"] == 1
    assert report["invalid"] == 2
    assert report["errorsTruncated"] is False
    assert [(e["line"], e["field"], e["value"]) for e in report["errors"]] == [
        (3, "email", "not-an-address"),
        (6, "reason", "spam"),
    ]
    assert await suppressed(engine) == {
        "one@example.com": (True, "import"),
        "two@example.com": (True, "complaint"),
        "kept@example.com": (True, "manual"),  # already suppressed: its reason is kept
    }
    [note] = await fetch_all("SELECT note FROM email_suppressions WHERE email = 'two@example.com'")
    assert note["note"] == "from the old ESP"
    [audit] = await fetch_all("SELECT * FROM audit_logs WHERE action = 'suppressions.import'")
    assert audit["resource_id"] == "import"
    assert audit["detail"] == {
        "received": 6,
        "suppressed": 2,
        "invalid": 2,
        "before": {"suppressedOfFile": 1},
        "after": {"suppressedOfFile": 3},
    }

    # importing the same file again changes nothing
    again = await client.post(
        "/v1/admin/suppressions/import",
        content=CSV.encode(),
        headers={**writer, "content-type": "text/csv"},
    )
    assert (again.json()["suppressed"], again.json()["alreadySuppressed"]) == (0, 3)


async def test_multipart_upload_with_a_byte_order_mark(
    client: httpx.AsyncClient, writer: dict[str, str], engine: AsyncEngine
) -> None:
    data = "\ufeffemail\nmulti@example.com\n".encode()
    response = await client.post(
        "/v1/admin/suppressions/import",
        files={"file": ("list.csv", data, "text/csv")},
        headers=writer,
    )
    assert response.status_code == 200, response.text
    assert response.json()["suppressed"] == 1
    assert await suppressed(engine) == {"multi@example.com": (True, "import")}


async def test_strict_import_refuses_the_whole_file(
    client: httpx.AsyncClient, writer: dict[str, str], engine: AsyncEngine
) -> None:
    before = await counts(engine)
    response = await client.post(
        "/v1/admin/suppressions/import",
        params={"strict": "true"},
        content=CSV.encode(),
        headers={**writer, "content-type": "text/csv"},
    )
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["errors"]] == [
        "body.line[3].email",
        "body.line[6].reason",
    ]
    assert await counts(engine) == before


@pytest.mark.parametrize(
    ("content", "content_type", "status"),
    [
        (b"", "text/csv", 422),
        (b"\n\n", "text/csv", 422),
        (b"\xff\xfe\x00a", "text/csv", 422),
        (b"a@example.com\x00", "text/csv", 422),
        (b'{"email": "a@example.com"}', "application/json", 415),
    ],
)
async def test_unreadable_uploads_are_refused(
    client: httpx.AsyncClient,
    writer: dict[str, str],
    engine: AsyncEngine,
    content: bytes,
    content_type: str,
    status: int,
) -> None:
    before = await counts(engine)
    response = await client.post(
        "/v1/admin/suppressions/import",
        content=content,
        headers={**writer, "content-type": content_type},
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert await counts(engine) == before


async def test_a_multipart_form_without_the_file_field(
    client: httpx.AsyncClient, writer: dict[str, str]
) -> None:
    response = await client.post(
        "/v1/admin/suppressions/import",
        files={"other": ("list.csv", b"a@example.com\n", "text/csv")},
        headers=writer,
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.file"


@pytest.fixture
async def small_client(api_factory: Callable[..., FastAPI]) -> AsyncIterator[httpx.AsyncClient]:
    api = api_factory(batch_max_body_bytes=2048, suppression_import_max_rows=3)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client
    await api.state.driver_pool.close()


async def test_size_and_row_limits_are_413_and_write_nothing(
    small_client: httpx.AsyncClient, writer: dict[str, str], engine: AsyncEngine
) -> None:
    before = await counts(engine)
    big = "".join(f"user{i:05d}@example.com\n" for i in range(200)).encode()
    assert len(big) > 2048
    too_big = await small_client.post(
        "/v1/admin/suppressions/import", content=big, headers={**writer, "content-type": "text/csv"}
    )
    assert too_big.status_code == 413
    too_many = await small_client.post(
        "/v1/admin/suppressions/import",
        content=b"a@x.io\nb@x.io\nc@x.io\nd@x.io\n",
        headers={**writer, "content-type": "text/csv"},
    )
    assert too_many.status_code == 413
    assert "at most 3" in too_many.json()["detail"]
    assert await counts(engine) == before
    ok = await small_client.post(
        "/v1/admin/suppressions/import",
        content=b"a@x.io\nb@x.io\nc@x.io\n",
        headers={**writer, "content-type": "text/csv"},
    )
    assert ok.status_code == 200
