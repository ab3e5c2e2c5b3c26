"""Run a journey in-process, against fakes, on a virtual clock: milliseconds per test.

:class:`JourneyHarness` runs the body of a :func:`hogsend.define_journey` journey with
a fake ``ctx`` (:class:`HarnessContext`) that offers the same operations as the
durable runtime's. Nothing waits for real: ``await h.advance(days(2))`` moves the
virtual clock and wakes whatever falls due on the way, in order::

    h = JourneyHarness(activation_welcome, templates="emails/")
    await h.start(make_contact(email="ada@example.com"), properties={"projectId": "p1"})
    assert [e.template for e in h.sent_emails] == ["welcome"]
    await h.advance(days(2))
    await h.emit("feature.used", properties={"projectId": "p1"})
    assert h.status == "completed"

Sends go through the mailer's own gate function (:func:`hogsend.core.mailer_gates.decide`)
with the journey's ``suppress`` gap and the send window, so a send is capped or
deferred exactly when the mailer would cap or defer it. docs/testing.md lists the
semantic choices.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from uuid import UUID, uuid4

from hogsend.core.conditions.evaluation import event_matches
from hogsend.core.contact import Contact, Event
from hogsend.core.definitions import EventSpec, JourneyDefinition
from hogsend.core.enrollment import properties_match
from hogsend.core.entry_rules import (
    NO_ENTRIES,
    PriorEntries,
    Refusal,
    after_entry,
    entry_refusal,
)
from hogsend.core.mailer_gates import Decision, SendFacts, decide, journey_send_kind
from hogsend.core.reactions import all_journeys
from hogsend.core.send_windows import (
    ResolvedTimezone,
    SendWindow,
    SendWindowBuilder,
    as_send_window,
    resolve_timezone,
)
from hogsend.core.variants import assign_variant
from hogsend.errors import HogsendError, NoRecipient
from hogsend.errors import JourneyExit as JourneyExit

if TYPE_CHECKING:
    from hogsend.app import Hogsend
    from hogsend.channels.templates import TemplateRegistry

JourneyStatus = Literal["not_started", "running", "waiting", "completed", "exited", "failed"]

DEFAULT_START = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
"""Where the virtual clock starts unless told: a Monday, 09:00 UTC."""

_LIVE: frozenset[JourneyStatus] = frozenset({"running", "waiting"})


class HarnessError(HogsendError):
    """The harness cannot run the journey as written (a test-setup or body mistake)."""

    code = "harness_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class SentEmail:
    """One email the journey sent (it passed every gate).

    Attributes:
        template: the template key.
        to: the recipient address.
        subject: the rendered subject (the ``subject=`` override, or the template's
            when the harness has templates; None without templates and override).
        props: the props the body passed.
        sent_at: the virtual instant it went out (later than the call when deferred).
        html: the rendered HTML body (None without templates).
        text: the rendered text part (None without templates).
    """

    template: str
    to: str
    subject: str | None
    props: Mapping[str, Any]
    sent_at: datetime
    html: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class SendAttempt:
    """One gate decision for a ``send_email`` call (``deferred`` ones are followed by another)."""

    template: str
    at: datetime
    decision: Decision
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class StepLog:
    """One line of the run's step log (``step`` names the ctx operation, or ``log``)."""

    at: datetime
    step: str
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class _Waiter:
    """What a parked body waits for; yielded up to the harness through :class:`_Park`."""

    kind: Literal["sleep", "wait_for_event", "send_window"]
    wake_at: datetime
    event_name: str | None = None
    match: Mapping[str, Any] | None = None


class _Park:
    """The one thing a body awaits that suspends it: the harness resumes it by hand.

    The harness steps the body's coroutine itself (``send``/``throw``) instead of
    running it as an asyncio task, so virtual time needs no event loop trickery and
    a body awaiting anything else (a real sleep, a socket) is caught at once.
    """

    def __init__(self, waiter: _Waiter) -> None:
        self.waiter = waiter

    def __await__(self) -> Generator[_Waiter, Event | None, Event | None]:
        result = yield self.waiter
        return result


def make_contact(
    *,
    email: str | None = "ada@example.com",
    user_id: str | None = "user-1",
    timezone: str | None = None,
    properties: Mapping[str, Any] | None = None,
    id: UUID | None = None,
) -> Contact:
    """A contact for a harness test; its key is ``user_id`` (else its id)."""
    contact_id = id or uuid4()
    return Contact(
        id=contact_id,
        key=user_id or str(contact_id),
        user_id=user_id,
        email=email,
        timezone=timezone,
        properties=dict(properties or {}),
    )


def _spec_matches(spec: EventSpec, event: Event) -> bool:
    if isinstance(spec, str):
        return event.name == spec
    return event_matches(spec, event.name, event.properties)


def _props_match(match: Mapping[str, Any] | None, event: Event) -> bool:
    # The runtime's own comparison: JSON-strict (True is not 1).
    return properties_match(match, event.properties)


class HarnessHistory:
    """``ctx.history``: what the contact did before, read from the harness's events."""

    def __init__(self, harness: JourneyHarness) -> None:
        self._harness = harness

    def _matching(
        self, name: str, within: timedelta | None, match: Mapping[str, Any] | None
    ) -> list[Event]:
        now = self._harness.now
        self._harness._check_live()
        return [
            event
            for event in self._harness.events
            if event.name == name
            and event.occurred_at <= now
            and (within is None or event.occurred_at >= now - within)
            and _props_match(match, event)
        ]

    async def has_event(
        self,
        name: str,
        *,
        within: timedelta | None = None,
        match: Mapping[str, Any] | None = None,
    ) -> bool:
        """Whether the contact has a ``name`` event (in the last ``within``, matching ``match``)."""
        return bool(self._matching(name, within, match))

    async def count(
        self,
        name: str,
        *,
        within: timedelta | None = None,
        match: Mapping[str, Any] | None = None,
    ) -> int:
        """How many ``name`` events the contact has (in the last ``within``)."""
        return len(self._matching(name, within, match))

    async def last(self, name: str, *, match: Mapping[str, Any] | None = None) -> Event | None:
        """The contact's most recent ``name`` event, or None."""
        found = self._matching(name, None, match)
        return max(found, key=lambda e: e.occurred_at) if found else None


class HarnessContext:
    """The fake ``ctx`` a body gets in the harness; it satisfies :class:`JourneyContext`."""

    def __init__(self, harness: JourneyHarness, trigger: Event) -> None:
        self._harness = harness
        self._trigger = trigger
        self.history = HarnessHistory(harness)

    @property
    def trigger_event(self) -> Event:
        """The event that enrolled the contact."""
        return self._trigger

    def now(self) -> datetime:
        """The virtual time, UTC."""
        return self._harness.now

    async def sleep(self, duration: timedelta) -> None:
        """Park until ``duration`` of virtual time has passed (negative: zero)."""
        self._harness._check_live()
        wake = self._harness.now + max(duration, timedelta(0))
        self._harness._step("sleep", seconds=duration.total_seconds(), until=wake.isoformat())
        await self._harness._park("sleep", wake)

    async def sleep_until(self, when: datetime) -> None:
        """Park until ``when`` (a past instant still passes through a wait, of zero length)."""
        if when.utcoffset() is None:
            raise ValueError("sleep_until needs a timezone-aware datetime")
        self._harness._check_live()
        wake = max(when.astimezone(UTC), self._harness.now)
        self._harness._step("sleep_until", until=wake.isoformat())
        await self._harness._park("sleep", wake)

    async def wait_for_event(
        self,
        name: str,
        *,
        timeout: timedelta,
        match: Mapping[str, Any] | None = None,
        lookback: timedelta | None = None,
    ) -> Event | None:
        """The contact's next ``name`` event (matching ``match``), or None after ``timeout``.

        With ``lookback``, an event already received in that span satisfies the wait at
        once (the most recent one is returned).
        """
        harness = self._harness
        harness._check_live()
        harness._step("wait_for_event", event=name, timeout=timeout.total_seconds())
        if lookback is not None:
            since = harness.now - lookback
            earlier = [
                e
                for e in harness.events
                if e.name == name
                and since <= e.occurred_at <= harness.now
                and _props_match(match, e)
            ]
            if earlier:
                found = max(earlier, key=lambda e: e.occurred_at)
                harness._step("wait_for_event:received", event=name, lookback=True)
                return found
        got = await harness._park(
            "wait_for_event",
            harness.now + max(timeout, timedelta(0)),
            event_name=name,
            match=match,
        )
        harness._step("wait_for_event:" + ("received" if got else "timed_out"), event=name)
        return got

    async def send_email(
        self,
        *,
        template: str,
        props: Mapping[str, Any] | None = None,
        subject: str | None = None,
        send_window: SendWindow | SendWindowBuilder | None = None,
    ) -> None:
        """Send ``template`` through the mailer's gates; outside ``send_window``, wait for it."""
        await self._harness._send(template, props or {}, subject, as_send_window(send_window))

    async def log(self, message: str, **fields: Any) -> None:
        """Add a line to the step log (``h.logs``)."""
        self._harness._check_live()
        self._harness._step("log", message=message, **fields)

    async def patched(self, name: str) -> bool:
        """True: a harness run always runs the current code (no run predates a change)."""
        self._harness._check_live()
        return True

    def when(self) -> SendWindowBuilder:
        """A send window builder in the recipient's time zone, open all the time."""
        return SendWindowBuilder(timezone=self._harness.timezone.name)

    async def variant(
        self, test_id: str, variants: Sequence[str], weights: Sequence[float] | None = None
    ) -> str:
        """The contact's arm of ``test_id`` (stable per contact), recorded in ``h.variants``."""
        harness = self._harness
        harness._check_live()
        chosen = assign_variant(test_id, str(harness.contact.id), variants, weights)
        harness.variants[test_id] = chosen
        harness._step("variant", test=test_id, variant=chosen)
        return chosen

    async def enroll(self, journey_id: str, contact: Contact) -> bool:
        """Record that the body enrolls ``contact`` in ``journey_id`` (``h.enrollments``).

        The harness runs one journey: the other one is not run, and this returns True
        (the runtime returns whether the guards let the contact in).
        """
        harness = self._harness
        harness._check_live()
        harness.enrollments.append((journey_id, contact.key))
        harness._step("enroll", journey=journey_id, contact=contact.key)
        return True


class JourneyHarness:
    """Drive one journey for one contact on a virtual clock.

    Args:
        target: a journey (from ``@define_journey``) or an app holding it.
        journey: the journey id, when ``target`` is an app with several journeys.
        templates: render sends with these templates (a directory or a
            ``TemplateRegistry``); by default the app's, if ``target`` is an app.
        start_at: the virtual clock's first instant (default: Monday 2026-01-05 09:00 UTC).
        default_timezone: the app's default recipient zone (after the contact's own).
        unsubscribed: the contact unsubscribed from all non-transactional email
            (every send but one of a ``category: transactional`` template is then
            ``unsubscribed``, as in the mailer).
        history: events the contact had before the test starts.

    All driving methods are coroutines; call them from an async test.
    """

    def __init__(
        self,
        target: JourneyDefinition | Hogsend,
        *,
        journey: str | None = None,
        templates: TemplateRegistry | str | Path | None = None,
        start_at: datetime = DEFAULT_START,
        default_timezone: str | None = None,
        unsubscribed: bool = False,
        history: Sequence[Event] = (),
    ) -> None:
        if start_at.utcoffset() is None:
            raise ValueError("start_at must be timezone-aware")
        self.journey = self._pick(target, journey)
        registry = templates
        if registry is None and not isinstance(target, JourneyDefinition):
            registry = target.templates
        self._templates = self._registry(registry)
        self._now = start_at.astimezone(UTC)
        self._default_timezone = default_timezone
        self._unsubscribed = unsubscribed
        self._contact: Contact | None = None
        self._prior: PriorEntries = NO_ENTRIES
        self._body: Coroutine[Any, Event | None, None] | None = None
        self._waiter: _Waiter | None = None
        self._last_sent_at: datetime | None = None
        self._recorded: list[tuple[str, dict[str, Any], datetime]] = []
        self.status: JourneyStatus = "not_started"
        self.exit_reason: str | None = None
        self.error: BaseException | None = None
        self.refusal: Refusal | None = None
        self.timezone = ResolvedTimezone(name="UTC", source="utc")
        self.events: list[Event] = sorted(history, key=lambda e: e.occurred_at)
        self.sent_emails: list[SentEmail] = []
        self.send_attempts: list[SendAttempt] = []
        self.logs: list[StepLog] = []
        self.variants: dict[str, str] = {}
        self.enrollments: list[tuple[str, str]] = []

    # -- setup ---------------------------------------------------------------------------

    @staticmethod
    def _pick(target: JourneyDefinition | Hogsend, journey: str | None) -> JourneyDefinition:
        if isinstance(target, JourneyDefinition):
            if journey is not None and journey != target.id:
                raise HarnessError(f"journey {journey!r} given, but the target is {target.id!r}")
            return target
        journeys = all_journeys(target.journeys, target.buckets)
        if journey is None:
            if len(journeys) != 1:
                raise HarnessError(
                    f"the app has {len(journeys)} journeys: pass journey=<id> to pick one"
                )
            return journeys[0]
        for item in journeys:
            if item.id == journey:
                return item
        known = ", ".join(j.id for j in journeys) or "none"
        raise HarnessError(f"the app has no journey {journey!r} (known: {known})")

    @staticmethod
    def _registry(templates: TemplateRegistry | str | Path | None) -> TemplateRegistry | None:
        if templates is None:
            return None
        # Imported here: Jinja2 is only needed when a test renders.
        from hogsend.channels.templates import TemplateRegistry

        return templates if isinstance(templates, TemplateRegistry) else TemplateRegistry(templates)

    # -- what a test reads ---------------------------------------------------------------

    @property
    def now(self) -> datetime:
        """The virtual time (UTC)."""
        return self._now

    @property
    def contact(self) -> Contact:
        """The contact of the run (set by :meth:`start`)."""
        if self._contact is None:
            raise HarnessError("no contact yet: call await h.start(contact) first")
        return self._contact

    @property
    def wake_at(self) -> datetime | None:
        """When the parked run wakes on its own (end of a sleep, wait timeout, window)."""
        return self._waiter.wake_at if self._waiter is not None else None

    @property
    def waiting_for(self) -> str | None:
        """The event name a ``wait_for_event`` is parked on, if any."""
        return self._waiter.event_name if self._waiter is not None else None

    # -- driving -------------------------------------------------------------------------

    async def start(
        self,
        contact: Contact,
        *,
        properties: Mapping[str, Any] | None = None,
        enabled: bool | None = None,
    ) -> Refusal | None:
        """Trigger the journey for ``contact`` now and run the body until it parks or ends.

        The trigger event is the journey's trigger name with ``properties``. The guards
        run as in the runtime: enabled, trigger filter, entry limit (counting this
        harness's earlier starts), one live run.

        Args:
            contact: the contact (one per harness; see :func:`make_contact`).
            properties: the trigger event's properties.
            enabled: override the journey's enabled switch (the admin switch).

        Returns:
            None when the contact entered, else why it was refused (nothing ran).
        """
        if self._contact is not None and self._contact.id != contact.id:
            raise HarnessError("a harness drives one contact; make another harness")
        self._contact = contact
        self._take_recorded()
        trigger = self.journey.trigger
        name = trigger if isinstance(trigger, str) else trigger.event
        event = self._event(name, properties or {}, self._now)
        self.events.append(event)
        refusal: Refusal | None = None
        if not (self.journey.enabled if enabled is None else enabled):
            refusal = "disabled"
        elif not _spec_matches(trigger, event):
            refusal = "trigger_filter"
        else:
            self._prior = PriorEntries(
                count=self._prior.count,
                last_entered_at=self._prior.last_entered_at,
                live=self.status in _LIVE,
            )
            refusal = entry_refusal(
                self.journey.entry_limit, self._prior, self._now, period=self.journey.entry_period
            )
        self.refusal = refusal
        if refusal is not None:
            self._step("refused", reason=refusal)
            return refusal
        self._prior = after_entry(self._prior, self._now)
        self.timezone = resolve_timezone(
            contact_timezone=contact.timezone,
            properties=contact.properties,
            app_default=self._default_timezone,
        )
        self.status = "running"
        self.exit_reason = None
        self.error = None
        self._step("start", trigger=name, timezone=self.timezone.name)
        ctx = HarnessContext(self, event)
        self._body = self.journey.body(contact, ctx)  # type: ignore[assignment]
        self._resume(None)
        return None

    async def advance(self, duration: timedelta) -> None:
        """Move the virtual clock forward by ``duration``, waking what falls due, in order."""
        if duration < timedelta(0):
            raise ValueError("the clock only moves forward")
        await self.advance_to(self._now + duration)

    async def advance_to(self, instant: datetime) -> None:
        """Move the virtual clock to ``instant`` (aware, not in the past)."""
        if instant.utcoffset() is None:
            raise ValueError("advance_to needs a timezone-aware datetime")
        target = instant.astimezone(UTC)
        if target < self._now:
            raise ValueError("the clock only moves forward")
        while self._waiter is not None and self._waiter.wake_at <= target:
            self._now = max(self._now, self._waiter.wake_at)
            self._resume(None)
        self._now = target

    async def run_until_done(self, limit: timedelta = timedelta(days=365)) -> None:
        """Advance until the run ends (or ``limit`` of virtual time has passed)."""
        deadline = self._now + limit
        while self._waiter is not None and self._waiter.wake_at <= deadline:
            await self.advance_to(self._waiter.wake_at)

    async def emit(self, name: str, properties: Mapping[str, Any] | None = None) -> Event:
        """The contact does ``name`` now: exits the run if it matches ``exit_on``, else it
        wakes a ``wait_for_event`` on it (when ``match`` agrees). An exit wins.

        Emitting the trigger event does not start a run: call :meth:`start`.
        """
        event = self._event(name, properties or {}, self._now)
        self.events.append(event)
        if self.status not in _LIVE:
            return event
        if any(_spec_matches(spec, event) for spec in self.journey.exit_on):
            await self._exit(f"exit_on:{name}")
            return event
        waiter = self._waiter
        if (
            waiter is not None
            and waiter.kind == "wait_for_event"
            and waiter.event_name == name
            and _props_match(waiter.match, event)
        ):
            self._resume(event)
        return event

    def record(
        self, name: str, properties: Mapping[str, Any] | None = None, *, at: datetime
    ) -> None:
        """Add a past event to the contact's history: it wakes and exits nothing.

        May be called before :meth:`start` (the event joins the contact's history then).
        """
        if at.utcoffset() is None:
            raise ValueError("at must be timezone-aware")
        self._recorded.append((name, dict(properties or {}), at.astimezone(UTC)))
        if self._contact is not None:
            self._take_recorded()

    def _take_recorded(self) -> None:
        for name, properties, at in self._recorded:
            self.events.append(self._event(name, properties, at))
        self._recorded.clear()
        self.events.sort(key=lambda e: e.occurred_at)

    async def cancel(self, reason: str = "admin_cancel") -> None:
        """Exit the run now, as an admin cancel or a contact deletion does."""
        if self.status in _LIVE:
            await self._exit(reason)

    # -- internals the fake ctx calls ----------------------------------------------------

    def _event(self, name: str, properties: Mapping[str, Any], at: datetime) -> Event:
        contact = self.contact
        return Event(
            id=uuid4(),
            name=name,
            contact_key=contact.key,
            contact_id=contact.id,
            occurred_at=at,
            received_at=at,
            properties=dict(properties),
            source="harness",
        )

    def _step(self, step: str, **detail: Any) -> None:
        self.logs.append(StepLog(at=self._now, step=step, detail=detail))

    def _check_live(self) -> None:
        # A body that swallowed the exit (``except BaseException``) still cannot act.
        if self.status == "exited":
            raise JourneyExit(self.exit_reason or "exited")

    async def _park(
        self,
        kind: Literal["sleep", "wait_for_event", "send_window"],
        wake_at: datetime,
        *,
        event_name: str | None = None,
        match: Mapping[str, Any] | None = None,
    ) -> Event | None:
        waiter = _Waiter(kind=kind, wake_at=wake_at, event_name=event_name, match=match)
        result = await _Park(waiter)
        self._check_live()
        return result

    def _resume(self, result: Event | None, exit_reason: str | None = None) -> None:
        """Run the body from its await point until it parks again or ends.

        Whatever falls due at the current instant (a zero-length sleep, a window that
        is open now) is woken too. A body failure is re-raised to the test.
        """
        body = self._body
        assert body is not None
        self._waiter = None
        throw: BaseException | None = None if exit_reason is None else JourneyExit(exit_reason)
        while True:
            if self.status != "exited":
                self.status = "running"
            try:
                yielded = body.throw(throw) if throw is not None else body.send(result)
            except StopIteration:
                # A completion never overwrites an exit that landed first.
                self._end("exited" if self.status == "exited" else "completed")
                return
            except JourneyExit as exc:
                self.exit_reason = self.exit_reason or exc.reason
                self._end("exited")
                return
            except Exception as exc:
                if self.status == "exited":
                    self._end("exited")
                    return
                self.error = exc
                self._end("failed", error=repr(exc))
                raise
            throw, result = None, None
            if yielded is None:
                continue  # a bare yield (asyncio.sleep(0)): nothing to wait for
            if not isinstance(yielded, _Waiter):
                body.close()
                self.error = HarnessError(
                    f"the journey body awaited {yielded!r}, which is not a ctx operation: "
                    "journey bodies only await ctx (no real sleeps, network or tasks)"
                )
                self._end("failed", error=str(self.error))
                raise self.error
            self._waiter = yielded
            if self.status != "exited":
                self.status = "waiting"
            if yielded.wake_at > self._now:
                return
            self._waiter = None  # already due: wake it at once (timeouts return None)

    def _end(self, status: JourneyStatus, **detail: Any) -> None:
        self.status = status
        self._waiter = None
        self._body = None
        self._prior = PriorEntries(
            count=self._prior.count, last_entered_at=self._prior.last_entered_at, live=False
        )
        if status != "exited":
            self._step(status, **detail)

    async def _exit(self, reason: str) -> None:
        self.status = "exited"
        self.exit_reason = reason
        self._step("exit", reason=reason)
        if self._body is not None:
            self._resume(None, exit_reason=reason)

    async def _send(
        self,
        template: str,
        props: Mapping[str, Any],
        subject: str | None,
        window: SendWindow | None,
    ) -> None:
        contact = self.contact
        if contact.email is None:
            raise NoRecipient(f"contact {contact.id} has no email address")
        category = None
        if self._templates is not None:
            # An unknown key fails the run before any gate.
            category = self._templates.get(template).meta.category
        while True:
            self._check_live()
            result = decide(
                SendFacts(
                    now=self._now,
                    kind=journey_send_kind(category),
                    unsubscribed_all=self._unsubscribed,
                    journey_last_sent_at=self._last_sent_at,
                    suppress_gap=self.journey.suppress,
                    send_window=window,
                    contact_timezone=self.timezone.name,
                )
            )
            self.send_attempts.append(
                SendAttempt(
                    template=template, at=self._now, decision=result.decision, detail=result.detail
                )
            )
            self._step("send_email", template=template, decision=result.decision)
            if result.decision != "deferred":
                break
            assert result.deferred_until is not None
            await self._park("send_window", result.deferred_until)
        if not result.goes_out:
            return
        rendered_subject, html, text = subject, None, None
        if self._templates is not None:
            rendered = self._templates.render(
                template, contact=contact, props=props, subject=subject
            )
            rendered_subject, html, text = rendered.subject, rendered.html, rendered.text
        self._last_sent_at = self._now
        self.sent_emails.append(
            SentEmail(
                template=template,
                to=contact.email,
                subject=rendered_subject,
                props=dict(props),
                sent_at=self._now,
                html=html,
                text=text,
            )
        )
