"""Demo engine activity for ``hogsend dev --seed-demo``: runs, memberships, campaigns, a DLQ item.

On top of :mod:`hogsend.db.repos.demo` (contacts, events) and
:mod:`hogsend.db.repos.demo_email` (send history), this writes what the Journeys,
Buckets, Campaigns and Dead-letter pages show, for the quickstart app:

* ``welcome`` journey runs for every demo contact, in every status (recent sign-ups
  are enrolled, active or waiting; older ones completed, a few exited or failed), each
  with its step log. These are history rows: no durable workflow stands behind them
  (the running ones hold no wake-up or event wait, so no worker ever touches them).
* bucket memberships: ``vip-customers`` (manual) for enterprise contacts, and
  ``power-users`` / ``lapsed`` entries and exits derived from each contact's log-ins.
* two campaigns to the ``product-updates`` list: one ``sent`` weeks ago with its
  recipients, sends and engagement; one ``sending`` now, half done, its other
  recipients still pending; its last progress is a day old, so a worker's reaper hands
  it to a new run at once and it really goes on sending (throttled to one every 4 s).
* sends whose decisions the history lacks (``redirected``, ``skipped_deleted``).
* two dead-letter entries: an event the dispatcher gave up on, which a retry really
  re-queues, and the failed welcome run of one contact whose replay diverged from the
  journey's code, which a retry really starts again (a new run under the current code).

Every row has a stable id derived from the demo contact's ``external_id``, and inserts
skip rows that exist: seeding again adds nothing.
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

from hogsend.db.repos import dead_letters, outbox
from hogsend.db.repos import sends as sends_repo

_SEED = 20_240_613
_NAMESPACE = uuid.UUID("2b8f8d6e-0c57-4a55-8f0e-5d3b1f6c9a21")
JOURNEY = "welcome"
FINISHED_CAMPAIGN = uuid.uuid5(_NAMESPACE, "campaign:february-news")
RUNNING_CAMPAIGN = uuid.uuid5(_NAMESPACE, "campaign:spring-launch")
DEAD_EVENT_KEY = "demo:dead-letter:checkout_failed"


@dataclass(frozen=True, slots=True, kw_only=True)
class ActivityResult:
    """How many rows of each kind a seeding run inserted."""

    journey_runs: int
    memberships: int
    campaigns: int
    sends: int
    dead_letters: int


def _id(*parts: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, ":".join(parts)))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


# ---------------------------------------------------------------------------- journeys


def _run(person: dict[str, Any], index: int, now: datetime, rng: random.Random) -> dict[str, Any]:
    """One welcome run and its log, its status following the sign-up's age."""
    start = person["first_seen_at"] + timedelta(seconds=2)
    age = now - start
    ext = person["external_id"]
    forced = ("enrolled", "active", "waiting", "exited", "failed")
    if index < len(forced):
        status = forced[index]  # the first contacts guarantee every status exists
    elif age < timedelta(days=2):
        status = "waiting"
    else:
        roll = rng.random()
        status = "exited" if roll < 0.06 else "failed" if roll < 0.08 else "completed"
    if status in ("enrolled", "active"):
        start = now - timedelta(seconds=rng.uniform(5, 50))
    run: dict[str, Any] = {
        "id": _id("run", ext, JOURNEY),
        "external_id": ext,
        "workflow_id": f"demo:{JOURNEY}:{ext}",
        "status": status,
        "current_step": None,
        "next_wake_at": None,
        "exit_reason": None,
        "error_message": None,
        "completed_at": None,
        "exited_at": None,
        "failed_at": None,
        "created_at": _iso(start),
        "updated_at": _iso(start),
    }
    steps: list[tuple[str, str, datetime, dict[str, Any]]] = [
        ("start", "enrolled", start, {"trigger": "signed_up"})
    ]
    if status == "enrolled":
        return {**run, "logs": _logs(run["id"], ext, steps)}
    sent = start + timedelta(seconds=1)
    steps.append(("send_email:welcome", "send_email", sent, {"decision": "sent"}))
    if status == "active":
        run["current_step"] = "send_email:welcome"
    elif status == "waiting":
        run.update(current_step="sleep", next_wake_at=_iso(start + timedelta(days=2)))
        steps.append(("sleep", "sleep", sent, {"seconds": 172_800}))
    elif status == "exited":
        at = min(start + timedelta(days=1), now)
        steps.append(("exit", "exited", at, {"reason": "event:account_deleted"}))
        run.update(exit_reason="event:account_deleted", exited_at=_iso(at), updated_at=_iso(at))
    elif status == "failed":
        at = min(start + timedelta(days=2), now)
        error = "TemplateError: getting-started: 'first_name' is undefined (line 4)"
        detail: dict[str, Any] = {"error": error}
        if index == DIVERGED_RUN:
            error = _DIVERGED_ERROR
            detail = {"error": error, "diverged": _DIVERGED_AT}
        steps.append(("sleep", "sleep", sent, {"seconds": 172_800}))
        steps.append(("send_email:getting-started", "failed", at, detail))
        run.update(
            current_step="send_email:getting-started",
            error_message=error,
            failed_at=_iso(at),
            updated_at=_iso(at),
        )
    else:
        second = start + timedelta(days=2)
        waited = second + timedelta(days=rng.uniform(0.2, 5))
        steps += [
            ("sleep", "sleep", sent, {"seconds": 172_800}),
            ("send_email:getting-started", "send_email", second, {"decision": "sent"}),
            ("wait_for_event:project_created", "wait_for_event", second, {"timeoutDays": 5}),
        ]
        done = min(waited, now)
        steps.append(("end", "completed", done, {}))
        run.update(completed_at=_iso(done), updated_at=_iso(done))
    return {**run, "logs": _logs(run["id"], ext, steps)}


def _logs(
    state_id: str, ext: str, steps: Sequence[tuple[str, str, datetime, dict[str, Any]]]
) -> list[dict[str, Any]]:
    return [
        {
            "state_id": state_id,
            "external_id": ext,
            "step": step,
            "action": action,
            "detail": detail,
            "started_at": _iso(at),
            "finished_at": _iso(at + timedelta(milliseconds=40)),
        }
        for step, action, at, detail in steps
    ]


_INSERT_RUNS = text(
    """
    INSERT INTO journey_states (id, contact_id, user_id, user_email, journey_id, workflow_id,
        status, current_step, next_wake_at, exit_reason, error_message, completed_at,
        exited_at, failed_at, created_at, updated_at)
    SELECT v.id, c.id, coalesce(c.external_id, c.id::text), c.email, :journey, v.workflow_id,
           v.status, v.current_step, v.next_wake_at, v.exit_reason, v.error_message,
           v.completed_at, v.exited_at, v.failed_at, v.created_at, v.updated_at
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        id uuid, external_id text, workflow_id text, status text, current_step text,
        next_wake_at timestamptz, exit_reason text, error_message text,
        completed_at timestamptz, exited_at timestamptz, failed_at timestamptz,
        created_at timestamptz, updated_at timestamptz)
    JOIN contacts c ON c.external_id = v.external_id AND c.deleted_at IS NULL
    WHERE NOT EXISTS (SELECT 1 FROM journey_states s
                      WHERE s.user_id = coalesce(c.external_id, c.id::text)
                        AND s.journey_id = :journey
                        AND s.status IN ('enrolled', 'active', 'waiting')
                        AND v.status IN ('enrolled', 'active', 'waiting'))
    ON CONFLICT DO NOTHING
    RETURNING id
    """
)

_INSERT_LOGS = text(
    """
    INSERT INTO journey_logs (journey_state_id, journey_id, contact_id, user_id, step, action,
                              detail, started_at, finished_at, duration_ms)
    SELECT v.state_id, :journey, c.id, coalesce(c.external_id, c.id::text), v.step, v.action,
           v.detail, v.started_at, v.finished_at, 40
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        state_id uuid, external_id text, step text, action text, detail jsonb,
        started_at timestamptz, finished_at timestamptz)
    JOIN contacts c ON c.external_id = v.external_id AND c.deleted_at IS NULL
    WHERE v.state_id = ANY(CAST(:new_ids AS uuid[]))
    """
)


# ----------------------------------------------------------------------------- buckets


def _memberships(
    people: Sequence[dict[str, Any]], events: Sequence[dict[str, Any]], now: datetime
) -> list[dict[str, Any]]:
    logins: dict[str, list[datetime]] = {}
    for event in events:
        if event["event"] == "logged_in":
            at = datetime.fromisoformat(event["occurred_at"])
            logins.setdefault(event["external_id"], []).append(at)
    rows: list[dict[str, Any]] = []
    for person in people:
        ext = person["external_id"]
        seen = sorted(logins.get(ext, []))
        if person["properties"]["plan"] == "enterprise":
            rows.append(_member(ext, "vip-customers", person["first_seen_at"], None, "manual"))
        recent = [at for at in seen if at > now - timedelta(days=7)]
        if len(recent) >= 7:
            rows.append(_member(ext, "power-users", recent[6], None, "event"))
        elif len(seen) >= 12:
            # Was a power user for a while earlier on, then slowed down.
            rows.append(_member(ext, "power-users", seen[6], seen[11] + timedelta(days=3), "event"))
        quiet = now - seen[-1] if seen else timedelta(0)
        if quiet > timedelta(days=6):
            # The demo's quiet spells are short: a week without a log-in counts here.
            rows.append(_member(ext, "lapsed", seen[-1] + timedelta(days=6), None, "event"))
    return rows


def _member(
    ext: str, bucket: str, entered: datetime, left: datetime | None, source: str
) -> dict[str, Any]:
    return {
        "id": _id("member", ext, bucket),
        "external_id": ext,
        "bucket_id": bucket,
        "status": "left" if left is not None else "active",
        "entered_at": _iso(entered),
        "left_at": _iso(left),
        "left_reason": "criteria" if left is not None else None,
        "source": source,
    }


_INSERT_MEMBERSHIPS = text(
    """
    INSERT INTO bucket_memberships (id, contact_id, user_id, user_email, bucket_id, status,
        entered_at, left_at, left_reason, last_evaluated_at, source, created_at, updated_at)
    SELECT v.id, c.id, coalesce(c.external_id, c.id::text), c.email, v.bucket_id, v.status,
           v.entered_at, v.left_at, v.left_reason, coalesce(v.left_at, v.entered_at), v.source,
           v.entered_at, coalesce(v.left_at, v.entered_at)
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        id uuid, external_id text, bucket_id text, status text, entered_at timestamptz,
        left_at timestamptz, left_reason text, source text)
    JOIN contacts c ON c.external_id = v.external_id AND c.deleted_at IS NULL
    ON CONFLICT DO NOTHING
    RETURNING id
    """
)


# --------------------------------------------------------------------------- campaigns


def _campaign_rows(now: datetime) -> list[dict[str, Any]]:
    finished_at = now - timedelta(days=40)
    running_at = now - timedelta(minutes=10)
    return [
        {
            "id": str(FINISHED_CAMPAIGN),
            "name": "February product news",
            "status": "sent",
            "template_key": "newsletter",
            "props": {
                "title": "February at a glance",
                "intro": "Three things we shipped this month.",
                "items": [
                    {"heading": "Faster dashboards", "body": "Big projects load twice as fast."},
                    {"heading": "CSV exports", "body": "Any table, one click."},
                ],
            },
            "send_at": _iso(finished_at),
            "throttle": None,
            "started_at": _iso(finished_at),
            "completed_at": _iso(finished_at + timedelta(minutes=4)),
            "workflow_id": f"demo:campaign:{FINISHED_CAMPAIGN}",
        },
        {
            "id": str(RUNNING_CAMPAIGN),
            "name": "Spring launch",
            "status": "sending",
            "template_key": "newsletter",
            "props": {
                "title": "Spring launch",
                "intro": "Our biggest release of the year is rolling out.",
                "items": [
                    {"heading": "Workflows", "body": "Chain alerts, exports and reports."},
                    {"heading": "Audit logs for everyone", "body": "Every plan, every change."},
                ],
            },
            "send_at": _iso(running_at),
            "throttle": 0.25,
            "started_at": _iso(running_at),
            "completed_at": None,
            "workflow_id": f"demo:campaign:{RUNNING_CAMPAIGN}",
        },
    ]


_INSERT_CAMPAIGNS = text(
    """
    INSERT INTO campaigns (id, name, status, audience_kind, audience, template_key, props,
        from_email, send_at, throttle_per_second, workflow_id, started_at, snapshot_at,
        completed_at, last_progress_at, created_by, created_at, updated_at)
    SELECT v.id, v.name, v.status, 'list', '{"id": "product-updates"}'::jsonb, v.template_key,
           v.props, :from_email, v.send_at, v.throttle, v.workflow_id, v.started_at,
           v.started_at, v.completed_at,
           -- The running one's last progress is old enough that the first reaper pass of
           -- a worker hands it to a new run at once: the demo shows it moving.
           coalesce(v.completed_at, CAST(:now AS timestamptz) - interval '1 day'),
           'hogsend dev --seed-demo',
           v.send_at - interval '1 hour', coalesce(v.completed_at, :now)
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        id uuid, name text, status text, template_key text, props jsonb, send_at timestamptz,
        throttle double precision, workflow_id text, started_at timestamptz,
        completed_at timestamptz)
    ON CONFLICT DO NOTHING
    RETURNING id
    """
)

_INSERT_RECIPIENTS = text(
    """
    INSERT INTO campaign_recipients (campaign_id, contact_id, email, send_at, status, reason,
                                     email_send_id, sent_at, created_at)
    SELECT v.campaign_id, c.id, c.email, v.send_at, v.status, v.reason, v.send_id, v.sent_at,
           v.send_at
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        campaign_id uuid, external_id text, send_at timestamptz, status text, reason text,
        send_id uuid, sent_at timestamptz)
    JOIN contacts c ON c.external_id = v.external_id AND c.deleted_at IS NULL
    WHERE v.campaign_id = ANY(CAST(:new_ids AS uuid[]))
    ON CONFLICT DO NOTHING
    """
)

_CAMPAIGN_SENDS = text(
    """
    INSERT INTO email_sends (id, contact_id, user_id, user_email, campaign_id, template_key,
        category, from_email, to_email, subject, status, decision, decision_detail,
        idempotency_key, provider, provider_message_id, attempts, sent_at, delivered_at,
        opened_at, clicked_at, bounced_at, open_count, click_count, bounce_type, kind,
        redirected_to, created_at, updated_at)
    SELECT v.id, c.id, coalesce(c.external_id, c.id::text), c.email, v.campaign_id,
           v.template_key, v.category, :from_email, c.email, v.subject, v.status, v.decision,
           v.detail, v.idempotency_key, v.provider, v.provider_message_id, v.attempts,
           v.sent_at, v.delivered_at, v.opened_at, v.clicked_at, v.bounced_at, v.open_count,
           v.click_count, v.bounce_type, v.kind, v.redirected_to, v.created_at,
           greatest(v.created_at, v.sent_at, v.delivered_at, v.opened_at, v.clicked_at,
                    v.bounced_at)
    FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS v(
        id uuid, external_id text, campaign_id uuid, template_key text, category text,
        subject text, status text, decision text, detail jsonb, idempotency_key text,
        provider text, provider_message_id text, attempts int, sent_at timestamptz,
        delivered_at timestamptz, opened_at timestamptz, clicked_at timestamptz,
        bounced_at timestamptz, open_count int, click_count int, bounce_type text, kind text,
        redirected_to text, created_at timestamptz)
    JOIN contacts c ON c.external_id = v.external_id
    ON CONFLICT DO NOTHING
    """
)

_UPDATE_COUNTS = text(
    """
    UPDATE campaigns c SET
        total_recipients = r.total, sent_count = r.sent, skipped_count = r.skipped,
        failed_count = r.failed, skip_reasons = r.reasons
    FROM (SELECT campaign_id, count(*) AS total,
                 count(*) FILTER (WHERE status = 'sent') AS sent,
                 count(*) FILTER (WHERE status = 'skipped') AS skipped,
                 count(*) FILTER (WHERE status = 'failed') AS failed,
                 coalesce(jsonb_object_agg(reason, n) FILTER (WHERE reason IS NOT NULL
                                                            AND status = 'skipped'), '{}')
                     AS reasons
          FROM (SELECT campaign_id, status, reason,
                       count(*) OVER (PARTITION BY campaign_id, reason) AS n
                FROM campaign_recipients WHERE campaign_id = ANY(CAST(:ids AS uuid[]))) x
          GROUP BY campaign_id) r
    WHERE c.id = r.campaign_id
    """
)


def _campaign_sends(
    people: Sequence[dict[str, Any]], now: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Recipients and sends of the two demo campaigns (subscribers of product-updates)."""
    rng = random.Random(_SEED + 1)
    finished_at = now - timedelta(days=40)
    running_at = now - timedelta(minutes=10)
    recipients: list[dict[str, Any]] = []
    sends: list[dict[str, Any]] = []
    for campaign_id, at, subject, running in (
        (FINISHED_CAMPAIGN, finished_at, "February at a glance", False),
        (RUNNING_CAMPAIGN, running_at, "Spring launch", True),
    ):
        audience = [p for p in people if p["first_seen_at"] < at]
        for index, person in enumerate(audience):
            ext = person["external_id"]
            send_id = _id("campaign-send", str(campaign_id), ext)
            if running and index >= len(audience) // 2:
                recipients.append(
                    {
                        "campaign_id": str(campaign_id),
                        "external_id": ext,
                        "send_at": _iso(at),
                        "status": "pending",
                        "reason": None,
                        "send_id": None,
                        "sent_at": None,
                    }
                )
                continue
            created = at + timedelta(seconds=index * 1.5)
            row = _send_row(send_id, ext, campaign_id, subject, created)
            roll = rng.random()
            if roll < 0.04:
                row.update(status="skipped", decision="unsubscribed", kind="campaign")
                row["detail"] = {"gate": "unsubscribed", "scope": "list:product-updates"}
                status, reason = "skipped", "unsubscribed"
            else:
                _deliver(row, created, rng, campaign_id)
                status, reason = "sent", None
            sends.append(row)
            recipients.append(
                {
                    "campaign_id": str(campaign_id),
                    "external_id": ext,
                    "send_at": _iso(at),
                    "status": status,
                    "reason": reason,
                    "send_id": send_id,
                    "sent_at": row["sent_at"],
                }
            )
    return recipients, sends


def _send_row(
    send_id: str, ext: str, campaign_id: uuid.UUID | None, subject: str, created: datetime
) -> dict[str, Any]:
    return {
        "id": send_id,
        "external_id": ext,
        "campaign_id": str(campaign_id) if campaign_id else None,
        "template_key": "newsletter",
        "category": "product-updates",
        "subject": subject,
        "status": "skipped",
        "decision": "skipped_deleted",
        "detail": None,
        "idempotency_key": None,
        "provider": None,
        "provider_message_id": None,
        "attempts": 0,
        "sent_at": None,
        "delivered_at": None,
        "opened_at": None,
        "clicked_at": None,
        "bounced_at": None,
        "open_count": 0,
        "click_count": 0,
        "bounce_type": None,
        "kind": "campaign",
        "redirected_to": None,
        "created_at": _iso(created),
    }


def _deliver(
    row: dict[str, Any], created: datetime, rng: random.Random, campaign_id: uuid.UUID
) -> None:
    sent = created + timedelta(seconds=0.4)
    row.update(
        status="sent",
        decision="sent",
        idempotency_key=f"campaign:{campaign_id}:{row['id']}",
        provider="smtp",
        provider_message_id=f"<{row['id']}@demo.hogsend>",
        attempts=1,
        sent_at=_iso(sent),
    )
    if rng.random() < 0.02:
        row.update(status="bounced", bounced_at=_iso(sent + timedelta(seconds=30)))
        row["bounce_type"] = "soft"
        return
    delivered = sent + timedelta(seconds=rng.uniform(1, 15))
    row.update(status="delivered", delivered_at=_iso(delivered))
    if rng.random() < 0.42:
        opened = delivered + timedelta(minutes=rng.expovariate(1 / 240))
        row.update(status="opened", opened_at=_iso(opened), open_count=rng.randint(1, 3))
        if rng.random() < 0.3:
            clicked = opened + timedelta(minutes=rng.uniform(0.3, 10))
            row.update(status="clicked", clicked_at=_iso(clicked), click_count=1)


def _other_decisions(people: Sequence[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Attempts the email history lacks: test-mode redirects and a deleted contact's send."""
    rows = []
    for index, person in enumerate(people[:6]):
        ext = person["external_id"]
        at = now - timedelta(days=3, hours=index)
        row = _send_row(_id("other-send", ext), ext, None, "Your invoice is ready", at)
        row.update(template_key="payment-failed", category=None, kind="transactional")
        if index < 4:
            row.update(
                status="sent",
                decision="redirected",
                provider="outbox",
                provider_message_id=f"<{row['id']}@demo.hogsend>",
                attempts=1,
                sent_at=_iso(at + timedelta(seconds=1)),
                redirected_to="qa@example.com",
                idempotency_key=f"demo:{row['id']}",
            )
            row["detail"] = {"gate": "test_mode_redirect", "to": "qa@example.com"}
        else:
            row["detail"] = {"gate": "skipped_deleted"}
        rows.append(row)
    return rows


# ------------------------------------------------------------------------- dead letter

DIVERGED_RUN = 4
"""The demo contact (by index) whose forced ``failed`` welcome run diverged from its code."""

_DIVERGED_AT = {"position": 5, "recorded": "journey.move 2:sleep", "expected": "journey.log 2:log"}
_DIVERGED_ERROR = (
    "journey code changed under a waiting run: at step 5 the run recorded "
    "'journey.move 2:sleep' but the code now does 'journey.log 2:log'"
)


async def _journey_dead_letter(session: AsyncSession, people: Sequence[dict[str, Any]]) -> int:
    """The entry of the diverged welcome run, as the runtime writes one (a retry really
    starts the contact's welcome run again under the current code)."""
    if len(people) <= DIVERGED_RUN:
        return 0
    ext = people[DIVERGED_RUN]["external_id"]
    run_id = _id("run", ext, JOURNEY)
    found = (
        await session.execute(
            text(
                """
                SELECT s.id, s.workflow_id, s.contact_id, s.user_id, e.id AS event_id,
                       e.event, e.occurred_at, e.properties, e.source
                FROM journey_states s
                LEFT JOIN LATERAL (
                    SELECT id, event, occurred_at, properties, source FROM user_events
                    WHERE contact_id = s.contact_id AND event = 'signed_up'
                    ORDER BY occurred_at LIMIT 1) e ON true
                WHERE s.id = :id AND s.status = 'failed'
                  AND NOT EXISTS (SELECT 1 FROM dead_letter_queue d
                                  WHERE d.source = 'journey' AND d.source_id = s.workflow_id)
                """
            ),
            {"id": run_id},
        )
    ).first()
    if found is None:
        return 0  # seeded before (or the contact is gone)
    trigger = None
    if found.event_id is not None:
        trigger = {
            "id": str(found.event_id),
            "name": found.event,
            "contactKey": found.user_id,
            "contactId": str(found.contact_id),
            "occurredAt": found.occurred_at.isoformat(),
            "properties": dict(found.properties or {}),
            "source": found.source,
        }
    await dead_letters.add(
        session,
        source="journey",
        source_id=found.workflow_id,
        payload={
            "journeyId": JOURNEY,
            "runId": str(found.id),
            "workflowId": found.workflow_id,
            "contactId": str(found.contact_id),
            "userId": found.user_id,
            "applicationVersion": "hogsend-1",
            "divergedAt": _DIVERGED_AT,
            "trigger": trigger,
        },
        error=_DIVERGED_ERROR,
        attempts=1,
    )
    return 1


async def _dead_letter(
    session: AsyncSession, people: Sequence[dict[str, Any]], now: datetime
) -> int:
    """One event the dispatcher gave up on, with its dead outbox row and entry."""
    ext = people[10]["external_id"] if len(people) > 10 else people[0]["external_id"]
    event = (
        await session.execute(
            text(
                """
                INSERT INTO user_events (contact_id, user_id, event, properties,
                                         idempotency_key, source, occurred_at)
                SELECT c.id, c.external_id, 'checkout_failed',
                       '{"amount": 49, "currency": "USD", "reason": "card_declined"}'::jsonb,
                       :key, 'demo', CAST(:now AS timestamptz) - interval '2 hours'
                FROM contacts c WHERE c.external_id = :ext AND c.deleted_at IS NULL
                ON CONFLICT DO NOTHING
                RETURNING id, contact_id, user_id, properties, occurred_at
                """
            ),
            {"key": DEAD_EVENT_KEY, "ext": ext, "now": now},
        )
    ).first()
    if event is None:
        return 0  # seeded before (or the contact is gone)
    await session.execute(
        text(
            """
            INSERT INTO event_outbox (event_id, contact_id, contact_key, event, attempts,
                                      last_error, dead_at, next_attempt_at)
            VALUES (:event_id, :contact_id, :key, 'checkout_failed', 5, :error, now(), now())
            """
        ),
        {
            "event_id": event.id,
            "contact_id": event.contact_id,
            "key": event.user_id,
            "error": _DEAD_ERROR,
        },
    )
    await dead_letters.add(
        session,
        source=outbox.DISPATCHER_SOURCE,
        source_id=str(event.id),
        payload={
            "eventId": str(event.id),
            "contactId": str(event.contact_id),
            "contactKey": event.user_id,
            "event": "checkout_failed",
            "userId": event.user_id,
            "properties": dict(event.properties),
            "occurredAt": event.occurred_at.isoformat(),
            "source": "demo",
            "consumersDone": [],
            "traceback": "Traceback (most recent call last):\n  ...\n" + _DEAD_ERROR,
        },
        error=_DEAD_ERROR,
        attempts=5,
    )
    return 1


_DEAD_ERROR = "RuntimeError: the billing webhook answered 503 Service Unavailable"


# -------------------------------------------------------------------------------- seed


async def seed(
    session: AsyncSession,
    people: Sequence[dict[str, Any]],
    events: Sequence[dict[str, Any]],
    *,
    now: datetime,
    from_email: str,
) -> ActivityResult:
    """Insert the demo activity that is not there yet (see the module docstring)."""
    rng = random.Random(_SEED)
    runs = [_run(person, i, now, rng) for i, person in enumerate(people)]
    new_runs = [
        str(r.id)
        for r in await session.execute(
            _INSERT_RUNS,
            {
                "rows": json.dumps([{k: v for k, v in r.items() if k != "logs"} for r in runs]),
                "journey": JOURNEY,
            },
        )
    ]
    if new_runs:
        await session.execute(
            _INSERT_LOGS,
            {
                "rows": json.dumps([log for r in runs for log in r["logs"]]),
                "journey": JOURNEY,
                "new_ids": new_runs,
            },
        )
    members = await session.execute(
        _INSERT_MEMBERSHIPS, {"rows": json.dumps(_memberships(people, events, now))}
    )
    new_members = len(members.all())
    new_campaigns = [
        str(r.id)
        for r in await session.execute(
            _INSERT_CAMPAIGNS,
            {"rows": json.dumps(_campaign_rows(now)), "from_email": from_email, "now": now},
        )
    ]
    inserted_sends = 0
    if new_campaigns:
        recipients, sends = _campaign_sends(people, now)
        sends = [s for s in sends if s["campaign_id"] in new_campaigns]
        result = await session.execute(
            _CAMPAIGN_SENDS, {"rows": json.dumps(sends), "from_email": from_email}
        )
        inserted_sends += int(result.rowcount or 0)  # type: ignore[attr-defined]
        await sends_repo.record_message_ids(session, [s["id"] for s in sends])
        await session.execute(
            _INSERT_RECIPIENTS, {"rows": json.dumps(recipients), "new_ids": new_campaigns}
        )
        await session.execute(_UPDATE_COUNTS, {"ids": new_campaigns})
    others = _other_decisions(people, now)
    result = await session.execute(
        _CAMPAIGN_SENDS, {"rows": json.dumps(others), "from_email": from_email}
    )
    inserted_sends += int(result.rowcount or 0)  # type: ignore[attr-defined]
    await sends_repo.record_message_ids(session, [s["id"] for s in others])
    dead = await _dead_letter(session, people, now) + await _journey_dead_letter(session, people)
    return ActivityResult(
        journey_runs=len(new_runs),
        memberships=new_members,
        campaigns=len(new_campaigns),
        sends=inserted_sends,
        dead_letters=dead,
    )
