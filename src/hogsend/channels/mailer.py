"""The mailer: the one pipeline every sender (journeys, campaigns, the transactional API) uses.

Each call to :meth:`Mailer.send` is one attempt and writes exactly one ``email_sends``
row carrying its decision:

1. facts are read and the gates of :mod:`hogsend.core.mailer_gates` decide, in one
   transaction that also writes the row (final for a gated decision, ``queued`` for one
   that goes out);
2. the template is rendered with ``unsubscribe_url``/``preferences_url``, tracked
   (:mod:`hogsend.channels.tracking`: pixel, signed click links), headers are
   added (List-Unsubscribe + List-Unsubscribe-Post on every non-transactional message,
   X-Hogsend-Original-To in test mode);
3. the provider is called with the send's idempotency key, transient failures retried
   with backoff up to ``mailer_max_attempts`` calls;
4. the row becomes ``sent``/``redirected`` or ``provider_error``.

Attempts sharing an idempotency key are serialised by a session-level advisory lock held
from step 1 to step 4, so of ten concurrent calls one sends and nine record ``duplicate``.
docs/email.md describes the at-least-once window between steps 3 and 4.

Concurrent calls with a contact and a key run these steps together, through the batch
path (:class:`~hogsend.channels.send_batches.Coalescer`), each keeping the promises
above; rendering and tracking reuse a plan per rendering
(:mod:`hogsend.channels.message_plans`).

:meth:`Mailer.queue` stops after step 1: the ``queued`` row carries a ``handoff`` (what
steps 2-4 need) and a worker's :class:`~hogsend.runtime.courier.Courier` runs them later
through :meth:`Mailer.deliver_queued`. The transactional API sends this way, so a request
never waits for a provider.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
import weakref
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from typing import TYPE_CHECKING, Any, Literal, cast
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from hogsend.channels import tracking
from hogsend.channels.email.message import (
    EmailProvider,
    GateClosed,
    OutgoingEmail,
    ProviderResult,
)
from hogsend.channels.message_plans import MessagePlans
from hogsend.channels.send_batches import Coalescer, GatedProvider, decision_row
from hogsend.channels.send_batches import Item as OutcomeItem
from hogsend.core import tokens
from hogsend.core.contact import Contact
from hogsend.core.identity import IdentityKey, normalize_email
from hogsend.core.ids import new_uuid4
from hogsend.core.ingest import EventInput
from hogsend.core.mailer_gates import (
    TRANSACTIONAL_CATEGORY,
    Decision,
    GateResult,
    SendFacts,
    SendKind,
    SendWindow,
    decide,
)
from hogsend.core.reactions import all_journeys
from hogsend.core.send_windows import recipient_timezone
from hogsend.core.slot_init import slot_init
from hogsend.core.templates import RenderedEmail
from hogsend.core.tracking import LinkSet
from hogsend.db.repos import contacts as contacts_repo
from hogsend.db.repos import events as events_repo
from hogsend.db.repos import outbox as outbox_repo
from hogsend.db.repos import sends
from hogsend.errors import (
    ConfigurationError,
    NoRecipient,
    ProviderAlreadyAccepted,
    ProviderError,
    TemplateError,
    TemplateNotFound,
    TransientProviderError,
)

if TYPE_CHECKING:
    from hogsend.app import Hogsend
    from hogsend.channels.templates import TemplateRegistry
    from hogsend.settings import Settings

Clock = Callable[[], datetime]
Sleep = Callable[[float], Awaitable[None]]

ONE_CLICK_PATH = "/v1/email/one-click"
PREFERENCES_PATH = "/v1/email/preferences"
ORIGINAL_TO_HEADER = "X-Hogsend-Original-To"
SEND_ID_HEADER = "X-Hogsend-Send-Id"
EMAIL_SENT = "email.sent"
"""The event each message that went out to a contact emits (key ``email.sent:<send id>``)."""
EVENT_SOURCE = "mailer"
# What may stay as is in a mailto: URI's address, beside the unreserved characters
# quote() never encodes (RFC 6068's "some-delims" an address can hold); "%", "/", "?",
# "#", "&", "=" ... are percent-encoded.
_MAILTO_SAFE = "!$'*+@"
# Outside prod (where a secret key is required) links are signed with this well-known
# key so `hogsend dev` works out of the box; such links prove nothing.
_DEV_SECRET = b"hogsend-insecure-development-key-do-not-use-in-prod"


def _utcnow() -> datetime:
    return datetime.now(UTC)


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SendRequest:
    """One message to send, as every sender describes it.

    Attributes:
        template: the template key.
        contact_id: the recipient contact (its address, preferences and history).
        to_email: the address; defaults to the contact's. Without a contact, only the
            address's suppression and frequency cap apply.
        props: the template's props.
        subject: a literal subject replacing the template's.
        from_email: the From header (default: ``HOGSEND_EMAIL_FROM``).
        reply_to: the Reply-To header.
        category: the send's category (default: the template's; ``transactional`` for a
            transactional send without one).
        list_id: the list whose subscription the send needs (default: the category).
        kind: ``transactional`` (exempt from unsubscribes and caps), ``journey`` or
            ``campaign``.
        journey_id: the sending journey, for its ``suppress`` gap and the log.
        journey_state_id: the journey run.
        campaign_id: the sending campaign.
        suppress_gap: the least time between two sends of ``journey_id`` to a contact.
        send_window: when the message may go out; outside it the attempt is ``deferred``.
        idempotency_key: a key naming this send; a second attempt with a key that went
            out is a ``duplicate``. Journeys use ``<workflow id>:<step>``.
        skip_preference_check: skip the unsubscribe and cap gates (admin test sends).
        track_opens: add the open pixel (default: ``HOGSEND_TRACK_OPENS``).
        track_clicks: rewrite links to click-tracking URLs (default: ``HOGSEND_TRACK_CLICKS``).
        resend_when_open: on a ``deferred`` decision, keep the request so the worker's
            deferred-send sweep sends it again when the window opens. Senders that wait
            and call again themselves with the same idempotency key (durable journeys)
            pass False; if both resend, the key lets only one of them send.
    """

    template: str
    contact_id: uuid.UUID | None = None
    to_email: str | None = None
    props: Mapping[str, Any] = field(default_factory=dict)
    subject: str | None = None
    from_email: str | None = None
    reply_to: str | None = None
    category: str | None = None
    list_id: str | None = None
    kind: SendKind = "transactional"
    journey_id: str | None = None
    journey_state_id: uuid.UUID | None = None
    campaign_id: uuid.UUID | None = None
    suppress_gap: timedelta | None = None
    send_window: SendWindow | None = None
    idempotency_key: str | None = None
    skip_preference_check: bool = False
    track_opens: bool | None = None
    track_clicks: bool | None = None
    resend_when_open: bool = True

    def __post_init__(self) -> None:
        if self.contact_id is None and self.to_email is None:
            raise ValueError("a send needs a contact_id or a to_email")


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class SendOutcome:
    """What became of one attempt.

    Attributes:
        send_id: the attempt's ``email_sends`` row.
        decision: its reason code (see docs/email.md); ``queued`` from :meth:`Mailer.queue`
            when it passed the gates and waits for a worker.
        detail: the facts behind the decision (stored as ``decision_detail``).
        deferred_until: for ``deferred``: when the send window opens; send again then.
        duplicate_of: for ``duplicate``: the attempt that holds the key.
        provider_message_id: the provider's id of a message that went out.
    """

    send_id: uuid.UUID
    decision: Decision | Literal["queued"]
    detail: Mapping[str, Any] = field(default_factory=dict)
    deferred_until: datetime | None = None
    duplicate_of: uuid.UUID | None = None
    provider_message_id: str | None = None

    @property
    def went_out(self) -> bool:
        """Whether a provider accepted the message (``sent`` or ``redirected``)."""
        return self.decision in ("sent", "redirected")


def signing_secret(settings: Settings) -> bytes:
    """The key signing emailed links: ``HOGSEND_SECRET_KEY``, or a fixed one outside prod."""
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    if settings.env == "prod":
        raise ConfigurationError("HOGSEND_SECRET_KEY is required to sign links in emails")
    return _DEV_SECRET


def effective_category(request: SendRequest, template_category: str | None) -> str | None:
    """The caller's category, else the template's, else ``transactional`` for such sends."""
    if request.category is not None:
        return request.category
    if template_category is not None:
        return template_category
    return TRANSACTIONAL_CATEGORY if request.kind == "transactional" else None


def handoff_payload(
    request: SendRequest, result: GateResult, *, list_id: str | None
) -> dict[str, Any]:
    """What a worker needs, beyond the row's own columns, to deliver a queued attempt."""
    return {
        "props": dict(request.props),
        "replyTo": request.reply_to,
        "listId": list_id,
        "kind": request.kind,
        "decision": result.decision,
        "skipPreferenceCheck": request.skip_preference_check,
    }


async def gather_facts(
    session: AsyncSession,
    *,
    app: Hogsend,
    settings: Settings,
    request: SendRequest,
    contact_id: uuid.UUID | None,
    contact_deleted: bool,
    contact_timezone: str | None,
    to_email: str,
    list_id: str | None,
    now: datetime,
) -> tuple[SendFacts, sends.StoredFacts]:
    """The gates' facts for ``request``, read in ``session``'s transaction."""
    window = timedelta(seconds=settings.frequency_cap_window_seconds)
    stored = await sends.read_facts(
        session,
        idempotency_key=request.idempotency_key,
        contact_id=contact_id,
        email=to_email,
        list_id=list_id,
        journey_id=request.journey_id,
        since=now - window,
    )
    facts = facts_from_stored(
        stored,
        app=app,
        settings=settings,
        request=request,
        contact_deleted=contact_deleted,
        contact_timezone=contact_timezone,
        list_id=list_id,
        now=now,
    )
    return facts, stored


def facts_from_stored(
    stored: sends.StoredFacts,
    *,
    app: Hogsend,
    settings: Settings,
    request: SendRequest,
    contact_deleted: bool,
    contact_timezone: str | None,
    list_id: str | None,
    now: datetime,
) -> SendFacts:
    """The gates' facts for ``request`` from what the database said (no I/O)."""
    registered = {item.id: item for item in app.lists}
    listed = registered.get(list_id) if list_id is not None else None
    holder = stored.key_holder
    return SendFacts(
        now=now,
        kind=request.kind,
        list_id=list_id,
        list_default_opt_in=listed.default_opt_in if listed is not None else None,
        list_choice=stored.list_choice,
        skip_preference_check=request.skip_preference_check,
        # A queued holder is a duplicate when it waits for a worker (handed off); one
        # that is not was interrupted, and the attempt takes it over (see _attempt).
        duplicate_of=(
            holder.id
            if holder is not None and (holder.decision != "queued" or holder.waiting)
            else None
        ),
        contact_deleted=contact_deleted,
        suppressed=stored.suppressed,
        suppression_reason=stored.suppression_reason,
        unsubscribed_all=stored.unsubscribed_all,
        journey_last_sent_at=stored.journey_last_sent_at,
        suppress_gap=request.suppress_gap,
        recent_sends=stored.recent_sends,
        frequency_cap_count=settings.frequency_cap_count,
        frequency_cap_window=timedelta(seconds=settings.frequency_cap_window_seconds),
        send_window=request.send_window,
        contact_timezone=contact_timezone,
        test_mode=settings.test_mode,
    )


@slot_init
@dataclass(frozen=True, slots=True, kw_only=True)
class _Recipient:
    contact: Contact | None
    contact_id: uuid.UUID | None
    deleted: bool
    to_email: str
    address_locked: bool = False


async def _recipient(
    session: AsyncSession, request: SendRequest, found: sends.RecipientRow | None
) -> _Recipient:
    """Who ``request`` is about; ``found`` is its contact's row as read with the locks
    (``sends.begin_and_read_attempt``), None without a ``contact_id``."""
    contact: Contact | None = None
    deleted = False
    address = normalize_email(request.to_email) if request.to_email is not None else None
    address_locked = False
    if request.contact_id is not None:
        if found is not None and found.address_locked:
            contact, address_locked = contacts_repo.contact_from_row(cast(Any, found)), True
            address = address or contact.email
        elif found is not None and found.deleted_at is None:
            contact = contacts_repo.contact_from_row(cast(Any, found))  # live, no address
        else:
            contact = await contacts_repo.follow_contact(session, request.contact_id)
        if contact is None:
            deleted = True
            gone = await contacts_repo.get_contact(
                session, request.contact_id, include_deleted=True
            )
            # The row needs an address; an erased contact's is gone, so it stays blank.
            address = address or (gone.email if gone is not None else None) or ""
        elif address is None:
            address = contact.email
    elif address is not None:
        # An address alone still names a person when a live contact holds it (directly
        # or as a merged-away alias): their unsubscribes and lists must apply.
        holder = await contacts_repo.lookup_contacts(session, [IdentityKey("email", address)])
        contact = holder.get(IdentityKey("email", address))
    if address is None:
        raise NoRecipient(f"contact {request.contact_id} has no email address and no to_email")
    contact_id = contact.id if contact is not None else request.contact_id
    return _Recipient(
        contact=contact,
        contact_id=contact_id,
        deleted=deleted,
        to_email=address,
        address_locked=address_locked,
    )


class Mailer:
    """Decide, log, render and send: the only way hogsend sends email.

    Args:
        app: the user's app (templates and lists).
        settings: caps, retries, test mode, public URL, secret key, default From.
        engine: the async engine of the hogsend database.
        provider: where messages go (usually ``build_provider(settings, engine)``).
        clock: the current instant (a fixed or virtual one in tests).
        sleep: waits between provider retries (a fake one in tests).
        test_provider: where test-mode sends go when ``test_mode_recipient`` is unset
            (default: an outbox provider on ``engine``).
        coalesce: run concurrent :meth:`send` calls (with a contact and an idempotency
            key) as shared batches (:class:`~hogsend.channels.send_batches.Coalescer`);
            False sends each on its own.
    """

    def __init__(
        self,
        app: Hogsend,
        settings: Settings,
        engine: AsyncEngine,
        provider: EmailProvider,
        *,
        clock: Clock = _utcnow,
        sleep: Sleep = asyncio.sleep,
        test_provider: EmailProvider | None = None,
        coalesce: bool = True,
    ) -> None:
        if app.templates is None:
            raise ConfigurationError("the mailer needs an app with templates")
        self.app = app
        self.settings = settings
        self.engine = engine
        self.provider = provider
        self._templates: TemplateRegistry = app.templates
        self._secret = signing_secret(settings)
        self._clock = clock
        self._sleep = sleep
        self._test_provider = test_provider
        # email.sent events wake idle dispatchers at most this often (see NotifyThrottle).
        self._notify = outbox_repo.NotifyThrottle()
        # Concurrent send() calls with a contact and a key go out as shared batches; one
        # coalescer per event loop (its futures belong to that loop).
        self._coalesce = coalesce
        self._coalescers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Coalescer]
        self._coalescers = weakref.WeakKeyDictionary()
        # Renderings finished and tracked once, per-message values filled in after.
        base = settings.public_url
        # A marketing message's own links: template variable -> URL before its token.
        self._link_prefixes = {
            "unsubscribe_url": f"{base}{ONE_CLICK_PATH}?token=",
            "preferences_url": f"{base}{PREFERENCES_PATH}?token=",
        }
        # RFC 2369's mailto: form after the one-click URL, when an address is configured:
        # its constant part, written once; each message adds its token and a ">".
        mailto = settings.unsubscribe_mailto
        self._unsubscribe_mailto = (
            None
            if mailto is None
            else f", <mailto:{quote(mailto, safe=_MAILTO_SAFE)}?subject=unsubscribe%20"
        )
        self._token_at = len(self._link_prefixes["unsubscribe_url"])
        self._plans = MessagePlans(
            self._templates,
            public_url=base,
            secret=self._secret,
            link_prefixes=self._link_prefixes,
            untracked=tuple(base + path for path in tracking.UNTRACKED_PATHS),
        )

    # ------------------------------------------------------------------ entry point

    async def send(self, request: SendRequest) -> SendOutcome:
        """Make one attempt at ``request``; see the module docstring for the steps.

        Raises:
            TemplateNotFound: unknown template (nothing is written).
            NoRecipient: no address to send to (nothing is written).
            TemplateError: rendering failed (the row records ``provider_error``).
        """
        if self._coalesce and request.contact_id is not None and request.idempotency_key:
            # Concurrent calls share their database work (send_batches.Coalescer).
            loop = asyncio.get_running_loop()
            coalescer = self._coalescers.get(loop)
            if coalescer is None:
                coalescer = self._coalescers[loop] = Coalescer(self)
            return await coalescer.send(request)
        return await self._locked_attempt(request, later=False)

    async def queue(self, request: SendRequest) -> SendOutcome:
        """Decide and log an attempt now; leave rendering and the provider to a worker.

        Gated attempts are final as with :meth:`send`. One that passes every gate is
        recorded ``queued`` with a hand-off, and ``NOTIFY`` wakes the couriers at commit;
        the outcome's decision is then ``queued``. Attempts with the key of a waiting
        hand-off are ``duplicate``.

        Raises:
            TemplateNotFound: unknown template (nothing is written).
            NoRecipient: no address to send to (nothing is written).
        """
        return await self._locked_attempt(request, later=True)

    async def send_batch(
        self,
        requests: Sequence[SendRequest],
        *,
        concurrency: int,
        before_send: Callable[[], Awaitable[object]] | None = None,
        start: asyncio.Future[None] | None = None,
        drained: Callable[[], None] | None = None,
        slots: asyncio.Semaphore | None = None,
    ) -> list[SendOutcome | Exception]:
        """:meth:`send` for many requests, with the database work done set-based.

        Same gates, order, reason codes and rows as one :meth:`send` per request; see
        :mod:`hogsend.channels.send_batches` for the commit points. Per request, its
        outcome or the exception :meth:`send` would have raised (``NoRecipient``,
        ``TemplateError``, ...).

        Args:
            requests: the sends, each with its own idempotency key.
            concurrency: provider calls in flight at once.
            before_send: awaited before each provider call (a campaign's throttle).
            start: no provider call before this future is done (the batch prepares
                meanwhile); see :func:`~hogsend.channels.send_batches.send_batch`.
            drained: called once every request is decided, handed to a lane and past
                ``before_send``.
            slots: provider lanes shared with the batches before and after this one
                (a campaign's next batch takes each lane over as this one frees it).
        """
        from hogsend.channels.send_batches import send_batch

        return await send_batch(
            self,
            requests,
            concurrency=concurrency,
            before_send=before_send,
            start=start,
            drained=drained,
            slots=slots,
        )

    async def _locked_attempt(self, request: SendRequest, *, later: bool) -> SendOutcome:
        self._templates.get(request.template)
        held = _HeldKey(request.idempotency_key)
        async with self.engine.connect() as conn:
            # Autocommit: the attempt opens and ends its transactions by hand, each step a
            # pipeline of statements (sends.begin_and_read_attempt and what follows it).
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            try:
                return await self._attempt(request, conn, held, later=later)
            finally:
                try:
                    # Whatever an error left open; nothing is sent when nothing is.
                    await sends.end_transaction(conn, commit=False)
                    if held.key is not None:
                        await sends.unlock_key(conn, held.key)
                except BaseException:
                    # Closing the connection is the other way to release the lock.
                    await conn.invalidate()
                    raise

    def _session(self, conn: AsyncConnection | None) -> AsyncSession:
        return AsyncSession(bind=conn if conn is not None else self.engine, expire_on_commit=False)

    async def _attempt(
        self, request: SendRequest, conn: AsyncConnection, held: _HeldKey, *, later: bool
    ) -> SendOutcome:
        """One attempt on ``conn`` (autocommit); ``held``: its key, until released.

        The usual attempt (a live contact) makes three round trips: its locks, contact
        and facts (``sends.begin_and_read_attempt``); its decision row and COMMIT, while
        the provider gets the message ready (the message is accepted only once that
        commit succeeded); its outcome, ``email.sent``, COMMIT and the key's unlock.
        """
        template = self._templates.get(request.template)
        category = effective_category(request, template.meta.category)
        list_id = request.list_id or category
        now = self._clock()
        settings = self.settings
        test_to = settings.test_mode_recipient if settings.test_mode else None
        address = normalize_email(request.to_email) if request.to_email is not None else None
        # Session-level, so the key's lock is held past this commit until the outcome; the
        # facts (READ COMMITTED, read after the locks) see whatever its previous holder wrote.
        found, stored = await sends.begin_and_read_attempt(
            conn,
            key=request.idempotency_key,
            contact_id=request.contact_id,
            email=address,
            list_id=list_id,
            journey_id=request.journey_id,
            since=now - timedelta(seconds=settings.frequency_cap_window_seconds),
        )
        # Off the usual path (a merged, deleted or erased contact, an address alone, an
        # interrupted holder) statements go through a session, in the same transaction.
        async with self._session(conn) as session:
            who = await _recipient(session, request, found)
            if stored is not None and who.address_locked:
                facts = facts_from_stored(
                    stored,
                    app=self.app,
                    settings=settings,
                    request=request,
                    contact_deleted=False,
                    contact_timezone=recipient_timezone(who.contact),
                    list_id=list_id,
                    now=now,
                )
            else:
                if who.to_email and not who.address_locked:
                    await sends.lock_address(session, who.to_email)
                facts, stored = await gather_facts(
                    session,
                    app=self.app,
                    settings=settings,
                    request=request,
                    contact_id=who.contact_id,
                    contact_deleted=who.deleted,
                    contact_timezone=recipient_timezone(who.contact),
                    to_email=who.to_email,
                    list_id=list_id,
                    now=now,
                )
            holder = stored.key_holder
            if holder is not None and holder.decision == "queued" and not holder.waiting:
                # We hold the key's lock, so its attempt is not running: its process died
                # between queueing and recording the outcome. Take over, same key.
                await sends.abandon(session, holder.id)
            result = _with_resend_note(request, decide(facts))
            send_id = new_uuid4()
            gated = not result.goes_out
            row = decision_row(self, request, who, send_id, category, test_to)
            row.update(
                key=None if gated else request.idempotency_key,
                duplicate_of_id=result.duplicate_of,
                status="skipped" if gated else "queued",
                decision=result.decision if gated else "queued",
                detail=dict(result.detail) or None,
                handoff=(
                    handoff_payload(request, result, list_id=list_id)
                    if later and not gated
                    else None
                ),
            )
            if gated or later:
                # Final (gated) or waiting for a worker: durable, written now.
                deferred = None
                if result.decision == "deferred" and request.resend_when_open:
                    assert result.deferred_until is not None
                    deferred = (result.deferred_until, _deferred_request(request, send_id))
                await sends.write_attempt(
                    conn, row, durable=True, notify_handoff=later and not gated, deferred=deferred
                )
                if later and not gated:
                    return SendOutcome(send_id=send_id, decision="queued", detail=result.detail)
                return SendOutcome(
                    send_id=send_id,
                    decision=result.decision,
                    detail=result.detail,
                    deferred_until=result.deferred_until,
                    duplicate_of=result.duplicate_of,
                )
            assert who.contact_id is None or who.contact is not None
            # Still in the session: closing it ends what it began, which must wait for the
            # decision row's commit (_deliver writes it).
            return await self._deliver(
                request,
                conn,
                send_id=send_id,
                result=result,
                who=who,
                list_id=list_id,
                now=now,
                decided=row,
                held=held,
            )

    # ------------------------------------------------------------------ hand-off

    async def deliver_queued(self, send_id: uuid.UUID) -> SendOutcome | None:
        """Deliver one attempt :meth:`queue` handed off (steps 2-4 of the module docstring).

        Holds a per-send advisory lock for the whole delivery, so concurrent workers
        deliver each hand-off once. Before rendering, the two gates that must never be
        crossed are checked again: a contact deleted or an address suppressed since the
        attempt was queued closes it as ``skipped_deleted`` / ``suppressed``.

        Returns:
            The outcome, or None when another worker holds the send or it no longer
            waits (already delivered).

        Raises:
            TemplateError: rendering failed (the row records ``provider_error``).
        """
        lock, unlock = sends.lock_delivery_sql()
        async with self.engine.connect() as conn:
            # Autocommit: each statement stands alone, and the outcome's pipeline
            # (sends.finish_attempt) opens and commits its own transaction.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            locked = (await conn.execute(lock, {"id": str(send_id)})).scalar()
            if not locked:
                return None
            try:
                return await self._deliver_handoff(conn, send_id)
            finally:
                try:
                    await conn.execute(unlock, {"id": str(send_id)})
                except BaseException:
                    await conn.invalidate()
                    raise

    async def _deliver_handoff(
        self, conn: AsyncConnection, send_id: uuid.UUID
    ) -> SendOutcome | None:
        async with self._session(conn) as session, session.begin():
            pending = await sends.load_handoff(session, send_id)
            if pending is None:
                return None
            contact: Contact | None = None
            if pending.contact_id is not None:
                contact = await contacts_repo.follow_contact(session, pending.contact_id)
            stopped: tuple[Decision, dict[str, Any]] | None = None
            if (pending.contact_id is not None and contact is None) or not pending.to_email:
                stopped = ("skipped_deleted", {"gate": "skipped_deleted", "atDelivery": True})
            elif (reason := await sends.address_suppression(session, pending.to_email)) is not None:
                stopped = (
                    "suppressed",
                    {"gate": "suppressed", "reason": reason, "atDelivery": True},
                )
            if stopped is not None:
                await sends.close_handoff(session, send_id, decision=stopped[0], detail=stopped[1])
                return SendOutcome(send_id=send_id, decision=stopped[0], detail=stopped[1])
        payload = pending.payload
        request = SendRequest(
            template=pending.template_key,
            contact_id=contact.id if contact is not None else None,
            to_email=pending.to_email,
            props=payload.get("props") or {},
            subject=pending.subject,
            from_email=pending.from_email,
            reply_to=payload.get("replyTo"),
            category=pending.category,
            list_id=payload.get("listId"),
            kind=payload.get("kind", pending.kind),
            journey_id=pending.journey_id,
            journey_state_id=pending.journey_state_id,
            campaign_id=pending.campaign_id,
            idempotency_key=pending.idempotency_key,
            skip_preference_check=bool(payload.get("skipPreferenceCheck")),
        )
        decision: Decision = "redirected" if payload.get("decision") == "redirected" else "sent"
        who = _Recipient(
            contact=contact,
            contact_id=contact.id if contact is not None else None,
            deleted=False,
            to_email=pending.to_email,
        )
        return await self._deliver(
            request,
            conn,
            send_id=send_id,
            result=GateResult(decision=decision),
            who=who,
            list_id=payload.get("listId"),
            now=self._clock(),
        )

    # ------------------------------------------------------------------ delivery

    def _link_tokens(self, who: _Recipient, list_id: str | None, now: datetime) -> dict[str, str]:
        """The tokens of one message's links, by template variable (see _link_prefixes)."""
        contact_id = str(who.contact_id) if who.contact_id is not None else None
        unsubscribe = tokens.issue(
            purpose="unsubscribe",
            secret=self._secret,
            now=now,
            contact_id=contact_id,
            email=who.to_email,
            list_id=list_id,
        )
        manage = tokens.issue(
            purpose="preferences",
            secret=self._secret,
            now=now,
            contact_id=contact_id,
            email=who.to_email,
        )
        return {"unsubscribe_url": unsubscribe, "preferences_url": manage}

    def _render_contact(self, who: _Recipient) -> Contact:
        if who.contact is not None:
            return who.contact
        # An address nobody holds: templates see a contact with only the email.
        return Contact(
            id=uuid.uuid5(uuid.NAMESPACE_URL, f"mailto:{who.to_email}"),
            key=who.to_email,
            email=who.to_email,
        )

    async def _deliver(
        self,
        request: SendRequest,
        conn: AsyncConnection,
        *,
        send_id: uuid.UUID,
        result: GateResult,
        who: _Recipient,
        list_id: str | None,
        now: datetime,
        decided: dict[str, Any] | None = None,
        held: _HeldKey | None = None,
    ) -> SendOutcome:
        """Render, send and record an attempt that passed the gates.

        ``decided``: its decision row, not yet written (the transaction that read its
        facts is still open): written and committed with the message's links while the
        provider gets the message ready, which it accepts only once that commit
        succeeded. Without it (a hand-off) the row exists and the links are written
        first. ``held``: the key, released with the outcome's commit.
        """
        try:
            rendered, links, tracked = self._compose_parts(
                request, send_id=send_id, who=who, list_id=list_id, now=now
            )
        except TemplateError as exc:
            detail: dict[str, Any] = {
                "gate": "provider_error",
                "stage": "render",
                "error": str(exc),
            }
            if decided is not None:
                failed = {**decided, "status": "failed", "decision": "provider_error"}
                failed.update(key=None, detail=detail, error=f"render: {exc}")
                await sends.write_attempt(conn, failed, durable=True)
            else:
                await self._finish(
                    conn,
                    send_id,
                    decision="provider_error",
                    detail=detail,
                    attempts=0,
                    provider=None,
                    error=f"render: {exc}",
                )
            raise
        provider, message = self._address(
            request, who, result, send_id, rendered, rendered.html, links
        )
        calling: EmailProvider = provider
        written: asyncio.Future[bool] | None = None
        failure: list[Exception] = []
        if decided is not None:
            written = asyncio.ensure_future(_written(conn, decided, tracked, failure))
            calling = GatedProvider(provider, written)
        else:
            await self._record_links(conn, send_id, tracked)
        to = message.to
        redirected = result.decision == "redirected"
        retries: list[dict[str, Any]] = []
        try:
            accepted, calls, error = await self._call_provider(calling, message, retries)
        except GateClosed:
            accepted, calls, error = None, 0, None
        except BaseException:
            if written is not None and not written.done():
                written.cancel()  # the connection is invalidated on the way out
            raise
        if written is not None and not await written:
            raise failure[0]  # nothing was written, so the provider accepted nothing
        if isinstance(error, ProviderAlreadyAccepted):
            return await self._already_accepted(
                conn,
                send_id,
                result=result,
                error=error,
                calls=calls,
                subject=rendered.subject,
                sent_event=self._sent_event(request, send_id, who),
                held=held,
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
            await self._finish(
                conn,
                send_id,
                decision="provider_error",
                detail=detail,
                attempts=calls,
                provider=provider.name,
                error=str(error),
                subject=rendered.subject,
                held=held,
            )
            return SendOutcome(send_id=send_id, decision="provider_error", detail=detail)
        detail = {
            "gate": result.decision,
            "provider": accepted.provider,
            "providerCalls": calls,
            "waitedSeconds": round(accepted.waited_seconds, 3),
        }
        if redirected:
            detail["redirectedTo"] = to if provider is self.provider else "outbox"
        if retries:
            detail["retries"] = retries
        await self._finish(
            conn,
            send_id,
            decision=result.decision,
            detail=detail,
            attempts=calls,
            provider=accepted.provider,
            message_id=accepted.message_id,
            subject=rendered.subject,
            sent_event=self._sent_event(request, send_id, who),
            held=held,
        )
        return SendOutcome(
            send_id=send_id,
            decision=result.decision,
            detail=detail,
            provider_message_id=accepted.message_id,
        )

    def _compose(
        self,
        request: SendRequest,
        *,
        send_id: uuid.UUID,
        result: GateResult,
        who: _Recipient,
        list_id: str | None,
        now: datetime,
    ) -> tuple[EmailProvider, OutgoingEmail, LinkSet | None]:
        """Render, track and address one message without I/O (the batch path's step 2).

        Returns the provider to call, the message and the tracked links to record.

        Raises:
            TemplateError: rendering failed.
        """
        rendered, links, tracked = self._compose_parts(
            request, send_id=send_id, who=who, list_id=list_id, now=now
        )
        provider, message = self._address(
            request, who, result, send_id, rendered, rendered.html, links
        )
        return provider, message, tracked

    def _compose_parts(
        self,
        request: SendRequest,
        *,
        send_id: uuid.UUID,
        who: _Recipient,
        list_id: str | None,
        now: datetime,
    ) -> tuple[RenderedEmail, dict[str, str] | None, LinkSet | None]:
        """Render and track one message (no I/O): (rendered, its links, its link set).

        The rendered HTML is the tracked one. The links (``unsubscribe_url`` and
        ``preferences_url``) are None for a transactional message. Through a plan
        (:mod:`hogsend.channels.message_plans`) when the rendering has one, else
        rendered and tracked directly; either way the same message.

        Raises:
            TemplateError: rendering failed.
        """
        marketing = request.kind != "transactional"
        opens = self.settings.track_opens if request.track_opens is None else request.track_opens
        clicks = (
            self.settings.track_clicks if request.track_clicks is None else request.track_clicks
        )
        link_tokens = self._link_tokens(who, list_id, now) if marketing else None
        links = (
            None
            if link_tokens is None
            else {name: self._link_prefixes[name] + token for name, token in link_tokens.items()}
        )
        contact = self._render_contact(who)
        composed = self._plans.compose(
            request.template,
            contact=contact,
            props=request.props,
            subject=request.subject,
            link_tokens=link_tokens,
            send_id=send_id,
            opens=opens,
            clicks=clicks,
        )
        if composed is not None:
            return composed.rendered, links, composed.links
        # No plan for this rendering: the real links go in, and tracking runs on it.
        rendered = self._templates.render(
            request.template,
            contact=contact,
            props=request.props,
            subject=request.subject,
            extra=links or {},
            footer=links["preferences_url"] if links is not None else None,
        )
        if not (opens or clicks):
            return rendered, links, None
        marked = tracking.tracked_html(
            settings=self.settings,
            secret=self._secret,
            send_id=send_id,
            html=rendered.html,
            opens=opens,
            clicks=clicks,
        )
        return dataclasses.replace(rendered, html=marked.html), links, marked.links

    def _address(
        self,
        request: SendRequest,
        who: _Recipient,
        result: GateResult,
        send_id: uuid.UUID,
        rendered: RenderedEmail,
        html: str,
        links: dict[str, str] | None,
    ) -> tuple[EmailProvider, OutgoingEmail]:
        """The provider to call and the message to give it.

        Every message names its send (``X-Hogsend-Send-Id``); a marketing one (``links``
        given) carries RFC 8058 one-click unsubscribe headers (and a ``mailto:`` form, RFC
        2369, when ``HOGSEND_UNSUBSCRIBE_MAILTO`` is set); in test mode it goes to the test
        recipient (or the outbox) with the real address in a header.
        """
        headers = {SEND_ID_HEADER: str(send_id)}
        if links is not None:
            url = links["unsubscribe_url"]
            mailto = self._unsubscribe_mailto
            if mailto is None:
                headers["List-Unsubscribe"] = f"<{url}>"
            else:
                # The URL is its prefix and the token (_link_prefixes); the mail to the
                # unsubscribe address carries that signed token in its subject. A token
                # is base64url and a dot, unreserved in a URI: nothing to percent-encode.
                headers["List-Unsubscribe"] = f"<{url}>{mailto}{url[self._token_at :]}>"
            headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
        provider = self.provider
        to = who.to_email
        if result.decision == "redirected":
            headers[ORIGINAL_TO_HEADER] = who.to_email
            if self.settings.test_mode_recipient is not None:
                to = self.settings.test_mode_recipient
            else:
                provider = self._outbox()
        message = OutgoingEmail(
            from_email=request.from_email or self.settings.email_from,
            to=to,
            subject=rendered.subject,
            html=html,
            text=rendered.text,
            reply_to=request.reply_to,
            headers=headers,
            # Unkeyed sends still get a stable key per attempt: retries share a Message-ID.
            idempotency_key=request.idempotency_key or f"hogsend-send:{send_id}",
            tags={"template": request.template, "kind": request.kind},
            email_send_id=send_id,
        )
        return provider, message

    async def _write_outcomes(
        self,
        items: list[OutcomeItem],
        conn: AsyncConnection,
        starts: Sequence[uuid.UUID] = (),
    ) -> None:
        """Record many outcomes and their ``email.sent`` events: one statement, one commit.

        ``conn`` is in autocommit, held by the caller (a batch) for many such writes.
        ``starts``: attempts decided ahead that now go to the provider, marked so in the
        same commit (see ``sends.finish_and_log``).
        """
        now = self._clock()
        events = [event for _, event in items if event is not None]
        missing = await sends.finish_and_log(
            conn,
            [row for row, _ in items],
            [_event_row(event, now) for event in events],
            now=now,
            notify=bool(events) and self._notify.due(),
            starts=starts,
        )
        await self._ingest_missing(events, missing, now)

    async def _ingest_missing(
        self, events: list[EventInput], missing: list[str], now: datetime
    ) -> None:
        """Store the ``email.sent`` events ``finish_and_log`` left out (``missing`` keys):
        their contacts were merged away since the decision, and the general path follows
        them."""
        if not missing:
            return
        by_key = {event.idempotency_key: event for event in events}
        async with self._session(None) as session, session.begin():
            stored = await events_repo.ingest_batch(
                session, [by_key[key] for key in missing], now=now
            )
            if any(item.status == "stored" for item in stored):
                await outbox_repo.notify_outbox(session, self._notify)

    async def _record_links(
        self, conn: AsyncConnection, send_id: uuid.UUID, links: LinkSet | None
    ) -> None:
        """The tracking step's write: the link set committed before the provider is called.

        Committed without a WAL flush (``sends.insert_link_set_fast``): the outcome's
        durable commit flushes it, and only a crash of Postgres itself loses it. A set
        that another message stored writes nothing (the sets are content-addressed).

        A crash after this commit and before the provider leaves a set no message may
        carry (harmless: sets are shared, a few rows); the click URLs of a delivered
        copy name their own send, whichever attempt it belongs to, and resolve.
        """
        if links is None:
            return
        async with self._session(conn) as session, session.begin():
            await sends.insert_link_set_fast(session, links)

    async def _already_accepted(
        self,
        conn: AsyncConnection,
        send_id: uuid.UUID,
        *,
        result: GateResult,
        error: ProviderAlreadyAccepted,
        calls: int,
        subject: str,
        sent_event: EventInput | None,
        held: _HeldKey | None,
    ) -> SendOutcome:
        """The provider took this key before: an earlier attempt went out, so this one did.

        That attempt died before recording it (or timed out after the provider took
        it); the message left once, under an id the provider did not repeat.
        """
        detail = {
            "gate": result.decision,
            "provider": error.provider,
            "providerCalls": calls,
            "providerDuplicate": True,
            "providerAnswer": str(error),
        }
        await self._finish(
            conn,
            send_id,
            decision=result.decision,
            detail=detail,
            attempts=calls,
            provider=error.provider,
            subject=subject,
            sent_event=sent_event,
            held=held,
        )
        return SendOutcome(send_id=send_id, decision=result.decision, detail=detail)

    def _outbox(self) -> EmailProvider:
        if self._test_provider is None:
            from hogsend.channels.email.outbox import OutboxProvider

            self._test_provider = OutboxProvider(self.engine)
        return self._test_provider

    async def _call_provider(
        self,
        provider: EmailProvider,
        message: OutgoingEmail,
        retries: list[dict[str, Any]] | None = None,
    ) -> tuple[ProviderResult | None, int, BaseException | None]:
        """(result, provider calls, last error): transient errors retried with backoff.

        Each transient error followed by a wait is appended to ``retries`` (status,
        error, seconds waited), for the decision row.
        """
        calls = 0
        base = self.settings.mailer_retry_base_seconds
        ceiling = self.settings.mailer_retry_max_seconds
        for attempt in range(1, self.settings.mailer_max_attempts + 1):
            try:
                result = await provider.send(message)
            except TransientProviderError as exc:
                calls += 1
                if attempt == self.settings.mailer_max_attempts:
                    return None, calls, exc
                delay = min(max(base * 2 ** (attempt - 1), exc.retry_after or 0.0), ceiling)
                if retries is not None:
                    retries.append(
                        {"status": exc.status, "error": str(exc), "waitSeconds": round(delay, 3)}
                    )
                await self._sleep(delay)
                continue
            except ProviderError as exc:  # permanent: retrying cannot help
                return None, calls + 1, exc
            # A paced provider may have retried inside; count its calls too.
            return result, calls + result.attempts, None
        raise AssertionError("unreachable: mailer_max_attempts >= 1")

    async def _finish(
        self,
        conn: AsyncConnection,
        send_id: uuid.UUID,
        *,
        decision: str,
        detail: dict[str, Any],
        attempts: int,
        provider: str | None,
        message_id: str | None = None,
        error: str | None = None,
        subject: str | None = None,
        sent_event: EventInput | None = None,
        held: _HeldKey | None = None,
    ) -> None:
        """Record the outcome; for a message that went out to a contact, ``email.sent`` too.

        One round trip (``sends.finish_attempt``): the outcome and the event in one
        durable commit, so a crash leaves either both or neither (the event's key,
        ``email.sent:<send id>``, makes a second recording store nothing); then the key
        ``held``, released in the same pipeline.
        """
        now = self._clock()
        row = {
            "id": send_id,
            "decision": decision,
            "detail": detail,
            "attempts": attempts,
            "provider": provider,
            "message_id": message_id,
            "error": error,
            "subject": subject,
        }
        unlock = held.key if held is not None else None
        missing = await sends.finish_attempt(
            conn,
            row,
            None if sent_event is None else _event_row(sent_event, now),
            now=now,
            notify=sent_event is not None and self._notify.due(),
            unlock=unlock,
        )
        if held is not None:
            held.key = None  # released: nothing left for _locked_attempt to unlock
        if sent_event is not None:
            await self._ingest_missing([sent_event], missing, now)

    def _sent_event(
        self, request: SendRequest, send_id: uuid.UUID, who: _Recipient
    ) -> EventInput | None:
        """The ``email.sent`` event of a message that went out, when a contact got it."""
        if who.contact_id is None:
            return None  # an address nobody holds: no contact to hang the event on
        sent = str(send_id)  # once: both the property and the key carry it
        return EventInput(
            name=EMAIL_SENT,
            contact_id=who.contact_id,
            properties={
                "sendId": sent,
                "templateKey": request.template,
                "journeyId": request.journey_id,
                "campaignId": str(request.campaign_id) if request.campaign_id else None,
                "kind": request.kind,
            },
            idempotency_key=f"{EMAIL_SENT}:{sent}",
            occurred_at=self._clock(),
            source=EVENT_SOURCE,
        )


class _HeldKey:
    """An attempt's idempotency key while its session lock is held (None once released)."""

    __slots__ = ("key",)

    def __init__(self, key: str | None) -> None:
        self.key = key


def _event_row(event: EventInput, now: datetime) -> dict[str, Any]:
    """An ``email.sent`` event as ``sends.finish_and_log`` stores it."""
    return {
        "id": new_uuid4(),
        "contact_id": event.contact_id,
        "name": event.name,
        "properties": dict(event.properties),
        "key": event.idempotency_key,
        "source": event.source,
        "occurred_at": event.occurred_at or now,
    }


async def _written(
    conn: AsyncConnection,
    row: dict[str, Any],
    links: LinkSet | None,
    failure: list[Exception],
) -> bool:
    """Write and commit a decision row that goes out, with its links: whether that worked
    (its error appended to ``failure`` if not). The gate of its provider call."""
    try:
        # Committed without a WAL flush: the outcome's durable commit flushes it too.
        await sends.write_attempt(conn, row, links, durable=False)
    except Exception as exc:
        failure.append(exc)
        return False
    return True


@dataclass(frozen=True, slots=True, kw_only=True)
class Explanation:
    """A dry run of the gates for one contact and template or journey, against current facts.

    Attributes:
        decision: what an attempt made now would be (``sent``/``redirected``: it would go).
        detail: the facts behind it.
        deferred_until: when the send window opens, for ``deferred``.
        facts: the facts the gates saw.
        recent: the latest attempts for that template or journey, newest first.
    """

    decision: Decision
    detail: Mapping[str, Any]
    deferred_until: datetime | None
    facts: SendFacts
    recent: tuple[sends.SendRecord, ...]


async def explain(
    session: AsyncSession,
    *,
    app: Hogsend,
    settings: Settings,
    contact: Contact,
    template: str | None = None,
    journey: str | None = None,
    now: datetime | None = None,
    recent_limit: int = 10,
) -> Explanation:
    """Would ``contact`` get a message now, and if not, why; plus the latest attempts.

    ``template`` alone: a send of it (transactional when its category is
    ``transactional``, else campaign-style to its category); ``journey`` alone: that
    journey's next message (its ``suppress`` gap); both: that journey sending that
    template (transactional too for a ``transactional`` template, see
    ``journey_send_kind``); neither: any non-transactional email at all. Writes nothing.

    Raises:
        TemplateNotFound: unknown template.
        KeyError: unknown journey.
    """
    kind: SendKind = "campaign"
    category: str | None = None
    gap: timedelta | None = None
    if journey is not None:
        found = {j.id: j for j in all_journeys(app.journeys, app.buckets)}
        if journey not in found:
            raise KeyError(journey)
        kind, gap = "journey", found[journey].suppress
    if template is not None:
        if app.templates is None:
            raise TemplateNotFound("the app has no templates", key=template)
        meta = app.templates.get(template).meta
        if meta.category == TRANSACTIONAL_CATEGORY:
            kind = "transactional"
        category = meta.category
    request = SendRequest(
        template=template or "",
        contact_id=contact.id,
        kind=kind,
        category=category,
        journey_id=journey,
        suppress_gap=gap,
    )
    category = effective_category(request, category)
    address = contact.email or ""
    facts, _ = await gather_facts(
        session,
        app=app,
        settings=settings,
        request=request,
        contact_id=contact.id,
        contact_deleted=contact.deleted_at is not None,
        contact_timezone=recipient_timezone(contact),
        to_email=address,
        list_id=category,
        now=now or _utcnow(),
    )
    result = decide(facts)
    page = await sends.list_sends(
        session, contact.id, limit=recent_limit, template_key=template, journey_id=journey
    )
    return Explanation(
        decision=result.decision,
        detail=result.detail,
        deferred_until=result.deferred_until,
        facts=facts,
        recent=page.items,
    )


# --------------------------------------------------------------------------- deferred sends

DEFERRED_KEY_PREFIX = "hogsend-deferred:"
"""Prefix of the key given to a deferred send that had none, so its resend is keyed."""

_UUID_FIELDS = frozenset({"contact_id", "journey_state_id", "campaign_id"})


def request_record(request: SendRequest) -> dict[str, Any]:
    """``request`` as JSON-ready values, for ``deferred_sends.request``.

    Props are stored as JSON: datetimes and UUIDs in them come back as strings.
    :func:`request_from_record` reverses it.
    """
    record: dict[str, Any] = {}
    for spec in dataclasses.fields(request):
        value = getattr(request, spec.name)
        if isinstance(value, uuid.UUID):
            value = str(value)
        elif isinstance(value, timedelta):
            value = value.total_seconds()
        elif isinstance(value, SendWindow):
            value = {
                "start": value.start.isoformat(),
                "end": value.end.isoformat(),
                "weekdays": sorted(value.weekdays),
                "timezone": value.timezone,
            }
        elif isinstance(value, Mapping):
            value = dict(value)
        record[spec.name] = value
    return record


def request_from_record(record: Mapping[str, Any]) -> SendRequest:
    """The :class:`SendRequest` a :func:`request_record` stored.

    Names this version does not know (written by a newer one) are ignored.
    """
    known = {spec.name for spec in dataclasses.fields(SendRequest)}
    values: dict[str, Any] = {k: v for k, v in record.items() if k in known}
    for name in _UUID_FIELDS & values.keys():
        if values[name] is not None:
            values[name] = uuid.UUID(values[name])
    if values.get("suppress_gap") is not None:
        values["suppress_gap"] = timedelta(seconds=values["suppress_gap"])
    window = values.get("send_window")
    if window is not None:
        values["send_window"] = SendWindow(
            start=dt_time.fromisoformat(window["start"]),
            end=dt_time.fromisoformat(window["end"]),
            weekdays=frozenset(window["weekdays"]),
            timezone=window["timezone"],
        )
    return SendRequest(**values)


def _with_resend_note(request: SendRequest, result: GateResult) -> GateResult:
    """A ``deferred`` result says who sends again: the sweep or the caller."""
    if result.decision != "deferred":
        return result
    who = "sweep" if request.resend_when_open else "caller"
    return dataclasses.replace(result, detail={**result.detail, "resend": who})


def _deferred_request(request: SendRequest, send_id: uuid.UUID) -> dict[str, Any]:
    """What ``deferred_sends.request`` keeps of the request deferred as ``send_id``."""
    if request.idempotency_key is None:
        # A key makes the resend exactly-once even if the sweep dies around it.
        request = dataclasses.replace(request, idempotency_key=f"{DEFERRED_KEY_PREFIX}{send_id}")
    return request_record(request)
