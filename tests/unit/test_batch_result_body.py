"""The batch response body, rendered by orjson, is byte for byte JSONResponse's rendering."""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.responses import JSONResponse
from hypothesis import given, settings
from hypothesis import strategies as st

from hogsend.api.json_body import json_body_bytes
from hogsend.api.routes.events import batch_result
from hogsend.api.schemas.events import EventBatchResult, ItemError
from hogsend.core.identity import IdentityConflict
from hogsend.core.ingest import IngestResult

TEXT = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"]),  # no lone surrogates
    max_size=12,
)


def _as_text(value: Any) -> Any:
    """``value`` with every UUID as its text, what JSONResponse needs."""
    if isinstance(value, dict):
        return {k: _as_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_text(v) for v in value]
    return str(value) if isinstance(value, uuid.UUID) else value


_RESULT = st.one_of(
    st.builds(
        IngestResult,
        status=st.sampled_from(["stored", "duplicate"]),
        event_id=st.uuids(),
        contact_id=st.uuids(),
        conflicts=st.lists(
            st.builds(
                IdentityConflict,
                kind=st.sampled_from(["external", "email", "anonymous"]),
                given=TEXT,
                existing=TEXT,
            ),
            max_size=2,
        ).map(tuple),
    ),
    st.builds(IngestResult, status=st.just("rejected"), reason=st.one_of(st.none(), TEXT)),
)
_OUTCOME = st.one_of(
    st.just("input"),
    st.lists(st.builds(ItemError, field=TEXT, message=TEXT), min_size=1, max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_OUTCOME, _RESULT), max_size=6))
def test_the_batch_body_is_what_json_response_renders(pairs: list[Any]) -> None:
    outcomes = [o for o, _ in pairs]
    results = [r for o, r in pairs if o == "input"]
    content = batch_result(outcomes, results)
    body = json_body_bytes(content)
    assert body == JSONResponse(_as_text(content)).body
    EventBatchResult.model_validate_json(body)
