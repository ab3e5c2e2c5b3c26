"""The mailer's batch path against real Postgres and a real aiosmtpd sink.

Every request of a batch gets every gate, in order, with the reason code and the row
``Mailer.send`` would write, while the database work is shared.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from tests.integration.test_mailer import (
    FOOTER_WORDS,
    SECRET,
    Env,
    FetchAll,
    add_linkless_template,
    env,  # noqa: F401 - fixture
    execute,
    new_contact,
    news,
    preference_links,
    receipt,
)

from hogsend import Hogsend
from hogsend.channels.email import SmtpProvider
from hogsend.channels.email.message import EmailProvider, OutgoingEmail, ProviderResult
from hogsend.channels.mailer import Mailer, SendRequest, signing_secret
from hogsend.channels.send_batches import GroupCommit
from hogsend.core import tokens
from hogsend.core.identity import IdentityError
from hogsend.core.tracking import SignedClick, verify_click
from hogsend.errors import NoRecipient


async def test_every_gate_and_one_row_per_request(env: Env, fetch_all: FetchAll) -> None:  # noqa: F811
    plain = await new_contact(env.engine, "plain@example.com")
    plain2 = await new_contact(env.engine, "plain2@example.com")
    suppressed = await new_contact(env.engine, "bounced@example.com")
    unsubscribed = await new_contact(env.engine, "gone@example.com")
    opted_out = await new_contact(env.engine, "nolist@example.com")
    deleted = await new_contact(env.engine, "deleted@example.com")
    blank = await new_contact(env.engine, None)  # type: ignore[arg-type]
    already = await new_contact(env.engine, "already@example.com")
    await execute(
        env.engine,
        "INSERT INTO email_suppressions (email, suppressed, reason, suppressed_at)"
        " VALUES ('Bounced@example.com', true, 'hard_bounce', now())",
    )
    await execute(
        env.engine,
        "INSERT INTO email_preferences (contact_id, unsubscribed_all) VALUES (:c, true)",
        c=unsubscribed,
    )
    await execute(
        env.engine,
        "INSERT INTO list_subscriptions (contact_id, list_id, subscribed)"
        " VALUES (:c, 'newsletter', false)",
        c=opted_out,
    )
    await execute(env.engine, "UPDATE contacts SET deleted_at = now() WHERE id = :c", c=deleted)
    first = await env.mailer.send(news(already, idempotency_key="b:already"))
    assert first.decision == "sent"

    people = [plain, suppressed, unsubscribed, opted_out, deleted, blank, already, plain2]
    requests = [news(c, idempotency_key=f"b:{c}") for c in people]
    requests[6] = news(already, idempotency_key="b:already")
    outcomes = await env.mailer.send_batch(requests, concurrency=3)

    assert isinstance(outcomes[5], NoRecipient)
    decisions = [o.decision if not isinstance(o, Exception) else "error" for o in outcomes]
    assert decisions == [
        "sent",
        "suppressed",
        "unsubscribed",
        "unsubscribed",
        "skipped_deleted",
        "error",
        "duplicate",
        "sent",
    ]
    rows = await fetch_all(
        "SELECT contact_id, decision, status, idempotency_key, decision_detail FROM email_sends"
    )
    by_contact: dict[Any, list[dict[str, Any]]] = {}
    for item in rows:
        by_contact.setdefault(item["contact_id"], []).append(item)
    # One row per attempt (the earlier single send of "already" is the second row).
    assert len(by_contact[plain]) == 1
    assert by_contact[plain][0]["status"] == "sent"
    assert by_contact[plain][0]["idempotency_key"] == f"b:{plain}"
    assert by_contact[suppressed][0]["decision_detail"] == {
        "gate": "suppressed",
        "reason": "hard_bounce",
    }
    assert by_contact[suppressed][0]["idempotency_key"] is None
    assert sorted(r["decision"] for r in by_contact[already]) == ["duplicate", "sent"]
    assert blank not in by_contact  # nothing written for a request without an address

    # Two messages from the batch (plus the earlier one), each with its email.sent event
    # and its tracked links.
    assert sorted(m["To"] for m in env.sink.messages) == [
        "already@example.com",
        "plain2@example.com",
        "plain@example.com",
    ]
    sent_ids = [o.send_id for o in outcomes if not isinstance(o, Exception) and o.went_out]
    events = await fetch_all(
        "SELECT e.properties->>'sendId' AS send_id, o.event_id IS NOT NULL AS queued"
        " FROM user_events e LEFT JOIN event_outbox o ON o.event_id = e.id"
        " WHERE e.event = 'email.sent'"
    )
    assert {str(s) for s in sent_ids} <= {e["send_id"] for e in events}
    assert all(e["queued"] for e in events)
    headers = next(m for m in env.sink.messages if m["To"] == "plain@example.com")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["X-Hogsend-Send-Id"] == str(outcomes[0].send_id)  # type: ignore[union-attr]


async def test_the_frequency_cap_counts_earlier_requests_of_the_same_batch(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
) -> None:
    mailer = env.with_settings(frequency_cap_count=2)
    one = await new_contact(env.engine, "shared@example.com")
    requests = [news(one, idempotency_key=f"cap:{n}") for n in range(4)]
    outcomes = await mailer.send_batch(requests, concurrency=4)
    decisions = [o.decision for o in outcomes if not isinstance(o, Exception)]
    assert decisions == ["sent", "sent", "capped", "capped"]
    assert len(env.sink.messages) == 2


async def test_transactional_sends_in_a_batch_skip_the_marketing_gates(
    env: Env,  # noqa: F811
) -> None:
    contact = await new_contact(env.engine, "tx@example.com")
    await execute(
        env.engine,
        "INSERT INTO email_preferences (contact_id, unsubscribed_all) VALUES (:c, true)",
        c=contact,
    )
    [marketing, transactional] = await env.mailer.send_batch(
        [news(contact, idempotency_key="t:m"), receipt(contact, idempotency_key="t:r")],
        concurrency=2,
    )
    assert not isinstance(marketing, Exception)
    assert not isinstance(transactional, Exception)
    assert (marketing.decision, transactional.decision) == ("unsubscribed", "sent")
    [message] = env.sink.messages
    assert message["List-Unsubscribe"] is None


async def test_a_batch_footers_each_linkless_marketing_message_with_its_own_link(
    env: Env,  # noqa: F811
) -> None:
    add_linkless_template(env)
    people = [await new_contact(env.engine, f"batch{i}@example.com") for i in range(3)]
    requests = [
        SendRequest(template="promo", contact_id=c, kind="campaign", idempotency_key=f"f:{c}")
        for c in people
    ]
    requests.append(news(people[0], idempotency_key="f:news"))
    requests.append(SendRequest(template="promo", contact_id=people[1], idempotency_key="f:tx"))
    outcomes = await env.mailer.send_batch(requests, concurrency=2)
    assert [getattr(o, "decision", o) for o in outcomes] == ["sent"] * 5
    footered: dict[str, str] = {}
    for message in env.sink.messages:
        links, text_part = preference_links(message)
        if message["Subject"] != "Sale" or message["List-Unsubscribe"] is None:
            assert (links, FOOTER_WORDS in text_part) == ([], False)  # news, transactional
            continue
        [link] = links
        assert f"{FOOTER_WORDS}: {link}" in text_part
        [token] = parse_qs(urlparse(link).query)["token"]
        claims = tokens.verify(token, SECRET.encode(), purpose="preferences", now=datetime.now(UTC))
        footered[message["To"]] = str(claims.contact_id)
    assert footered == {f"batch{i}@example.com": str(c) for i, c in enumerate(people)}


async def test_a_batch_sends_to_each_requests_own_address_and_refuses_a_broken_one(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
) -> None:
    own = await new_contact(env.engine, "own@example.com")
    moved = await new_contact(env.engine, "old@example.com")
    broken = await new_contact(env.engine, "broken@example.com")
    outcomes = await env.mailer.send_batch(
        [
            news(own, idempotency_key="to:own", to_email="  "),
            news(moved, idempotency_key="to:moved", to_email=" New@Example.COM "),
            news(broken, idempotency_key="to:broken", to_email="two@@example.com"),
        ],
        concurrency=3,
    )
    assert isinstance(outcomes[2], IdentityError)
    assert [o.decision for o in outcomes[:2] if not isinstance(o, Exception)] == ["sent", "sent"]
    assert sorted(m["To"] for m in env.sink.messages) == ["New@example.com", "own@example.com"]
    # A refused address gets no decision row (as Mailer.send, which raises it).
    assert await fetch_all("SELECT id FROM email_sends WHERE contact_id = :c", c=broken) == []


async def test_a_provider_error_releases_the_key(env: Env, fetch_all: FetchAll) -> None:  # noqa: F811
    contact = await new_contact(env.engine, "flaky@example.com")
    env.sink.script = ["550 no such user"]
    [failed] = await env.mailer.send_batch([news(contact, idempotency_key="f:1")], concurrency=1)
    assert not isinstance(failed, Exception)
    assert failed.decision == "provider_error"
    stored = await fetch_all("SELECT * FROM email_sends WHERE id = :id", id=failed.send_id)
    assert stored[0]["status"] == "failed"
    assert stored[0]["idempotency_key"] is None
    [again] = await env.mailer.send_batch([news(contact, idempotency_key="f:1")], concurrency=1)
    assert not isinstance(again, Exception)
    assert again.decision == "sent"


async def test_group_commit_shares_writes_and_reports_failures() -> None:
    writes: list[list[int]] = []

    async def write(items: list[int]) -> None:
        writes.append(items)
        await asyncio.sleep(0.01)
        if 13 in items:
            raise ValueError("unlucky")

    group: GroupCommit[int] = GroupCommit(write)
    await asyncio.gather(*(group.submit(n) for n in range(8)))
    assert sorted(n for batch in writes for n in batch) == list(range(8))
    assert len(writes) < 8  # concurrent items shared transactions
    with pytest.raises(ValueError, match="unlucky"):
        await group.submit(13)
    await group.submit(14)  # a failed write does not wedge the next one
    assert writes[-1] == [14]


async def test_group_commit_caller_cancelled_while_waiting_leaves_the_rest_written() -> None:
    writes: list[list[str]] = []
    release = asyncio.Event()

    async def write(items: list[str]) -> None:
        writes.append(items)
        if items == ["a"]:
            await release.wait()

    group: GroupCommit[str] = GroupCommit(write)
    first = asyncio.ensure_future(group.submit("a"))
    await asyncio.sleep(0.01)  # "a" is being written
    second = asyncio.ensure_future(group.submit("b"))
    third = asyncio.ensure_future(group.submit("c"))
    await asyncio.sleep(0.01)
    second.cancel()  # the first turn after "a" would have been its
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(asyncio.gather(first, third), 5)
    assert second.cancelled()
    # The cancelled caller's item is written with the others, by the next in line.
    assert writes == [["a"], ["b", "c"]]
    await asyncio.wait_for(group.submit("d"), 5)
    assert writes[-1] == ["d"]


async def test_group_commit_waits_for_items_on_their_way_and_no_longer_than_its_hold() -> None:
    writes: list[list[int]] = []

    async def write(items: list[int]) -> None:
        writes.append(items)

    # Four callers, one handing in every 10 ms: told that more are coming, the first
    # write waits for all four instead of writing the first alone.
    group: GroupCommit[int] = GroupCommit(write, more=lambda pending: pending < 4, hold=5.0)

    async def late(n: int) -> None:
        await asyncio.sleep(n * 0.01)
        await group.submit(n)

    await asyncio.gather(*(late(n) for n in range(4)))
    assert writes == [[0, 1, 2, 3]]

    # Items that never come: the write waits ``hold`` and then writes what it has.
    waiting: GroupCommit[int] = GroupCommit(write, more=lambda pending: True, hold=0.05)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await waiting.submit(9)
    assert 0.05 <= loop.time() - began < 2
    assert writes[-1] == [9]


class _Staggered:
    """A provider whose answers come back at different times, by message (0 to 9 ms)."""

    name = "smtp"

    def __init__(self, inner: EmailProvider) -> None:
        self.inner = inner
        self.calls = 0

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        self.calls += 1
        await asyncio.sleep((self.calls % 4) * 0.003)
        return await self.inner.send(message)

    async def aclose(self) -> None:
        """Nothing of its own to release."""


async def test_a_long_batch_commits_one_outcome_group_per_round_of_lanes(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A batch decided a chunk at a time, without a throttle (a campaign's): lanes answer
    # at different times, and each outcome write waits for every sending lane's outcome
    # (the hold made long here, so a loaded machine cannot split a round), rather than
    # committing whichever two or three came back during the write before.
    from hogsend.channels import send_batches

    monkeypatch.setattr(send_batches, "OUTCOME_HOLD", 1.0)
    people = [await new_contact(env.engine, f"round{n}@example.com") for n in range(24)]
    mailer = _CountingWrites(env.app, env.settings, env.engine, _Staggered(env.mailer.provider))
    outcomes = await mailer.send_batch(
        [news(c, idempotency_key=f"round:{c}") for c in people], concurrency=4
    )
    assert [o.decision for o in outcomes if not isinstance(o, Exception)] == ["sent"] * 24
    assert sum(mailer.writes) == 24
    # Rounds of four; the lanes that finish first leave the last rounds smaller.
    assert len(mailer.writes) <= 24 // 4 + 2, mailer.writes
    rows = await fetch_all("SELECT decision, count(*) AS n FROM email_sends GROUP BY decision")
    assert {r["decision"]: r["n"] for r in rows} == {"sent": 24}
    marks = await fetch_all("SELECT count(*) AS n FROM email_send_marks")
    assert marks[0]["n"] == 0
    assert len(env.sink.messages) == 24


class _Stalling:
    """A provider that sends ``sends`` messages, then never answers again (a hung process)."""

    name = "smtp"

    def __init__(self, inner: EmailProvider, sends: int) -> None:
        self.inner = inner
        self.left = sends
        self.stalled = 0

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        if self.left == 0:
            self.stalled += 1
            await asyncio.Event().wait()
        self.left -= 1
        return await self.inner.send(message)

    async def aclose(self) -> None:
        """Nothing of its own to release."""


async def test_a_batch_killed_mid_way_is_taken_over_without_a_lost_or_double_message(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
    tmp_path: Path,
) -> None:
    templates = tmp_path / "promo-templates"
    templates.mkdir()
    (templates / "promo.html").write_text(
        "{#---\nsubject: Offer\ncategory: newsletter\n---#}\n"
        '<p><a href="https://shop.example.com/offer">Offer</a></p>'
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>\n'
    )
    app = Hogsend(lists=env.app.lists, templates=templates)
    people = [await new_contact(env.engine, f"p{n:02}@example.com") for n in range(20)]
    requests = [
        SendRequest(template="promo", contact_id=c, kind="campaign", idempotency_key=f"kill:{c}")
        for c in people
    ]
    stalling = _Stalling(env.mailer.provider, sends=3)
    dying = Mailer(app, env.settings, env.engine, stalling)
    batch = asyncio.ensure_future(dying.send_batch(requests, concurrency=2))
    # Both lanes hang in a provider call (each committed its last outcome before it).
    while stalling.stalled < 2:
        assert not batch.done(), batch.result()
        await asyncio.sleep(0.01)
    batch.cancel()  # what a kill leaves in the database: rows, no cleanup
    with pytest.raises(asyncio.CancelledError):
        await batch

    # A row decided ahead of its provider call is marked in email_send_marks.
    left = await fetch_all(
        "SELECT decision, EXISTS (SELECT 1 FROM email_send_marks m"
        " WHERE m.email_send_id = e.id) AS marked FROM email_sends e"
    )
    ahead = [r for r in left if r["decision"] == "queued" and r["marked"]]
    in_flight = [r for r in left if r["decision"] == "queued" and not r["marked"]]
    assert [r["decision"] for r in left].count("sent") == 3
    # Only the lanes' own attempts were handed to the provider; the rest wait, marked.
    assert len(in_flight) == 2
    assert len(ahead) == 15

    mailer = Mailer(app, env.settings, env.engine, env.mailer.provider)
    outcomes = await mailer.send_batch(requests, concurrency=2)
    decisions = [o.decision for o in outcomes if not isinstance(o, Exception)]
    assert sorted(set(decisions)) == ["duplicate", "sent"]
    assert decisions.count("duplicate") == 3
    rows = await fetch_all(
        "SELECT decision, count(*) AS n FROM email_sends GROUP BY decision ORDER BY decision"
    )
    # The two attempts in flight are closed as interrupted; those never sent are gone.
    assert {r["decision"]: r["n"] for r in rows} == {
        "duplicate": 3,
        "provider_error": 2,
        "sent": 20,
    }
    interrupted = await fetch_all(
        "SELECT decision_detail FROM email_sends WHERE decision = 'provider_error'"
    )
    assert all(r["decision_detail"]["interrupted"] for r in interrupted)
    # No mark outlives its row's provider call or its removal.
    marks = await fetch_all("SELECT count(*) AS n FROM email_send_marks")
    assert marks[0]["n"] == 0
    # Every message that went out names a stored link set: the one all of them share.
    stored = {r["id"] for r in await fetch_all("SELECT id FROM tracked_link_sets")}
    named = set()
    for message in env.sink.messages:
        html = message.get_body(("html",))
        assert html is not None
        [token] = re.findall(r"/t/c/([A-Za-z0-9_-]+)", str(html.get_content()))
        signed = verify_click(token, signing_secret(env.settings))
        assert isinstance(signed, SignedClick)
        assert str(signed.send_id) == message["X-Hogsend-Send-Id"]
        named.add(signed.link_set_id)
    assert named == stored
    assert len(stored) == 1
    # Each recipient got the campaign once: the hung calls never reached the sink.
    assert sorted(m["To"] for m in env.sink.messages) == [f"p{n:02}@example.com" for n in range(20)]


class _FailingOnce(Mailer):
    """A mailer whose ``fail_at``-th outcome commit fails (as a lost connection would)."""

    fail_at = 1
    writes = 0

    async def _write_outcomes(self, *args: Any, **kwargs: Any) -> None:
        self.writes += 1
        if self.writes == self.fail_at:
            raise ConnectionError("the outcome commit failed")
        await super()._write_outcomes(*args, **kwargs)


async def test_a_failed_outcome_commit_stops_the_next_message_before_it_is_accepted(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
) -> None:
    # One lane: the second message's envelope and body reach the server while the first
    # outcome commits, and its ending line waits for that commit. The commit fails, so
    # the server never accepts the second message; the third goes out as usual.
    people = [await new_contact(env.engine, f"g{n}@example.com") for n in range(3)]
    mailer = _FailingOnce(env.app, env.settings, env.engine, env.mailer.provider)
    outcomes = await mailer.send_batch(
        [news(c, idempotency_key=f"gate:{c}") for c in people], concurrency=1
    )
    first, second, third = outcomes
    assert isinstance(first, ConnectionError)  # sent, its outcome not recorded
    assert isinstance(second, ConnectionError)  # never accepted
    assert not isinstance(third, Exception)
    assert third.decision == "sent"
    assert sorted(m["To"] for m in env.sink.messages) == ["g0@example.com", "g2@example.com"]
    # The second message's transaction was left unfinished: its connection was closed.
    assert isinstance(env.mailer.provider, SmtpProvider)
    assert env.mailer.provider.connections_opened == 2
    rows = await fetch_all(
        "SELECT to_email, decision, EXISTS (SELECT 1 FROM email_send_marks m"
        " WHERE m.email_send_id = e.id) AS marked FROM email_sends e ORDER BY to_email"
    )
    assert [(r["to_email"], r["decision"]) for r in rows] == [
        ("g0@example.com", "queued"),  # the at-least-once window: taken over by the next try
        ("g1@example.com", "queued"),
        ("g2@example.com", "sent"),
    ]
    assert [r["marked"] for r in rows] == [False, True, False]  # g1: known never sent


class _CountingWrites(Mailer):
    """A mailer that counts its outcome commits and the outcomes in each."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes: list[int] = []

    async def _write_outcomes(self, items: Any, *args: Any, **kwargs: Any) -> None:
        self.writes.append(len(items))
        await super()._write_outcomes(items, *args, **kwargs)


async def test_a_batch_decided_in_one_go_commits_its_outcomes_together(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
) -> None:
    # Lanes end their provider calls at different times; the batch answers when it
    # ends, so its outcomes wait for the last call and go in one commit.
    people = [await new_contact(env.engine, f"t{n}@example.com") for n in range(5)]
    mailer = _CountingWrites(env.app, env.settings, env.engine, env.mailer.provider)
    outcomes = await mailer.send_batch(
        [news(c, idempotency_key=f"together:{c}") for c in people], concurrency=5
    )
    assert [o.decision for o in outcomes if not isinstance(o, Exception)] == ["sent"] * 5
    assert mailer.writes == [5]
    rows = await fetch_all("SELECT decision FROM email_sends")
    assert [r["decision"] for r in rows] == ["sent"] * 5
    assert len(env.sink.messages) == 5


async def test_a_prepared_batch_sends_nothing_until_started_and_a_dropped_one_is_taken_over(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
) -> None:
    # A campaign prepares its next batch while the one before ends: the keys locked and
    # the first two chunks decided (one request per lane, then up to DECIDE_CHUNK),
    # marked, no provider call before ``start``.
    people = [await new_contact(env.engine, f"prep{n}@example.com") for n in range(6)]
    requests = [news(c, idempotency_key=f"prep:{c}") for c in people]
    start: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    prepared = asyncio.ensure_future(env.mailer.send_batch(requests, concurrency=2, start=start))
    while True:
        marked = await fetch_all("SELECT count(*) AS n FROM email_send_marks")
        if marked[0]["n"] == 6:  # two lanes' first requests, then the other four
            break
        assert not prepared.done(), prepared.result()
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)
    assert env.sink.messages == []
    prepared.cancel()  # dropped: the run no longer owns its campaign
    with pytest.raises(asyncio.CancelledError):
        await prepared
    # What it decided ahead is gone, as if never decided (no `queued` row is left).
    rows = await fetch_all("SELECT count(*) AS n FROM email_sends")
    assert rows[0]["n"] == 0
    marks = await fetch_all("SELECT count(*) AS n FROM email_send_marks")
    assert marks[0]["n"] == 0

    # The keys were released; the same requests are decided afresh.
    drained: list[bool] = []
    start = asyncio.get_running_loop().create_future()
    again = asyncio.ensure_future(
        env.mailer.send_batch(
            requests, concurrency=2, start=start, drained=lambda: drained.append(True)
        )
    )
    await asyncio.sleep(0.1)
    assert env.sink.messages == []
    start.set_result(None)
    outcomes = await again
    assert [o.decision for o in outcomes if not isinstance(o, Exception)] == ["sent"] * 6
    assert drained == [True]
    rows = await fetch_all("SELECT decision, count(*) AS n FROM email_sends GROUP BY decision")
    assert {r["decision"]: r["n"] for r in rows} == {"sent": 6}
    marks = await fetch_all("SELECT count(*) AS n FROM email_send_marks")
    assert marks[0]["n"] == 0
    assert sorted(m["To"] for m in env.sink.messages) == [f"prep{n}@example.com" for n in range(6)]


async def test_a_failed_first_write_lets_no_message_be_accepted(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The first chunk's provider calls begin while its decision rows are written; the
    # write fails, so the server never accepts those messages.
    from hogsend.db.repos import sends

    people = [await new_contact(env.engine, f"w{n}@example.com") for n in range(3)]
    written = sends.write_decisions

    async def failing(*args: Any, **kwargs: Any) -> None:
        await asyncio.sleep(0.05)  # the envelopes and bodies are on their way meanwhile
        raise ConnectionError("the decision write failed")

    monkeypatch.setattr(sends, "write_decisions", failing)
    outcomes = await env.mailer.send_batch(
        [news(c, idempotency_key=f"w:{c}") for c in people], concurrency=3
    )
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert env.sink.messages == []
    rows = await fetch_all("SELECT count(*) AS n FROM email_sends")
    assert rows[0]["n"] == 0

    monkeypatch.setattr(sends, "write_decisions", written)
    outcomes = await env.mailer.send_batch(
        [news(c, idempotency_key=f"w:{c}") for c in people], concurrency=3
    )
    assert [o.decision for o in outcomes if not isinstance(o, Exception)] == ["sent"] * 3
    assert len(env.sink.messages) == 3


async def test_a_deferred_request_of_a_batch_is_kept_for_the_sweep_with_its_row(
    env: Env,  # noqa: F811
    fetch_all: FetchAll,
) -> None:
    # The deferred request's row goes in the pipeline that writes and commits the
    # batch's decision rows.
    from datetime import UTC, datetime, time

    from hogsend.core.send_windows import SendWindow

    later = await new_contact(env.engine, "later@example.com", timezone="Europe/Paris")
    now = await new_contact(env.engine, "now@example.com")
    friday_night = datetime(2026, 3, 6, 20, 0, tzinfo=UTC)  # 21:00 in Paris
    mailer = Mailer(
        env.app, env.settings, env.engine, env.mailer.provider, clock=lambda: friday_night
    )
    window = SendWindow(start=time(9), end=time(17))
    outcomes = await mailer.send_batch(
        [
            news(later, send_window=window, idempotency_key="d:later"),
            news(now, idempotency_key="d:now"),
        ],
        concurrency=2,
    )
    decisions = [o.decision if not isinstance(o, Exception) else repr(o) for o in outcomes]
    assert decisions == ["deferred", "sent"]
    kept = await fetch_all("SELECT email_send_id, due_at, request FROM deferred_sends")
    assert [(k["email_send_id"], k["due_at"]) for k in kept] == [
        (outcomes[0].send_id, datetime(2026, 3, 7, 8, 0, tzinfo=UTC))  # type: ignore[union-attr]
    ]
    assert kept[0]["request"]["idempotency_key"] == "d:later"


async def _random_round(seed: int) -> None:
    import random

    rng = random.Random(seed)
    written: list[int] = []

    async def write(items: list[int]) -> None:
        await asyncio.sleep(rng.random() * 0.002)
        if rng.random() < 0.1 and 1000 not in items:
            raise ValueError("unlucky")
        written.extend(items)

    more = (lambda pending: pending < 3) if seed % 2 else None
    group: GroupCommit[int] = GroupCommit(write, more=more, hold=0.001)

    async def caller(n: int) -> str:
        await asyncio.sleep(rng.random() * 0.01)
        try:
            await group.submit(n)
        except ValueError:
            return "failed"
        return "written"

    tasks = [asyncio.ensure_future(caller(n)) for n in range(40)]
    loop = asyncio.get_running_loop()
    for task in rng.sample(tasks, 12):  # cancelled at any moment: waiting, told, writing
        loop.call_later(rng.random() * 0.015, task.cancel)
    results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10)
    await asyncio.wait_for(group.submit(1000), 5)  # never wedged
    assert len(written) == len(set(written)), seed  # nothing written twice
    for n, result in enumerate(results):
        if result == "written":
            assert n in written, (seed, n)
        elif result == "failed":
            assert n not in written, (seed, n)


async def test_group_commit_under_random_arrivals_cancels_and_failures_writes_each_item_once() -> (
    None
):
    for seed in range(60):
        await _random_round(seed)


async def test_group_commit_a_caller_cancelled_holding_the_turn_passes_it_on() -> None:
    writes: list[list[str]] = []
    tasks: dict[str, asyncio.Future[None]] = {}

    async def write(items: list[str]) -> None:
        writes.append(items)
        if items == ["a"]:
            await asyncio.sleep(0.01)  # "b" and "c" are handed in meanwhile
            # Runs once this write has ended and given "b" the turn, before "b" wakes.
            asyncio.get_running_loop().call_soon(tasks["b"].cancel)

    group: GroupCommit[str] = GroupCommit(write)
    first = asyncio.ensure_future(group.submit("a"))
    await asyncio.sleep(0.001)  # "a" is being written
    tasks["b"] = asyncio.ensure_future(group.submit("b"))
    third = asyncio.ensure_future(group.submit("c"))
    await asyncio.wait_for(asyncio.gather(first, third), 5)
    assert tasks["b"].cancelled()
    assert writes == [["a"], ["b", "c"]]  # the cancelled caller's item written by "c"
