"""The floor under the mailer: raw SMTP plus the least durable bookkeeping a send log needs.

A diagnostic, not a benchmark (nothing is written to ``bench/results``). It asks how
close to the raw pool any sender can come on this machine once it keeps the mailer's
promises at their barest: a decision row per message committed before the message can
be accepted, the outcome committed after, and a lane's next message accepted only once
its previous outcome is durable (the gate that bounds the at-least-once window). Same
embedded Postgres (durable commits), the sink of :mod:`bench.send` and its
``CONCURRENCY`` lanes; each scenario in a process of its own, one after the other:

* ``raw`` and ``raw_after``: :mod:`bench.send`'s ceiling (aiosmtplib's ``sendmail`` of
  pre-rendered messages), before and after the others; ratios are against their mean.
* ``pipelined``: the SMTP provider's own transaction on the same bytes (MAIL, RCPT and
  DATA in one write), no database.
* ``durable_batch``: ``pipelined`` with a narrow decision row per message written ahead
  in chunks of 64 (one INSERT and commit each) and its outcome an UPDATE of it,
  group-committed by hogsend's :class:`~hogsend.channels.send_batches.GroupCommit`,
  which gathers every sending lane's outcome into one write as the mailer's long batches
  do; a message's ending line waits for the commit of its lane's previous outcome.
* ``durable_events``: ``durable_batch`` whose outcome statement also stores an
  ``email.sent`` event and its outbox row in the real ``user_events`` and
  ``event_outbox`` tables, for a real contact, as the mailer's outcome statement does.
* ``durable_single``: the floor of one send at a time: each message's decision row is
  committed before its envelope goes out (group-committed across the lanes, as
  concurrent ``Mailer.send`` calls may share a transaction), then as ``durable_batch``
  but with outcomes written as they come (coalesced sends answer each caller at its
  commit).

Each line gives sends/s, the ratio, the scenario process's CPU, the sink's and
Postgres's per message, the median latency of one message and the outcomes per write.
The mailer itself does more per message (gates' facts, render, tracked links, wider rows
with more indexes): ``python -m bench send`` measures it against the same ceiling.
Run with ``python -m bench._floor [SENDS] [ROUNDS]``. docs/benchmarks.md, "Where the
remaining gaps are", reads a run.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from typing import Any

import psycopg

from bench import send as bench_send
from bench._database import migrated_database
from bench._server_cpu import postgres_cpu_reader
from hogsend.cli.serving import tune_garbage_collector
from hogsend.db.engine import libpq_url
from hogsend.runtime import event_loop

SENDS = 3000
WARMUP = 300
ROUNDS = 1
SCENARIOS = ("raw", "pipelined", "durable_batch", "durable_events", "durable_single", "raw_after")
DURABLE = ("durable_batch", "durable_events", "durable_single")
DECIDE_AHEAD = 64
"""Decision rows per chunk written ahead (the batch scenarios)."""

_TABLE = """
    CREATE TABLE IF NOT EXISTS floor_sends (
        id text PRIMARY KEY,
        status text NOT NULL,
        decided_at timestamptz NOT NULL DEFAULT now(),
        finished_at timestamptz
    ) WITH (fillfactor = 70)
"""
_DECIDE = b"INSERT INTO floor_sends (id, status) SELECT unnest(%s::text[]), 'queued'"
_FINISH = b"UPDATE floor_sends SET status = 'sent', finished_at = now() WHERE id = ANY(%s::text[])"
# The mailer's outcome statement, reduced to the rows it writes for a sent message: the
# outcome, and the event (for a live contact) with its outbox row.
_FINISH_WITH_EVENTS = b"""
    WITH done AS (
        UPDATE floor_sends SET status = 'sent', finished_at = now()
        WHERE id = ANY(%(ids)s::text[]) RETURNING id
    ), v AS (
        SELECT gen_random_uuid() AS id, c AS contact_id, k AS send_key
        FROM unnest(%(contacts)s::uuid[], %(ids)s::text[]) AS u(c, k)
    ), live AS (
        SELECT v.*, coalesce(c.external_id, c.anonymous_id, c.id::text) AS user_id
        FROM v JOIN contacts c ON c.id = v.contact_id AND c.deleted_at IS NULL
    ), ins AS (
        INSERT INTO user_events (id, contact_id, user_id, event, properties,
                                 idempotency_key, source, occurred_at, received_at)
        SELECT id, contact_id, user_id, 'email.sent',
               jsonb_build_object('sendId', send_key, 'templateKey', 'trial-ending',
                                  'journeyId', NULL, 'campaignId', NULL, 'kind', 'campaign'),
               'email.sent:' || send_key, 'mailer', now(), now()
        FROM live ON CONFLICT DO NOTHING
        RETURNING id, contact_id, user_id, event
    ), outbox AS (
        INSERT INTO event_outbox (event_id, contact_id, contact_key, event, created_at,
                                  next_attempt_at)
        SELECT id, contact_id, user_id, event, now(), now() FROM ins
    )
    SELECT (SELECT count(*) FROM done), (SELECT count(*) FROM ins)
"""


async def _durable(
    port: int,
    url: str,
    mode: str,
    contact_ids: list[uuid.UUID],
    sends: int,
    warmup: int,
    sink_pid: int | None,
) -> dict[str, Any]:
    import aiosmtplib

    from hogsend.channels.email.smtp import _mail_transaction, envelope_sender
    from hogsend.channels.send_batches import OUTCOME_HOLD, GroupCommit

    total = warmup + sends
    messages = bench_send.prerendered(total)
    options = [] if messages[0].isascii() else ["BODY=8BITMIME"]
    sender = envelope_sender(bench_send.FROM)
    tag = uuid.uuid4().hex[:8]
    outcome_conn = await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True)
    decision_conn = await psycopg.AsyncConnection.connect(libpq_url(url), autocommit=True)
    writes = [0]

    def keys(indexes: list[int]) -> list[str]:
        return [f"{tag}:{i}" for i in indexes]

    async def finish(indexes: list[int]) -> None:
        writes[0] += 1
        if mode == "durable_events":
            values = {"ids": keys(indexes), "contacts": [contact_ids[i] for i in indexes]}
            await outcome_conn.execute(_FINISH_WITH_EVENTS, values, prepare=True)
        else:
            await outcome_conn.execute(_FINISH, (keys(indexes),), prepare=True)

    async def decide(indexes: list[int]) -> None:
        await decision_conn.execute(_DECIDE, (keys(indexes),), prepare=True)

    sending = [0]  # lanes not done with the range

    def more(pending: int) -> bool:
        return pending < sending[0]

    # As the mailer's long batches: an outcome write waits (OUTCOME_HOLD at most) for
    # every sending lane's outcome. Coalesced single sends answer callers per commit,
    # so the single scenario writes what is pending at once, as they do.
    gathering = mode != "durable_single"
    outcomes: GroupCommit[int] = GroupCommit(
        finish, more=more if gathering else None, hold=OUTCOME_HOLD
    )
    decisions: GroupCommit[int] = GroupCommit(decide)
    decided_up_to = [0]
    ahead = asyncio.Lock()

    async def decided(index: int) -> None:
        if mode == "durable_single":
            await decisions.submit(index)
            return
        async with ahead:
            while decided_up_to[0] <= index:
                start = decided_up_to[0]
                chunk = list(range(start, min(start + DECIDE_AHEAD, total)))
                await decide(chunk)
                decided_up_to[0] = chunk[-1] + 1

    async def committed(index: int) -> bool:
        await outcomes.submit(index)
        return True

    latencies: list[float] = []

    async def drive(clients: list[aiosmtplib.SMTP], indexes: range) -> float:
        pending = iter(indexes)

        async def lane(client: aiosmtplib.SMTP) -> None:
            sending[0] += 1
            try:
                last = await send_all(client)
            finally:
                sending[0] -= 1
            if last is not None:
                await last

        async def send_all(client: aiosmtplib.SMTP) -> asyncio.Task[bool] | None:
            """Send until the range is taken; the last outcome's commit, under way."""
            previous: asyncio.Task[bool] | None = None
            for index in pending:
                started = time.perf_counter()
                await decided(index)
                await _mail_transaction(
                    client, sender, f"user{index}@example.com", messages[index], options, previous
                )
                previous = asyncio.ensure_future(committed(index))
                latencies.append(time.perf_counter() - started)
            return previous

        started = time.perf_counter()
        await asyncio.gather(*(lane(client) for client in clients))
        return time.perf_counter() - started

    tune_garbage_collector(api=False)
    async with bench_send.sink_clients(port) as clients:
        await drive(clients, range(warmup))
        latencies.clear()
        writes[0] = 0
        cpu, sink_cpu = time.process_time(), bench_send._sink_cpu(sink_pid)
        wall = await drive(clients, range(warmup, total))
    result = bench_send._summary(
        sorted(latencies),
        wall,
        time.process_time() - cpu,
        bench_send._sink_cpu(sink_pid) - sink_cpu,
    )
    result["outcomes_per_write"] = round(sends / max(writes[0], 1), 2)
    await outcome_conn.close()
    await decision_conn.close()
    return result


def _scenario_main(
    name: str,
    port: int,
    url: str,
    ids: list[str],
    sends: int,
    warmup: int,
    out: Any,
    sink_pid: int | None,
) -> None:
    result: dict[str, Any]
    if name in DURABLE:
        contact_ids = [uuid.UUID(i) for i in ids]
        result = event_loop.run(_durable(port, url, name, contact_ids, sends, warmup, sink_pid))
    else:
        pipelined = name == "pipelined"
        result = event_loop.run(bench_send._raw(port, sends, warmup, sink_pid, pipelined))
    out.put(result)


def run(sends: int = SENDS, rounds: int = ROUNDS, warmup: int = WARMUP) -> None:
    """Each scenario ``rounds`` times, in turn; a line per run and the ratios."""
    with migrated_database("bench_floor") as (server, url):
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            conn.execute(_TABLE)
        ids = bench_send._contacts(url, warmup + sends)
        postgres_cpu = postgres_cpu_reader(server)
        with bench_send._sink() as (port, counter, _):
            print(
                f"{sends:,} sends after {warmup} warm-up, {bench_send.CONCURRENCY} lanes, "
                "aiosmtpd sink in its own process, durable Postgres"
            )
            print(
                f"{'round':<6}{'scenario':<16}{'sends/s':>9}{'ratio':>7}{'cpu ms':>8}"
                f"{'sink ms':>9}{'pg ms':>8}{'p50 ms':>8}{'per write':>10}"
            )
            for round_ in range(1, rounds + 1):
                results: dict[str, dict[str, Any]] = {}
                for name in SCENARIOS:
                    before, pg_before = counter.value, postgres_cpu()
                    result = bench_send._run_scenario(
                        name, port, url, ids, sends, warmup, main=_scenario_main
                    )
                    result["pg_ms"] = (postgres_cpu() - pg_before) / (warmup + sends) * 1000
                    if counter.value - before != warmup + sends:
                        raise RuntimeError(f"{name}: the sink got {counter.value - before}")
                    results[name] = result
                ceiling = bench_send.raw_ceiling(results["raw"], results["raw_after"])
                for name, r in results.items():
                    print(
                        f"{round_:<6}{name:<16}{r['sends_per_s']:>9,.0f}"
                        f"{r['sends_per_s'] / ceiling:>7.2f}{r['cpu_ms_per_send']:>8}"
                        f"{r['sink_cpu_ms_per_send']:>9}{r['pg_ms']:>8.3f}{r['p50_ms']:>8}"
                        f"{r.get('outcomes_per_write', '-'):>10}",
                        flush=True,
                    )


if __name__ == "__main__":
    run(*(int(arg) for arg in sys.argv[1:3]))
