"""A broadcast campaign through a real worker, against a raw aiosmtplib pool into one sink.

One embedded Postgres, ``RECIPIENTS`` contacts written with ``COPY``, one aiosmtpd sink
in a process of its own, and five scenarios, each in a fresh process (its RSS is its own):

* ``raw``: the ceiling, :mod:`bench.send`'s pre-rendered aiosmtplib pool
  (``bench.send.SENDS`` messages, ``CONCURRENCY`` connections).
* ``raw_pipelined``: the same pool through the SMTP provider's own transaction, which
  pipelines MAIL, RCPT and DATA as the sink offers PIPELINING (:mod:`bench.send`).
  The target is against ``raw``; campaign / raw_pipelined is printed too.
* ``campaign``: a ``hogsend`` worker (DBOS launched, scheduler, courier ...) sending a
  campaign of the quickstart's ``trial-ending`` template to the ``product-updates`` list
  (default opt-in: every contact): batched steps through the mailer with every gate,
  decision row, unsubscribe links and open/click tracking, ``CONCURRENCY`` sends in
  flight. The campaign is created paused and its audience snapshot is timed on its own
  (:func:`hogsend.runtime.campaigns.copy_audience`, the run's first step, which then
  finds it done); the send clock runs from the claim (``started_at``) to
  ``completed_at``. Also measured in the worker: its CPU, hogsend's statements and
  Postgres's commits per recipient, and its RSS at sent counts (flat in audience size).
* ``mailer_batch``: :mod:`bench.send`'s ``Mailer.send_batch`` alone, to contacts outside
  the campaign, after it: the mailer's own ceiling, so ``campaign / mailer`` is what the
  campaign loop adds.
* ``raw`` once more at the end: campaign / raw is against the mean of both raw runs
  (:func:`bench.send.raw_ceiling`: the machine's speed drifts within minutes).

Reported: sends/s of each, campaign / raw (target >= 0.8), the snapshot time, and
the worker's peak RSS (target < 150 MB). Run with ``python -m bench campaign``
(100,000 recipients, SMTP), or ``python -m bench.campaign 5000`` for a quick look.
``--provider outbox`` sends into hogsend's outbox table instead of SMTP (no raw or
mailer scenario then): the run that shows the worker's RSS does not grow with the
audience (``python -m bench.campaign 1000000 --provider outbox``). ``--stop-after SENT``
cancels the campaign once SENT recipients are sent (a partial run, reported as such).
``--campaign-only`` skips the raw and mailer scenarios (a quick look at the campaign's own
CPU, statements and RSS); ``--profile PATH`` writes a cProfile of the worker's event loop
while it sends. ``--json PATH`` writes the result there as well.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import multiprocessing as mp
import queue
import resource
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import psycopg

from bench._database import migrated_database
from bench._server_cpu import postgres_cpu_reader_at
from bench.send import (
    CONCURRENCY,
    SENDS,
    WARMUP,
    _run_scenario,
    _sink,
    count_driver_statements,
    raw_ceiling,
)
from hogsend.cli.serving import tune_garbage_collector
from hogsend.db.engine import libpq_url
from hogsend.runtime import event_loop

RECIPIENTS = 100_000
TEMPLATE = "trial-ending"
PROPS = {"days_left": 3, "ends_on": "March 14", "plan": "Pro"}
LIST_ID = "product-updates"
TARGET_RATIO = 0.8
TARGET_RSS_MB = 150
BATCH = 2000
IDLE_SECONDS = 3.0
"""How long the worker's CPU is measured idle (its background loops) before the send."""


def _contacts(url: str, count: int) -> None:
    copy_sql = "COPY contacts (email, external_id, properties) FROM STDIN"
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for n in range(count):
            copy.write_row((f"user{n}@example.com", f"user-{n}", '{"first_name": "Ada"}'))
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE contacts")


MILESTONES = (1_000, 10_000, 100_000, 1_000_000)
"""Sent counts at which the worker's RSS is recorded (besides every tenth of the audience)."""


def _milestones(recipients: int, stop_after: int | None = None) -> list[int]:
    tenths = {max(1, recipients * k // 10) for k in range(1, 11)}
    if stop_after is not None:
        # A partial run: fifths of what it sends, so it still shows a curve.
        tenths |= {max(1, min(stop_after, recipients) * k // 5) for k in range(1, 6)}
    return sorted(tenths | {m for m in MILESTONES if m <= recipients})


def _extra_contacts(url: str, count: int) -> list[uuid.UUID]:
    """Contacts made after the campaign (so outside its snapshot) for the mailer's run."""
    ids = [uuid.uuid4() for _ in range(count)]
    copy_sql = "COPY contacts (id, email, external_id) FROM STDIN"
    with psycopg.connect(libpq_url(url)) as conn, conn.cursor() as cur, cur.copy(copy_sql) as copy:
        for n, contact_id in enumerate(ids):
            copy.write_row((contact_id, f"other{n}@example.com", f"other-{n}"))
    return ids


async def _campaign(
    port: int,
    url: str,
    recipients: int,
    provider: str,
    dispatcher: bool = False,
    stop_after: int | None = None,
    profile: Path | None = None,
    batch: int = BATCH,
    pgdata: Path | None = None,
) -> dict[str, Any]:
    from examples.quickstart.app import app
    from sqlalchemy import event

    from hogsend.db.engine import make_sessionmaker
    from hogsend.db.repos.campaigns import get_campaign
    from hogsend.runtime.campaigns import audience_of, copy_audience
    from hogsend.runtime.worker import Worker
    from hogsend.settings import Settings

    settings = Settings(
        env="test",
        database_url=url,
        secret_key="b" * 40,
        public_url="https://mail.example.test",
        email_provider=provider,
        smtp_host="127.0.0.1",
        smtp_port=port,
        smtp_tls="none",
        # The raw pool has CONCURRENCY connections: so do the mailer's provider and lanes.
        smtp_pool_size=CONCURRENCY,
        campaign_concurrency=CONCURRENCY,
        campaign_batch_size=batch,
        worker_id="bench-campaign",
    )
    worker = Worker(app, settings)
    await worker.start()
    if not dispatcher and worker.dispatcher is not None:
        # The email.sent events wait in the outbox for a dispatcher elsewhere: measured
        # is the sending, not the consumers of its events (bench/dispatcher.py is theirs).
        await worker.dispatcher.stop()
    # The collector as `hogsend worker` tunes it once its worker started.
    tune_garbage_collector(api=False)
    process = psutil.Process()
    statements = 0

    def count(*_: Any) -> None:
        nonlocal statements
        statements += 1

    event.listen(worker.engine.sync_engine, "before_cursor_execute", count)
    # And what goes to the driver past that event, counted as bench/send.py counts it.
    count_driver_statements(count)
    from hogsend.runtime.campaigns import stages

    calls = _provider_calls(worker)
    rss_at: dict[int, float] = {}
    pending_marks = _milestones(recipients, stop_after)
    try:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            # Created paused (no scheduler claims it) so the snapshot is timed on its own:
            # the same copy the run's first step makes, which then finds it done.
            campaign_id = conn.execute(
                "INSERT INTO campaigns (name, status, audience_kind, audience, template_key,"
                " props) VALUES ('bench', 'paused', 'list', %s, %s, %s) RETURNING id",
                (json.dumps({"id": LIST_ID}), TEMPLATE, json.dumps(PROPS)),
            ).fetchone()[0]  # type: ignore[index]
            async with make_sessionmaker(worker.engine)() as session:
                stored = await get_campaign(session, campaign_id)
                assert stored is not None
                audience = audience_of(app, stored)
            rss_before = process.memory_info().rss / 2**20
            began = time.perf_counter()
            total = await copy_audience(
                worker.engine, campaign_id, audience, start=datetime.now(UTC), local_time=None
            )
            snapshot_s = time.perf_counter() - began
            rss_snapshot = process.memory_info().rss / 2**20
            # The worker's start-up work first (the buckets' first backfill over every
            # contact): the idle share below is then the worker's steady background.
            settle_s = await _backfills_done(conn)
            # The idle worker's CPU (DBOS's queue polling, the scheduler and the other
            # loops): what the worker spends whether or not it sends.
            idle_before = time.process_time()
            await asyncio.sleep(IDLE_SECONDS)
            idle_share = (time.process_time() - idle_before) / IDLE_SECONDS
            statements = 0
            stages.reset()
            commits_before = _commits(conn)
            postgres_cpu = postgres_cpu_reader_at(pgdata) if pgdata is not None else None
            pg_before = postgres_cpu() if postgres_cpu is not None else 0.0
            wal_before = _wal_lsn(conn)
            writes_before = _writes(conn)
            threads_before = _thread_cpu(process)
            calls.clear()
            cpu_before = time.process_time()
            profiler = cProfile.Profile() if profile is not None else None
            if profiler is not None:
                # The event loop's thread: the batch steps, the mailer and the provider.
                profiler.enable()
            conn.execute("UPDATE campaigns SET status = 'queued' WHERE id = %s", (campaign_id,))
            peak_sampled = 0.0
            progress_sql = (
                "SELECT status, started_at, completed_at, total_recipients,"
                " sent_count, skipped_count, failed_count, skip_reasons, last_progress_at"
                " FROM campaigns WHERE id = %s"
            )
            while True:
                # In a thread: the bench's own round trip does not hold the worker's loop.
                row = await asyncio.to_thread(
                    lambda: conn.execute(progress_sql, (campaign_id,)).fetchone()
                )
                assert row is not None
                rss = process.memory_info().rss / 2**20
                peak_sampled = max(peak_sampled, rss)
                while pending_marks and row[4] >= pending_marks[0]:
                    mark = pending_marks.pop(0)
                    rss_at[mark] = round(rss, 1)
                    # Progress as it goes: a long run stopped early still shows the curve.
                    print(f"  sent {row[4]:>9,}  worker RSS {rss:.1f} MB", flush=True)
                if row[0] in ("sent", "failed", "cancelled"):
                    break
                if stop_after is not None and row[4] >= stop_after:
                    # Cancelled at the next batch boundary: a partial run, reported so.
                    conn.execute(
                        "UPDATE campaigns SET status = 'cancelled', completed_at = now()"
                        " WHERE id = %s",
                        (campaign_id,),
                    )
                await asyncio.sleep(0.5)
            if row[0] == "cancelled":
                # The run stops at its next batch boundary: wait for it, so the worker is
                # not stopped under a batch in flight; that batch counts (sent, CPU, clock).
                await _run_ended(conn, campaign_id)
                row = (*row[:4], *_counts(conn, campaign_id))
            cpu = time.process_time() - cpu_before
            threads = _thread_cpu_since(process, threads_before)
            measured = {
                name: (stages.wall[name], stages.cpu.get(name, 0.0)) for name in stages.wall
            }
            batches = stages.batches
            carried = getattr(stages, "carried", None)
            commits = _commits(conn) - commits_before
            pg_cpu = postgres_cpu() - pg_before if postgres_cpu is not None else None
            wal = _wal_bytes_since(conn, wal_before)
            if profiler is not None and profile is not None:
                profiler.disable()
                profiler.dump_stats(profile)
    finally:
        await worker.stop()
    # After the stop: the worker's backends flushed their table counts as they closed.
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        writes = _writes_since(conn, writes_before)
    status, started, completed, _, sent, skipped, failed, reasons, progressed = row
    partial = stop_after is not None and status == "cancelled" and sent >= stop_after
    if not partial and (status != "sent" or sent != recipients or total != recipients):
        raise RuntimeError(f"campaign {status}: {sent}/{total} sent, {skipped} {reasons}, {failed}")
    # A partial run's clock stops at its last recorded batch, not at the cancel.
    sending = ((progressed if partial else completed) - started).total_seconds()
    return {
        "recipients": total,
        "sent": sent,
        "partial": partial,
        "snapshot_s": round(snapshot_s, 2),
        "snapshot_rows_per_s": round(total / snapshot_s),
        "settle_s": round(settle_s, 2),
        "send_s": round(sending, 2),
        "sends_per_s": round(sent / sending, 1),
        # CPU of the whole worker process (every thread) per recipient: survives load.
        "cpu_ms_per_send": round(cpu / sent * 1000, 3),
        # The worker's CPU as a share of one core while it sent, and idle before.
        "cpu_share": round(cpu / sending, 2),
        "idle_cpu_share": round(idle_share, 3),
        "cpu_ms_per_send_net_of_idle": round((cpu - idle_share * sending) / sent * 1000, 3),
        # The same CPU per thread (the event loop is MainThread; DBOS polls its queues
        # and runs its background jobs in threads of its own).
        "cpu_ms_per_send_by_thread": {
            name: round(seconds / sent * 1000, 3) for name, seconds in threads.items()
        },
        # The batch steps' critical path: wall and process CPU per stage, per recipient.
        "batches": batches,
        # Steps that began with the batch the step before read ahead (no read of their own).
        "steps_carried": carried,
        "stages_ms_per_send": {
            name: {"wall": round(w / sent * 1000, 3), "cpu": round(c / sent * 1000, 3)}
            for name, (w, c) in measured.items()
        },
        # Is the pipeline kept full? The provider's calls in flight over the send, as a
        # share of the lanes, and the time no call at all was in flight.
        **_occupancy(calls, CONCURRENCY),
        "statements_per_send": round(statements / sent, 2),
        "commits_per_send": round(commits / sent, 2),
        # The database's side, over the same window: every backend's CPU (hogsend's and
        # DBOS's), the WAL written, and the row versions each table took, per recipient.
        "postgres_cpu_ms_per_send": None if pg_cpu is None else round(pg_cpu / sent * 1000, 3),
        "wal_bytes_per_send": round(wal / sent),
        "rows_written_per_send": {
            table: {kind: round(n / sent, 2) for kind, n in counts.items()}
            for table, counts in writes.items()
        },
        "rss_before_snapshot_mb": round(rss_before, 1),
        "rss_after_snapshot_mb": round(rss_snapshot, 1),
        "rss_mb_at_sent": {str(k): v for k, v in rss_at.items()},
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "sampled_peak_rss_mb": round(peak_sampled, 1),
    }


class _ProviderCalls:
    """Running totals of the worker's SMTP provider calls, kept in constant memory.

    The bench runs the worker in its own process and reports that process's RSS, so its
    probe must not grow with the audience: a list of every call's times grew the RSS by
    about 1.4 MB per 10,000 recipients. The calls run on one event loop, so starts and
    ends arrive in time order and the totals are updated as they come.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        """Forget every call so far (the bench calls it when the send starts)."""
        self.began: float | None = None
        self.last = 0.0
        self.flying = 0
        self.busy = 0.0
        self.idle = 0.0
        self.gaps = 0

    def start(self) -> float:
        """Note a call starting; returns its start time."""
        now = time.perf_counter()
        if self.began is None:
            self.began = now
        elif self.flying == 0:
            # Nothing was in flight since the last edge: the provider sat idle.
            self.idle += now - self.last
            self.gaps += now - self.last > 0.005
        self.flying += 1
        self.last = now
        return now

    def end(self, began: float) -> None:
        """Note the call started at ``began`` ending."""
        now = time.perf_counter()
        self.busy += now - began
        self.flying -= 1
        self.last = now


def _provider_calls(worker: Any) -> _ProviderCalls:
    """Totals of the worker's SMTP provider calls from now on (the bench clears them when
    the send starts)."""
    calls = _ProviderCalls()
    provider = worker._email_provider
    if provider is None or not hasattr(provider, "_send"):
        return calls
    send = provider._send

    async def timed(*args: Any) -> Any:
        began = calls.start()
        try:
            return await send(*args)
        finally:
            calls.end(began)

    provider._send = timed
    return calls


def _occupancy(calls: _ProviderCalls, lanes: int) -> dict[str, Any]:
    """The provider's calls in flight on average as a share of ``lanes``, from the first
    call's start to the last one's end, and the time with none in flight (in total, and
    how many such gaps lasted over 5 ms: mostly the batch and step boundaries)."""
    if calls.began is None:
        return {"provider_occupancy": None, "provider_idle_s": None, "provider_idle_gaps": 0}
    return {
        "provider_occupancy": round(calls.busy / (lanes * max(calls.last - calls.began, 1e-9)), 3),
        "provider_idle_s": round(calls.idle, 3),
        "provider_idle_gaps": calls.gaps,
    }


def _thread_cpu(process: psutil.Process) -> dict[int, tuple[str, float]]:
    """CPU seconds of each of this process's threads so far, by native id, with its name."""
    import threading

    names = {t.native_id: t.name for t in threading.enumerate()}
    return {
        t.id: (names.get(t.id, "other"), t.user_time + t.system_time) for t in process.threads()
    }


def _thread_cpu_since(
    process: psutil.Process, before: dict[int, tuple[str, float]]
) -> dict[str, float]:
    """CPU seconds per thread name since ``before`` (threads of one name summed), the
    largest first; threads under a hundredth of a second are left out."""
    spent: dict[str, float] = {}
    for tid, (name, seconds) in _thread_cpu(process).items():
        spent[name] = spent.get(name, 0.0) + seconds - before.get(tid, (name, 0.0))[1]
    return {n: s for n, s in sorted(spent.items(), key=lambda i: -i[1]) if s >= 0.01}


async def _backfills_done(conn: psycopg.Connection[Any], timeout: float = 600.0) -> float:
    """Wait until no bucket backfill is pending or running; returns the seconds waited."""
    began = time.perf_counter()
    sql = (
        "SELECT count(*), count(*) FILTER (WHERE backfill_status IN ('pending', 'running'))"
        " FROM bucket_configs"
    )
    while time.perf_counter() - began < timeout:
        found = await asyncio.to_thread(lambda: conn.execute(sql).fetchone())
        assert found is not None
        # No row yet: the sweeper has not started (or the app has no criteria buckets).
        if not found[1] and (found[0] or time.perf_counter() - began > 5):
            break
        await asyncio.sleep(0.25)
    return time.perf_counter() - began


async def _run_ended(conn: psycopg.Connection[Any], campaign_id: uuid.UUID) -> None:
    from dbos import DBOS

    found = conn.execute("SELECT workflow_id FROM campaigns WHERE id = %s", (campaign_id,))
    workflow_id = found.fetchone()[0]  # type: ignore[index]
    if workflow_id is not None:
        handle: Any = await DBOS.retrieve_workflow_async(workflow_id)
        await asyncio.wait_for(handle.get_result(), timeout=120)


def _counts(conn: psycopg.Connection[Any], campaign_id: uuid.UUID) -> tuple[Any, ...]:
    """sent, skipped, failed, skip reasons and last progress once the run stopped."""
    found = conn.execute(
        "SELECT sent_count, skipped_count, failed_count, skip_reasons, last_progress_at"
        " FROM campaigns WHERE id = %s",
        (campaign_id,),
    ).fetchone()
    assert found is not None
    return tuple(found)


def _wal_lsn(conn: psycopg.Connection[Any]) -> str:
    found = conn.execute("SELECT CAST(pg_current_wal_lsn() AS text)").fetchone()
    assert found is not None
    return str(found[0])


def _wal_bytes_since(conn: psycopg.Connection[Any], lsn: str) -> int:
    """WAL bytes the whole server wrote since ``lsn`` (every database: only ours is busy)."""
    found = conn.execute(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), CAST(%s AS pg_lsn))", (lsn,)
    ).fetchone()
    assert found is not None
    return int(found[0])


_WRITES_SQL = (
    "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables"
)


def _writes(conn: psycopg.Connection[Any]) -> dict[str, tuple[int, ...]]:
    """Rows inserted, updated (HOT of them) and deleted so far, per table."""
    # A backend reports its counts when it goes idle, at most a few seconds late: the
    # snapshot's inserts into campaign_recipients may still show up after the "before".
    return {row[0]: tuple(row[1:]) for row in conn.execute(_WRITES_SQL).fetchall()}


def _writes_since(
    conn: psycopg.Connection[Any], before: dict[str, tuple[int, ...]]
) -> dict[str, dict[str, int]]:
    """What :func:`_writes` counted since ``before``, tables that took writes only."""
    kinds = ("insert", "update", "hot_update", "delete")
    out: dict[str, dict[str, int]] = {}
    for table, now in _writes(conn).items():
        then = before.get(table, (0, 0, 0, 0))
        delta = {k: a - b for k, a, b in zip(kinds, now, then, strict=True) if a - b}
        if delta:
            out[table] = delta
    return out


def _commits(conn: psycopg.Connection[Any]) -> int:
    """Transactions committed in this database so far (every client: hogsend and DBOS)."""
    found = conn.execute(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
    ).fetchone()
    assert found is not None
    return int(found[0])


def _campaign_main(port: int, url: str, options: tuple[Any, ...], out: Any) -> None:
    # The worker's event loop, as `hogsend worker` runs it.
    out.put(event_loop.run(_campaign(port, url, *options)))


def _run_campaign(port: int, url: str, *options: Any) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    process = ctx.Process(target=_campaign_main, args=(port, url, options, out))
    process.start()
    deadline = time.monotonic() + 7200
    while True:
        try:
            result: dict[str, Any] = out.get(timeout=1)
            break
        except queue.Empty:
            # A scenario that crashed puts nothing: stop waiting for it.
            if not process.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the campaign scenario ended ({process.exitcode})") from None
    process.join(60)
    return result


def run(
    recipients: int = RECIPIENTS,
    provider: str = "smtp",
    dispatcher: bool = False,
    stop_after: int | None = None,
    profile: Path | None = None,
    campaign_only: bool = False,
    batch: int = BATCH,
) -> dict[str, Any]:
    """Measure both scenarios into one sink; print the table; return the numbers."""
    with migrated_database("bench_campaign") as (server, url):
        started = time.perf_counter()
        _contacts(url, recipients)
        copy_s = time.perf_counter() - started
        with _sink() as (port, counter, _):
            ceilings = provider == "smtp" and not campaign_only
            raw = _run_scenario("raw", port, url, []) if ceilings else None
            pipelined = _run_scenario("raw_pipelined", port, url, []) if ceilings else None
            before = counter.value
            campaign = _run_campaign(
                port,
                url,
                recipients,
                provider,
                dispatcher,
                stop_after,
                profile,
                batch,
                server.pgdata,
            )
            arrived = counter.value - before
            mailer = raw_after = None
            if ceilings:
                # The mailer's own ceiling (Mailer.send_batch alone, bench/send.py's
                # mailer_batch) to contacts outside the campaign: campaign / mailer is
                # what the campaign loop adds on top of the mailer.
                # A partial run compares with as many sends as it made (a slow box).
                sends = min(SENDS, stop_after or SENDS)
                warmup = min(WARMUP, sends // 10)
                ids = _extra_contacts(url, sends + warmup)
                mailer = _run_scenario("mailer_batch", port, url, ids, sends, warmup)
                raw_after = _run_scenario("raw", port, url, [])
    # A partial run's worker stops mid-batch: messages of that batch may have arrived.
    short = arrived < campaign["sent"] if campaign["partial"] else arrived != recipients
    if provider == "smtp" and short:
        raise RuntimeError(f"the sink received {arrived} of {recipients} campaign messages")
    ceiling = raw_ceiling(raw, raw_after) if raw and raw_after else None
    ratio = round(campaign["sends_per_s"] / ceiling, 2) if ceiling else None
    of_pipelined = (
        round(campaign["sends_per_s"] / pipelined["sends_per_s"], 2) if pipelined else None
    )
    of_mailer = round(campaign["sends_per_s"] / mailer["sends_per_s"], 2) if mailer else None
    print(f"contacts COPY      {recipients:>9,} in {copy_s:.1f} s")
    if raw is not None:
        print(
            f"raw aiosmtplib     {raw['sends_per_s']:>9} sends/s  peak RSS {raw['peak_rss_mb']} MB"
        )
    if pipelined is not None:
        print(f"raw pipelined      {pipelined['sends_per_s']:>9} sends/s")
    if raw_after is not None:
        print(f"raw aiosmtplib     {raw_after['sends_per_s']:>9} sends/s  (again, at the end)")
    print(
        f"campaign           {campaign['sends_per_s']:>9} sends/s  "
        f"peak RSS {campaign['peak_rss_mb']} MB  snapshot {campaign['snapshot_s']} s"
    )
    print(
        f"  worker CPU {campaign['cpu_ms_per_send']} ms, {campaign['statements_per_send']}"
        f" statements, {campaign['commits_per_send']} commits per recipient"
    )
    print(
        f"  worker CPU share {campaign['cpu_share']} of a core (idle"
        f" {campaign['idle_cpu_share']}), {campaign['cpu_ms_per_send_net_of_idle']} ms per"
        f" recipient net of idle; {campaign['batches']} batches,"
        f" {campaign['steps_carried']} steps began with the batch read ahead"
    )
    print(
        f"  provider calls in flight: {campaign['provider_occupancy']} of {CONCURRENCY} lanes"
        f" on average, none for {campaign['provider_idle_s']} s"
        f" ({campaign['provider_idle_gaps']} gaps over 5 ms)"
    )
    print(f"  worker CPU by thread (ms per recipient): {campaign['cpu_ms_per_send_by_thread']}")
    for name, spent in campaign["stages_ms_per_send"].items():
        print(f"    {name:<14} wall {spent['wall']:>7} ms  cpu {spent['cpu']:>7} ms per recipient")
    print(
        f"  Postgres CPU {campaign['postgres_cpu_ms_per_send']} ms,"
        f" WAL {campaign['wal_bytes_per_send']} bytes per recipient"
    )
    for table, kinds in campaign["rows_written_per_send"].items():
        print(f"    {table:<22} {kinds}")
    print(f"  worker RSS at sent counts: {campaign['rss_mb_at_sent']}")
    if mailer is not None:
        print(
            f"mailer_batch       {mailer['sends_per_s']:>9} sends/s  "
            f"CPU {mailer['cpu_ms_per_send']} ms per send"
        )
    if ratio is not None:
        print(
            f"campaign / raw     {ratio:>9} (target >= {TARGET_RATIO}; raw: the mean of both runs)"
        )
        print(f"campaign / raw pipelined {of_pipelined:>3}")
        print(f"campaign / mailer  {of_mailer:>9}")
    return {
        "recipients": recipients,
        "provider": provider,
        "dispatcher": "in the measured worker" if dispatcher else "stopped in the measured worker",
        "concurrency": CONCURRENCY,
        "batch_size": batch,
        "copy_s": round(copy_s, 2),
        "raw": raw,
        "raw_after": raw_after,
        # Against the mean of the raw runs before and after (bench.send.raw_ceiling).
        "raw_ceiling_sends_per_s": round(ceiling, 1) if ceiling else None,
        "raw_pipelined": pipelined,
        "mailer_batch": mailer,
        "campaign": campaign,
        "ratio": ratio,
        "ratio_to_mailer_batch": of_mailer,
        # Against the provider's own pipelined transaction on pre-rendered bytes.
        "ratio_to_raw_pipelined": of_pipelined,
        "target_ratio": TARGET_RATIO,
        "target_peak_rss_mb": TARGET_RSS_MB,
    }


def main(argv: list[str]) -> dict[str, Any]:
    """``python -m bench.campaign [RECIPIENTS] [--provider smtp|outbox] [--json PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m bench.campaign")
    parser.add_argument("recipients", type=int, nargs="?", default=RECIPIENTS)
    parser.add_argument("--provider", choices=("smtp", "outbox"), default="smtp")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--with-dispatcher",
        action="store_true",
        help="keep the worker's dispatcher running (it consumes the email.sent events)",
    )
    parser.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="SENT",
        help="cancel the campaign once SENT recipients are sent (a partial run, for the"
        " worker's RSS with a large audience on a slow machine)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="PATH",
        help="cProfile the worker's event loop while it sends; stats written to PATH",
    )
    parser.add_argument(
        "--campaign-only",
        action="store_true",
        help="no raw or mailer_batch scenario: the campaign's own CPU, statements and RSS",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=BATCH,
        help=f"the worker's HOGSEND_CAMPAIGN_BATCH_SIZE (default {BATCH})",
    )
    args = parser.parse_args(argv)
    result = run(
        args.recipients,
        args.provider,
        args.with_dispatcher,
        args.stop_after,
        args.profile,
        args.campaign_only,
        args.batch_size,
    )
    if args.json is not None:
        from bench.__main__ import machine

        args.json.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
