"""Reading Resend's webhook bodies into delivery reports."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from hogsend.channels.email.webhooks import (
    WebhookPayloadError,
    classify_resend_bounce,
    parse_resend,
)


def resend(event_type: str, **data: Any) -> dict[str, Any]:
    return {
        "type": event_type,
        "created_at": "2026-05-01T12:00:00.000Z",
        "data": {
            "email_id": "4ef9a417-02e9-4d39-ad75-9611e0fcc33c",
            "from": "Acme <hi@acme.test>",
            "to": ["Ann@Example.COM"],
            "subject": "Hello",
            "created_at": "2026-05-01T11:59:58.000000+00:00",
            **data,
        },
    }


def test_a_permanent_bounce_is_hard() -> None:
    report = parse_resend(
        resend(
            "email.bounced",
            bounce={"type": "Permanent", "subType": "General", "message": "No such user"},
        )
    )
    assert report.kind == "bounced"
    assert report.bounce == "hard"
    assert report.bounce_type == "Permanent"
    assert report.bounce_sub_type == "General"
    assert report.reason == "No such user"
    assert report.message_id == "4ef9a417-02e9-4d39-ad75-9611e0fcc33c"
    assert report.email == "Ann@Example.COM"
    assert report.occurred_at == datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("bounce_type", "sub_type", "expected"),
    [
        ("Permanent", "Suppressed", "hard"),
        ("permanent", None, "hard"),
        ("Transient", "MailboxFull", "soft"),
        ("Transient", "General", "soft"),
        ("Undetermined", None, "soft"),
        (None, None, "soft"),
        ("Transient", "MessageTooLarge", "message"),
        ("Transient", "ContentRejected", "message"),
        ("Transient", "AttachmentRejected", "message"),
    ],
)
def test_bounce_classes(bounce_type: str | None, sub_type: str | None, expected: str) -> None:
    assert classify_resend_bounce(bounce_type, sub_type) == expected


def test_a_bounce_without_details_is_soft() -> None:
    assert parse_resend(resend("email.bounced")).bounce == "soft"


@pytest.mark.parametrize(
    ("event_type", "kind"),
    [
        ("email.delivered", "delivered"),
        ("email.complained", "complained"),
        ("email.delivery_delayed", "delayed"),
        ("email.opened", "ignored"),
        ("email.clicked", "ignored"),
        ("email.sent", "ignored"),
        ("contact.created", "ignored"),
    ],
)
def test_types(event_type: str, kind: str) -> None:
    report = parse_resend(resend(event_type))
    assert report.kind == kind
    assert report.event_type == event_type
    assert report.bounce is None


def test_ignored_types_need_no_data() -> None:
    assert parse_resend({"type": "domain.updated"}).kind == "ignored"


def test_a_single_recipient_string_and_a_missing_one() -> None:
    assert parse_resend(resend("email.delivered", to="bob@x.io")).email == "bob@x.io"
    assert parse_resend(resend("email.delivered", to=[])).email is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({}, "type"),
        ({"type": 5}, "type"),
        ({"type": "email.bounced"}, "data"),
        ({"type": "email.bounced", "data": []}, "data"),
        (resend("email.bounced", bounce="hard"), "data.bounce"),
        (resend("email.bounced", bounce={"type": 1}), "data.bounce.type"),
        (resend("email.delivered", to=[5]), "data.to[0]"),
        (resend("email.delivered", email_id="a\x00b"), "data.email_id"),
        ({**resend("email.delivered"), "created_at": "yesterday"}, "created_at"),
        ({**resend("email.delivered"), "created_at": "2026-05-01T12:00:00"}, "created_at"),
    ],
)
def test_malformed_bodies_name_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(WebhookPayloadError) as caught:
        parse_resend(payload)
    assert caught.value.field == field
