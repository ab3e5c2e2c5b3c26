"""Contact imports: upload over HTTP, a real worker (DBOS) importing, real Postgres."""

from __future__ import annotations

import asyncio
import csv
import io
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from hogsend import Hogsend, define_list
from hogsend.api import create_api
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import imports as repo
from hogsend.runtime import imports as runtime
from hogsend.runtime.worker import Worker
from hogsend.settings import Settings

pytestmark = pytest.mark.timeout(120)

CSV = (
    "email,userId,plan,lists\n"
    "ada@example.com,u-1,pro,newsletter\n"
    "not-an-email,,free,\n"  # line 3: bad address
    "bob@example.com,,free,\n"
    ",,orphan,\n"  # line 5: no key
    "cy@example.com,u-3,pro,nope\n"  # line 6: unknown list
    "dee@example.com,u-4\n"  # line 7: too few columns
    ",u-5,team,\n"
)


@pytest.fixture
def app() -> Hogsend:
    return Hogsend(lists=[define_list(id="newsletter", name="News", default_opt_in=False)])


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        campaign_poll_seconds=0.1,
        rate_limit_admin=1_000_000,
        worker_id=f"imports-{uuid.uuid4().hex[:6]}",
    )


@pytest.fixture
async def api(app: Hogsend, settings: Settings, engine: AsyncEngine) -> AsyncIterator[FastAPI]:
    built = create_api(app, settings, engine=engine)
    yield built
    await built.state.driver_pool.close()


@pytest.fixture
async def client(api: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@pytest.fixture
async def writer(mint_key: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {await mint_key('admin:write', name='importer')}"}


async def upload(
    client: httpx.AsyncClient, headers: dict[str, str], body: str, **params: str
) -> httpx.Response:
    return await client.post(
        "/v1/admin/imports",
        content=body.encode(),
        params=params,
        headers=headers | {"Content-Type": "text/csv"},
    )


async def wait_done(client: httpx.AsyncClient, headers: dict[str, str], job_id: str) -> Any:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = (await client.get(f"/v1/admin/imports/{job_id}", headers=headers)).json()
        if job["status"] in ("completed", "failed"):
            return job
        await asyncio.sleep(0.1)
    raise AssertionError("the import did not finish")


async def contact_count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT count(*) FROM contacts"))).scalar_one())


async def test_dry_run_reports_bad_lines_and_writes_nothing(
    client: httpx.AsyncClient, writer: dict[str, str], engine: AsyncEngine
) -> None:
    response = await upload(client, writer, CSV, dryRun="true")
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["totalRows"], report["validRows"], report["failedRows"]) == (7, 3, 4)
    assert [e["line"] for e in report["errors"]] == [3, 5, 6, 7]
    assert report["mapping"] == {
        "email": "email",
        "userId": "userId",
        "plan": "properties.plan",
        "lists": "lists",
    }
    assert await contact_count(engine) == 0
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM import_jobs"))).scalar() == 0


async def test_import_reports_bad_rows_by_line_imports_the_rest_and_reruns_without_duplicates(
    app: Hogsend,
    settings: Settings,
    client: httpx.AsyncClient,
    writer: dict[str, str],
    engine: AsyncEngine,
) -> None:
    worker = Worker(app, settings)
    await worker.start()
    try:
        response = await upload(client, writer, CSV, fileName="people.csv")
        assert response.status_code == 202, response.text
        job_id = response.json()["jobId"]
        job = await wait_done(client, writer, job_id)
        assert job["status"] == "completed"
        assert (job["processedRows"], job["failedRows"], job["createdContacts"]) == (7, 4, 3)
        assert [e["line"] for e in job["errors"]] == [3, 5, 6, 7]
        assert "unknown list 'nope'" in job["errors"][2]["reason"]
        errors = await client.get(f"/v1/admin/imports/{job_id}/errors", headers=writer)
        assert errors.headers["content-type"].startswith("text/csv")
        rows = list(csv.reader(io.StringIO(errors.text)))
        assert rows[0] == ["line", "reason", "raw"]
        assert [r[0] for r in rows[1:]] == ["3", "5", "6", "7"]
        assert rows[1][2] == "not-an-email,,free,"
        async with engine.connect() as conn:
            people = (
                await conn.execute(
                    text(
                        "SELECT email, external_id, properties->>'plan' AS plan FROM contacts"
                        " ORDER BY coalesce(email, external_id)"
                    )
                )
            ).all()
            subscribed = (
                await conn.execute(text("SELECT list_id, subscribed FROM list_subscriptions"))
            ).all()
        assert [tuple(p) for p in people] == [
            ("ada@example.com", "u-1", "pro"),
            ("bob@example.com", None, "free"),
            (None, "u-5", "team"),
        ]
        assert [tuple(s) for s in subscribed] == [("newsletter", True)]

        again = await upload(client, writer, CSV)
        rerun = await wait_done(client, writer, again.json()["jobId"])
        assert (rerun["createdContacts"], rerun["updatedContacts"]) == (0, 3)
        assert await contact_count(engine) == 3
    finally:
        await worker.stop()


async def test_an_interrupted_import_resumes_at_its_cursor_without_duplicates(
    app: Hogsend, engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run that stopped after one chunk (a crash commits nothing past it) is continued
    by another owner from the stored cursor: every row once, no contact twice."""
    monkeypatch.setattr(runtime, "CHUNK_ROWS", 2)
    body = "email,plan\n" + "".join(f"p{n}@example.com,p{n}\n" for n in range(7))
    sessions = make_sessionmaker(engine)
    async with sessions() as session, session.begin():
        await repo.create_job(
            session,
            format="csv",
            content=body.encode(),
            mapping={
                "columns": ["email", "plan"],
                "targets": {"email": "email", "plan": "properties.plan"},
                "firstLine": 2,
                "dataOffset": len("email,plan\n"),
            },
        )
        [(job_id, first_owner)] = await repo.claim_pending(session, datetime.now(UTC), limit=1)
    first = await runtime.import_chunk(engine, app, job_id, first_owner)
    assert (first.state, first.processed) == ("more", 2)
    # The first run died; its job is handed to a new owner, which continues.
    async with sessions() as session, session.begin():
        await session.execute(
            text("UPDATE import_jobs SET workflow_id = 'second' WHERE id = :id"), {"id": job_id}
        )
    assert (await runtime.import_chunk(engine, app, job_id, first_owner)).state == "stopped"
    states: list[str] = []
    while not states or states[-1] == "more":
        states.append((await runtime.import_chunk(engine, app, job_id, "second")).state)
    assert states == ["more", "more", "more", "done"]
    async with sessions() as session:
        done = await repo.get_job(session, job_id)
        assert done is not None
        assert (done.status, done.total_rows, done.created_contacts) == ("completed", 7, 7)
    assert await contact_count(engine) == 7


@pytest.mark.parametrize(
    ("params", "body", "field"),
    [
        ({"mapping": '{"missing": "email"}'}, "email\na@example.com\n", "query.mapping"),
        ({"mapping": '{"email": "nonsense"}'}, "email\na@example.com\n", "query.mapping"),
        ({}, "plan\npro\n", "query.mapping"),
        ({"mapping": "not json"}, "email\n", "query.mapping"),
        ({}, "", "body"),
    ],
)
async def test_bad_uploads_are_refused_naming_the_field(
    client: httpx.AsyncClient,
    writer: dict[str, str],
    engine: AsyncEngine,
    params: dict[str, str],
    body: str,
    field: str,
) -> None:
    response = await upload(client, writer, body, **params)
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM import_jobs"))).scalar() == 0


async def test_uploads_that_are_not_a_file_are_refused(
    client: httpx.AsyncClient, writer: dict[str, str], engine: AsyncEngine
) -> None:
    # What the OpenAPI fuzz cannot tell from a valid body, checked by hand: no `file`
    # field in a multipart form, bytes that are not UTF-8, a content type we do not read.
    no_file = await client.post(
        "/v1/admin/imports", headers=writer, data={"other": "email"}, files={"x": ("a", b"")}
    )
    assert no_file.status_code == 422, no_file.text
    assert [e["field"] for e in no_file.json()["errors"]] == ["body.file"]
    latin1 = await client.post(
        "/v1/admin/imports",
        content="email\nb\xe9a@example.com\n".encode("latin-1"),
        headers=writer | {"Content-Type": "text/csv"},
    )
    assert latin1.status_code == 422, latin1.text
    assert [e["field"] for e in latin1.json()["errors"]] == ["body"]
    image = await client.post(
        "/v1/admin/imports", content=b"GIF89a", headers=writer | {"Content-Type": "image/gif"}
    )
    assert image.status_code == 415, image.text
    assert image.headers["content-type"].startswith("application/problem+json")
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM import_jobs"))).scalar() == 0


async def test_json_lines_import(
    app: Hogsend, settings: Settings, client: httpx.AsyncClient, writer: dict[str, str]
) -> None:
    body = (
        '{"email": "j@example.com", "properties": {"n": 1}, "lists": {"newsletter": true}}\n'
        "[1, 2]\n"
        '{"userId": "u-9"}\n'
    )
    worker = Worker(app, settings)
    await worker.start()
    try:
        response = await client.post(
            "/v1/admin/imports",
            content=body.encode(),
            headers=writer | {"Content-Type": "application/x-ndjson"},
        )
        assert response.status_code == 202, response.text
        job = await wait_done(client, writer, response.json()["jobId"])
    finally:
        await worker.stop()
    assert job["format"] == "jsonl"
    assert (job["processedRows"], job["failedRows"], job["createdContacts"]) == (3, 1, 2)
    assert job["errors"] == [{"line": 2, "reason": "expected a JSON object"}]


async def test_imports_have_their_own_upload_limit(
    settings: Settings, app: Hogsend, engine: AsyncEngine, writer: dict[str, str]
) -> None:
    # A contact export outgrows an API batch: the import route is bounded by
    # HOGSEND_IMPORT_MAX_BODY_BYTES, not by the batch routes' limit.
    rows = "".join(f"person{i}@example.com\n" for i in range(200))
    body = "email\n" + rows  # about 5 KB
    bounded = settings.model_copy(
        update={"batch_max_body_bytes": 2048, "import_max_body_bytes": len(body) + 100}
    )
    api = create_api(app, bounded, engine=engine)
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            accepted = await upload(client, writer, body, dryRun="true")
            assert accepted.status_code == 200, accepted.text
            assert accepted.json()["totalRows"] == 200
            too_large = await upload(client, writer, body + "x" * 200)
            assert too_large.status_code == 413, too_large.text
            assert too_large.headers["content-type"].startswith("application/problem+json")
            # The batch routes keep their own, smaller limit.
            batch = await client.post(
                "/v1/events/batch",
                content=b'{"batch": [' + b" " * 3000 + b"]}",
                headers=writer | {"Content-Type": "application/json"},
            )
            assert batch.status_code == 413, batch.text
    finally:
        await api.state.driver_pool.close()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM import_jobs"))).scalar() == 0
