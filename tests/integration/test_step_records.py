"""DBOS's step record from prepared statements (hogsend.runtime.step_records): journey
steps are recorded through it, with DBOS's owner check and nondeterminism check."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from dbos._dbos import _get_dbos_instance
from dbos._error import DBOSStepNondeterminismError, DBOSWorkflowConflictIDError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_journeys import Env, _env

from hogsend import Contact, JourneyContext, define_journey
from hogsend.runtime import step_records
from mail_sink import Sink

pytestmark = pytest.mark.timeout(120)


@define_journey(id="it-records", name="Records", trigger="records.go", entry_limit="unlimited")
async def records(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.log("one")
    await ctx.log("two")


@pytest.fixture
async def env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    mint_key: Callable[..., Any],
) -> AsyncIterator[Env]:
    async for built in _env(tmp_path, engine, database_url, sink, mint_key, [records]):
        yield built


def _result(workflow_id: str, function_id: int) -> dict[str, Any]:
    return {
        "workflow_uuid": workflow_id,
        "function_id": function_id,
        "function_name": "journey.test",
        "output": None,
        "error": None,
        "serialization": None,
        "started_at_epoch_ms": 1,
        "child_workflow_id": None,
    }


async def test_journey_steps_are_recorded_with_dbos_checks(env: Env) -> None:
    await env.event("records.go", "rec")

    async def completed() -> bool:
        runs = await env.runs("it-records")
        return bool(runs) and runs[0]["status"] == "completed"

    await env.until(completed)
    installed = step_records.install()
    assert installed is not None
    assert installed.written >= 2
    [run] = await env.runs("it-records")
    workflow_id = run["workflow_id"]
    steps = await env.rows(
        "SELECT function_id, function_name, completed_at_epoch_ms, retention_timestamp,"
        " application_name FROM dbos.operation_outputs WHERE workflow_uuid = :w"
        " ORDER BY function_id",
        w=workflow_id,
    )
    logged = [s for s in steps if s["function_name"].startswith("journey.log")]
    assert len(logged) == 2
    assert all(s["retention_timestamp"] > 0 for s in steps)
    assert {s["application_name"] for s in steps} == {_get_dbos_instance()._sys_db.app_name}
    sys_db = _get_dbos_instance()._sys_db
    existing = logged[0]

    # Another execution's token (the finished workflow has none): refused, nothing written.
    with pytest.raises(DBOSWorkflowConflictIDError), sys_db.engine.begin() as conn:
        installed.record(_result(workflow_id, 999), 5, conn, owner_xid="someone-else")
    # The same step again with another completion time: nondeterminism, as in DBOS.
    with pytest.raises(DBOSStepNondeterminismError), sys_db.engine.begin() as conn:
        installed.record(
            _result(workflow_id, existing["function_id"]),
            int(existing["completed_at_epoch_ms"]) + 1,
            conn,
            owner_xid=None,
        )
    # ...and with its own completion time: a retry of the same write, accepted.
    with sys_db.engine.begin() as conn:
        installed.record(
            _result(workflow_id, existing["function_id"]),
            int(existing["completed_at_epoch_ms"]),
            conn,
            owner_xid=None,
        )
    after = await env.rows(
        "SELECT function_id, function_name FROM dbos.operation_outputs WHERE workflow_uuid = :w"
        " ORDER BY function_id",
        w=workflow_id,
    )
    assert [(s["function_id"], s["function_name"]) for s in after] == [
        (s["function_id"], s["function_name"]) for s in steps
    ]


async def test_a_log_step_commits_its_line_and_its_record_in_one_transaction(env: Env) -> None:
    installed = step_records.install()
    assert installed is not None
    joined_before = installed.joined
    await env.event("records.go", "joined")

    async def completed() -> bool:
        runs = await env.runs("it-records")
        return bool(runs) and runs[0]["status"] == "completed"

    await env.until(completed)
    [run] = await env.runs("it-records")
    # Both log steps recorded themselves; DBOS's own record of them was skipped (a
    # second write of either would have raised DBOSStepNondeterminismError).
    assert installed.joined - joined_before == 2
    assert not installed._done
    steps = await env.rows(
        "SELECT function_name, output, serialization FROM dbos.operation_outputs"
        " WHERE workflow_uuid = :w AND function_name LIKE 'journey.log%' ORDER BY function_id",
        w=run["workflow_id"],
    )
    assert [s["function_name"] for s in steps] == ["journey.log 1:log", "journey.log 2:log"]
    from dbos._serialization import deserialize_value

    serializer = _get_dbos_instance()._serializer
    assert [deserialize_value(s["output"], s["serialization"], serializer) for s in steps] == [
        True,
        True,
    ]
    lines = await env.rows(
        "SELECT step FROM journey_logs WHERE journey_state_id = :s AND action = 'log'",
        s=run["id"],
    )
    assert len(lines) == 2


async def test_a_step_recorded_in_its_transaction_is_refused_with_dbos_checks(
    env: Env, engine: AsyncEngine
) -> None:
    await env.event("records.go", "refused")

    async def completed() -> bool:
        runs = await env.runs("it-records")
        return bool(runs) and runs[0]["status"] == "completed"

    await env.until(completed)
    installed = step_records.install()
    assert installed is not None
    [run] = await env.runs("it-records")
    workflow_id = run["workflow_id"]
    [existing] = await env.rows(
        "SELECT function_id FROM dbos.operation_outputs WHERE workflow_uuid = :w"
        " AND function_name = 'journey.log 1:log'",
        w=workflow_id,
    )
    marker = "refused-with-its-record"

    async def write_then_record(function_id: int, owner_xid: str | None) -> None:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO journey_logs (journey_state_id, journey_id, contact_id,"
                    " user_id, step, action, detail, started_at, finished_at, duration_ms)"
                    " SELECT id, journey_id, contact_id, user_id, :m, 'log', '{}', now(),"
                    " now(), 0 FROM journey_states WHERE id = :s"
                ),
                {"m": marker, "s": run["id"]},
            )
            await installed.insert_in(
                conn, workflow_id, function_id, "journey.test", True, owner_xid=owner_xid
            )

    # Another execution's token (the finished workflow has none): the step's own write
    # rolls back with the refused record.
    with pytest.raises(DBOSWorkflowConflictIDError):
        await write_then_record(999, "someone-else")
    # A step already recorded (by another execution): nondeterminism, and nothing kept.
    with pytest.raises(DBOSStepNondeterminismError):
        await write_then_record(existing["function_id"], None)
    assert await env.rows("SELECT 1 FROM journey_logs WHERE step = :m", m=marker) == []
    assert (
        await env.rows(
            "SELECT 1 FROM dbos.operation_outputs WHERE workflow_uuid = :w AND function_id = 999",
            w=workflow_id,
        )
        == []
    )
