"""The alert evaluator: a worker loop measuring each enabled rule and notifying on change.

Every ``HOGSEND_ALERT_SWEEP_SECONDS`` each worker tries a cluster-wide advisory lock;
the one that gets it evaluates every enabled rule, the others skip the round. Per rule,
in one transaction: measure (a rate over the rule's window, dispatcher lag, failed runs,
live workers), decide with :func:`hogsend.core.alerting.decide` (fire, repeat after the
cooldown, resolve, or stay silent), deliver the notification, and store the outcome, the
rule's firing state and a history row together. A notification that fails is recorded
``failed`` and does not count as notified, so the next round tries again.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from hogsend.app import Hogsend
from hogsend.channels import alert_delivery
from hogsend.channels.mailer import Mailer
from hogsend.core.alerting import RATE_TYPES, Measurement, Outcome, breached, decide, notifies
from hogsend.db.engine import make_sessionmaker
from hogsend.db.repos import alerts, deliverability, outbox
from hogsend.db.repos.alerts import Rule
from hogsend.settings import Settings

log = structlog.get_logger(__name__)

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)
class SweepReport:
    """What one round did."""

    ran: bool = True
    evaluated: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    failed: int = 0


def describe(rule: Rule, m: Measurement) -> str:
    """One sentence saying what was measured against what."""
    window = f"the last {rule.window_minutes} min"
    if rule.type in RATE_TYPES:
        what = "Bounce rate" if rule.type == "bounce_rate_exceeded" else "Complaint rate"
        return (
            f"{what} {m.value:.2%} vs threshold {rule.threshold:.2%} "
            f"({m.volume or 0} sent in {window}, at least {rule.min_volume} needed)"
        )
    if rule.type == "dispatcher_lag":
        return f"Dispatcher lag {m.value:.0f} s vs threshold {rule.threshold:.0f} s"
    if rule.type == "journey_failure_spike":
        return f"{m.value:.0f} journey runs failed in {window} vs threshold {rule.threshold:.0f}"
    return f"{m.value:.0f} workers alive vs at least {rule.threshold:.0f} expected"


class AlertSweep:
    """Evaluates the alert rules every ``interval_seconds``; one per worker.

    Args:
        engine: hogsend's database.
        settings: worker staleness for ``worker_down``.
        mailer: sends email alerts (None when the app has no templates).
        clock: the current instant (a fixed one in tests).
        interval_seconds: the wait between two rounds.
        http: the client webhooks are posted with (made and closed here when omitted).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        mailer: Mailer | None = None,
        clock: Clock = _utcnow,
        interval_seconds: float | None = None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.mailer = mailer
        self.interval_seconds = (
            settings.alert_sweep_seconds if interval_seconds is None else interval_seconds
        )
        self._clock = clock
        self._sessions = make_sessionmaker(engine)
        self._http = http
        self._owns_http = http is None
        self._stopping = False
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_app(
        cls, app: Hogsend, settings: Settings, engine: AsyncEngine, mailer: Mailer | None
    ) -> AlertSweep:
        """A sweep for a worker; email alerts need ``mailer`` (apps with templates)."""
        return cls(engine, settings, mailer=mailer if app.templates is not None else None)

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        """Evaluate now, then every ``interval_seconds``, until :meth:`stop`."""
        self._stopping = False
        if self._http is None:
            self._http = httpx.AsyncClient()
        self._task = asyncio.create_task(self._run(), name="hogsend-alert-sweep")

    async def stop(self) -> None:
        """Stop after the rule being evaluated (if any)."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._owns_http and self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _run(self) -> None:
        while not self._stopping:
            try:
                report = await self.run_once()
                if report.outcomes.keys() - {"quiet", "hold"}:
                    log.info("alert rules evaluated", outcomes=report.outcomes)
            except Exception:
                log.warning("alert sweep failed", exc_info=True)
            await asyncio.sleep(self.interval_seconds)

    # -- one round --------------------------------------------------------------------

    async def run_once(self) -> SweepReport:
        """Evaluate every enabled rule, unless another worker is doing it right now."""
        async with self.engine.connect() as conn:
            held = bool(
                await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": alerts.SWEEP_LOCK})
            )
            await conn.commit()
            if not held:
                return SweepReport(ran=False)
            try:
                return await self._evaluate_all()
            finally:
                try:
                    await conn.execute(
                        text("SELECT pg_advisory_unlock(:k)"), {"k": alerts.SWEEP_LOCK}
                    )
                    await conn.commit()
                except BaseException:
                    await conn.invalidate()
                    raise

    async def _evaluate_all(self) -> SweepReport:
        report = SweepReport()
        async with self._sessions() as session:
            rules, _ = await alerts.list_rules(session, enabled=True, limit=10_000)
        for rule in rules:
            if self._stopping:
                break
            try:
                outcome, delivered = await self.evaluate(rule.id)
            except Exception:
                log.warning("alert rule evaluation failed", rule_id=str(rule.id), exc_info=True)
                report.failed += 1
                continue
            if outcome is None:
                continue
            report.evaluated += 1
            report.outcomes[outcome] = report.outcomes.get(outcome, 0) + 1
            if delivered is False:
                report.failed += 1
        return report

    async def evaluate(self, rule_id: uuid.UUID) -> tuple[Outcome | None, bool | None]:
        """Evaluate one rule; returns its outcome and whether a notification got through
        (None when none was due). ``(None, None)`` when the rule is gone or disabled.

        The notification goes out between two short transactions, never while the
        rule's row is locked: a slow webhook must not hold up an operator editing the
        rule. Two evaluations of one rule never overlap: callers hold the sweep lock.
        """
        now = self._clock()
        async with self._sessions() as session, session.begin():
            rule = await alerts.get_rule(session, rule_id, lock=True)
            if rule is None or not rule.enabled:
                return None, None
            measured = await self.measure(session, rule, now)
            outcome = decide(
                holds=measured.breached,
                firing_since=rule.firing_since,
                last_notified_at=rule.last_fired_at,
                cooldown=rule.cooldown,
                now=now,
            )
            firing_since = (
                now if outcome == "fire" else None if outcome == "resolve" else rule.firing_since
            )
            if not notifies(outcome):
                await alerts.record_evaluation(
                    session,
                    rule.id,
                    now=now,
                    value=measured.value,
                    firing_since=firing_since,
                    notified=False,
                )
                return outcome, None
        payload, error = await self._notify(rule, measured, outcome, now)
        delivered = error is None
        if not delivered and outcome == "fire":
            # Not heard: stay "not firing" so the next round fires again.
            firing_since = None
        elif not delivered and outcome == "resolve":
            firing_since = rule.firing_since
        async with self._sessions() as session, session.begin():
            if await alerts.get_rule(session, rule.id, lock=True) is None:
                log.info("alert rule deleted during its notification", rule_id=str(rule.id))
                return outcome, delivered
            await alerts.record_delivery(
                session,
                rule.id,
                payload=payload,
                status="sent" if delivered else "failed",
                error=error,
            )
            await alerts.record_evaluation(
                session,
                rule.id,
                now=now,
                value=measured.value,
                firing_since=firing_since,
                notified=delivered,
            )
        return outcome, delivered

    async def measure(self, session: AsyncSession, rule: Rule, now: datetime) -> Measurement:
        """Measure what ``rule`` watches, as of ``now``."""
        volume: int | None = None
        if rule.type in RATE_TYPES:
            seen = await deliverability.outcomes_since(session, now - rule.window)
            rate = seen.bounce_rate if rule.type == "bounce_rate_exceeded" else seen.complaint_rate
            value, volume = rate or 0.0, seen.sent
        elif rule.type == "dispatcher_lag":
            value = (await outbox.stats(session)).lag_seconds
        elif rule.type == "journey_failure_spike":
            value = float(await alerts.failed_runs_since(session, now - rule.window))
        elif rule.type == "worker_down":
            stale = timedelta(seconds=self.settings.worker_stale_seconds)
            value = float(await alerts.alive_workers(session, now - stale))
        else:
            raise ValueError(f"alert rule type {rule.type!r} is not evaluated")
        return Measurement(
            value=value,
            volume=volume,
            breached=breached(rule.type, value, rule.threshold, volume, rule.min_volume),
        )

    async def _notify(
        self, rule: Rule, measured: Measurement, outcome: Outcome, now: datetime
    ) -> tuple[dict[str, Any], str | None]:
        """Send the notification; returns its payload and the error, None when it got through."""
        delivery_id = str(uuid.uuid4())
        state = "resolved" if outcome == "resolve" else "firing"
        summary = describe(rule, measured)
        payload: dict[str, Any] = {
            "id": delivery_id,
            "state": state,
            "outcome": outcome,
            "rule": {"id": str(rule.id), "name": rule.name, "type": rule.type},
            "value": measured.value,
            "volume": measured.volume,
            "threshold": rule.threshold,
            "windowMinutes": rule.window_minutes,
            "firingSince": (rule.firing_since or now).isoformat(),
            "at": now.isoformat(),
            "summary": summary,
            "subject": f"[hogsend] {state.upper()}: {rule.name}",
        }
        try:
            if rule.channel == "webhook":
                assert self._http is not None, "start() the sweep (or pass http=) first"
                await alert_delivery.post_webhook(
                    self._http,
                    url=str(rule.channel_config["url"]),
                    secret=str(rule.channel_config["secret"]),
                    delivery_id=delivery_id,
                    payload=payload,
                    now=now,
                )
            else:
                await alert_delivery.send_email(
                    self.mailer,
                    to=str(rule.channel_config["to"]),
                    template=str(rule.channel_config.get("template", "alert")),
                    delivery_id=delivery_id,
                    payload=payload,
                )
        except alert_delivery.AlertDeliveryError as exc:
            error = str(exc)[:2000]
            log.warning("alert not delivered", rule_id=str(rule.id), error=error)
            return payload, error
        return payload, None
