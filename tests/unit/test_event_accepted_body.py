"""The 202 body of ``POST /v1/events``, written directly, equals the model's own dump."""

from __future__ import annotations

import json
import uuid

import pytest

from hogsend.api.routes.events import accepted, accepted_response
from hogsend.api.schemas.events import EventAccepted
from hogsend.core.identity import IdentityConflict
from hogsend.core.ingest import IngestResult


@pytest.mark.parametrize("status", ["stored", "duplicate"])
def test_the_common_body_is_byte_for_byte_the_models_dump(status: str) -> None:
    result = IngestResult(
        status=status,  # type: ignore[arg-type]
        event_id=uuid.UUID("0b4bd1ce-6f5e-4d38-8a4e-0a0f4c51e9a1"),
        contact_id=uuid.UUID("5d0d8f8e-0c56-4a43-9a39-f1c3f0c9c7b2"),
        contact_key="u-1",
    )
    response = accepted_response(result)
    expected = accepted(result).model_dump_json(by_alias=True, exclude_none=True).encode()
    assert response.body == expected
    assert response.status_code == 202
    assert response.media_type == "application/json"
    EventAccepted.model_validate_json(response.body)
    assert json.loads(response.body)["stored"] is (status == "stored")


def test_a_body_with_conflicts_still_lists_them() -> None:
    result = IngestResult(
        status="stored",
        event_id=uuid.uuid4(),
        contact_id=uuid.uuid4(),
        contact_key="u-1",
        conflicts=(IdentityConflict(kind="external", given="u-2", existing="u-1"),),
    )
    body = json.loads(accepted_response(result).body)
    assert body["conflicts"] == [{"field": "userId", "given": "u-2", "existing": "u-1"}]
