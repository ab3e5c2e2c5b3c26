"""The set-based import path keeps the row-by-row semantics (real Postgres)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend, define_list
from hogsend.core.contact_imports import ImportFormat, prepare
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


def lists_app() -> Hogsend:
    return Hogsend(
        lists=[
            define_list(id="news", name="News", default_opt_in=False),
            define_list(id="promo", name="Promo", default_opt_in=False),
        ]
    )


async def run_import(
    engine: AsyncEngine,
    body: str,
    app: Hogsend | None = None,
    kind: ImportFormat = "csv",
    mapping: dict[str, str] | None = None,
) -> Any:
    raw = body.encode()
    app = app or Hogsend()
    known = frozenset(item.id for item in app.lists)
    async with make_sessionmaker(engine)() as session, session.begin():
        await repo.create_job(
            session, format=kind, content=raw, mapping=prepare(raw, kind, mapping or {}, known)
        )
        [(job_id, owner)] = await repo.claim_pending(session, datetime.now(UTC), limit=1)
    while (await runtime.import_chunk(engine, app, job_id, owner)).state == "more":
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


SEED = (
    "INSERT INTO contacts (id, external_id, email, properties) VALUES"
    " ('00000000-0000-4000-8000-000000000001', 'u-1', 'one@example.com', '{\"plan\": \"free\"}'),"
    " ('00000000-0000-4000-8000-000000000002', 'u-2', NULL, '{}'),"
    " ('00000000-0000-4000-8000-000000000003', NULL, 'three@example.com', '{\"k\": \"v\"}'),"
    " ('00000000-0000-4000-8000-000000000004', 'u-4', 'four4@example.com', '{}');"
    " INSERT INTO contact_aliases (contact_id, alias_kind, alias_value, reason) VALUES"
    " ('00000000-0000-4000-8000-000000000001', 'external', 'u-old', 'merge');"
    " INSERT INTO list_subscriptions (contact_id, list_id, subscribed, source) VALUES"
    " ('00000000-0000-4000-8000-000000000001', 'news', true, 'api')"
)

MIXED = (
    "email,userId,plan,lists,promo\n"
    "one@example.com,u-1,pro,,false\n"  # both keys held by one contact: plain update
    ",u-2,team,news,yes\n"  # plain update with list choices
    "two@example.com,u-2,,,\n"  # u-2 again (a repeat), email to attach: row by row
    "new@example.com,u-new,free,news;promo,\n"  # nobody: created with two lists
    ",u-old,alias,,\n"  # known through an alias: row by row
    "three@example.com,,,promo,true\n"  # plain, no properties, lists
    "three@example.com,u-3,late,,\n"  # a repeat: after the line above
    "one@example.com,,last,,\n"  # a repeat of line 2's email: later line wins
    "four@example.com,u-1,x,,\n"  # u-1 again (its email conflicts): row by row, last
    ",u-4,a,,\n"  # plain update
    "four4@example.com,,b,,\n"  # another key of the same contact: row by row, after
    "bad-email,u-9,,,\n"  # rejected with its line
)

PROMO = {"promo": "lists.promo"}


async def state(engine: AsyncEngine) -> tuple[Any, ...]:
    """Every live contact and list choice, by the contact's keys (not its ids)."""
    async with engine.connect() as conn:
        contacts = (
            await conn.execute(
                text(
                    "SELECT coalesce(external_id, '-'), coalesce(email, '-'), properties"
                    " FROM contacts WHERE deleted_at IS NULL ORDER BY 1, 2"
                )
            )
        ).all()
        choices = (
            await conn.execute(
                text(
                    "SELECT coalesce(c.external_id, c.email), s.list_id, s.subscribed, s.source"
                    " FROM list_subscriptions s JOIN contacts c ON c.id = s.contact_id"
                    " WHERE c.deleted_at IS NULL ORDER BY 1, 2"
                )
            )
        ).all()
        aliases = (
            await conn.execute(
                text(
                    "SELECT a.alias_kind, a.alias_value, coalesce(c.external_id, c.email)"
                    " FROM contact_aliases a JOIN contacts c ON c.id = a.contact_id ORDER BY 1, 2"
                )
            )
        ).all()
    return tuple(map(tuple, contacts)), tuple(map(tuple, choices)), tuple(map(tuple, aliases))


async def reset(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM list_subscriptions"))
        await conn.execute(text("DELETE FROM contact_aliases"))
        await conn.execute(text("DELETE FROM contacts"))
        for statement in SEED.split(";"):
            await conn.execute(text(statement))


async def test_the_set_based_path_ends_exactly_as_the_row_by_row_path(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same file on the same contacts, once with the set-based path and once row by
    row: the same contacts, properties, list choices and aliases, the same counts and
    rejected lines; and the plain lines (list choices included) really went set-based."""
    staged = repo.import_staged
    left: list[list[int]] = []

    async def spy(*args: Any, **kwargs: Any) -> repo.StagedResult:
        result = await staged(*args, **kwargs)
        left.append(result.rest)
        return result

    monkeypatch.setattr(repo, "import_staged", spy)
    await reset(engine)
    bulk_job = await run_import(engine, MIXED, lists_app(), mapping=PROMO)
    bulk_state = await state(engine)
    # Lines 4, 6, 8, 9, 10 and 12 need the row-by-row path; 2, 3, 5, 7 and 11 do not.
    assert left == [[4, 6, 8, 9, 10, 12]]

    async def all_slow(session: Any, rows: Any, now: Any) -> tuple[int, int, list[Any]]:
        return 0, 0, list(rows)

    monkeypatch.setattr(runtime, "_import_bulk", all_slow)
    await reset(engine)
    slow_job = await run_import(engine, MIXED, lists_app(), mapping=PROMO)
    assert await state(engine) == bulk_state
    for job in (bulk_job, slow_job):
        assert job.status == "completed"
        assert (job.processed_rows, job.failed_rows) == (12, 1)
        assert job.errors == [{"line": 13, "reason": job.errors[0]["reason"]}]
    assert (bulk_job.created_contacts, bulk_job.updated_contacts) == (
        slow_job.created_contacts,
        slow_job.updated_contacts,
    )
    contacts, choices, _ = bulk_state
    assert ("u-1", "one@example.com", {"plan": "x"}) in contacts
    assert ("u-2", "two@example.com", {"plan": "team"}) in contacts
    assert ("u-3", "three@example.com", {"k": "v", "plan": "late"}) in contacts
    assert ("u-new", "news", True, "import") in choices
    assert ("u-1", "promo", False, "import") in choices
    assert ("u-4", "four4@example.com", {"plan": "b"}) in contacts
    assert ("u-1", "news", True, "api") in choices  # no choice in the file: untouched


async def test_json_lines_null_deletes_a_property_on_the_set_based_path(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO contacts (email, properties) VALUES"
                " ('j@example.com', CAST(:p AS jsonb))"
            ),
            {"p": json.dumps({"plan": "free", "gone": 1, "keep": True})},
        )
    body = (
        '{"email": "j@example.com", "properties": {"plan": "pro", "gone": null}}\n'
        '{"email": "k@example.com", "properties": {"a": {"b": null}, "c": null},'
        ' "lists": {"news": false}}\n'
    )
    job = await run_import(engine, body, lists_app(), kind="jsonl")
    assert (job.status, job.created_contacts, job.updated_contacts) == ("completed", 1, 1)
    contacts, choices, _ = await state(engine)
    assert contacts == (
        ("-", "j@example.com", {"plan": "pro", "keep": True}),
        ("-", "k@example.com", {"a": {"b": None}}),
    )
    assert choices == (("k@example.com", "news", False, "import"),)


async def test_a_line_postgres_refuses_fails_alone_after_the_copy_failed(
    engine: AsyncEngine,
) -> None:
    """A NUL character is valid JSON but not valid jsonb: the COPY of the chunk fails, the
    chunk goes line by line, and only that line is rejected (with its line number)."""
    body = (
        '{"email": "ok@example.com", "properties": {"p": "fine"}}\n'
        '{"email": "nul@example.com", "properties": {"p": "a\\u0000b"}}\n'
        '{"email": "ok2@example.com"}\n'
    )
    job = await run_import(engine, body, kind="jsonl")
    assert (job.status, job.created_contacts, job.failed_rows) == ("completed", 2, 1)
    assert [e["line"] for e in job.errors] == [2]
    assert job.errors[0]["reason"].startswith("not stored")
    contacts, _, _ = await state(engine)
    assert [c[1] for c in contacts] == ["ok2@example.com", "ok@example.com"]
