"""The same journey in the JourneyHarness and in the durable runtime (real Postgres, DBOS,
worker and SMTP sink): the same emails, statuses, exit reasons, refusal codes, the same
JSON-strict ``match`` (``True`` is not ``1``) and the same ``ctx.now()`` after a wait."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine
from test_journeys import Env, _env, _templates

from hogsend import Contact, JourneyContext, define_journey
from hogsend.testing import JourneyHarness, make_contact
from mail_sink import Sink

pytestmark = pytest.mark.timeout(120)


@define_journey(
    id="parity",
    name="Parity",
    trigger="parity.start",
    entry_limit="once",
    exit_on=["parity.stop"],
)
async def parity(contact: Contact, ctx: JourneyContext) -> None:
    await ctx.send_email(template="welcome")
    got = await ctx.wait_for_event("parity.flag", timeout=timedelta(seconds=20), match={"on": True})
    await ctx.log(
        "flag",
        n=None if got is None else got.properties["n"],
        nowAfterEvent=got is not None and ctx.now() >= got.occurred_at,
    )
    if got is not None:
        await ctx.send_email(template="nudge")


@dataclass(frozen=True)
class Outcome:
    """What a scenario ends with, comparable across harness and runtime."""

    refusal: str | None
    status: str
    exit_reason: str | None
    templates: list[str]
    flag_log: dict[str, Any] | None


@pytest.fixture
async def env(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    sink: tuple[Sink, int],
    mint_key: Callable[..., Any],
) -> AsyncIterator[Env]:
    async for built in _env(tmp_path, engine, database_url, sink, mint_key, [parity]):
        yield built


async def _in_harness(tmp_path: Path, events: list[tuple[str, dict[str, Any]]]) -> Outcome:
    h = JourneyHarness(parity, templates=_templates(tmp_path / "harness-templates"))
    contact = make_contact(email="h@example.com")
    assert await h.start(contact) is None
    for name, properties in events:
        await h.emit(name, properties=properties)
    refusal = await h.start(contact)
    logs = [dict(line.detail) for line in h.logs if line.step == "log"]
    return Outcome(
        refusal=refusal,
        status=h.status,
        exit_reason=h.exit_reason,
        templates=[e.template for e in h.sent_emails],
        flag_log={k: v for k, v in logs[0].items() if k != "message"} if logs else None,
    )


async def _in_runtime(env: Env, user: str, events: list[tuple[str, dict[str, Any]]]) -> Outcome:
    await env.event("parity.start", user)

    async def run() -> dict[str, Any] | None:
        found = await env.rows(
            "SELECT * FROM journey_states WHERE journey_id = 'parity' AND user_id = :u", u=user
        )
        return found[0] if found else None

    async def waiting() -> bool:
        found = await run()
        return found is not None and found["waiting_for_event"] == "parity.flag"

    await env.until(waiting)
    for name, properties in events:
        await env.event(name, user, **properties)

    async def ended() -> dict[str, Any] | None:
        found = await run()
        return found if found and found["status"] in ("completed", "exited", "failed") else None

    final = await env.until(ended)
    await env.event("parity.start", user)

    async def refused() -> list[dict[str, Any]]:
        return await env.rows(
            "SELECT detail FROM journey_logs WHERE action = 'refused' AND user_id = :u", u=user
        )

    [refusal] = await env.until(refused)
    sends = await env.rows(
        "SELECT template_key FROM email_sends WHERE journey_state_id = :s ORDER BY created_at",
        s=final["id"],
    )
    logs = await env.rows(
        "SELECT detail FROM journey_logs WHERE journey_state_id = :s AND action = 'log'",
        s=final["id"],
    )
    return Outcome(
        refusal=refusal["detail"]["reason"],
        status=final["status"],
        exit_reason=final["exit_reason"],
        templates=[s["template_key"] for s in sends],
        flag_log={k: v for k, v in logs[0]["detail"].items() if k != "message"} if logs else None,
    )


SCENARIOS = {
    # 1 (and "1") is not True: only the third event wakes the wait.
    "strict-match": [
        ("parity.flag", {"on": 1, "n": 1}),
        ("parity.flag", {"on": "true", "n": 2}),
        ("parity.flag", {"on": True, "n": 3}),
    ],
    "exit-mid-wait": [("parity.flag", {"on": 1, "n": 1}), ("parity.stop", {})],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_the_harness_and_the_runtime_agree(scenario: str, tmp_path: Path, env: Env) -> None:
    events = SCENARIOS[scenario]
    harness = await _in_harness(tmp_path, events)
    runtime = await _in_runtime(env, f"user-{scenario}", events)
    assert harness == runtime
    # And the agreed outcome is the right one.
    if scenario == "strict-match":
        assert runtime == Outcome(
            refusal="already_entered_once",
            status="completed",
            exit_reason=None,
            templates=["welcome", "nudge"],
            flag_log={"n": 3, "nowAfterEvent": True},
        )
    else:
        assert runtime == Outcome(
            refusal="already_entered_once",
            status="exited",
            exit_reason="exit_on:parity.stop",
            templates=["welcome"],
            flag_log=None,
        )
