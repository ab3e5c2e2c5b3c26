"""Demo email history for ``hogsend dev --seed-demo``: sends, engagement, opt-outs.

For each demo contact: the welcome journey's two messages, the monthly product-updates
newsletter, now and then a tip; opens, clicks, bounces and complaints; a few global
unsubscribes, suppressed addresses and list choices; and attempts stopped by each gate
(suppressed, unsubscribed, capped, deferred, duplicate) or failed at the provider. Like
:mod:`hogsend.db.repos.demo`, it is generated from a fixed seed and every row has a
stable id, so seeding twice inserts nothing the second time.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.repos import sends as sends_repo

_SEED = 20_240_612
_NAMESPACE = uuid.UUID("6f1c2a52-4d7e-4c1b-9a51-0c2f7d7e0b55")
FROM_EMAIL = "Hogsend Demo <hello@example.com>"
_SUBJECTS = {
    "welcome": "Welcome aboard",
    "getting-started": "Three things to try this week",
    "newsletter": "What's new this month",
    "nudge": "A quick tip for your dashboards",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoEmail:
    """Generated rows, keyed by the contact's ``external_id``."""

    sends: list[dict[str, Any]]
    preferences: list[dict[str, Any]]
    suppressions: list[dict[str, Any]]
    lists: list[dict[str, Any]]


def _id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, ":".join(parts)))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


class _Person:
    """One contact's email story while it is generated."""

    def __init__(self, person: dict[str, Any], rng: random.Random, now: datetime) -> None:
        self.external_id: str = person["external_id"]
        self.email: str = person["email"]
        self.signed_up: datetime = person["first_seen_at"]
        self.now = now
        self.rng = rng
        self.unsubscribed_at: datetime | None = None
        self.suppressed_at: datetime | None = None
        self.suppression: str | None = None
        self.sends: list[dict[str, Any]] = []

    def attempt(
        self,
        template: str,
        at: datetime,
        *,
        journey: str | None = None,
        category: str | None = None,
        outcome: str | None = None,
    ) -> dict[str, Any] | None:
        if at >= self.now:
            return None
        # The n-th attempt of the person: stable when seeding again later (times move).
        key = f"{self.external_id}:{template}:{len(self.sends)}"
        row: dict[str, Any] = {
            "id": _id(key),
            "external_id": self.external_id,
            "journey_id": journey,
            "template_key": template,
            "category": category,
            "to_email": self.email,
            "subject": _SUBJECTS[template],
            "created_at": _iso(at),
            "status": "skipped",
            "decision": None,
            "detail": None,
            "idempotency_key": None,
            "provider": None,
            "provider_message_id": None,
            "attempts": 0,
            "last_error": None,
            "sent_at": None,
            "delivered_at": None,
            "opened_at": None,
            "clicked_at": None,
            "bounced_at": None,
            "complained_at": None,
            "open_count": 0,
            "click_count": 0,
            "bounce_type": None,
            "duplicate_of_id": None,
        }
        gated = self._gate(at, row, transactional=category == "transactional")
        if not gated:
            self._deliver(at, row, outcome)
        self.sends.append(row)
        return row

    def _gate(self, at: datetime, row: dict[str, Any], *, transactional: bool) -> bool:
        if self.suppressed_at is not None and at > self.suppressed_at:
            row["decision"] = "suppressed"
            row["detail"] = {"gate": "suppressed", "reason": self.suppression}
            return True
        if not transactional and self.unsubscribed_at is not None and at > self.unsubscribed_at:
            row["decision"] = "unsubscribed"
            row["detail"] = {"gate": "unsubscribed", "scope": "all"}
            return True
        roll = self.rng.random()
        if roll < 0.015:
            row["decision"] = "capped"
            row["detail"] = {
                "gate": "capped",
                "rule": "frequency_cap",
                "count": 3,
                "limit": 3,
                "windowSeconds": 86400.0,
            }
            return True
        if roll < 0.03:
            row["decision"] = "deferred"
            opens = (at + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
            row["detail"] = {"gate": "deferred", "deferredUntil": opens.isoformat()}
            return True
        return False

    def _deliver(self, at: datetime, row: dict[str, Any], outcome: str | None) -> None:
        rng = self.rng
        if outcome is None and rng.random() < 0.01:
            row.update(
                status="failed",
                decision="provider_error",
                detail={"gate": "provider_error", "attempts": 3},
                attempts=3,
                last_error="SMTP 451 4.3.0 temporary failure, gave up after 3 attempts",
            )
            return
        sent_at = at + timedelta(seconds=rng.uniform(0.2, 3))
        row.update(
            status="sent",
            decision="sent",
            idempotency_key=f"demo:{row['id']}",
            provider="smtp",
            provider_message_id=f"<{row['id']}@demo.hogsend>",
            attempts=1,
            sent_at=_iso(sent_at),
        )
        if outcome == "bounce":
            row.update(status="bounced", bounced_at=_iso(sent_at + timedelta(seconds=40)))
            row["bounce_type"] = "hard"
            self.suppressed_at, self.suppression = sent_at + timedelta(seconds=40), "hard_bounce"
            return
        delivered = sent_at + timedelta(seconds=rng.uniform(1, 20))
        row.update(status="delivered", delivered_at=_iso(delivered))
        if outcome == "complaint":
            at_ = delivered + timedelta(hours=rng.uniform(1, 30))
            row.update(status="complained", complained_at=_iso(at_))
            self.suppressed_at, self.suppression = at_, "complaint"
            return
        if rng.random() < 0.46:
            opened = delivered + timedelta(minutes=rng.expovariate(1 / 300))
            row.update(status="opened", opened_at=_iso(opened), open_count=rng.randint(1, 4))
            if rng.random() < 0.28:
                clicked = opened + timedelta(minutes=rng.uniform(0.2, 15))
                row.update(status="clicked", clicked_at=_iso(clicked), click_count=1)


def generate(people: Sequence[dict[str, Any]], *, now: datetime) -> DemoEmail:
    """Email history for the demo ``people`` (rows of :func:`hogsend.db.repos.demo.generate`)."""
    rng = random.Random(_SEED)
    sends: list[dict[str, Any]] = []
    preferences: list[dict[str, Any]] = []
    suppressions: list[dict[str, Any]] = []
    lists: list[dict[str, Any]] = []
    newsletters = [now - timedelta(days=d, hours=now.hour - 15) for d in (52, 22)]
    for person in people:
        p = _Person(person, rng, now)
        welcome_outcome = "bounce" if rng.random() < 0.03 else None
        complains = rng.random() < 0.04
        if rng.random() < 0.07:
            p.unsubscribed_at = p.signed_up + timedelta(days=rng.uniform(1, 40))
        first = p.signed_up + timedelta(minutes=1)
        welcome = p.attempt("welcome", first, journey="welcome", outcome=welcome_outcome)
        if welcome is not None and welcome["decision"] == "sent" and rng.random() < 0.02:
            # The journey step ran twice (a retried worker): the second attempt is refused.
            again = p.attempt("welcome", p.signed_up + timedelta(minutes=1, seconds=5))
            if again is not None and again["decision"] == "sent":
                again.update(
                    status="skipped",
                    decision="duplicate",
                    detail={"gate": "duplicate", "duplicateOf": welcome["id"]},
                    idempotency_key=None,
                    provider=None,
                    provider_message_id=None,
                    attempts=0,
                    sent_at=None,
                    delivered_at=None,
                    opened_at=None,
                    clicked_at=None,
                    open_count=0,
                    click_count=0,
                    journey_id="welcome",
                    duplicate_of_id=welcome["id"],
                )
        p.attempt("getting-started", p.signed_up + timedelta(days=2), journey="welcome")
        for issue in newsletters:
            if issue > p.signed_up:
                outcome = "complaint" if complains and p.suppressed_at is None else None
                p.attempt("newsletter", issue, category="product-updates", outcome=outcome)
        if rng.random() < 0.25:
            lists.append({"external_id": p.external_id, "list_id": "tips", "subscribed": True})
            tip_at = p.signed_up + timedelta(days=rng.uniform(3, 30))
            p.attempt("nudge", tip_at, category="tips")
        elif rng.random() < 0.1:
            lists.append(
                {"external_id": p.external_id, "list_id": "product-updates", "subscribed": False}
            )
        sends += p.sends
        if p.unsubscribed_at is not None and p.unsubscribed_at < now:
            preferences.append(
                {"external_id": p.external_id, "unsubscribed_at": _iso(p.unsubscribed_at)}
            )
        if p.suppressed_at is not None:
            suppressions.append(
                {
                    "email": p.email,
                    "reason": p.suppression,
                    "suppressed_at": _iso(p.suppressed_at),
                    "bounces": 1 if p.suppression == "hard_bounce" else 0,
                    "complaints": 1 if p.suppression == "complaint" else 0,
                }
            )
    return DemoEmail(sends=sends, preferences=preferences, suppressions=suppressions, lists=lists)


_INSERT_SENDS = text(
    """
    INSERT INTO email_sends (
        id, contact_id, user_id, user_email, journey_id, template_key, category, from_email,
        to_email, subject, status, decision, decision_detail, duplicate_of_id, idempotency_key,
        provider, provider_message_id, attempts, last_error, sent_at, delivered_at, opened_at,
        clicked_at, bounced_at, complained_at, open_count, click_count, bounce_type,
        created_at, updated_at)
    SELECT v.id, c.id, coalesce(c.external_id, c.id::text), c.email, v.journey_id,
           v.template_key, v.category, :from_email, v.to_email, v.subject, v.status,
           v.decision, v.detail, v.duplicate_of_id, v.idempotency_key, v.provider,
           v.provider_message_id, v.attempts, v.last_error, v.sent_at, v.delivered_at,
           v.opened_at, v.clicked_at, v.bounced_at, v.complained_at, v.open_count,
           v.click_count, v.bounce_type, v.created_at,
           greatest(v.created_at, v.sent_at, v.delivered_at, v.opened_at, v.clicked_at,
                    v.bounced_at, v.complained_at)
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        id uuid, external_id text, journey_id text, template_key text, category text,
        to_email text, subject text, status text, decision text, detail jsonb,
        duplicate_of_id uuid, idempotency_key text, provider text, provider_message_id text,
        attempts int, last_error text, sent_at timestamptz, delivered_at timestamptz,
        opened_at timestamptz, clicked_at timestamptz, bounced_at timestamptz,
        complained_at timestamptz, open_count int, click_count int, bounce_type text,
        created_at timestamptz)
    JOIN contacts c ON c.external_id = v.external_id AND c.deleted_at IS NULL
    ORDER BY v.duplicate_of_id NULLS FIRST
    ON CONFLICT DO NOTHING
    """
)

_INSERT_PREFERENCES = text(
    """
    INSERT INTO email_preferences (contact_id, unsubscribed_all, unsubscribed_at, source,
                                   created_at, updated_at)
    SELECT c.id, true, v.unsubscribed_at, 'preference_center', v.unsubscribed_at,
           v.unsubscribed_at
    FROM jsonb_to_recordset(CAST(:rows AS jsonb))
        AS v(external_id text, unsubscribed_at timestamptz)
    JOIN contacts c ON c.external_id = v.external_id AND c.deleted_at IS NULL
    ON CONFLICT DO NOTHING
    """
)

_INSERT_SUPPRESSIONS = text(
    """
    INSERT INTO email_suppressions (email, suppressed, reason, suppressed_at, bounce_count,
                                    last_bounce_at, last_bounce_type, complaint_count,
                                    last_complaint_at, created_at, updated_at)
    SELECT v.email, true, v.reason, v.suppressed_at, v.bounces,
           CASE WHEN v.bounces > 0 THEN v.suppressed_at END,
           CASE WHEN v.bounces > 0 THEN 'hard' END, v.complaints,
           CASE WHEN v.complaints > 0 THEN v.suppressed_at END, v.suppressed_at, v.suppressed_at
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        email text, reason text, suppressed_at timestamptz, bounces int, complaints int)
    ON CONFLICT DO NOTHING
    """
)

_INSERT_LISTS = text(
    """
    INSERT INTO list_subscriptions (contact_id, list_id, subscribed, source, subscribed_at,
                                    unsubscribed_at, created_at, updated_at)
    SELECT c.id, v.list_id, v.subscribed, 'api',
           CASE WHEN v.subscribed THEN c.first_seen_at END,
           CASE WHEN NOT v.subscribed THEN c.first_seen_at END, c.first_seen_at, c.first_seen_at
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        external_id text, list_id text, subscribed boolean)
    JOIN contacts c ON c.external_id = v.external_id AND c.deleted_at IS NULL
    ON CONFLICT DO NOTHING
    """
)


async def seed(session: AsyncSession, people: Sequence[dict[str, Any]], *, now: datetime) -> int:
    """Insert the demo email history that is not there yet; returns the sends inserted."""
    data = generate(people, now=now)
    result = await session.execute(
        _INSERT_SENDS, {"rows": json.dumps(data.sends), "from_email": FROM_EMAIL}
    )
    await sends_repo.record_message_ids(session, [s["id"] for s in data.sends])
    await session.execute(_INSERT_PREFERENCES, {"rows": json.dumps(data.preferences)})
    await session.execute(_INSERT_SUPPRESSIONS, {"rows": json.dumps(data.suppressions)})
    await session.execute(_INSERT_LISTS, {"rows": json.dumps(data.lists)})
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
