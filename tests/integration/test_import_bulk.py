"""The set-based import path keeps the row-by-row semantics (real Postgres)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend
from hogsend.core.contact_imports import prepare
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import imports as repo
from hogsend.runtime import imports as runtime

pytestmark = pytest.mark.timeout(120)

BODY = (
    "email,userId,plan\n"
    "a@example.com,u-a,pro\n"  # both keys on one contact: a plain update
    "b@example.com,u-b,team\n"  # known userId, email to attach: the row-by-row path
    "new@example.com,,free\n"  # nobody: created in bulk
    "new@example.com,,pro\n"  # the same key again: after the first, later line wins
    "c@example.com,u-c,free\n"  # nobody: created in bulk
)


async def run_import(engine: AsyncEngine, body: str) -> Any:
    raw = body.encode()
    async with make_sessionmaker(engine)() as session, session.begin():
        await repo.create_job(
            session, format="csv", content=raw, mapping=prepare(raw, "csv", {}, frozenset())
        )
        [(job_id, owner)] = await repo.claim_pending(session, datetime.now(UTC), limit=1)
    while (await runtime.import_chunk(engine, Hogsend(), job_id, owner)).state == "more":
        pass
    async with make_sessionmaker(engine)() as session:
        return await repo.get_job(session, job_id)


async def everyone(engine: AsyncEngine) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT email, external_id, properties FROM contacts"
                " WHERE deleted_at IS NULL ORDER BY email"
            )
        )
        return [(r[0], r[1], r[2]) for r in rows]


async def test_bulk_rows_and_row_by_row_rows_end_as_the_reference_path_would(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO contacts (external_id, email, properties) VALUES"
                " ('u-a', 'a@example.com', CAST(:a AS jsonb)), ('u-b', NULL, CAST(:b AS jsonb))"
            ),
            {"a": json.dumps({"plan": "free", "keep": 1}), "b": json.dumps({"plan": "free"})},
        )
    job = await run_import(engine, BODY)
    assert (job.status, job.processed_rows, job.failed_rows) == ("completed", 5, 0)
    assert (job.created_contacts, job.updated_contacts) == (2, 3)
    assert await everyone(engine) == [
        ("a@example.com", "u-a", {"plan": "pro", "keep": 1}),
        ("b@example.com", "u-b", {"plan": "team"}),
        ("c@example.com", "u-c", {"plan": "free"}),
        ("new@example.com", None, {"plan": "pro"}),
    ]
    # Again: every row now finds its contact; nothing is created, nothing changes.
    again = await run_import(engine, BODY)
    assert (again.created_contacts, again.updated_contacts) == (0, 5)
    assert len(await everyone(engine)) == 4


async def test_a_chunk_the_bulk_statements_refuse_is_imported_row_by_row(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If the set-based statements fail, the chunk falls back to the row-by-row path
    and every good row is still imported once."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the bulk path failed")

    monkeypatch.setattr(repo, "import_staged", broken)
    job = await run_import(engine, "email,plan\nx@example.com,pro\ny@example.com,free\n")
    assert (job.status, job.created_contacts, job.failed_rows) == ("completed", 2, 0)
    assert [r[0] for r in await everyone(engine)] == ["x@example.com", "y@example.com"]
