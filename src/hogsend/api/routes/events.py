"""POST /v1/events and /v1/events/batch: the data plane's front door (scope ``ingest``).

A request only stores: one transaction resolves the contact, inserts the event and its
outbox row and applies the list choices; the dispatcher in the worker does the rest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.api.auth import require_scope
from hogsend.api.deps import driver_pool_of, hogsend_of, settings_of
from hogsend.api.errors import problem_responses
from hogsend.api.json_body import json_body_bytes
from hogsend.api.middleware import MAX_BODY_BYTES_EXTRA
from hogsend.api.routes.transactions import in_transaction, invalid_field, notify_throttle_of
from hogsend.api.schemas.events import (
    IDENTITY_FIELDS,
    IDENTITY_MISSING,
    MAX_NAME_LENGTH,
    EventAccepted,
    EventBatchIn,
    EventBatchResult,
    EventIn,
    IdentityFields,
    ItemError,
    Timestamp,
    conflicts_out,
    storable_object,
)
from hogsend.core.identity import MAX_EMAIL_LENGTH, MAX_ID_LENGTH, Identity, IdentityError
from hogsend.core.ingest import MAX_IDEMPOTENCY_KEY_LENGTH, EventInput, IngestResult
from hogsend.db.repos import events, outbox
from hogsend.errors import Conflict

router = APIRouter(tags=["events"])


def unknown_lists(request: Request, lists: Mapping[str, bool] | None) -> list[str]:
    """The ids in ``lists`` that the app does not register, in the order given."""
    if not lists:
        return []
    known = {item.id for item in hogsend_of(request).lists}
    return [list_id for list_id in lists if list_id not in known]


def error_field(loc: Sequence[int | str]) -> str:
    """``("eventProperties", "a", 0)`` → ``eventProperties.a[0]``."""
    name = ""
    for part in loc:
        if isinstance(part, int):
            name += f"[{part}]"
        else:
            name += f".{part}" if name else str(part)
    return name


def identity_of(body: IdentityFields) -> Identity:
    """The body's identity, or the 422 naming the key at fault (or the missing keys)."""
    try:
        identity = body.identity()
    except IdentityError as exc:
        raise invalid_field(("body", IDENTITY_FIELDS[exc.field]), exc.reason) from None
    if identity is None:
        raise invalid_field(("body",), IDENTITY_MISSING)
    return identity


def event_input(
    body: EventIn, identity: Identity, *, idempotency_key: str | None, source: str
) -> EventInput:
    """The ingest input of a validated body and its identity."""
    return EventInput(
        name=body.name,
        identity=identity,
        properties=body.event_properties,
        contact_properties=body.contact_properties,
        lists=body.lists,
        idempotency_key=idempotency_key or body.idempotency_key,
        occurred_at=body.timestamp,
        source=source,
    )


def accepted(result: IngestResult) -> EventAccepted:
    """The 202 body of a single ingest."""
    if result.status == "rejected" or result.event_id is None or result.contact_id is None:
        raise Conflict(result.reason or "the event could not be stored; retry")
    duplicate = result.status == "duplicate"
    return EventAccepted(
        stored=not duplicate,
        event_id=result.event_id,
        contact_id=result.contact_id,
        duplicate=True if duplicate else None,
        conflicts=conflicts_out(result.conflicts),
    )


def accepted_response(result: IngestResult) -> Response:
    """The 202 of a single ingest, serialised once here.

    Returning the model would have FastAPI validate it again against the response model
    and serialise it through a generic path: a measurable share of a request whose
    database work is one round trip.
    """
    if result.conflicts or result.event_id is None or result.contact_id is None:
        body = accepted(result).model_dump_json(by_alias=True, exclude_none=True).encode()
    else:
        # The common answer, written directly: the same bytes as the model's dump
        # (same keys, order and separators) for a tenth of the cost.
        duplicate = result.status == "duplicate"
        body = b'{"stored":%b,"eventId":"%b","contactId":"%b"%b}' % (
            b"false" if duplicate else b"true",
            str(result.event_id).encode(),
            str(result.contact_id).encode(),
            b',"duplicate":true' if duplicate else b"",
        )
    return Response(body, status_code=202, media_type="application/json")


IDEMPOTENCY_KEY_HEADER = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "Wins over the body's `idempotencyKey`.",
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY_LENGTH},
}
"""OpenAPI of the ``Idempotency-Key`` header, which :func:`idempotency_key_of` reads."""


def idempotency_key_of(request: Request) -> str | None:
    """The ``Idempotency-Key`` header, or the 422 naming it.

    Read here rather than declared as a FastAPI ``Header`` parameter: FastAPI's
    per-request handling of a declared header cost ~5% of the API's CPU on this route.
    """
    value = request.headers.get("idempotency-key")
    if value is not None and not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        raise invalid_field(
            ("header", "Idempotency-Key"),
            f"must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters",
        )
    return value


@router.post(
    "/v1/events",
    status_code=202,
    summary="Ingest one event",
    response_model=EventAccepted,
    response_model_exclude_none=True,
    dependencies=[require_scope("ingest")],
    responses=problem_responses(409, 503),
    openapi_extra={"parameters": [IDEMPOTENCY_KEY_HEADER]},
)
async def ingest_event(body: EventIn, request: Request) -> Response:
    """Store an event about a person, creating, linking or merging their contact.

    One transaction: resolve the contact from `userId` / `email` / `anonymousId`, apply
    `contactProperties`, insert the event and its outbox row, apply `lists`. Journeys,
    buckets and exits run later in the worker. A repeated idempotency key answers with
    the original event (`stored: false, duplicate: true`) and changes nothing.
    """
    return await store_event(request, single_input(request, body, idempotency_key_of(request)))


def single_input(request: Request, body: EventIn, idempotency_key: str | None) -> EventInput:
    """The ingest input of a ``POST /v1/events`` body, or the 422 naming the field at fault."""
    identity = identity_of(body)
    unknown = unknown_lists(request, body.lists)
    if unknown:
        raise invalid_field(("body", "lists", unknown[0]), f"unknown list {unknown[0]!r}")
    return event_input(body, identity, idempotency_key=idempotency_key, source="api")


async def store_event(request: Request, item: EventInput) -> Response:
    """Store one event of ``POST /v1/events`` (its route and its fast lane) and answer 202."""
    throttle = notify_throttle_of(request)
    # One throttle decision per request, whichever path ends up storing the event.
    notify = throttle is None or throttle.due()
    result = await _ingest_fast(request, item, notify=notify)
    if result is not None:
        return accepted_response(result)

    async def store(session: AsyncSession) -> IngestResult:
        result = await events.ingest_event(session, item)
        if result.status == "stored" and notify:
            await outbox.notify_outbox(session)
        return result

    return accepted_response(await in_transaction(request, store))


async def _ingest_fast(request: Request, item: EventInput, *, notify: bool) -> IngestResult | None:
    """The one-round-trip ingest on the driver pool; None: take the general path.

    In bench/ingest.py on a 2-core machine the general path alone (SQLAlchemy, a round
    trip per step) served ~200 events/s; with this one, ~3x that.
    """
    pool = driver_pool_of(request)
    try:
        async with pool.connect() as conn:
            return await events.ingest_event_fast(conn, item, notify=notify)
    except psycopg.OperationalError:
        await pool.discard_broken()  # a dead pooled connection; the general path retries
    except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
        pass  # rolled back; the general path runs it again with its retries
    return None


def _item_errors(exc: ValidationError) -> list[ItemError]:
    return [
        ItemError(field=error_field(err["loc"]) or "item", message=err["msg"])
        for err in exc.errors()
    ]


# The keys a batch item of the common shape may have: camelCase, no ``lists`` (those
# need the app's list ids); any other key sends the item through the model.
_PLAIN_ITEM_KEYS = frozenset(
    {
        "name",
        "userId",
        "email",
        "anonymousId",
        "eventProperties",
        "contactProperties",
        "timestamp",
        "idempotencyKey",
    }
)
_ID_LIMITS = (
    ("userId", MAX_ID_LENGTH),
    ("email", MAX_EMAIL_LENGTH),
    ("anonymousId", MAX_ID_LENGTH),
)
_TIMESTAMP: TypeAdapter[Any] = TypeAdapter(Timestamp)


def _plain_text(value: object, limit: int) -> bool:
    # ASCII without NUL: what EventIn's text checks accept without a second look.
    return type(value) is str and len(value) <= limit and value.isascii() and "\x00" not in value


def plain_item(raw: dict[str, Any]) -> EventInput | None:
    """A batch item of the common shape as ingest input, without building an ``EventIn``.

    Accepts only what :class:`EventIn` and :meth:`IdentityFields.identity` accept, and
    returns what they would make of it (tests/unit/test_plain_items.py compares the two);
    anything else (an error, ``lists``, snake_case keys, non-ASCII text) returns None and
    takes the model's path, which names the fields at fault. Validating each item with
    the model cost a fifth of the API's CPU per batch event (bench/ingest.py).
    """
    if not _PLAIN_ITEM_KEYS.issuperset(raw):
        return None
    name = raw.get("name")
    if not (_plain_text(name, MAX_NAME_LENGTH) and name):
        return None
    for field, limit in _ID_LIMITS:
        value = raw.get(field)
        if value is not None and not _plain_text(value, limit):
            return None
    key = raw.get("idempotencyKey")
    if key is not None and not (_plain_text(key, MAX_IDEMPOTENCY_KEY_LENGTH) and key):
        return None
    properties = raw.get("eventProperties", _MISSING)
    if properties is _MISSING:
        properties = {}
    elif type(properties) is not dict:
        return None
    patch = raw.get("contactProperties")
    if patch is not None and type(patch) is not dict:
        return None
    timestamp = raw.get("timestamp")
    try:
        storable_object(properties)
        if patch is not None:
            storable_object(patch)
        if timestamp is not None:
            timestamp = _TIMESTAMP.validate_python(timestamp)
        identity = Identity(
            user_id=raw.get("userId"), email=raw.get("email"), anonymous_id=raw.get("anonymousId")
        )
    except (PydanticCustomError, ValidationError, IdentityError):
        return None
    return EventInput(
        name=name,
        identity=identity,
        properties=properties,
        contact_properties=patch,
        idempotency_key=key,
        occurred_at=timestamp,
        source="batch",
    )


_MISSING: Any = object()


def validate_item(request: Request, raw: Any) -> EventInput | list[ItemError]:
    """One batch item as ingest input, or what is wrong with it."""
    if not isinstance(raw, dict):
        return [ItemError(field="item", message="must be a JSON object")]
    plain = plain_item(raw)
    if plain is not None:
        return plain
    try:
        body = EventIn.model_validate(raw)
    except ValidationError as exc:
        return _item_errors(exc)
    try:
        identity = body.identity()
    except IdentityError as exc:
        return [ItemError(field=IDENTITY_FIELDS[exc.field], message=exc.reason)]
    if identity is None:
        return [ItemError(field="userId", message=IDENTITY_MISSING)]
    unknown = unknown_lists(request, body.lists)
    if unknown:
        return [ItemError(field=f"lists.{u}", message=f"unknown list {u!r}") for u in unknown]
    return event_input(body, identity, idempotency_key=None, source="batch")


def batch_result(
    outcomes: Sequence[EventInput | list[ItemError]], results: Sequence[IngestResult]
) -> dict[str, Any]:
    """Merge validation failures and ingest results back into request order.

    Returns the JSON body of :class:`EventBatchResult` as plain data (ids as UUIDs, for
    :func:`~hogsend.api.json_body.json_body_bytes`): building and then re-validating
    1,000 response models cost more than storing the events (py-spy).
    """
    stored = iter(results)
    items: list[dict[str, Any]] = []
    counts = {"stored": 0, "duplicate": 0, "rejected": 0}
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, list):
            errors = [{"field": e.field, "message": e.message} for e in outcome]
            items.append({"index": index, "status": "rejected", "errors": errors})
            counts["rejected"] += 1
            continue
        result = next(stored)
        counts[result.status] += 1
        if result.status == "rejected":
            reason = result.reason or "could not be stored"
            errors = [{"field": "item", "message": reason}]
            items.append({"index": index, "status": "rejected", "errors": errors})
            continue
        item: dict[str, Any] = {
            "index": index,
            "status": result.status,
            "eventId": result.event_id,
            "contactId": result.contact_id,
        }
        conflicts = conflicts_out(result.conflicts)
        if conflicts:
            item["conflicts"] = [c.model_dump(by_alias=True) for c in conflicts]
        items.append(item)
    return {
        "results": items,
        "stored": counts["stored"],
        "duplicates": counts["duplicate"],
        "rejected": counts["rejected"],
    }


async def store_batch(request: Request, inputs: Sequence[EventInput]) -> list[IngestResult]:
    """Ingest ``inputs`` set-based in one transaction (nothing to do for none)."""
    if not inputs:
        return []
    throttle = notify_throttle_of(request)

    async def store(session: AsyncSession) -> list[IngestResult]:
        results = await events.ingest_batch(session, inputs)
        if any(r.status == "stored" for r in results):
            await outbox.notify_outbox(session, throttle)
        return results

    return await in_transaction(request, store)


@router.post(
    "/v1/events/batch",
    summary="Ingest a batch of events",
    response_model=EventBatchResult,
    dependencies=[require_scope("ingest")],
    responses=problem_responses(503),
    openapi_extra={MAX_BODY_BYTES_EXTRA: "batch_max_body_bytes"},
)
async def ingest_batch(body: EventBatchIn, request: Request) -> Response:
    """Store up to `HOGSEND_BATCH_MAX_EVENTS` events (default 1,000) in one transaction.

    Each item is validated on its own: a bad one is `rejected` with its errors and the
    others are still stored. Items repeating a stored idempotency key (or one earlier in
    the batch) are `duplicate` and change nothing. Always 200 when the batch itself is
    well-formed; read `results` (in request order) and the totals. The body may be up to
    `HOGSEND_BATCH_MAX_BODY_BYTES` (default 10 MiB).
    """
    limit = settings_of(request).batch_max_events
    if len(body.events) > limit:
        raise invalid_field(("body", "events"), f"at most {limit} events per batch")
    outcomes = [validate_item(request, raw) for raw in body.events]
    inputs = [o for o in outcomes if isinstance(o, EventInput)]
    content = batch_result(outcomes, await store_batch(request, inputs))
    return Response(json_body_bytes(content), media_type="application/json")
