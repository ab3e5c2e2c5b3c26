"""A deferred request's stored form (``deferred_sends.request``) gives back the request."""

from __future__ import annotations

import json
import uuid
from datetime import time, timedelta

from hogsend.channels.mailer import SendRequest, request_from_record, request_record
from hogsend.core.mailer_gates import SendWindow


def test_a_request_survives_its_record() -> None:
    request = SendRequest(
        template="digest",
        contact_id=uuid.uuid4(),
        to_email="x@example.com",
        props={"n": 1, "items": ["a", "b"], "nested": {"k": None}},
        subject="S",
        from_email="Me <me@example.com>",
        reply_to="r@example.com",
        category="newsletter",
        list_id="newsletter",
        kind="journey",
        journey_id="onboarding",
        journey_state_id=uuid.uuid4(),
        campaign_id=uuid.uuid4(),
        suppress_gap=timedelta(days=2, seconds=5),
        send_window=SendWindow(
            start=time(22, 30), end=time(6), weekdays=frozenset({0, 4}), timezone="Asia/Tokyo"
        ),
        idempotency_key="k",
        skip_preference_check=True,
        resend_when_open=False,
    )
    record = json.loads(json.dumps(request_record(request)))
    assert request_from_record(record) == request
    # A field written by a newer version is ignored.
    assert request_from_record({**record, "future_field": 1}) == request


def test_absent_values_stay_absent() -> None:
    request = SendRequest(template="t", to_email="x@example.com")
    record = json.loads(json.dumps(request_record(request)))
    assert request_from_record(record) == request
