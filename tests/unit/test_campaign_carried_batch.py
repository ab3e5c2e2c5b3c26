"""A step's read-ahead carried into the run's next step (hogsend.runtime.campaigns)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from hogsend.db.repos.campaigns import Recipient
from hogsend.db.tables.campaigns import Campaign
from hogsend.runtime import campaigns


def _campaign(**changes: object) -> Campaign:
    fields: dict[str, object] = {
        "id": uuid.UUID(int=7),
        "name": "june",
        "status": "sending",
        "audience_kind": "list",
        "audience": {"id": "newsletter"},
        "template_key": "news",
        "props": {"edition": 6},
    }
    return Campaign(**(fields | changes))


def _recipients(count: int) -> list[Recipient]:
    at = datetime(2026, 6, 1, tzinfo=UTC)
    return [
        Recipient(contact_id=uuid.UUID(int=n + 1), email=f"r{n}@example.com", send_at=at)
        for n in range(count)
    ]


def test_requests_share_the_campaign_fields_and_key_each_contact() -> None:
    campaign = _campaign(subject="June", from_email="News <news@example.com>")
    requests = campaigns._requests(campaign, _recipients(2))
    assert [r.idempotency_key for r in requests] == [
        f"campaign:{campaign.id}:{uuid.UUID(int=1)}",
        f"campaign:{campaign.id}:{uuid.UUID(int=2)}",
    ]
    assert {(r.template, r.subject, r.from_email, r.list_id, r.category) for r in requests} == {
        ("news", "June", "News <news@example.com>", "newsletter", "newsletter")
    }
    assert [r.to_email for r in requests] == ["r0@example.com", "r1@example.com"]
    assert all(r.kind == "campaign" and not r.resend_when_open for r in requests)


def test_a_carried_batch_is_taken_once_by_the_same_run_only() -> None:
    campaign = _campaign()
    batch = campaigns._batch(campaign, _recipients(3))
    campaigns._carried[campaign.id] = ("run-a", campaigns._shape(campaign), batch)
    assert campaigns._carried_batch(campaign.id, "run-b", campaign) is None
    assert campaign.id not in campaigns._carried  # a takeover's run reads for itself

    campaigns._carried[campaign.id] = ("run-a", campaigns._shape(campaign), batch)
    assert campaigns._carried_batch(campaign.id, "run-a", campaign) is batch
    assert campaigns._carried_batch(campaign.id, "run-a", campaign) is None


def test_a_carried_batch_is_rebuilt_when_the_campaign_changed() -> None:
    before = _campaign()
    batch = campaigns._batch(before, _recipients(2))
    campaigns._carried[before.id] = ("run-a", campaigns._shape(before), batch)
    after = _campaign(subject="A new subject")
    rebuilt = campaigns._carried_batch(before.id, "run-a", after)
    assert rebuilt is not None
    assert rebuilt is not batch
    assert rebuilt.recipients == batch.recipients
    assert {r.subject for r in rebuilt.requests} == {"A new subject"}
