"""Broadcast campaigns on DBOS: one durable workflow per campaign run, sending in batched steps.

Every worker runs a :class:`CampaignScheduler`, which loops every
``campaign_poll_seconds``::

    claim   waiting campaigns that are due (``sendAt`` passed) and parked ones whose
            resume time passed, naming one new run each (``FOR UPDATE SKIP LOCKED``:
            workers never claim the same row), and enqueue that run on the
            ``campaigns`` queue before the claim commits
    reap    under a cluster-wide advisory lock (one reaper at a time): ``sending``
            campaigns owned by a run without progress for ``campaign_stale_seconds``
            go back to ``queued`` without an owner, once per stall; the next claim
            starts one run

A run (:func:`campaign_run`) is::

    snapshot   copy the audience into campaign_recipients, keyset page by page
               (resumable: it continues after the highest contact already copied)
    loop       steps of batches (each step sends for up to ``STEP_SECONDS``): send
               the due pending recipients through the mailer (throttle, provider
               pacing, every gate and decision row) while the next batch is read and
               prepared; as a batch's last requests reach its lanes, check the run
               still owns the campaign (paused, cancelled or superseded runs stop
               there) and let the next batch take the lanes over; once a batch ended,
               one transaction moves it out of ``pending`` and into the counters
    wait       with recipients due later (``localTime``) but within
               ``MAX_WAIT_SECONDS``, a durable sleep
    park       with every pending recipient due later than that, let go of the campaign
               (still ``sending``, no owning run, a resume time ``RESUME_LEAD_SECONDS``
               before they are due) and end: a sleeping run would hold a slot of the
               small ``campaigns`` queue for up to a day; the claim starts the next run
    finish     ``sent``

The cursor is the recipients' status, so a resumed, recovered or reaped run continues
where the last one stopped, and each recipient's idempotency key
``campaign:<campaign id>:<contact id>`` makes the mailer record a second attempt as a
``duplicate`` instead of sending twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from dbos import DBOS, SetWorkflowID
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hogsend.app import Hogsend
from hogsend.channels.email.pacing import TokenBucket
from hogsend.channels.mailer import Mailer, SendOutcome, SendRequest
from hogsend.core.conditions.codec import condition_from_dict
from hogsend.core.identifiers import durable_name
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import campaigns as repo
from hogsend.db.tables.campaigns import Campaign
from hogsend.errors import NoRecipient, TemplateError
from hogsend.runtime.queues import CAMPAIGNS
from hogsend.settings import Settings

log = structlog.get_logger(__name__)

WORKFLOW_NAME = durable_name("workflow", "campaign")
STEP_SECONDS = 5.0
"""How long one batch step goes on sending batches before DBOS checkpoints it (each
batch boundary still records its batch and checks the run owns the campaign)."""
MAX_WAIT_SECONDS = 30.0
"""Longest durable sleep between looks at a campaign waiting for local send times, so a
pause or cancel is seen within this long; with the next recipients due later than
this, the run parks instead (see :func:`repo.park`)."""
RESUME_LEAD_SECONDS = 15.0
"""How long before a parked campaign's next recipients are due its next run is started:
enough for the scheduler's poll and the queue's pick-up, so they go at their time (the
run sleeps the rest). Below ``MAX_WAIT_SECONDS``, so that run does not park again."""

SENT = ("sent", "redirected")
FAILED = ("provider_error",)


@dataclass(slots=True)
class _Context:
    """What runs need from the worker that hosts them."""

    app: Hogsend
    settings: Settings
    engine: AsyncEngine
    mailer: Mailer


@dataclass(slots=True)
class StageClock:
    """Where this process's batch steps spent their time, per stage (for the bench).

    Wall-clock seconds on a step's critical path and the process's CPU seconds (every
    thread, so the worker's other loops too) over the same intervals, plus how many
    batches and recipients went through. Cheap enough to keep on: a few clock reads
    per batch.
    """

    wall: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    batches: int = 0
    recipients: int = 0
    carried: int = 0
    """Steps that began with the batch the step before read ahead (no read of their own)."""
    prepared: int = 0
    """Batches prepared in the mailer during the tail of the one before (see batch_step)."""
    _mark: tuple[float, float] | None = None

    def start(self) -> None:
        """Start timing the next stage from now."""
        self._mark = (time.perf_counter(), time.process_time())

    def lap(self, stage: str) -> None:
        """Charge the time since the last mark to ``stage`` and mark again."""
        now = (time.perf_counter(), time.process_time())
        if self._mark is not None:
            self.wall[stage] = self.wall.get(stage, 0.0) + now[0] - self._mark[0]
            self.cpu[stage] = self.cpu.get(stage, 0.0) + now[1] - self._mark[1]
        self._mark = now

    def reset(self) -> None:
        """Forget everything measured so far."""
        self.wall.clear()
        self.cpu.clear()
        self.batches = self.recipients = self.carried = self.prepared = 0
        self._mark = None


stages = StageClock()
"""This process's campaign stage times (``bench/campaign.py`` reports them)."""

_context: _Context | None = None
# Per campaign, the throttle's token bucket: it lives across batch steps of one process.
_throttles: dict[uuid.UUID, TokenBucket] = {}
# Per campaign, the last batch's size and send rate (next_batch_size), across steps too.
_paces: dict[uuid.UUID, tuple[int, float | None]] = {}
# Per campaign, the batch a step read ahead when it ended (for the run's next step).
_carried: dict[uuid.UUID, tuple[str, tuple[Any, ...], _Batch]] = {}


def _forget(campaign_id: uuid.UUID) -> None:
    _throttles.pop(campaign_id, None)
    _paces.pop(campaign_id, None)
    _carried.pop(campaign_id, None)


def _ctx() -> _Context:
    if _context is None:
        raise RuntimeError("campaign runs need a started worker with templates")
    return _context


def _now() -> datetime:
    return datetime.now(UTC)


def audience_of(app: Hogsend, campaign: Campaign) -> repo.Audience:
    """The campaign's stored audience, resolved against the app's lists."""
    if campaign.audience_kind == "list":
        list_id = str(campaign.audience["id"])
        known = {item.id: item for item in app.lists}
        listed = known.get(list_id)
        return repo.Audience(
            kind="list",
            list_id=list_id,
            default_opt_in=listed.default_opt_in if listed is not None else False,
        )
    if campaign.audience_kind == "bucket":
        return repo.Audience(kind="bucket", bucket_id=str(campaign.audience["id"]))
    return repo.Audience(
        kind="criteria", criteria=condition_from_dict(campaign.audience["criteria"])
    )


def batch_size(settings: Settings, throttle: float | None) -> int:
    """The most recipients one batch takes: the setting, but about two seconds' worth
    under the slower of the campaign's throttle and the provider's pacing, so a pause
    takes effect quickly even on a slow campaign (see :func:`next_batch_size`)."""
    rates = [r for r in (throttle, settings.email_rate_per_second) if r]
    if not rates:
        return settings.campaign_batch_size
    return max(1, min(settings.campaign_batch_size, math.ceil(min(rates) * 2)))


BATCH_SECONDS = 2.0
"""About how long one batch should take to send: a pause or cancel is seen at the next
boundary, so within about this long, however fast or slow the campaign goes."""
BATCH_PER_LANE = 64
"""A step's first batch and the smallest one, per lane (``campaign_concurrency``): the
rate is not known yet for the first, and below this the mailer's fixed cost per batch
(statements, commits, lanes draining) would grow on a slow or busy machine."""


def next_batch_size(cap: int, lanes: int, previous: int | None, rate: float | None) -> int:
    """How many recipients the next batch takes: adaptive, about ``BATCH_SECONDS`` of
    sending at the rate the last batch measured, but no fewer than ``BATCH_PER_LANE``
    per lane (unless the cap is lower).

    Larger batches leave the mailer fewer starts and ends (its lanes idle while a batch
    drains and the next one locks its keys and decides its first sends), smaller ones
    see a pause sooner; sizing by time gives a fast campaign large batches while a
    pause is still seen within about ``BATCH_SECONDS``. Growth is at most doubling per
    batch, so one fast batch does not jump the size to the cap.

    Args:
        cap: the largest batch (:func:`batch_size`).
        lanes: the campaign's sends in flight at once.
        previous: the size of the last batch (None for a step's first).
        rate: recipients per second the last finished batch went at (None: unknown).
    """
    floor = max(1, min(cap, lanes * BATCH_PER_LANE))
    if previous is None:
        return floor
    if rate is None:
        return max(floor, min(cap, previous * 2))
    wanted = math.ceil(rate * BATCH_SECONDS)
    return max(floor, min(cap, wanted, previous * 2))


def _throttle(campaign: Campaign) -> TokenBucket | None:
    rate = campaign.throttle_per_second
    if rate is None:
        _throttles.pop(campaign.id, None)
        return None
    bucket = _throttles.get(campaign.id)
    if bucket is None or bucket.rate != rate:
        # A small burst: the throttle is a promise to the receiving side.
        bucket = TokenBucket(rate, burst=max(1.0, rate / 10))
        _throttles[campaign.id] = bucket
    return bucket


# ---------------------------------------------------------------------------- steps


async def copy_audience(
    engine: AsyncEngine,
    campaign_id: uuid.UUID,
    audience: repo.Audience,
    *,
    start: datetime,
    local_time: str | None,
) -> int:
    """Copy the audience into the recipients table, a keyset page per transaction, and
    stamp the snapshot done; returns the audience size.

    Resumable: each page starts after the highest contact already copied. Nothing of
    the audience passes through Python (``INSERT … SELECT``), so memory does not grow
    with its size.
    """
    sessions = make_sessionmaker(engine)
    while True:
        async with sessions() as session, session.begin():
            copied = await repo.snapshot_page(
                session, campaign_id, audience, start=start, local_time=local_time, now=_now()
            )
            await repo.touch(session, campaign_id, _now())
        if copied == 0:
            break
    async with sessions() as session, session.begin():
        return await repo.finish_snapshot(session, campaign_id, _now())


@DBOS.step(name="hogsend.campaign.snapshot", retries_allowed=True, max_attempts=5)
async def snapshot_step(campaign_id: str, workflow_id: str) -> dict[str, Any]:
    """Copy the audience into the recipients table; returns the audience size."""
    ctx = _ctx()
    sessions = make_sessionmaker(ctx.engine)
    cid = uuid.UUID(campaign_id)
    async with sessions() as session, session.begin():
        campaign = await repo.owned(session, cid, workflow_id)
        if campaign is None:
            return {"state": "stopped"}
        if campaign.snapshot_at is not None:
            return {"state": "ready", "total": campaign.total_recipients}
        audience = audience_of(ctx.app, campaign)
        start = campaign.send_at or campaign.started_at or _now()
        local_time = campaign.local_time
    began = time.monotonic()
    total = await copy_audience(ctx.engine, cid, audience, start=start, local_time=local_time)
    log.info(
        "campaign audience snapshot",
        campaign_id=campaign_id,
        recipients=total,
        seconds=round(time.monotonic() - began, 3),
    )
    return {"state": "ready", "total": total}


def _requests(campaign: Campaign, recipients: list[repo.Recipient]) -> list[SendRequest]:
    """The batch's sends, each with the idempotency key ``campaign:<id>:<contact>``.

    What every request shares is read off the campaign once per batch (its attributes
    are instrumented, so reading them per recipient cost several times the request).
    """
    list_id = str(campaign.audience["id"]) if campaign.audience_kind == "list" else None
    template, props = campaign.template_key, campaign.props or {}
    subject, from_email, campaign_id = campaign.subject, campaign.from_email, campaign.id
    prefix = f"campaign:{campaign_id}:"
    return [
        SendRequest(
            template=template,
            contact_id=r.contact_id,
            to_email=r.email,
            props=props,
            subject=subject,
            from_email=from_email,
            category=list_id,
            list_id=list_id,
            kind="campaign",
            campaign_id=campaign_id,
            idempotency_key=prefix + str(r.contact_id),
            resend_when_open=False,
        )
        for r in recipients
    ]


@dataclass(slots=True)
class _Batch:
    """Recipients in cursor order and their sends, built before the batch's turn."""

    recipients: list[repo.Recipient]
    requests: list[SendRequest]


def _batch(campaign: Campaign, recipients: list[repo.Recipient]) -> _Batch:
    return _Batch(recipients, _requests(campaign, recipients))


def _shape(campaign: Campaign) -> tuple[Any, ...]:
    """What a batch's requests were built from (a carried batch is rebuilt if it moved)."""
    return (
        campaign.template_key,
        campaign.props,
        campaign.subject,
        campaign.from_email,
        campaign.audience_kind,
        campaign.audience,
    )


def _carried_batch(cid: uuid.UUID, workflow_id: str, campaign: Campaign) -> _Batch | None:
    """The batch this run's last step read ahead when it ended, if any (taken once)."""
    carried = _carried.pop(cid, None)
    if carried is None or carried[0] != workflow_id or not carried[2].recipients:
        return None
    _, shape, batch = carried
    if shape != _shape(campaign):
        return _batch(campaign, batch.recipients)
    return batch


def _settled(
    campaign_id: uuid.UUID, recipient: repo.Recipient, item: SendOutcome | Exception
) -> tuple[repo.Result, SendOutcome | None]:
    """A recipient's result from what the mailer did (``item`` not a :func:`_problem`)."""
    if isinstance(item, NoRecipient):
        return repo.Result(
            contact_id=recipient.contact_id, status="skipped", reason="no_address"
        ), None
    if isinstance(item, TemplateError):
        log.warning("campaign send failed to render", campaign_id=str(campaign_id), error=item)
        return repo.Result(
            contact_id=recipient.contact_id, status="failed", reason="render_error"
        ), None
    assert not isinstance(item, Exception)
    return _result(recipient, item, item.decision), item


def _problem(settled: list[SendOutcome | Exception]) -> Exception | None:
    """The first error to retry the step on: any but a recipient's own (no address, a
    template that does not render), which are results."""
    for item in settled:
        if isinstance(item, Exception) and not isinstance(item, NoRecipient | TemplateError):
            return item
    return None


def _result(recipient: repo.Recipient, outcome: SendOutcome, decision: str) -> repo.Result:
    if decision in SENT:
        status, reason = "sent", None
    elif decision in FAILED:
        status, reason = "failed", decision
    else:
        status, reason = "skipped", decision
    return repo.Result(
        contact_id=recipient.contact_id,
        status=status,
        reason=reason,
        email_send_id=outcome.send_id,
    )


@dataclass(slots=True)
class _Sent:
    """What one batch's sends came to, per recipient, and the error to retry on.

    Turned into results by the record (:func:`_record`), off the path between batches.
    """

    recipients: list[repo.Recipient]
    settled: list[SendOutcome | Exception]
    problem: BaseException | None


async def _send(
    ctx: _Context,
    campaign: Campaign,
    batch: _Batch,
    *,
    slots: asyncio.Semaphore,
    start: asyncio.Future[None] | None = None,
    drained: Callable[[], None] | None = None,
) -> _Sent:
    throttle = _throttle(campaign)
    # The batch path: every gate for the whole batch in one statement, the decision rows
    # in one, provider calls campaign_concurrency at a time (see channels.send_batches).
    settled = await ctx.mailer.send_batch(
        batch.requests,
        concurrency=ctx.settings.campaign_concurrency,
        before_send=throttle.acquire if throttle is not None else None,
        start=start,
        drained=drained,
        slots=slots,
    )
    return _Sent(recipients=batch.recipients, settled=settled, problem=_problem(settled))


@dataclass(slots=True)
class _InFlight:
    """A batch in the mailer: begun at once, or prepared during the tail of the one
    before (keys locked, first requests decided) and sending once ``go`` is done."""

    batch: _Batch
    task: asyncio.Task[_Sent]
    drained: asyncio.Event
    go: asyncio.Future[None] | None
    sending: float
    """When its provider calls could begin (``perf_counter``), for its rate."""

    @property
    def released(self) -> bool:
        """Whether the batch may call the provider (begun at once, or let go)."""
        return self.go is None or self.go.done()

    def release(self) -> None:
        """Let a prepared batch call the provider (each of its lanes as one of the
        batch before frees its slot)."""
        assert self.go is not None
        self.go.set_result(None)
        self.sending = time.perf_counter()

    async def settle(self) -> None:
        """Wait for the batch to end, without stopping it (its errors are its outcomes'
        and the step's retry's)."""
        await asyncio.wait((self.task,))

    async def stop(self) -> None:
        """Stop the batch (nothing if it ended). A prepared one stops before it sends:
        its decided attempts (never sent) are removed and its keys unlock."""
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


def _begin(
    ctx: _Context, campaign: Campaign, batch: _Batch, slots: asyncio.Semaphore, *, prepared: bool
) -> _InFlight:
    drained = asyncio.Event()
    go = asyncio.get_running_loop().create_future() if prepared else None
    task = asyncio.create_task(
        _send(ctx, campaign, batch, slots=slots, start=go, drained=drained.set)
    )
    return _InFlight(batch, task, drained, go, time.perf_counter())


async def _record(session: AsyncSession, campaign_id: uuid.UUID, sent: _Sent) -> None:
    """Record what the batch's sends came to; an error to retry on leaves its recipient
    pending (the step's retry sends it)."""
    results: list[repo.Result] = []
    duplicates: list[tuple[repo.Recipient, SendOutcome]] = []
    for recipient, item in zip(sent.recipients, sent.settled, strict=True):
        if isinstance(item, Exception) and not isinstance(item, NoRecipient | TemplateError):
            continue
        result, outcome = _settled(campaign_id, recipient, item)
        if outcome is not None and outcome.decision == "duplicate":
            duplicates.append((recipient, outcome))
        else:
            results.append(result)
    if duplicates:
        # An earlier attempt of this recipient (a run that crashed before recording
        # it) holds the key: what it did is what happened to the recipient.
        held = await repo.decisions_of(
            session, [o.duplicate_of for _, o in duplicates if o.duplicate_of is not None]
        )
        for recipient, outcome in duplicates:
            decision = held.get(outcome.duplicate_of) if outcome.duplicate_of else None
            results.append(_result(recipient, outcome, decision or "duplicate"))
    await repo.record_results(session, campaign_id, results, _now())


async def _read_ahead(
    engine: AsyncEngine, campaign: Campaign, after: repo.Recipient, limit: int
) -> _Batch | None:
    """The batch after ``after``, its sends built (None if it could not be read: the
    boundary reads it).

    Read and built while the batch before is in the mailer, so neither the statement
    nor the requests wait between two batches.
    """
    if after.send_at is None:
        return None
    try:
        async with engine.connect() as conn:
            recipients = await repo.due_batch(conn, campaign.id, _now(), limit=limit, after=after)
    except Exception:
        log.warning("reading a campaign's next batch ahead failed", exc_info=True)
        return None
    return _batch(campaign, recipients)


async def _nothing_due(
    session: AsyncSession, campaign_id: uuid.UUID, workflow_id: str, now: datetime
) -> dict[str, Any]:
    due = await repo.next_due_at(session, campaign_id)
    if due is None:
        await repo.finish(session, campaign_id, workflow_id, now)
        _forget(campaign_id)
        return {"state": "sent"}
    wait = (due - now).total_seconds()
    if wait > MAX_WAIT_SECONDS:
        # Parked rather than asleep: a sleeping run holds its slot of the campaigns
        # queue (a few in the cluster) until the recipients are due.
        _forget(campaign_id)
        resume_at = due - timedelta(seconds=RESUME_LEAD_SECONDS)
        if not await repo.park(session, campaign_id, workflow_id, resume_at=resume_at, now=now):
            return {"state": "stopped"}
        log.info(
            "campaign parked until its next recipients are due",
            campaign_id=str(campaign_id),
            due=due.isoformat(),
            resume_at=resume_at.isoformat(),
        )
        return {"state": "parked"}
    await repo.touch(session, campaign_id, now)
    return {"state": "wait", "seconds": max(wait, 0.05)}


async def _record_batch(engine: AsyncEngine, campaign_id: uuid.UUID, sent: _Sent) -> None:
    """Record one batch's results in a transaction of its own (see :func:`_record`)."""
    async with make_sessionmaker(engine)() as session, session.begin():
        await _record(session, campaign_id, sent)


async def _owns(engine: AsyncEngine, campaign_id: uuid.UUID, workflow_id: str) -> bool:
    async with engine.connect() as conn:
        # One statement, no transaction around it (the boundary's only round trip).
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        return await repo.still_owned(conn, campaign_id, workflow_id)


@DBOS.step(name="hogsend.campaign.batch", retries_allowed=True, max_attempts=5)
async def batch_step(campaign_id: str, workflow_id: str) -> dict[str, Any]:
    """Send batches of due recipients and record them, for up to ``STEP_SECONDS``.

    A pipeline, so the provider's lanes are not kept waiting between batches: while
    batch N is in the mailer, batch N+1 is read (keyset past N) and prepared in the
    mailer (its keys locked, its first requests decided and marked, no provider call),
    and batch N-1's results are recorded, each on a connection of its own. Once N's
    last request is with a lane (past the throttle), the ownership check runs (one
    statement): a pause, cancel or takeover stops the run there and N+1 is dropped
    unsent; otherwise N+1 is let go and takes over each of the lanes (``slots``) as
    N's last calls end. A batch is recorded only once ``send_batch`` returned for it
    (every decision row and outcome committed), and the step returns only once its
    last batch is recorded.

    Returns:
        ``{"state": "more"}`` to go on, ``{"state": "wait", "seconds": s}`` when the
        next recipients are due within ``MAX_WAIT_SECONDS``, ``{"state": "parked"}``
        when they are due later (the campaign let go, see :func:`_nothing_due`),
        ``{"state": "sent"}`` when done, or ``{"state": "stopped"}`` when the run no
        longer owns the campaign.
    """
    ctx = _ctx()
    stages.lap("between steps")
    sessions = make_sessionmaker(ctx.engine)
    cid = uuid.UUID(campaign_id)
    began = time.monotonic()
    now = _now()
    async with sessions() as session, session.begin():
        campaign = await repo.owned(session, cid, workflow_id)
        if campaign is None:
            _forget(cid)
            return {"state": "stopped"}
        cap = batch_size(ctx.settings, campaign.throttle_per_second)
        lanes = ctx.settings.campaign_concurrency
        previous, rate = _paces.get(cid, (None, None))
        # The last step's read-ahead, still pending (only this run sends them, and it
        # still owns the campaign): no read, and no walk of the index entries of the
        # recipients already sent, on the path from one step to the next.
        batch = _carried_batch(cid, workflow_id, campaign)
        if batch is not None:
            stages.carried += 1
        else:
            limit = next_batch_size(cap, lanes, previous, rate)
            first = await repo.due_batch(session, cid, now, limit=limit)
            if not first:
                return await _nothing_due(session, cid, workflow_id, now)
            batch = _batch(campaign, first)
    stages.lap("first read")
    recording: asyncio.Task[None] | None = None
    # The provider lanes, shared by the step's batches: a batch let go while the one
    # before still sends takes each lane over as that one frees it.
    slots = asyncio.Semaphore(lanes)
    current = _begin(ctx, campaign, batch, slots, prepared=False)
    following: _InFlight | None = None
    try:
        while True:
            batch = current.batch
            # Sized by the last finished batch's rate: this one's is not known yet.
            size = len(batch.recipients)
            limit = next_batch_size(cap, lanes, size, rate)
            ahead = asyncio.ensure_future(
                _read_ahead(ctx.engine, campaign, batch.recipients[-1], limit)
            )
            # Whether the run still owns the campaign, when checked as this batch drained.
            owns: bool | None = None
            try:
                upcoming = await ahead
                if (
                    upcoming is not None
                    and upcoming.recipients
                    and time.monotonic() - began < STEP_SECONDS
                ):
                    # Prepared while this batch sends: the next one locks its keys and
                    # decides its first sends (marked, no provider call) meanwhile.
                    following = _begin(ctx, campaign, upcoming, slots, prepared=True)
                drained = asyncio.ensure_future(current.drained.wait())
                await asyncio.wait((current.task, drained), return_when=asyncio.FIRST_COMPLETED)
                drained.cancel()
                if following is not None and not current.task.done():
                    # The batch's last requests are with its lanes, past the throttle:
                    # the run's ownership is checked now (a pause, cancel or takeover
                    # stops the run here). Let go, the next batch takes each lane over
                    # as this one's last calls end: the lanes never wait for the boundary.
                    try:
                        owns = await _owns(ctx.engine, cid, workflow_id)
                    except Exception:
                        # The step fails and its retry starts from the recipients'
                        # status; the calls under way end rather than being cut off.
                        await current.settle()
                        raise
                    if owns:
                        following.release()
                    else:
                        await following.stop()
                        following = None
                sent = await current.task
                stages.lap("send")
            finally:
                if not ahead.done():
                    ahead.cancel()
            rate = size / max(time.perf_counter() - current.sending, 1e-6)
            _paces[cid] = (size, rate)
            stages.batches += 1
            stages.recipients += size
            if recording is not None:
                # The batch before: a failed record fails the step, whose retry finds
                # both batches' recipients pending (and the mailer answers `duplicate`).
                done, recording = recording, None
                await done
                stages.lap("record")
            if sent.problem is not None:
                # The recorded recipients stay recorded; the step's retry sends the rest.
                await _record_batch(ctx.engine, cid, sent)
                raise sent.problem
            recording = asyncio.create_task(_record_batch(ctx.engine, cid, sent))
            if owns is None:
                # Not checked as the batch drained (it ended first, or no batch was
                # prepared): checked at the boundary.
                owns = await _owns(ctx.engine, cid, workflow_id)
                stages.lap("owner check")
            if not owns:
                _forget(cid)
                return {"state": "stopped"}
            if following is not None:
                # Let go as this batch drained (sending already), or now.
                if not following.released:
                    following.release()
                current, following = following, None
                stages.prepared += 1
                continue
            if time.monotonic() - began >= STEP_SECONDS:
                # DBOS checkpoints the step; the next one goes on from the recipients'
                # status, starting with the batch read ahead (if this process runs it).
                if upcoming is not None and upcoming.recipients:
                    _carried[cid] = (workflow_id, _shape(campaign), upcoming)
                return {"state": "more"}
            if upcoming is not None and upcoming.recipients:
                current = _begin(ctx, campaign, upcoming, slots, prepared=False)
                continue
            # Read at the boundary (none read ahead, or the read failed): the recipients
            # just sent must have left `pending` first.
            done, recording = recording, None
            await done
            limit = next_batch_size(cap, lanes, size, rate)
            now = _now()
            async with sessions() as session, session.begin():
                recipients = await repo.due_batch(session, cid, now, limit=limit)
                if not recipients:
                    return await _nothing_due(session, cid, workflow_id, now)
            current = _begin(ctx, campaign, _batch(campaign, recipients), slots, prepared=False)
            stages.lap("record")
    except Exception:
        # The step fails (its retry starts from the recipients' status): a batch already
        # sending is let end, not cut off between the provider and its outcome's commit.
        if following is not None and following.released:
            await following.settle()
        raise
    finally:
        if following is not None:
            # Stopped, failed or interrupted before the prepared batch could send.
            await following.stop()
        await current.stop()
        if recording is not None:
            # Every way out of the step waits for the last batch's record: the counts
            # are exact when the step ends, and no task outlives it.
            try:
                await recording
            except BaseException:
                # The step's retry starts from the recipients' status, not past them.
                _carried.pop(cid, None)
                raise
            stages.lap("record")


# ---------------------------------------------------------------------------- the run


@DBOS.workflow(name=WORKFLOW_NAME)
async def campaign_run(campaign_id: str, workflow_id: str) -> str:
    """One run of a campaign: snapshot (skipped once done: a run after a park, a pause
    or a reap starts from the pending recipients), then batches until sent, parked or
    stopped."""
    ready = await snapshot_step(campaign_id, workflow_id)
    if ready["state"] == "stopped":
        return "stopped"
    while True:
        step = await batch_step(campaign_id, workflow_id)
        state = str(step["state"])
        if state in ("sent", "parked", "stopped"):
            return state
        if state == "wait":
            # Bounded here too: a run recovered from before parking existed may replay
            # a step's recorded wait of hours.
            await DBOS.sleep_async(min(float(step["seconds"]), MAX_WAIT_SECONDS))


# ---------------------------------------------------------------------- the scheduler


class CampaignScheduler:
    """Starts due campaigns and reaps stuck ones; one per worker.

    Args:
        app: the user's app (templates, lists).
        settings: poll interval, stale threshold, batch size.
        engine: hogsend's database.
        mailer: the worker's mailer, used by the runs this process executes.
    """

    def __init__(self, app: Hogsend, settings: Settings, engine: AsyncEngine, mailer: Mailer):
        self.app = app
        self.settings = settings
        self.engine = engine
        self.mailer = mailer
        self._sessions = make_sessionmaker(engine)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        """Make runs possible in this process and start the loop."""
        global _context
        _context = _Context(
            app=self.app, settings=self.settings, engine=self.engine, mailer=self.mailer
        )
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="hogsend-campaigns")

    async def stop(self) -> None:
        """Stop the loop (runs in flight are DBOS's to drain or recover)."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def run_once(self) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        """One round: reap, then claim and enqueue; returns (reaped, started) ids."""
        now = _now()
        async with self._sessions() as session, session.begin():
            reaped = await repo.reap_stale(
                session, now, timedelta(seconds=self.settings.campaign_stale_seconds)
            )
        if reaped:
            log.warning("stuck campaigns handed to a new run", campaigns=[str(i) for i in reaped])
        started: list[uuid.UUID] = []
        async with self._sessions() as session, session.begin():
            for campaign_id, workflow_id in await repo.claim_due(session, now, limit=10):
                # Enqueued before the claim commits; the run's first step waits on the row
                # lock, and if this transaction fails the run finds it does not own the row.
                with SetWorkflowID(workflow_id):
                    await DBOS.enqueue_workflow_async(
                        CAMPAIGNS.name, campaign_run, str(campaign_id), workflow_id
                    )
                started.append(campaign_id)
        if started:
            log.info("campaigns started", campaigns=[str(i) for i in started])
        return reaped, started

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                await self.run_once()
            except Exception:
                log.warning("campaign scheduling round failed", exc_info=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._stopping.wait(), timeout=self.settings.campaign_poll_seconds
                )
