"""Durable journeys on a real Postgres, real DBOS, a real worker and a real SMTP sink.

Events go in through ``POST /v1/events``; the worker's dispatcher triggers, wakes and
exits runs; sends go through the mailer to aiosmtpd. Durations are short and real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from test_emails_api import settings_for

from hogsend import Contact, Hogsend, JourneyContext, define_journey, where
from hogsend.api.app import create_api
from hogsend.core.definitions import JourneyDefinition
from hogsend.runtime.worker import Worker
from mail_sink import Sink

pytestmark = pytest.mark.timeout(120)

SHORT = timedelta(seconds=1)


@define_journey(
    id="it-welcome",
    name="Welcome",
    trigger=where.event("user.created").where(where.property("plan").equals("pro")),
    exit_on=["user.deleted"],
)
async def welcome(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="welcome", props={"name": contact.properties.get("name")})
    await ctx.sleep(SHORT)
    got = await ctx.wait_for_event(
        "feature.used",
        timeout=timedelta(seconds=4),
        match={"projectId": ctx.trigger_event.properties["projectId"]},
    )
    if got is None:
        await ctx.send_email(template="nudge")
    else:
        await ctx.log("feature used", projectId=got.properties["projectId"])
    await ctx.variant("subject-test", ["a", "b"])


@define_journey(
    id="it-slow",
    name="Slow",
    trigger="trial.started",
    entry_limit="unlimited",
    exit_on=[where.event("plan.upgraded")],
)
async def slow(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="welcome")
    try:
        await ctx.sleep(timedelta(seconds=60))
    except Exception:  # an exit is not an Exception: this cannot swallow it
        await ctx.log("swallowed")
    await ctx.send_email(template="nudge")


@define_journey(
    id="it-gap",
    name="Gap",
    trigger="gap.test",
    entry_limit="unlimited",
    suppress=timedelta(hours=1),
)
async def gap(contact: Contact, ctx: JourneyContext) -> None:
    seen = await ctx.history.count("gap.test")
    last = await ctx.history.last("gap.test")
    await ctx.log(
        "history",
        seen=seen,
        has=await ctx.history.has_event("gap.test", within=timedelta(minutes=5)),
        never=await ctx.history.has_event("never.happened"),
        lastId=None if last is None else str(last.id),
    )
    await ctx.send_email(template="welcome")
    await ctx.send_email(template="nudge")  # within the journey's suppress gap: capped
    await ctx.enroll("it-slow", contact)


@define_journey(id="it-billing", name="Billing", trigger="billing.test", entry_limit="unlimited")
async def billing(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="receipt")  # category: transactional
    await ctx.send_email(template="welcome")


@define_journey(id="it-lookback", name="Lookback", trigger="lb.start", entry_limit="unlimited")
async def lookback(contact: Contact, ctx: JourneyContext) -> None:
    before = await ctx.wait_for_event(
        "lb.prior", timeout=timedelta(seconds=2), match={"k": 1}, lookback=timedelta(hours=1)
    )
    without = await ctx.wait_for_event("lb.prior", timeout=timedelta(milliseconds=300))
    await ctx.log(
        "lookback",
        found=None if before is None else before.properties["k"],
        without=without is not None,
    )


def _templates(directory: Path) -> Path:
    directory.mkdir()
    (directory / "welcome.html").write_text(
        "{#---\nsubject: Welcome\ncategory: onboarding\n---#}\n"
        "<p>Hi {{ name | default('there') }}</p>\n"
    )
    (directory / "nudge.html").write_text(
        "{#---\nsubject: Try it\ncategory: onboarding\n---#}\n<p>Nudge</p>\n"
    )
    (directory / "receipt.html").write_text(
        "{#---\nsubject: Receipt\ncategory: transactional\n---#}\n<p>Paid</p>\n"
    )
    return directory


@dataclass
class Env:
    client: httpx.AsyncClient
    sink: Sink
    engine: AsyncEngine
    worker: Worker
    key: str

    async def event(self, name: str, user: str, **properties: Any) -> str:
        response = await self.client.post(
            "/v1/events",
            json={
                "name": name,
                "userId": user,
                "email": f"{user}@example.com",
                "eventProperties": properties,
                "contactProperties": {"name": user.title()},
            },
            headers={"Authorization": f"Bearer {self.key}"},
        )
        assert response.status_code == 202, response.text
        return str(response.json()["eventId"])

    async def rows(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        async with self.engine.connect() as conn:
            result = await conn.execute(text(sql), params)
            return [dict(r._mapping) for r in result]

    async def runs(self, journey: str) -> list[dict[str, Any]]:
        return await self.rows(
            "SELECT * FROM journey_states WHERE journey_id = :j ORDER BY created_at", j=journey
        )

    async def until(self, check: Callable[[], Any], seconds: float = 30.0) -> Any:
        for _ in range(int(seconds / 0.1)):
            value = await check()
            if value:
                return value
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out waiting for {check}")


async def _env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    mint_key: Callable[..., Any],
    journeys: list[JourneyDefinition],
    **overrides: object,
) -> AsyncIterator[Env]:
    handler, port = sink
    app = Hogsend(journeys=journeys, templates=_templates(tmp_path / "templates"))
    settings = settings_for(
        database_url, port, worker_id="journeys-it", dispatcher_poll_seconds=0.05, **overrides
    )
    api = create_api(app, settings, engine=engine)
    worker = Worker(app, settings, engine=engine)
    key = await mint_key("ingest", "admin:read", "admin:write")
    transport = httpx.ASGITransport(app=api, raise_app_exceptions=False)
    await worker.start()
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield Env(client, handler, engine, worker, key)
    finally:
        await _end_running_runs(engine, worker)
        await worker.stop()
        mailer = getattr(api.state, "mailer", None)
        if mailer is not None:
            await mailer.provider.aclose()
        await api.state.driver_pool.close()


async def _end_running_runs(engine: AsyncEngine, worker: Worker) -> None:
    """Exit the runs still going, and let their workflows end, before the worker stops.

    A workflow in ``DBOS.recv`` holds a thread that outlives the DBOS instance; once the
    test database is dropped it would retry its read until the session ends.
    """
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE journey_states SET status = 'exited', exited_at = now(),"
                " exit_reason = 'test_teardown' WHERE status IN ('enrolled','active','waiting')"
            )
        )
    if worker.exit_sweep is None:
        return
    for _ in range(100):
        if await worker.exit_sweep.run_once() == 0:
            return
        await asyncio.sleep(0.1)


@pytest.fixture
async def env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    mint_key: Callable[..., Any],
) -> AsyncIterator[Env]:
    async for built in _env(
        tmp_path, engine, database_url, sink, mint_key, [welcome, slow, gap, lookback, billing]
    ):
        yield built


def _subjects(sink: Sink) -> list[str]:
    return [str(m["Subject"]) for m in sink.messages]


async def test_a_trigger_enrolls_sends_sleeps_and_a_matching_event_wakes_the_wait(
    env: Env,
) -> None:
    await env.event("user.created", "ann", plan="pro", projectId="p1")

    async def waiting() -> bool:
        runs = await env.runs("it-welcome")
        return bool(runs) and runs[0]["waiting_for_event"] == "feature.used"

    await env.until(waiting)
    assert _subjects(env.sink) == ["Welcome"]
    [run] = await env.runs("it-welcome")
    assert run["status"] == "waiting"
    assert run["workflow_id"] == f"hogsend.journey:it-welcome:{run['contact_id']}:1"
    # Another project's event does not match; the right one wakes the run.
    await env.event("feature.used", "ann", projectId="other")
    await env.event("feature.used", "ann", projectId="p1")

    async def completed() -> bool:
        return (await env.runs("it-welcome"))[0]["status"] == "completed"

    await env.until(completed)
    assert _subjects(env.sink) == ["Welcome"]  # no nudge: the event came
    log = await env.rows(
        "SELECT action, step, detail, duration_ms FROM journey_logs"
        " WHERE journey_state_id = :s ORDER BY id",
        s=run["id"],
    )
    actions = [r["action"] for r in log]
    assert actions == [
        "enrolled",
        "send_email",
        "sleep",
        "wait_for_event",
        "log",
        "variant",
        "completed",
    ]
    sleep = log[2]
    assert sleep["duration_ms"] >= 900
    assert log[3]["detail"]["outcome"] == "event"
    assert log[5]["detail"]["variant"] in ("a", "b")
    [send] = await env.rows("SELECT * FROM email_sends")
    assert send["kind"] == "journey"
    assert send["journey_id"] == "it-welcome"
    assert send["journey_state_id"] == run["id"]
    assert send["idempotency_key"] == f"journey:{run['id']}:1"


async def test_a_wait_times_out_into_the_nudge(env: Env) -> None:
    await env.event("user.created", "bob", plan="pro", projectId="p9")

    async def completed() -> bool:
        runs = await env.runs("it-welcome")
        return bool(runs) and runs[0]["status"] == "completed"

    await env.until(completed)
    assert _subjects(env.sink) == ["Welcome", "Try it"]
    [run] = await env.runs("it-welcome")
    [wait] = await env.rows(
        "SELECT detail FROM journey_logs WHERE journey_state_id = :s AND action = 'wait_for_event'",
        s=run["id"],
    )
    assert wait["detail"]["outcome"] == "timeout"


async def test_guards_refuse_with_their_reason_and_a_redelivery_enrolls_once(env: Env) -> None:
    # The trigger filter: plan is not pro.
    await env.event("user.created", "cat", plan="free", projectId="p1")
    # Entry limit once: the second pro sign-up of the same contact is refused.
    first = await env.event("user.created", "dan", plan="pro", projectId="p1")
    await env.event("user.created", "dan", plan="pro", projectId="p2")

    async def refusals() -> list[dict[str, Any]]:
        rows = await env.rows(
            "SELECT user_id, detail FROM journey_logs WHERE action = 'refused' ORDER BY id"
        )
        return rows if len(rows) == 2 else []

    refused = await env.until(refusals)
    assert [(r["user_id"], r["detail"]["reason"]) for r in refused] == [
        ("cat", "trigger_filter"),
        ("dan", "already_entered_once"),
    ]
    # The dispatcher delivers the first trigger again (as after a lost lease).
    await env.rows(
        "UPDATE event_outbox SET processed_at = NULL, consumers_done = '{}'"
        " WHERE event_id = :e RETURNING id",
        e=first,
    )
    await env.until(
        lambda: env.rows(
            "SELECT 1 FROM event_outbox WHERE event_id = :e AND processed_at IS NOT NULL", e=first
        )
    )
    runs = await env.runs("it-welcome")
    assert len(runs) == 1
    assert runs[0]["user_id"] == "dan"


async def test_an_exit_mid_sleep_ends_the_run_at_once_and_nothing_more_is_sent(
    env: Env,
) -> None:
    await env.event("trial.started", "eve")

    async def sleeping() -> bool:
        runs = await env.runs("it-slow")
        return bool(runs) and runs[0]["status"] == "waiting"

    await env.until(sleeping)
    assert _subjects(env.sink) == ["Welcome"]
    await env.event("plan.upgraded", "eve")

    async def exited() -> bool:
        return (await env.runs("it-slow"))[0]["status"] == "exited"

    await env.until(exited, seconds=10)
    [run] = await env.runs("it-slow")
    assert run["exit_reason"] == "exit_on:plan.upgraded"
    # The workflow itself ended (not 60 s later), through the exit, without the nudge.
    await env.until(
        lambda: env.rows(
            "SELECT 1 FROM dbos.workflow_status WHERE workflow_uuid = :w AND status = 'SUCCESS'",
            w=run["workflow_id"],
        ),
        seconds=10,
    )
    await asyncio.sleep(0.5)
    assert _subjects(env.sink) == ["Welcome"]
    # Unlimited entry: once exited, the contact may start again.
    await env.event("trial.started", "eve")
    await env.until(lambda: _count(env, "it-slow", 2))


async def _count(env: Env, journey: str, n: int) -> bool:
    return len(await env.runs(journey)) == n


def _auth(env: Env) -> dict[str, str]:
    return {"Authorization": f"Bearer {env.key}"}


async def test_admin_lists_pages_reads_and_cancels_a_run_mid_sleep(env: Env) -> None:
    await env.event("trial.started", "fay")
    await env.event("trial.started", "gus")

    async def both_sleeping() -> bool:
        runs = await env.runs("it-slow")
        return len(runs) == 2 and all(r["status"] == "waiting" for r in runs)

    await env.until(both_sleeping)
    listed = (await env.client.get("/v1/admin/journeys", headers=_auth(env))).json()
    by_id = {j["id"]: j for j in listed["journeys"]}
    assert by_id["it-slow"]["counts"] == {"waiting": 2}
    assert by_id["it-slow"]["enabled"] is True
    assert by_id["it-welcome"]["trigger"] == "user.created"

    first = (
        await env.client.get(
            "/v1/admin/journeys/runs",
            params={"journeyId": "it-slow", "limit": 1},
            headers=_auth(env),
        )
    ).json()
    assert len(first["runs"]) == 1
    second = (
        await env.client.get(
            "/v1/admin/journeys/runs",
            params={"journeyId": "it-slow", "limit": 1, "cursor": first["nextCursor"]},
            headers=_auth(env),
        )
    ).json()
    assert second["nextCursor"] is None
    run_id = second["runs"][0]["id"]
    assert run_id != first["runs"][0]["id"]
    bad = await env.client.get(
        "/v1/admin/journeys/runs", params={"status": "sleeping"}, headers=_auth(env)
    )
    assert bad.status_code == 422
    assert bad.headers["content-type"] == "application/problem+json"

    cancelled = await env.client.post(
        f"/v1/admin/journeys/runs/{run_id}/cancel", headers=_auth(env)
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "exited"
    assert cancelled.json()["exitReason"] == "admin"
    assert [s["action"] for s in cancelled.json()["steps"]][-1] == "exited"
    again = await env.client.post(f"/v1/admin/journeys/runs/{run_id}/cancel", headers=_auth(env))
    assert again.status_code == 409
    # The exit sweep wakes the sleeping workflow: it ends now, not in a minute.
    [workflow_id] = [r["workflow_id"] for r in await env.runs("it-slow") if str(r["id"]) == run_id]
    await env.until(
        lambda: env.rows(
            "SELECT 1 FROM dbos.workflow_status WHERE workflow_uuid = :w AND status = 'SUCCESS'",
            w=workflow_id,
        ),
        seconds=10,
    )
    assert _subjects(env.sink) == ["Welcome", "Welcome"]
    [audit] = await env.rows("SELECT action, resource_id, detail FROM audit_logs")
    assert (audit["action"], audit["resource_id"]) == ("journey-runs.cancel", run_id)
    assert audit["detail"]["before"] == {"status": "waiting"}
    assert audit["detail"]["after"] == {"status": "exited", "exitReason": "admin"}
    detail = await env.client.get(f"/v1/admin/journeys/runs/{run_id}", headers=_auth(env))
    assert detail.json()["status"] == "exited"
    missing = await env.client.get(
        "/v1/admin/journeys/runs/00000000-0000-0000-0000-000000000000", headers=_auth(env)
    )
    assert missing.status_code == 404


async def test_a_disabled_journey_refuses_and_a_deleted_contact_exits_mid_wait(
    env: Env,
) -> None:
    off = await env.client.put(
        "/v1/admin/journeys/it-welcome/enabled", json={"enabled": False}, headers=_auth(env)
    )
    assert off.status_code == 200, off.text
    assert off.json()["enabled"] is False
    unknown = await env.client.put(
        "/v1/admin/journeys/nope/enabled", json={"enabled": False}, headers=_auth(env)
    )
    assert unknown.status_code == 404
    await env.event("user.created", "hal", plan="pro", projectId="p1")

    async def refused() -> list[dict[str, Any]]:
        return await env.rows("SELECT detail FROM journey_logs WHERE action = 'refused'")

    [row] = await env.until(refused)
    assert row["detail"]["reason"] == "disabled"
    assert await env.runs("it-welcome") == []

    await env.client.put(
        "/v1/admin/journeys/it-welcome/enabled", json={"enabled": None}, headers=_auth(env)
    )
    switches = await env.rows(
        "SELECT detail FROM audit_logs WHERE action = 'journeys.switch' ORDER BY created_at"
    )
    assert [(a["detail"]["before"], a["detail"]["after"]) for a in switches] == [
        ({"enabled": True, "override": None}, {"enabled": False, "override": False}),
        ({"enabled": False, "override": False}, {"enabled": True, "override": None}),
    ]
    await env.event("user.created", "ivy", plan="pro", projectId="p1")

    async def waiting() -> bool:
        runs = await env.runs("it-welcome")
        return bool(runs) and runs[0]["waiting_for_event"] == "feature.used"

    await env.until(waiting)
    deleted = await env.client.request(
        "DELETE", "/v1/contacts", json={"userId": "ivy"}, headers=_auth(env)
    )
    assert deleted.status_code == 200, deleted.text
    [run] = await env.runs("it-welcome")
    assert run["status"] == "exited"
    assert run["exit_reason"] == "contact_deleted"
    await env.until(
        lambda: env.rows(
            "SELECT 1 FROM dbos.workflow_status WHERE workflow_uuid = :w AND status = 'SUCCESS'",
            w=run["workflow_id"],
        ),
        seconds=10,
    )
    await asyncio.sleep(0.3)
    assert _subjects(env.sink) == ["Welcome"]  # the timeout's nudge never went


async def test_history_suppress_gap_and_enroll(env: Env) -> None:
    event_id = await env.event("gap.test", "joe")

    async def completed() -> bool:
        runs = await env.runs("it-gap")
        return bool(runs) and runs[0]["status"] == "completed"

    await env.until(completed)
    [run] = await env.runs("it-gap")
    [history] = await env.rows(
        "SELECT detail FROM journey_logs WHERE journey_state_id = :s AND action = 'log'",
        s=run["id"],
    )
    assert history["detail"] == {
        "message": "history",
        "seen": 1,
        "has": True,
        "never": False,
        "lastId": event_id,
    }
    sends = await env.rows(
        "SELECT template_key, decision, decision_detail FROM email_sends ORDER BY created_at"
    )
    assert [(s["template_key"], s["decision"]) for s in sends[:2]] == [
        ("welcome", "sent"),
        ("nudge", "capped"),
    ]
    assert sends[1]["decision_detail"]["rule"] == "journey_suppress"
    # ctx.enroll started the other journey for the same contact.
    [slow_run] = await env.until(lambda: env.runs("it-slow"))
    assert slow_run["contact_id"] == run["contact_id"]


async def test_a_journeys_transactional_template_is_transactional_mail(env: Env) -> None:
    await env.event("account.opened", "bill")
    [contact] = await env.rows("SELECT id FROM contacts WHERE email = 'bill@example.com'")
    async with env.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO email_preferences (contact_id, unsubscribed_all) VALUES (:c, true)"),
            {"c": contact["id"]},
        )
    await env.event("billing.test", "bill")

    async def completed() -> bool:
        runs = await env.runs("it-billing")
        return bool(runs) and runs[0]["status"] == "completed"

    await env.until(completed)
    sends = await env.rows(
        "SELECT template_key, kind, decision FROM email_sends WHERE journey_id = 'it-billing'"
        " ORDER BY created_at"
    )
    # The receipt reaches a contact unsubscribed from everything; the welcome does not.
    assert [(s["template_key"], s["kind"], s["decision"]) for s in sends] == [
        ("receipt", "transactional", "sent"),
        ("welcome", "journey", "unsubscribed"),
    ]
    [message] = env.sink.messages
    assert message["Subject"] == "Receipt"
    assert message["List-Unsubscribe"] is None
    assert "/v1/email/preferences" not in message.get_body(("html",)).get_content()


async def test_wait_for_event_lookback_finds_an_earlier_matching_event(env: Env) -> None:
    await env.event("lb.prior", "kit", k=2)
    await env.event("lb.prior", "kit", k=1)
    await env.event("lb.start", "kit")

    async def done() -> list[dict[str, Any]]:
        return await env.rows(
            "SELECT l.detail FROM journey_logs l JOIN journey_states s"
            " ON s.id = l.journey_state_id"
            " WHERE s.journey_id = 'it-lookback' AND s.status = 'completed'"
            " AND l.action = 'log'"
        )

    [row] = await env.until(done)
    # The matching earlier event counts with lookback; without it, earlier ones do not.
    assert row["detail"] == {"message": "lookback", "found": 1, "without": False}


async def test_a_merge_exits_the_duplicate_run_and_ends_its_workflow(env: Env) -> None:
    await env.event("trial.started", "max")
    response = await env.client.post(
        "/v1/events",
        json={"name": "trial.started", "anonymousId": "anon-max"},
        headers=_auth(env),
    )
    assert response.status_code == 202, response.text

    async def both_sleeping() -> bool:
        runs = await env.runs("it-slow")
        return len(runs) == 2 and all(r["status"] == "waiting" for r in runs)

    await env.until(both_sleeping)
    merged = await env.client.put(
        "/v1/contacts", json={"userId": "max", "anonymousId": "anon-max"}, headers=_auth(env)
    )
    assert merged.status_code == 200, merged.text
    assert merged.json()["merged"] is True
    runs = await env.runs("it-slow")
    [gone] = [r for r in runs if r["status"] == "exited"]
    assert gone["exit_reason"] == "merged"
    assert [r["status"] for r in runs if r is not gone] == ["waiting"]
    await env.until(
        lambda: env.rows(
            "SELECT 1 FROM dbos.workflow_status WHERE workflow_uuid = :w AND status = 'SUCCESS'",
            w=gone["workflow_id"],
        ),
        seconds=10,
    )
