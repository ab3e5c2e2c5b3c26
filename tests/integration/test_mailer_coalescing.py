"""Concurrent ``Mailer.send`` calls share their database work, each keeping its promises.

Real Postgres and a real aiosmtpd sink. Coalesced calls go out as one batch
(``send_batches.Coalescer``); each still gets one decision row, its own outcome or
exception, the key's serialisation, and the outcome committed before it returns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from tests.integration.test_mailer import (
    Env,
    FetchAll,
    count_round_trips,
    env,  # noqa: F401 - fixture
    new_contact,
    news,
)

from hogsend.channels.mailer import Mailer, SendRequest
from hogsend.errors import NoRecipient, TemplateError


@contextmanager
def statements() -> Iterator[list[Any]]:
    """The SQL statements the driver sends inside the block (SQLAlchemy's, those run on
    the driver connection and those in pipelines alike)."""
    seen: list[Any] = []
    execute = psycopg.AsyncCursor.execute

    async def record(cursor: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(query)
        return await execute(cursor, query, *args, **kwargs)

    psycopg.AsyncCursor.execute = record  # type: ignore[method-assign, assignment]
    try:
        yield seen
    finally:
        psycopg.AsyncCursor.execute = execute  # type: ignore[method-assign]


def plain_mailer(of: Env) -> Mailer:
    return Mailer(
        of.app, of.settings, of.engine, of.mailer.provider, sleep=of.mailer._sleep, coalesce=False
    )


async def test_concurrent_sends_share_transactions_and_keep_one_row_each(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
) -> None:
    people = [await new_contact(env.engine, f"p{n}@example.com") for n in range(16)]
    alone, together = people[:8], people[8:]
    with statements() as one_by_one:
        solo = await asyncio.gather(
            *(plain_mailer(env).send(news(c, idempotency_key=f"solo:{c}")) for c in alone)
        )
    with statements() as shared:
        coalesced = await asyncio.gather(
            *(env.mailer.send(news(c, idempotency_key=f"co:{c}")) for c in together)
        )
    assert [o.decision for o in solo + coalesced] == ["sent"] * 16
    # The same attempts, far fewer statements: the database work is shared.
    assert len(shared) * 3 < len(one_by_one)
    rows = await fetch_all(
        "SELECT contact_id, decision, status, idempotency_key FROM email_sends"
        " WHERE contact_id = ANY(:ids)",
        ids=together,
    )
    assert sorted(r["contact_id"] for r in rows) == sorted(together)  # one row each
    assert {(r["decision"], r["status"]) for r in rows} == {("sent", "sent")}
    events = await fetch_all(
        "SELECT e.contact_id FROM user_events e JOIN event_outbox o ON o.event_id = e.id"
        " WHERE e.event = 'email.sent' AND e.contact_id = ANY(:ids)",
        ids=together,
    )
    assert sorted(e["contact_id"] for e in events) == sorted(together)
    assert len(env.sink.messages) == 16


async def test_concurrent_calls_with_one_key_send_once(env: Env, fetch_all: FetchAll) -> None:  # noqa: F811
    contact = await new_contact(env.engine, "once@example.com")
    outcomes = await asyncio.gather(
        *(env.mailer.send(news(contact, idempotency_key="co:once")) for _ in range(6))
    )
    decisions = sorted(o.decision for o in outcomes)
    assert decisions == ["duplicate"] * 5 + ["sent"]
    [sent] = [o for o in outcomes if o.decision == "sent"]
    assert {o.duplicate_of for o in outcomes if o.decision == "duplicate"} == {sent.send_id}
    rows = await fetch_all("SELECT decision FROM email_sends WHERE contact_id = :c", c=contact)
    assert sorted(r["decision"] for r in rows) == decisions
    assert len(env.sink.messages) == 1


async def test_each_call_gets_its_own_exception(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
    tmp_path: Path,
) -> None:
    (tmp_path / "templates" / "broken.html").write_text(
        "{#---\nsubject: Hi\n---#}\n<p>{{ missing_prop }}</p>\n"
    )
    env.app.templates.refresh()  # type: ignore[union-attr]
    fine = await new_contact(env.engine, "fine@example.com")
    blank = await new_contact(env.engine, None)  # type: ignore[arg-type]
    broken = await new_contact(env.engine, "broken@example.com")
    results = await asyncio.gather(
        env.mailer.send(news(fine, idempotency_key="co:fine")),
        env.mailer.send(news(blank, idempotency_key="co:blank")),
        env.mailer.send(
            SendRequest(
                template="broken", contact_id=broken, kind="campaign", idempotency_key="co:b"
            )
        ),
        return_exceptions=True,
    )
    assert not isinstance(results[0], BaseException)
    assert results[0].decision == "sent"
    assert isinstance(results[1], NoRecipient)
    assert isinstance(results[2], TemplateError)
    rows = await fetch_all(
        "SELECT contact_id, decision FROM email_sends WHERE contact_id = ANY(:ids)",
        ids=[fine, blank, broken],
    )
    assert {(r["contact_id"], r["decision"]) for r in rows} == {
        (fine, "sent"),
        (broken, "provider_error"),  # rendering failed: recorded, as a lone send records it
    }


async def test_a_cancelled_caller_leaves_its_send_to_finish(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
) -> None:
    contact = await new_contact(env.engine, "gone@example.com")
    task = asyncio.create_task(env.mailer.send(news(contact, idempotency_key="co:cancel")))
    await asyncio.sleep(0.01)  # handed in and started
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(200):
        rows = await fetch_all("SELECT decision FROM email_sends WHERE contact_id = :c", c=contact)
        if rows and rows[0]["decision"] != "queued":
            break
        await asyncio.sleep(0.05)
    assert [r["decision"] for r in rows] == ["sent"]  # one row, finished
    again = await env.mailer.send(news(contact, idempotency_key="co:cancel"))
    assert again.decision == "duplicate"


async def test_sends_without_a_key_or_contact_and_uncoalesced_sends(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
) -> None:
    contact = await new_contact(env.engine, "plain@example.com")
    unkeyed, by_address, alone = await asyncio.gather(
        env.mailer.send(news(contact)),  # no key: on its own
        env.mailer.send(
            SendRequest(template="news", to_email="plain@example.com", kind="campaign")
        ),  # no contact named: on its own, and the address's holder is found
        plain_mailer(env).send(news(contact, idempotency_key="co:alone")),
    )
    assert [unkeyed.decision, by_address.decision, alone.decision] == ["sent"] * 3
    rows = await fetch_all("SELECT decision FROM email_sends WHERE contact_id = :c", c=contact)
    assert len(rows) == 3


async def test_a_coalesced_batch_makes_three_round_trips_before_its_callers_return(
    env: Env,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The locks, contacts and facts: one pipeline; the decision rows and their COMMIT:
    # one pipeline; the outcomes with their events (committed): one statement. The keys'
    # unlock (one statement) follows the callers' answer.
    people = [await new_contact(env.engine, f"t{n}@example.com") for n in range(3)]
    await env.mailer.send(news(people[0], idempotency_key="t:warm"))  # the pool connects
    for coalescer in env.mailer._coalescers.values():
        await asyncio.gather(*coalescer._tasks)  # the warm-up batch's unlock, after its answer
    trips = count_round_trips(monkeypatch)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(env.mailer.send(news(c, idempotency_key=f"t:{c}")) for c in people)),
        timeout=30,
    )
    answered = list(trips)
    monkeypatch.undo()
    assert [o.decision for o in outcomes] == ["sent"] * 3
    assert answered[:3] == ["pipeline", "pipeline", "statement"]
    assert answered[3:] in ([], ["statement"])  # the unlock, once sent


async def test_a_failed_outcome_commit_reaches_every_caller_and_releases_the_keys(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # When the outcomes fail to commit, every caller of the batch gets the error and the
    # batch still releases its keys (a later send of one takes the attempt over).
    from hogsend.db.repos import sends

    people = [await new_contact(env.engine, f"f{n}@example.com") for n in range(3)]

    async def failing(*args: Any, **kwargs: Any) -> list[str]:
        raise ConnectionError("the outcomes were not written")

    monkeypatch.setattr(sends, "finish_and_log", failing)
    results = await asyncio.wait_for(
        asyncio.gather(
            *(env.mailer.send(news(c, idempotency_key=f"f:{c}")) for c in people),
            return_exceptions=True,
        ),
        timeout=30,
    )
    monkeypatch.undo()
    assert all(isinstance(r, ConnectionError) for r in results)
    rows = await fetch_all("SELECT decision FROM email_sends")
    assert [r["decision"] for r in rows] == ["queued"] * 3  # accepted, outcome unknown
    again = await asyncio.wait_for(
        env.mailer.send(news(people[0], idempotency_key=f"f:{people[0]}")), timeout=30
    )
    assert again.decision == "sent"  # the key was released; the attempt taken over
    rows = await fetch_all(
        "SELECT decision FROM email_sends WHERE contact_id = :c ORDER BY created_at", c=people[0]
    )
    assert [r["decision"] for r in rows] == ["provider_error", "sent"]


async def test_a_coalesced_send_returns_once_its_outcome_is_committed_not_after_the_unlock(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The batch releases its keys after its callers have their (durable) outcomes; a
    # second send of the same key waits for that release and is a duplicate.
    from hogsend.db.repos import sends

    people = [await new_contact(env.engine, f"u{n}@example.com") for n in range(3)]
    release = asyncio.Event()
    unlock = sends.unlock_keys

    async def held(*args: Any, **kwargs: Any) -> None:
        await release.wait()
        await unlock(*args, **kwargs)

    monkeypatch.setattr(sends, "unlock_keys", held)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(env.mailer.send(news(c, idempotency_key=f"u:{c}")) for c in people)),
        timeout=30,
    )
    assert [o.decision for o in outcomes] == ["sent"] * 3
    rows = await fetch_all("SELECT decision FROM email_sends")
    assert [r["decision"] for r in rows] == ["sent"] * 3  # committed before returning
    again = asyncio.ensure_future(
        env.mailer.send(news(people[0], idempotency_key=f"u:{people[0]}"))
    )
    await asyncio.sleep(0.1)
    assert not again.done()  # the key is still the first batch's
    release.set()
    assert (await again).decision == "duplicate"
    assert len(env.sink.messages) == 3
