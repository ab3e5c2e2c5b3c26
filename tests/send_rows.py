"""Decision rows as the mailer's batch path writes them, for tests of the sends repo."""

from __future__ import annotations

import uuid
from typing import Any


def queued_row(
    send_id: uuid.UUID,
    contact_id: uuid.UUID,
    *,
    user_id: str,
    to_email: str,
    key: str,
    category: str | None = None,
) -> dict[str, Any]:
    """A ``queued`` decision row, written ahead of its provider call."""
    return {
        "id": str(send_id),
        "contact_id": str(contact_id),
        "user_id": user_id,
        "to_email": to_email,
        "from_email": "news@example.com",
        "subject": "Hello",
        "template_key": "welcome",
        "category": category,
        "journey_id": None,
        "journey_state_id": None,
        "campaign_id": None,
        "key": key,
        "duplicate_of_id": None,
        "redirected_to": None,
        "status": "queued",
        "decision": "queued",
        "detail": None,
        "kind": "campaign",
        "error": None,
    }
