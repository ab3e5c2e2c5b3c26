"""Many sends at once: the mailer's set-based path, for campaign batches.

:func:`send_batch` makes one attempt per request with the gates, their order, reason
codes and decision rows of :meth:`~hogsend.channels.mailer.Mailer.send`, but does the
database work for the whole batch together:

0. the idempotency keys' session locks, all of them in hash order, for the whole batch;
1. ``concurrency`` lanes each take the next request and hand it to a
   :class:`GroupCommit` that decides every request handed in meanwhile in one
   transaction of two round trips: the addresses' locks, the contacts and every gate's
   facts (one pipeline, with the keys' locks for the batch's first group); rendering and
   tracking; every decision row and every new link set (one statement) and the commit
   (one pipeline). A message that goes out is committed with its links as ``queued``
   before the provider accepts it (the first chunk's provider calls begin while it
   commits, and the line that ends each message waits for the commit);
2. the lane calls the provider;
3. the lane hands the outcome (and the ``email.sent`` event) to the mailer's outcome
   :class:`GroupCommit` and waits for its commit before taking the next request (in a
   batch decided a chunk at a time, each write first waits for the other sending
   lanes' outcomes, :data:`OUTCOME_HOLD` at most: one write per round of lanes).

So a lane never has more than one ``queued`` row unrecorded (consecutive batches that
share their lanes through ``slots`` count as one): a kill leaves at most
``concurrency`` attempts open (closed as interrupted by whichever attempt takes the
key over), and at most that many accepted messages unrecorded (the at-least-once
window, docs/email.md, "Performance"), while the database sees about two transactions
per ``concurrency`` messages.

Requests the set-based path does not cover (no contact or no key, a contact merged
away or deleted, a key repeated within the batch) go through ``Mailer.send`` one by
one, after the batch released its locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import uuid
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from hogsend.channels.email.message import (
    EmailProvider,
    OutgoingEmail,
    ProviderResult,
    send_when,
)
from hogsend.core.identity import normalize_email
from hogsend.core.ids import new_uuid4
from hogsend.core.ingest import EventInput
from hogsend.core.mailer_gates import GateResult, decide
from hogsend.core.send_windows import recipient_timezone
from hogsend.core.tracking import LinkSet
from hogsend.db.repos import contacts as contacts_repo
from hogsend.db.repos import sends
from hogsend.errors import (
    NoRecipient,
    ProviderAlreadyAccepted,
    ProviderError,
    TemplateError,
    TransientProviderError,
)

if TYPE_CHECKING:
    from hogsend.channels.mailer import Mailer, SendOutcome, SendRequest, _Recipient

T = TypeVar("T")
Item = tuple[dict[str, Any], EventInput | None]
"""What :class:`GroupCommit` records for one attempt: its ``finish`` row and event."""
BeforeSend = Callable[[], Awaitable[object]]
Answered = Callable[[int, "SendOutcome"], None]
"""Told (request index, outcome) as soon as an attempt's outcome is durable."""


class GroupCommit(Generic[T]):
    """Writes items handed in concurrently, many per transaction, each caller waiting.

    No background task: the first caller that finds no write running writes everything
    pending (its own item included) and the others wait for it. When a write ends with
    items handed in meanwhile, the first of their callers still waiting is given the
    turn and writes them all. So one transaction carries what piled up while the
    previous one ran.

    Each caller waits on its own future only (no ``asyncio.wait`` per item: it was the
    larger part of a group's cost in the sending process). A cancelled caller's item is
    still written with the others; if the turn was its, it passes the turn on.

    With ``more`` (told how many items are pending, it says whether more are on their
    way) a write waits for them, ``hold`` seconds at most, before it starts: fewer,
    larger writes where every write's fixed cost (a statement's start-up, a commit)
    is paid per write, not per item.
    """

    def __init__(
        self,
        write: Callable[[list[T]], Awaitable[None]],
        *,
        more: Callable[[int], bool] | None = None,
        hold: float = 0.0,
    ) -> None:
        self._write = write
        self._more = more
        self._hold = hold
        self._pending: list[_Handed[T]] = []
        self._writing = False
        # The caller told to write next and not yet writing: one at a time.
        self._turn: _Handed[T] | None = None
        # Done when an item is handed in while a write waits for more (see ``more``).
        self._arrived: asyncio.Future[None] | None = None

    async def submit(self, item: T) -> None:
        """Return once ``item`` is written; raise what its write raised."""
        loop = asyncio.get_running_loop()
        handed = _Handed(item, loop.create_future())
        self._pending.append(handed)
        arrived = self._arrived
        if arrived is not None and not arrived.done():
            arrived.set_result(None)
        try:
            if not self._writing:
                # Let callers started at the same time (lanes, coalesced sends) hand
                # theirs in first: one write instead of a lone item, then the rest.
                await asyncio.sleep(0)
            while handed.outcome is None:
                if handed.told.done():
                    # The turn to write (a write carrying ours sets the outcome first).
                    if self._turn is handed:
                        self._turn = None
                    handed.told = loop.create_future()
                elif not self._writing:
                    # Not carried by a write that ended, and none runs: ours is pending.
                    await self._write_pending()
                else:
                    # Told when the running write (or a later one) carried ours, or when
                    # the turn to write is ours.
                    await handed.told
        finally:
            if self._turn is handed:
                self._turn = None
            if not handed.told.done():
                handed.told.cancel()  # nobody waits on it; a pending item is still written
            self._pass_turn()
        if handed.outcome is not _WRITTEN:
            raise handed.outcome

    async def _write_pending(self) -> None:
        self._writing = True
        try:
            if self._more is not None:
                # Cancelled while gathering: the pending items stay for the next writer.
                await self._gather()
            batch, self._pending = self._pending, []
            try:
                await self._write([handed.item for handed in batch])
            except BaseException as exc:
                error = (
                    exc if isinstance(exc, Exception) else RuntimeError("the write was interrupted")
                )
                for handed in batch:
                    handed.outcome = error
                    if not handed.told.done():
                        handed.told.set_exception(error)
                        handed.told.exception()  # retrieved: its caller reads the outcome
                if not isinstance(exc, Exception):
                    raise
            else:
                for handed in batch:
                    handed.outcome = _WRITTEN
                    if not handed.told.done():  # done: its caller was cancelled
                        handed.told.set_result(None)
        finally:
            self._writing = False
            self._pass_turn()

    def _pass_turn(self) -> None:
        """Wake the first caller still waiting on a pending item to write them all."""
        if self._writing or self._turn is not None:
            return
        for handed in self._pending:
            if not handed.told.done():
                handed.told.set_result(None)
                self._turn = handed
                return

    async def _gather(self) -> None:
        """Wait while ``more`` says items are on their way, ``hold`` seconds at most."""
        assert self._more is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._hold
        while self._more(len(self._pending)):
            left = deadline - loop.time()
            if left <= 0:
                return
            arrived = self._arrived = loop.create_future()
            timer = loop.call_later(left, _finish, arrived)
            try:
                await arrived
            finally:
                timer.cancel()
                self._arrived = None


_WRITTEN = object()
"""A :class:`GroupCommit` item's outcome once written."""


class _Handed(Generic[T]):
    """An item handed to a :class:`GroupCommit`, its outcome, and the future its caller
    is told on (that its item is written or failed, or that the turn to write is its)."""

    __slots__ = ("item", "outcome", "told")

    def __init__(self, item: T, told: asyncio.Future[None]) -> None:
        self.item = item
        self.told = told
        self.outcome: Any = None  # _WRITTEN, or the exception its write raised


def _finish(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@dataclass(slots=True, kw_only=True)
class _Going:
    """An attempt that passed the gates, its row committed as ``queued``."""

    index: int
    request: SendRequest
    who: _Recipient
    send_id: uuid.UUID
    result: GateResult
    provider: EmailProvider
    message: OutgoingEmail
    started: bool
    """False while its row is marked in ``email_send_marks`` (decided, not yet given to a
    lane)."""


async def send_batch(
    mailer: Mailer,
    requests: Sequence[SendRequest],
    *,
    concurrency: int,
    before_send: BeforeSend | None = None,
    answered: Answered | None = None,
    start: asyncio.Future[None] | None = None,
    drained: Callable[[], None] | None = None,
    slots: asyncio.Semaphore | None = None,
) -> list[SendOutcome | Exception]:
    """One attempt per request; per request its outcome or the exception ``send`` raises.

    Args:
        mailer: the mailer whose templates, settings, provider and database to use.
        requests: the sends; keys must differ (a repeated one is a ``duplicate``).
        concurrency: provider calls in flight at once.
        before_send: awaited before each provider call (a throttle).
        answered: told each message that went out as soon as its outcome is committed
            (before the batch ends and releases its keys' locks), so a waiting caller
            can go on.
        start: when given, the batch locks its keys and decides its first requests
            (all marked, none ready for the provider) and calls no provider before this
            future is done: a campaign prepares its next batch while the one before
            ends. Cancel the batch instead of finishing the future to drop it: what it
            decided (never sent) is removed before its keys unlock (stopped while its
            first decisions were still being written, or if the removal fails, they
            stay marked for the attempt that takes a key over, as after a crash).
        drained: called once every request is decided, handed to a lane and past
            ``before_send`` (the batch's last provider calls are under way).
        slots: provider lanes shared with the batches before and after this one (at
            least ``concurrency`` of them): each of this batch's lanes holds one from
            before its first provider call until its last outcome is committed. So a
            batch started while the one before still sends takes each lane over as
            that one frees it, and together they never have more than the semaphore's
            count of messages between the provider and their committed outcome.
    """
    outcomes: list[SendOutcome | Exception | None] = [None] * len(requests)
    batched: list[int] = []
    single: list[int] = []
    keys: set[str] = set()
    for index, request in enumerate(requests):
        try:
            mailer._templates.get(request.template)
        except Exception as exc:
            outcomes[index] = exc
            continue
        key = request.idempotency_key
        if request.contact_id is None or key is None or key in keys:
            single.append(index)
        else:
            keys.add(key)
            batched.append(index)
    if batched:
        async with mailer.engine.connect() as conn:
            locked = [k for i in batched if (k := requests[i].idempotency_key) is not None]
            # Autocommit: the keys' session locks need no transaction around them (one
            # round trip each way); each decide group opens and ends its own by hand.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                # The keys' locks are taken with the first decision (one round trip less).
                await _lanes(
                    mailer,
                    conn,
                    requests,
                    batched,
                    outcomes,
                    single,
                    concurrency,
                    before_send,
                    locked,
                    answered,
                    start,
                    drained,
                    slots,
                )
            finally:
                try:
                    await sends.end_transaction(conn, commit=False)
                    await sends.unlock_keys(conn, locked)
                except BaseException:
                    # Closing the connection is the other way to release the locks.
                    await conn.invalidate()
                    raise
    if single:
        # One by one after the lanes: a lane's slot each (the batch after may be sending).
        gate = slots if slots is not None else asyncio.Semaphore(concurrency)

        async def one(index: int) -> None:
            async with gate:
                if before_send is not None:
                    await before_send()
                try:
                    # One by one, not coalesced again (see Coalescer).
                    outcomes[index] = await mailer._locked_attempt(requests[index], later=False)
                except Exception as exc:
                    outcomes[index] = exc

        await asyncio.gather(*(one(i) for i in sorted(single)))
    assert all(item is not None for item in outcomes)
    return [item for item in outcomes if item is not None]


async def _decide(
    mailer: Mailer,
    conn: AsyncConnection,
    requests: Sequence[SendRequest],
    batched: list[int],
    outcomes: list[SendOutcome | Exception | None],
    single: list[int],
    *,
    started: int,
    keys: Sequence[str] = (),
) -> tuple[list[_Going], Callable[[], Awaitable[None]]]:
    """Step 1 of the module docstring, in a transaction opened on ``conn``: the attempts
    that go out, and the write of every decision row and link with the transaction's
    COMMIT (one round trip, awaited next; the caller rolls back if it fails).

    The first ``started`` attempts that go out are written ready for their provider
    call; the others are marked (``marked`` of
    :func:`~hogsend.db.repos.sends.insert_attempts`). ``keys``: the batch's idempotency
    keys, locked (session-level) in the first round trip.
    """
    from hogsend.channels.mailer import (
        SendOutcome,
        _deferred_request,
        _Recipient,
        _with_resend_note,
        effective_category,
        facts_from_stored,
    )

    settings = mailer.settings
    now = mailer._clock()
    # Opens the group's transaction (the caller ends it): the keys' and the addresses'
    # locks, the contacts and every request's facts (its address the caller's, else the
    # contact's own), in one round trip. Facts read for a request that turns out to go
    # elsewhere (a contact merged away, an address refused) are not used.
    queries: list[sends.FactsQuery] = []
    categories: list[str | None] = []
    # Each request's own address normalized once (a campaign gives every one), or why
    # it was refused.
    given: list[str | Exception | None] = []
    for index in batched:
        request = requests[index]
        try:
            to = normalize_email(request.to_email)
        except Exception as exc:
            to = None  # refused below; the contact's own address is locked meanwhile
            given.append(exc)
        else:
            given.append(to)
        category = effective_category(
            request, mailer._templates.get(request.template).meta.category
        )
        categories.append(category)
        queries.append(
            sends.FactsQuery(
                idempotency_key=request.idempotency_key,
                contact_id=request.contact_id,
                email=to,
                list_id=request.list_id or category,
                journey_id=request.journey_id,
            )
        )
    found, all_stored = await sends.begin_and_read_batch(
        conn,
        queries,
        keys=keys,
        since=now - timedelta(seconds=settings.frequency_cap_window_seconds),
    )
    people: list[tuple[int, _Recipient, str | None, str | None]] = []
    stored: list[sends.StoredFacts] = []
    for index, query, category, facts_stored, to_given in zip(
        batched, queries, categories, all_stored, given, strict=True
    ):
        request = requests[index]
        row = found.get(request.contact_id) if request.contact_id is not None else None
        if row is None or row.deleted_at is not None:
            single.append(index)  # merged away or erased: the single path follows it
            continue
        contact = contacts_repo.contact_from_row(row)
        if isinstance(to_given, Exception):
            outcomes[index] = to_given
            continue
        address = to_given or contact.email
        if address is None:
            outcomes[index] = NoRecipient(
                f"contact {request.contact_id} has no email address and no to_email"
            )
            continue
        who = _Recipient(contact=contact, contact_id=contact.id, deleted=False, to_email=address)
        people.append((index, who, category, query.list_id))
        stored.append(facts_stored)
    if not people:
        return [], functools.partial(sends.end_transaction, conn, commit=True)
    test_to = settings.test_mode_recipient if settings.test_mode else None
    # Attempts earlier in this batch count towards the cap like committed ones would.
    counted: Counter[str] = Counter()
    rows: list[dict[str, Any]] = []
    abandoned: list[uuid.UUID] = []
    deferred: list[tuple[uuid.UUID, datetime, dict[str, Any]]] = []
    going: list[_Going] = []
    # A campaign's messages share their link set: each written once per batch.
    link_sets: dict[uuid.UUID, LinkSet] = {}
    for (index, who, category, list_id), facts_stored in zip(people, stored, strict=True):
        request = requests[index]
        address = who.to_email.lower()
        if counted[address]:
            facts_stored = dataclasses.replace(
                facts_stored, recent_sends=facts_stored.recent_sends + counted[address]
            )
        holder = facts_stored.key_holder
        if holder is not None and holder.decision == "queued" and not holder.waiting:
            abandoned.append(holder.id)  # its process died mid-send; take over (see _attempt)
        facts = facts_from_stored(
            facts_stored,
            app=mailer.app,
            settings=settings,
            request=request,
            contact_deleted=False,
            contact_timezone=recipient_timezone(who.contact),
            list_id=list_id,
            now=now,
        )
        result = _with_resend_note(request, decide(facts))
        send_id = new_uuid4()
        row = decision_row(mailer, request, who, send_id, category, test_to)
        if not result.goes_out:
            rows.append(
                {
                    **row,
                    "status": "skipped",
                    "decision": result.decision,
                    "key": None,
                    "duplicate_of_id": result.duplicate_of,
                    "detail": dict(result.detail) or None,
                }
            )
            if result.decision == "deferred" and request.resend_when_open:
                # Kept for the sweep, in the decision row's transaction.
                assert result.deferred_until is not None
                deferred.append(
                    (send_id, result.deferred_until, _deferred_request(request, send_id))
                )
            outcomes[index] = SendOutcome(
                send_id=send_id,
                decision=result.decision,
                detail=result.detail,
                deferred_until=result.deferred_until,
                duplicate_of=result.duplicate_of,
            )
            continue
        try:
            provider, message, links = mailer._compose(
                request, send_id=send_id, result=result, who=who, list_id=list_id, now=now
            )
        except TemplateError as exc:
            rows.append(
                {
                    **row,
                    "status": "failed",
                    "decision": "provider_error",
                    "key": None,
                    "detail": {"gate": "provider_error", "stage": "render", "error": str(exc)},
                    "error": f"render: {exc}",
                }
            )
            outcomes[index] = exc
            continue
        if request.kind not in sends.CAP_EXEMPT_KINDS:
            counted[address] += 1
        ready = len(going) < started
        rows.append(
            {
                **row,
                "status": "queued",
                "decision": "queued",
                "key": request.idempotency_key,
                "detail": dict(result.detail) or None,
            }
        )
        if links is not None:
            link_sets[links.id] = links
        going.append(
            _Going(
                index=index,
                request=request,
                who=who,
                send_id=send_id,
                result=result,
                provider=provider,
                message=message,
                started=ready,
            )
        )

    async def write() -> None:
        await sends.write_decisions(
            conn,
            rows,
            list(link_sets.values()),
            marked=[g.send_id for g in going if not g.started],
            abandoned=abandoned,
            deferred=deferred,
        )

    return going, write


def decision_row(
    mailer: Mailer,
    request: SendRequest,
    who: _Recipient,
    send_id: uuid.UUID,
    category: str | None,
    test_to: str | None,
) -> dict[str, Any]:
    """The columns every decision row has (see ``sends.insert_attempts``), a lone send's too."""
    return {
        "id": send_id,
        "contact_id": who.contact_id,
        "user_id": who.contact.key if who.contact is not None else None,
        "to_email": who.to_email,
        "from_email": request.from_email or mailer.settings.email_from,
        "subject": request.subject,
        "template_key": request.template,
        "category": category,
        "journey_id": request.journey_id,
        "journey_state_id": request.journey_state_id,
        "campaign_id": request.campaign_id,
        "duplicate_of_id": None,
        "redirected_to": test_to,
        "kind": request.kind,
        "error": None,
    }


DECIDE_CHUNK = 64
"""Requests one decide transaction takes after a batch's first ``concurrency``."""
OUTCOME_HOLD = 0.005
"""Seconds an outcome write of a long batch waits at most for the other lanes' outcomes
(a provider round trip on a loaded machine; a lane whose call takes longer is not waited
for)."""


class _Feed:
    """The attempts that go out, in request order, decided a chunk at a time ahead of need.

    The first chunk is decided before the lanes start; the next one is decided (in a
    task of its own, on the batch's connection) as soon as no more than ``low`` decided
    attempts wait, so the lanes seldom wait for a decision.
    """

    def __init__(
        self, decide: Callable[[list[int]], Awaitable[list[_Going]]], chunks: list[list[int]]
    ) -> None:
        self._decide = decide
        self._chunks = deque(chunks)
        self._ready: deque[_Going] = deque()
        self._task: asyncio.Task[None] | None = None
        self.low = 0

    def extend(self, going: list[_Going]) -> None:
        self._ready.extend(going)

    async def _fill(self) -> None:
        try:
            self._ready.extend(await self._decide(self._chunks.popleft()))
        finally:
            self._task = None

    def ahead(self) -> None:
        """Start deciding the next chunk if no more than ``low`` decided attempts wait."""
        if len(self._ready) <= self.low and self._task is None and self._chunks:
            self._task = asyncio.ensure_future(self._fill())

    async def take(self) -> _Going | None:
        """The next attempt to send; None when every request was decided and taken."""
        while True:
            self.ahead()
            if self._ready:
                return self._ready.popleft()
            if self._task is None:
                return None
            await asyncio.shield(self._task)

    def waiting(self) -> list[uuid.UUID]:
        """The decided attempts no lane has taken (each still marked)."""
        return [going.send_id for going in self._ready]

    async def close(self) -> None:
        """Stop a decision still running (the batch is ending: its connection goes)."""
        task = self._task
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _lanes(
    mailer: Mailer,
    conn: AsyncConnection,
    requests: Sequence[SendRequest],
    batched: list[int],
    outcomes: list[SendOutcome | Exception | None],
    single: list[int],
    concurrency: int,
    before_send: BeforeSend | None,
    keys: Sequence[str],
    answered: Answered | None = None,
    start: asyncio.Future[None] | None = None,
    drained: Callable[[], None] | None = None,
    slots: asyncio.Semaphore | None = None,
) -> None:
    """``concurrency`` lanes; each takes the next decided attempt, sends it, records it.

    Decisions are made a chunk of requests at a time ahead of the lanes (one transaction
    per chunk). An attempt decided ahead is marked (``email_send_marks``) until a lane
    takes it: the lane's commit of its previous outcome also takes the mark off, and
    only then does the lane call the provider. So a lane never has more than one
    attempt between "handed to the provider" and "outcome committed" (a kill leaves at
    most ``concurrency`` of them), and an attempt still marked was never sent: the
    attempt taking its key over after a crash removes it.

    Decisions are written on ``conn`` (the connection holding the keys' locks) and
    outcomes on one more connection, both held for the whole batch: taking a pooled
    connection per group (and pinging it) cost more than the group's own statements.
    A batch decided in one go (no chunk left after the first) records its outcomes on
    ``conn`` too, idle by then: a coalesced batch of a few sends paid for a second
    checkout (about 0.1 ms of CPU) as much as for a statement.
    """
    lanes = max(1, min(concurrency, len(batched)))
    # The first chunk feeds every lane at once; its attempts are written ready for the
    # provider (no mark to take off) unless a throttle may hold a lane before sending.
    first, rest = batched[:lanes], batched[lanes:]
    prestart = 0 if before_send is not None or start is not None else lanes

    async def decide_unwritten(
        indexes: list[int], started: int = 0, keys: Sequence[str] = ()
    ) -> tuple[list[_Going], Callable[[], Awaitable[None]]]:
        try:
            return await _decide(
                mailer, conn, requests, indexes, outcomes, single, started=started, keys=keys
            )
        except BaseException:
            # The keys' session locks survive a rollback.
            await sends.end_transaction(conn, commit=False)
            raise

    async def write(rows: Callable[[], Awaitable[None]]) -> None:
        try:
            await rows()  # the decisions and their COMMIT
        except BaseException:
            await sends.end_transaction(conn, commit=False)
            raise

    def failed(indexes: list[int], exc: Exception) -> None:
        for index in indexes:
            if outcomes[index] is None and index not in single:
                outcomes[index] = exc

    try:
        going, rows = await decide_unwritten(first, prestart, keys)
    except Exception as exc:
        # The keys may not be locked: nothing of this batch is decided.
        failed(batched, exc)
        return

    async def write_first() -> bool:
        """Write and commit the first chunk's decisions; False (every request failed) if
        that failed."""
        try:
            await write(rows)
        except Exception as exc:
            for index in first:
                if index not in single:
                    outcomes[index] = exc  # gated outcomes too: their rows are not written
            failed(batched, exc)
            return False
        return True

    # Without a throttle or a start to wait for, every attempt of the first chunk is
    # ready for its provider call (``prestart``), and the lanes start those calls while
    # the chunk's rows are written: the provider accepts a message only once they are
    # committed (the gate). Marked attempts wait for the commit: their marks must be
    # in before a lane's commit can take one off.
    first_written = asyncio.ensure_future(write_first())
    if prestart == 0 and not await first_written:
        return

    async def decide(indexes: list[int]) -> list[_Going]:
        # The batch's connection is the first chunk's until its rows are committed.
        if not await first_written:
            return []
        try:
            going, rows = await decide_unwritten(indexes)
            await write(rows)
        except Exception as exc:
            failed(indexes, exc)
            return []
        return going

    chunks = [rest[i : i + DECIDE_CHUNK] for i in range(0, len(rest), DECIDE_CHUNK)]
    feed = _Feed(decide, chunks)
    # A chunk's decision (a few round trips, and rendering its messages) can take longer
    # than the lanes take to send a few attempts: started while a chunk's worth still
    # waits, it is ready before they run out (lanes waiting for a decision left the
    # provider idle two or three times per campaign batch).
    feed.low = max(lanes, DECIDE_CHUNK)
    initial = [g for g in going if g.started]
    feed.extend([g for g in going if not g.started])
    # The next chunk is decided (and marked) while the first one's calls start, or while
    # a prepared batch waits: the lanes do not run dry after their first attempts.
    feed.ahead()
    if start is not None:
        try:
            await start
        except BaseException:
            await feed.close()
            # Dropped before it was let go (a pause, cancel or takeover): nothing it
            # decided reached a provider, and it still holds the keys. Its attempts go as
            # if never decided: a cancelled campaign leaves none `queued`, a resumed run
            # decides them afresh. Left for the attempt that takes a key over if this
            # fails (as after a crash).
            with contextlib.suppress(Exception):
                await sends.discard_never_sent(conn, feed.waiting())
            raise

    async with contextlib.AsyncExitStack() as held:
        recorder = conn
        if chunks:
            # Outcomes commit while later chunks are decided on conn: one more connection.
            recorder = await held.enter_async_context(mailer.engine.connect())
            await recorder.execution_options(isolation_level="AUTOCOMMIT")

        async def record(items: list[tuple[tuple[int, Item] | None, uuid.UUID | None]]) -> None:
            await mailer._write_outcomes(
                [done[1] for done, _ in items if done is not None],
                recorder,
                starts=[start for _, start in items if start is not None],
            )
            if answered is not None:
                # All of the commit's callers told at once, so that they resume (and
                # hand in their next sends) together.
                for done, _ in items:
                    if done is not None:
                        outcome = outcomes[done[0]]
                        if outcome is not None and not isinstance(outcome, Exception):
                            answered(done[0], outcome)

        def more(pending: int) -> bool:
            # Each lane has at most one item in the group commit: a lane still sending
            # that has none pending is between its gate and its next hand-in (the
            # provider's answer, the next attempt), a provider round trip away.
            return pending < sending

        # A long batch (campaigns) with no throttle and no caller told per message: an
        # outcome write waits a moment for every sending lane's outcome (OUTCOME_HOLD at
        # most), so about one statement and commit per round of lanes instead of one
        # per two or three outcomes. A lane still never has more than one accepted
        # message unrecorded: the window is the same, its commits fewer.
        gathering = bool(chunks) and before_send is None and answered is None
        recorded: GroupCommit[tuple[tuple[int, Item] | None, uuid.UUID | None]]
        recorded = GroupCommit(record, more=more if gathering else None, hold=OUTCOME_HOLD)

        async def commit(done: tuple[int, Item] | None, attempt: _Going | None) -> bool:
            """Commit ``done``'s outcome and take ``attempt``'s mark off; False on failure."""
            start = attempt.send_id if attempt is not None and not attempt.started else None
            if done is None and start is None:
                return True
            try:
                await recorded.submit((done, start))
            except Exception as exc:
                if done is not None:
                    outcomes[done[0]] = exc
                if attempt is not None:
                    outcomes[attempt.index] = exc  # still marked: never sent
                return False
            return True

        # A batch decided in one go (coalesced sends, a small batch) answers its callers
        # when it ends: its outcomes wait for the last provider call and go in one
        # commit, rather than the first lane's alone and then the rest after it.
        together = not chunks and before_send is None
        told_drained = emptied = False
        throttled = 0  # lanes holding an attempt, waiting for before_send
        sending = 0  # lanes holding their slot and not done sending (``more`` counts them)
        unfinished = lanes
        all_sent = asyncio.Event()

        async def lane(attempt: _Going | None) -> None:
            nonlocal sending, unfinished
            # Held from the lane's first provider call to its last outcome's commit.
            async with slots if slots is not None else contextlib.nullcontext():
                sending += 1
                try:
                    done = await send_all(attempt)
                finally:
                    sending -= 1
                    unfinished -= 1
                    if unfinished == 0:
                        all_sent.set()
                if together:
                    await all_sent.wait()
                await commit(done, None)

        def tell_drained() -> None:
            # Every attempt taken and past the throttle: the last calls are under way.
            nonlocal told_drained
            if emptied and throttled == 0 and drained is not None and not told_drained:
                told_drained = True
                drained()

        async def send_all(attempt: _Going | None) -> tuple[int, Item] | None:
            """Send until the feed is empty; the last outcome, not yet committed."""
            nonlocal emptied, throttled
            done: tuple[int, Item] | None = None
            # A first-chunk attempt waits for its decision row's commit (write_first).
            opening = first_written if attempt is not None and not first_written.done() else None
            while True:
                if attempt is None:
                    if done is not None and before_send is not None:
                        # Recorded before a throttle's wait, not after it.
                        await commit(done, None)
                        done = None
                    attempt = await feed.take()
                    if attempt is not None and before_send is not None:
                        throttled += 1
                        try:
                            await before_send()
                        finally:
                            throttled -= 1
                    emptied = emptied or attempt is None
                    tell_drained()
                if attempt is None:
                    return done
                # The commit of ``done`` (which also takes ``attempt``'s mark off) runs
                # while the provider gets ``attempt`` ready: the provider lets it be
                # accepted only once that commit succeeded (send_when's gate).
                gate: asyncio.Future[bool] | None = opening
                opening = None
                if done is not None or not attempt.started:
                    gate = asyncio.ensure_future(commit(done, attempt))
                done = None
                delivered: tuple[SendOutcome, Item] | Exception
                try:
                    delivered = await _deliver_one(mailer, attempt, gate)
                except Exception as exc:
                    delivered = exc
                except BaseException:
                    if gate is not None and gate is not first_written and not gate.done():
                        gate.cancel()
                    raise
                if gate is not None and not await gate:
                    # The commit failed (its error is both attempts' outcome): the
                    # provider accepted nothing, and the attempt stays marked.
                    attempt = None
                    continue
                if isinstance(delivered, Exception):
                    outcomes[attempt.index] = delivered
                else:
                    outcomes[attempt.index], item = delivered
                    done = (attempt.index, item)
                attempt = None

        try:
            starts = [initial[i] if i < len(initial) else None for i in range(lanes)]
            await asyncio.gather(*(lane(attempt) for attempt in starts))
            # Written even when no lane waited for it (no attempt of it went out).
            await first_written
        finally:
            await feed.close()
            if not first_written.done():
                # Interrupted: the connection is the batch's again only once it stopped.
                first_written.cancel()
                with contextlib.suppress(BaseException):
                    await first_written


class GatedProvider:
    """``provider``, accepting a message only once ``gate`` gives True (``send_when``)."""

    def __init__(self, provider: EmailProvider, gate: asyncio.Future[bool]) -> None:
        self.name = provider.name
        self._provider = provider
        self._gate = gate

    async def send(self, message: OutgoingEmail) -> ProviderResult:
        """Send through the wrapped provider, gated."""
        return await send_when(self._provider, message, self._gate)

    async def aclose(self) -> None:
        """Nothing: the wrapped provider is the mailer's, not this call's, to close."""


async def _deliver_one(
    mailer: Mailer, attempt: _Going, gate: asyncio.Future[bool] | None = None
) -> tuple[SendOutcome, Item]:
    """Call the provider for ``attempt``: its outcome, and the row and event recording it.

    With a ``gate``, the provider may accept the message only once it gives True.

    Raises:
        GateClosed: ``gate`` gave False; nothing was sent.
    """
    from hogsend.channels.mailer import SendOutcome

    provider, message = attempt.provider, attempt.message
    request, result, send_id = attempt.request, attempt.result, attempt.send_id
    retries: list[dict[str, Any]] = []
    calling: EmailProvider = provider if gate is None else GatedProvider(provider, gate)
    accepted, calls, error = await mailer._call_provider(calling, message, retries)
    finish: dict[str, Any] = {
        "id": send_id,
        "attempts": calls,
        "message_id": None,
        "error": None,
        "subject": message.subject,
    }
    if isinstance(error, ProviderAlreadyAccepted):
        detail: dict[str, Any] = {
            "gate": result.decision,
            "provider": error.provider,
            "providerCalls": calls,
            "providerDuplicate": True,
            "providerAnswer": str(error),
        }
        finish.update(decision=result.decision, detail=detail, provider=error.provider)
        event = mailer._sent_event(request, send_id, attempt.who)
        return SendOutcome(send_id=send_id, decision=result.decision, detail=detail), (
            finish,
            event,
        )
    if accepted is None:
        assert error is not None
        detail = {
            "gate": "provider_error",
            "provider": provider.name,
            "error": str(error),
            "transient": isinstance(error, TransientProviderError),
            "status": error.status if isinstance(error, ProviderError) else None,
            "providerCalls": calls,
        }
        if retries:
            detail["retries"] = retries
        finish.update(
            decision="provider_error", detail=detail, provider=provider.name, error=str(error)
        )
        return SendOutcome(send_id=send_id, decision="provider_error", detail=detail), (
            finish,
            None,
        )
    detail = {
        "gate": result.decision,
        "provider": accepted.provider,
        "providerCalls": calls,
        "waitedSeconds": round(accepted.waited_seconds, 3),
    }
    if result.decision == "redirected":
        detail["redirectedTo"] = message.to if provider is mailer.provider else "outbox"
    if retries:
        detail["retries"] = retries
    finish.update(
        decision=result.decision,
        detail=detail,
        provider=accepted.provider,
        message_id=accepted.message_id,
    )
    event = mailer._sent_event(request, send_id, attempt.who)
    outcome = SendOutcome(
        send_id=send_id,
        decision=result.decision,
        detail=detail,
        provider_message_id=accepted.message_id,
    )
    return outcome, (finish, event)


# --------------------------------------------------------------------------- coalescing

COALESCE_MAX = 64
"""Most single sends one coalesced batch carries."""
COALESCE_RUNNING = 2
"""Coalesced batches running at once (one deciding while another sends)."""


class Coalescer:
    """Concurrent :meth:`~hogsend.channels.mailer.Mailer.send` calls run as shared batches.

    Each call is handed in and waits for its own outcome (or exception); calls made
    while the batches in flight run are sent together by the next one, through
    :func:`send_batch` with one provider lane per request. So each keeps what a lone
    ``send`` promises (its key's lock from decision to outcome, one decision row, the
    outcome committed before it returns, a repeated key a ``duplicate``) while the
    database sees a few shared transactions instead of a dozen round trips per call.

    The batch runs in a task of its own: a caller cancelled while it waits leaves the
    send to finish and be recorded, as a batch that started it would.
    """

    def __init__(self, mailer: Mailer) -> None:
        self._mailer = mailer
        self._pending: list[tuple[SendRequest, asyncio.Future[SendOutcome]]] = []
        self._running = 0
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, request: SendRequest) -> SendOutcome:
        """Send ``request`` with whatever else is handed in meanwhile; its outcome."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[SendOutcome] = loop.create_future()
        # Marked retrieved: a cancelled caller no longer reads its outcome or exception.
        done.add_done_callback(_retrieved)
        self._pending.append((request, done))
        if not self._scheduled and self._running < COALESCE_RUNNING:
            # Started on the next turn of the loop, so calls made together go together.
            self._scheduled = True
            loop.call_soon(self._start)
        return await asyncio.shield(done)

    def _start(self) -> None:
        self._scheduled = False
        while self._pending and self._running < COALESCE_RUNNING:
            batch, self._pending = self._pending[:COALESCE_MAX], self._pending[COALESCE_MAX:]
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[SendRequest, asyncio.Future[SendOutcome]]]) -> None:
        def answered(index: int, outcome: SendOutcome) -> None:
            done = batch[index][1]
            if not done.done():
                done.set_result(outcome)

        try:
            outcomes = await send_batch(
                self._mailer,
                [request for request, _ in batch],
                concurrency=len(batch),
                answered=answered,
            )
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else RuntimeError("the batch was interrupted")
            for _, done in batch:
                if not done.done():
                    done.set_exception(error)
            if not isinstance(exc, Exception):
                raise
        else:
            for (_, done), outcome in zip(batch, outcomes, strict=True):
                if done.done():
                    continue
                if isinstance(outcome, Exception):
                    done.set_exception(outcome)
                else:
                    done.set_result(outcome)
        finally:
            self._running -= 1
            if self._pending and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._start)


def _retrieved(done: asyncio.Future[SendOutcome]) -> None:
    if not done.cancelled():
        done.exception()
