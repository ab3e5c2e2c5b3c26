"""Demo data for ``hogsend dev --seed-demo``: realistic contacts and 60 days of events.

Email history (:mod:`~hogsend.db.repos.demo_email`) and engine activity — journey runs,
bucket memberships, campaigns, a dead letter (:mod:`~hogsend.db.repos.demo_activity`) —
are seeded alongside.

The data is generated from a fixed seed, and every row has a stable natural key (the
contact's ``external_id``, the event's ``idempotency_key``), so seeding twice inserts
nothing the second time. Events go straight into the event log, not the outbox: they
are history to look at, not new activity that should start journeys.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.db.repos import demo_activity, demo_email
from hogsend.db.tables.contacts import Contact

DEMO_SEED = 20_240_611
DEMO_SOURCE = "demo"

_FIRST = (
    "Ada",
    "Alan",
    "Amara",
    "Ben",
    "Bianca",
    "Carlos",
    "Chen",
    "Dana",
    "Diego",
    "Elif",
    "Emma",
    "Farah",
    "Felix",
    "Grace",
    "Hana",
    "Hugo",
    "Ines",
    "Ivan",
    "Jade",
    "Jonas",
    "Kai",
    "Kenji",
    "Lara",
    "Leo",
    "Lina",
    "Malik",
    "Maya",
    "Nia",
    "Noah",
    "Olga",
    "Omar",
    "Priya",
    "Quinn",
    "Rosa",
    "Sam",
    "Sofia",
    "Tariq",
    "Tom",
    "Uma",
    "Vera",
    "Wei",
    "Yara",
    "Yusuf",
    "Zoe",
)
_LAST = (
    "Adams",
    "Bauer",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ito",
    "Jensen",
    "Kowalski",
    "Lopez",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Patel",
    "Quist",
    "Rossi",
    "Schmidt",
    "Tanaka",
    "Ueda",
    "Varga",
    "Weber",
    "Xu",
    "Yilmaz",
    "Zhang",
)
_COMPANIES = (
    "Acme Analytics",
    "Bluefin Labs",
    "Copperleaf",
    "Driftwood Studio",
    "Evergreen Health",
    "Foxglove Retail",
    "Granite Logistics",
    "Harbor Finance",
    "Inkwell Media",
    "Juniper Schools",
)
_TIMEZONES = (
    ("America/New_York", "US"),
    ("America/Los_Angeles", "US"),
    ("America/Sao_Paulo", "BR"),
    ("Europe/London", "GB"),
    ("Europe/Berlin", "DE"),
    ("Europe/Paris", "FR"),
    ("Asia/Tokyo", "JP"),
    ("Asia/Kolkata", "IN"),
    ("Australia/Sydney", "AU"),
    ("Africa/Lagos", "NG"),
)
_PLANS = ("free", "starter", "pro", "enterprise")
_PLAN_WEIGHTS = (50, 25, 18, 7)
_SOURCES = ("google", "referral", "newsletter", "producthunt", "direct")
_FEATURES = ("dashboards", "exports", "alerts", "integrations", "api", "team-invites")
_PRICES = {"starter": 19, "pro": 49, "enterprise": 499}


@dataclass(frozen=True, slots=True, kw_only=True)
class DemoData:
    """Generated demo rows, ready to insert."""

    contacts: list[dict[str, Any]]
    events: list[dict[str, Any]]


@dataclass(frozen=True, slots=True, kw_only=True)
class SeedResult:
    """How many rows a seeding run actually inserted."""

    contacts: int
    events: int
    sends: int = 0
    journey_runs: int = 0
    memberships: int = 0
    campaigns: int = 0
    dead_letters: int = 0


def generate(*, now: datetime, contacts: int = 200, days: int = 60) -> DemoData:
    """Build ``contacts`` people and their events over the ``days`` before ``now``."""
    rng = random.Random(DEMO_SEED)
    people: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for n in range(1, contacts + 1):
        first, last = rng.choice(_FIRST), rng.choice(_LAST)
        tz, country = rng.choice(_TIMEZONES)
        plan = rng.choices(_PLANS, _PLAN_WEIGHTS)[0]
        external_id = f"demo-{n:04d}"
        signed_up = now - timedelta(seconds=rng.uniform(0, days * 86_400))
        props = {
            "first_name": first,
            "last_name": last,
            "name": f"{first} {last}",
            "plan": plan,
            "company": rng.choice(_COMPANIES),
            "country": country,
            "signup_source": rng.choice(_SOURCES),
            "demo": True,
        }
        timeline = _timeline(rng, plan=plan, start=signed_up, now=now)
        people.append(
            {
                "external_id": external_id,
                "email": f"{first}.{last}.{n}@example.com".lower(),
                "timezone": tz,
                "properties": props,
                "first_seen_at": signed_up,
                "last_seen_at": timeline[-1][1] if timeline else signed_up,
            }
        )
        for index, (name, at, event_props) in enumerate(timeline):
            events.append(
                {
                    "external_id": external_id,
                    "event": name,
                    "properties": event_props,
                    "idempotency_key": f"{DEMO_SOURCE}:{external_id}:{index}",
                    "occurred_at": at.isoformat(),
                }
            )
    return DemoData(contacts=people, events=events)


def _timeline(
    rng: random.Random, *, plan: str, start: datetime, now: datetime
) -> list[tuple[str, datetime, dict[str, Any]]]:
    """One person's events: sign-up, sessions of product use, and (paid plans) billing."""
    out: list[tuple[str, datetime, dict[str, Any]]] = [
        ("signed_up", start, {"plan": "free" if plan != "enterprise" else "enterprise"})
    ]
    at = start
    activity = rng.uniform(0.2, 1.5)  # sessions per day
    while True:
        at += timedelta(days=rng.expovariate(activity))
        if at >= now:
            break
        out.append(("logged_in", at, {}))
        for _ in range(rng.randint(0, 3)):
            at += timedelta(minutes=rng.uniform(1, 40))
            out.append(("feature_used", at, {"feature": rng.choice(_FEATURES)}))
        if rng.random() < 0.08:
            out.append(("project_created", at, {"template": rng.choice(("blank", "starter"))}))
        if rng.random() < 0.04:
            out.append(("invite_sent", at, {"role": rng.choice(("member", "admin"))}))
    if plan in _PRICES:
        upgrade_at = start + (now - start) * rng.uniform(0.05, 0.5)
        out.append(("plan_upgraded", upgrade_at, {"from": "free", "to": plan}))
        paid = upgrade_at
        while paid < now:
            out.append(("invoice_paid", paid, {"amount": _PRICES[plan], "currency": "USD"}))
            paid += timedelta(days=30)
    out.sort(key=lambda item: item[1])
    return [item for item in out if item[1] <= now]


_INSERT_EVENTS = text(
    """
    INSERT INTO user_events
        (contact_id, user_id, event, properties, idempotency_key, source, occurred_at)
    SELECT c.id, coalesce(c.external_id, c.anonymous_id, c.id::text),
           v.event, coalesce(v.properties, '{}'::jsonb), v.idempotency_key, :source,
           v.occurred_at
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        external_id text, event text, properties jsonb, idempotency_key text,
        occurred_at timestamptz)
    JOIN contacts c ON c.external_id = v.external_id AND c.deleted_at IS NULL
    ON CONFLICT DO NOTHING
    """
)


async def seed(session: AsyncSession, *, now: datetime | None = None) -> SeedResult:
    """Insert the demo contacts, events and email history that are not there yet."""
    now = now or datetime.now(UTC)
    data = generate(now=now)
    contacts = await session.execute(
        insert(Contact).values(data.contacts).on_conflict_do_nothing().returning(Contact.id)
    )
    inserted_contacts = len(contacts.all())
    events = await session.execute(
        _INSERT_EVENTS, {"rows": json.dumps(data.events), "source": DEMO_SOURCE}
    )
    inserted_events = events.rowcount if events.rowcount is not None else 0  # type: ignore[attr-defined]
    inserted_sends = await demo_email.seed(session, data.contacts, now=now)
    activity = await demo_activity.seed(
        session, data.contacts, data.events, now=now, from_email=demo_email.FROM_EMAIL
    )
    return SeedResult(
        contacts=inserted_contacts,
        events=inserted_events,
        sends=inserted_sends + activity.sends,
        journey_runs=activity.journey_runs,
        memberships=activity.memberships,
        campaigns=activity.campaigns,
        dead_letters=activity.dead_letters,
    )
