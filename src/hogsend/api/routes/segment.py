"""Segment-spec ingest under ``/segment/v1``: unmodified Segment and RudderStack clients.

Point a client's host (segment-analytics-python ``host``, rudder-sdk-python
``dataPlaneUrl``) at ``http://HOST:PORT/segment``: it posts to ``/segment/v1/batch``.
The write key is an API key with the ``ingest`` scope, sent the way those clients send
it (HTTP Basic, key as the username); a Bearer header or a ``writeKey`` field in the
body work too. Gzip bodies are decoded by the API's
:class:`~hogsend.api.middleware.GzipRequestMiddleware`. docs/segment.md has the field
mapping.

Every message goes through the same ingest as ``POST /v1/events`` (``messageId`` is the
idempotency key, prefixed ``segment:``); a batch is one transaction, and a bad message
is reported and skipped, never failing the others.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from fastapi import APIRouter, Depends, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic
from pydantic import ValidationError
from pydantic_core import PydanticCustomError
from sqlalchemy.ext.asyncio import AsyncSession

from hogsend.api.auth import ScopeGuard, bearer_scheme
from hogsend.api.deps import driver_pool_of, settings_of
from hogsend.api.errors import problem_responses
from hogsend.api.json_body import parse_json
from hogsend.api.middleware import MAX_BODY_BYTES_EXTRA
from hogsend.api.routes.events import error_field
from hogsend.api.routes.transactions import in_transaction, invalid_field, notify_throttle_of
from hogsend.api.schemas.events import MAX_NAME_LENGTH, ItemError, storable_object
from hogsend.api.schemas.segment import (
    BY_NAME_FIELDS,
    MAX_SEGMENT_ID_LENGTH,
    PlainMessage,
    SegmentAck,
    SegmentBatch,
    SegmentBatchAck,
    SegmentMessage,
    SegmentRejection,
    SegmentType,
    plain_message,
    segment_time,
)
from hogsend.core.identity import (
    MAX_ID_LENGTH,
    Identity,
    IdentityError,
    checked_ids_identity,
    normalize_email,
    normalize_id,
)
from hogsend.core.ingest import MAX_IDEMPOTENCY_KEY_LENGTH, EventInput, IngestResult
from hogsend.db.repos import contacts, events, outbox
from hogsend.db.repos.api_keys import Principal
from hogsend.errors import Unauthorized

SOURCE = "segment"
KEY_PREFIX = "segment:"
"""Prefix of the idempotency keys made from ``messageId`` (kept apart from other keys)."""

_CHALLENGE = 'Bearer realm="hogsend", Basic realm="hogsend"'

segment_basic = HTTPBasic(
    auto_error=False,
    scheme_name="segmentWriteKey",
    description="Segment clients' write key: HTTP Basic with an `ingest` API key as the "
    "username and an empty password.",
)


def _basic_username(authorization: str) -> str | None:
    scheme, _, param = authorization.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(param.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    username, _, _ = decoded.partition(":")
    return username or None


async def _body_write_key(request: Request) -> str | None:
    try:
        body = json.loads(await request.body())
    except (ValueError, RecursionError):
        return None
    key = body.get("writeKey") if isinstance(body, dict) else None
    return key if isinstance(key, str) and key else None


class SegmentKeyGuard(ScopeGuard):
    """The scope guard of the Segment routes: the key as Segment clients send it.

    In order: a Bearer header, HTTP Basic with the key as the username, or (no
    ``Authorization`` header at all) a ``writeKey`` field in the JSON body. The scope
    check and rate limit are the ordinary ones.
    """

    async def __call__(
        self,
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer_scheme),
    ) -> Principal:
        raw: str | None = None
        if credentials is not None:
            raw = credentials.credentials
        else:
            authorization = request.headers.get("authorization")
            if authorization:
                raw = _basic_username(authorization)
            else:
                raw = await _body_write_key(request)
        if raw is None:
            raise Unauthorized(
                "Send an API key with the ingest scope: HTTP Basic with the key as the "
                "username (what Segment clients do), or `Authorization: Bearer <key>`",
                headers={"WWW-Authenticate": _CHALLENGE},
            )
        pool = driver_pool_of(request)
        try:
            return await self._check(request, raw, pool)
        except psycopg.OperationalError:
            await pool.discard_broken()
            return await self._check(request, raw, pool)


router = APIRouter(
    prefix="/segment/v1",
    tags=["segment"],
    dependencies=[Depends(segment_basic)],
)
_guard = SegmentKeyGuard("ingest")


# --------------------------------------------------------------------------- mapping


@dataclass(frozen=True, slots=True, kw_only=True)
class AliasInput:
    """A Segment ``alias``: ``previous_id`` and ``user_id`` are one person from now on."""

    user_id: str
    previous_id: str
    idempotency_key: str | None
    occurred_at: datetime | None
    properties: Mapping[str, object]


class MessageError(Exception):
    """A message that cannot be stored, with the fields at fault."""

    def __init__(self, errors: list[ItemError]) -> None:
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))
        self.errors = errors


def _fail(field: str, message: str) -> MessageError:
    return MessageError([ItemError(field=field, message=message)])


Message = SegmentMessage | PlainMessage
"""A validated message: the model, or the plain form of the common shape."""


def occurred_at(
    message: Message, batch_sent_at: datetime | None, received_at: datetime
) -> datetime | None:
    """When a message happened, the Segment way.

    An explicit ``timestamp`` is taken as is. Otherwise ``originalTimestamp`` (the
    device's clock) is corrected for the device's clock skew with ``sentAt`` (message
    or batch): ``receivedAt - (sentAt - originalTimestamp)``; without ``sentAt`` it is
    taken as is. With neither, the event happened when it was received (None).
    """
    if message.timestamp is not None:
        return message.timestamp
    original = message.original_timestamp
    if original is None:
        return None
    sent_at = message.sent_at or batch_sent_at
    if sent_at is None:
        return original
    try:
        return received_at - (sent_at - original)
    except OverflowError:
        return original


def _traits(message: Message, kind: SegmentType) -> dict[str, Any]:
    context_traits: Any = (message.context or {}).get("traits")
    if context_traits is None:
        context_traits = {}
    if not isinstance(context_traits, dict):
        raise _fail("context.traits", "must be an object")
    if context_traits:
        try:
            SegmentMessage.model_validate({"traits": context_traits})
        except ValidationError as exc:
            raise _fail("context.traits", exc.errors()[0]["msg"]) from None
    merged = dict(context_traits)
    if kind == "identify" and message.traits:
        merged.update(message.traits)
    return merged


def _email_of(traits: Mapping[str, Any], message: Message) -> str | None:
    value = traits.get("email")
    if value is None:
        return None
    field = (
        "traits.email" if message.traits and "email" in message.traits else "context.traits.email"
    )
    if not isinstance(value, str):
        raise _fail(field, "must be a string")
    try:
        return normalize_email(value)
    except IdentityError as exc:
        raise _fail(field, exc.reason) from None


def _id(value: str | int | None, field: str) -> str | None:
    try:
        return normalize_id(None if value is None else str(value), field=field)
    except IdentityError as exc:
        raise _fail(field, exc.reason) from None


def _idempotency_key(message: Message) -> str | None:
    message_id = _id(message.message_id, "messageId")
    if message_id is None:
        return None
    key = KEY_PREFIX + message_id
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise _fail("messageId", f"is longer than {MAX_IDEMPOTENCY_KEY_LENGTH - len(KEY_PREFIX)}")
    return key


# Keys that send a message past :func:`plain_input`: traits and the alias / group ids
# need the general mapping, and a snake_case field name needs the model (which knows
# which of the two spellings wins).
_NOT_PLAIN_KEYS = frozenset({"traits", "groupId", "previousId"}) | BY_NAME_FIELDS
_PLAIN_KINDS: dict[object, SegmentType] = {"track": "track", "page": "page", "screen": "screen"}
_PLAIN_TYPES: dict[object, SegmentType | None] = {
    kind: kind for kind in ("track", "identify", "alias", "page", "screen", "group")
}
_MAX_PLAIN_INT = 2**63
# What both the model (SegmentId) and normalize_id accept, so that a plain id is stored
# as it is (checked_ids_identity relies on it).
_MAX_PLAIN_ID_LENGTH = min(MAX_SEGMENT_ID_LENGTH, MAX_ID_LENGTH)


class _NotPlain(Exception):
    """The message needs :func:`to_input`'s general mapping (or an error named)."""


def _plain_id(value: object) -> str | None:
    # What SegmentId and then normalize_id make of the usual ids: printable ASCII is
    # free of control characters, and its only whitespace to trim is the space.
    if type(value) is str:
        if len(value) <= _MAX_PLAIN_ID_LENGTH and value.isascii() and value.isprintable():
            return value.strip(" ") or None
        raise _NotPlain
    if type(value) is int and -_MAX_PLAIN_INT < value < _MAX_PLAIN_INT:
        return str(value)
    raise _NotPlain


def _plain_name(value: object) -> str:
    # StoredText of at most MAX_NAME_LENGTH, as the model checks it, for plain ASCII.
    if (
        type(value) is str
        and len(value) <= MAX_NAME_LENGTH
        and value.isascii()
        and "\x00" not in value
    ):
        return value
    raise _NotPlain


def _plain_time(value: object) -> datetime:
    try:
        return segment_time(value)
    except ValidationError:
        raise _NotPlain from None


def plain_input(
    raw: dict[str, Any],
    kind: SegmentType | None,
    *,
    batch_sent_at: datetime | None,
    received_at: datetime,
) -> EventInput | None:
    """A ``track``, ``page`` or ``screen`` message of the common shape, mapped in one pass.

    Returns exactly what :func:`to_input` returns for ``raw`` (tests/unit/
    test_plain_items.py compares the two), or None for anything else: other types,
    traits, an error to name, unusual text. Checking the message into a
    :class:`PlainMessage` and then mapping it cost a third of the API's CPU per
    message of a Segment batch (bench/ingest.py).
    """
    if not _NOT_PLAIN_KEYS.isdisjoint(raw):
        return None
    get = raw.get
    try:
        given = get("type")
        if given is not None:
            if type(given) is not str or given not in _PLAIN_TYPES:
                return None
            kind = kind or _PLAIN_TYPES[given]
        if kind not in _PLAIN_KINDS:
            return None
        context = get("context")
        if context is not None and (type(context) is not dict or context.get("traits") is not None):
            return None
        user_id = anonymous_id = key = None
        value = get("userId")
        if value is not None:
            user_id = _plain_id(value)
        value = get("anonymousId")
        if value is not None:
            anonymous_id = _plain_id(value)
        if user_id is None and anonymous_id is None:
            return None
        value = get("messageId")
        if value is not None:
            message_id = _plain_id(value)
            if message_id is not None:
                key = KEY_PREFIX + message_id
                if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
                    return None
        event = get("event")
        if event is not None:
            event = _plain_name(event)
        name = get("name")
        if name is not None:
            name = _plain_name(name)
        category = get("category")
        if category is not None:
            category = _plain_name(category)
        properties = get("properties")
        if properties is None:
            properties = {}
        elif type(properties) is dict:
            # Not copied: nothing writes to it (page and screen copy it below).
            properties = storable_object(properties)
        else:
            return None
        timestamp = get("timestamp")
        if timestamp is not None:
            timestamp = _plain_time(timestamp)
        original = get("originalTimestamp")
        if original is not None:
            original = _plain_time(original)
        sent_at = get("sentAt")
        if sent_at is not None:
            sent_at = _plain_time(sent_at)
    except (_NotPlain, PydanticCustomError):
        return None
    title: str
    if kind == "track":
        if not event or not event.strip():
            return None
        title = event
    else:
        title = str(kind)
        if name is not None or category is not None:
            properties = dict(properties)
            if name is not None:
                properties["name"] = name
            if category is not None:
                properties["category"] = category
    when = timestamp
    if when is None and original is not None:
        sent = sent_at or batch_sent_at
        when = original
        if sent is not None:
            try:
                when = received_at - (sent - original)
            except OverflowError:
                when = original
    return EventInput(
        name=title,
        # The ids are what normalize_id makes of them already (_plain_id).
        identity=checked_ids_identity(user_id, anonymous_id),
        properties=properties,
        idempotency_key=key,
        occurred_at=when,
        source=SOURCE,
    )


def to_input(
    raw: object,
    kind: SegmentType | None,
    *,
    batch_sent_at: datetime | None,
    received_at: datetime,
) -> EventInput | AliasInput:
    """Map one Segment message onto ingest input.

    Args:
        raw: the message as parsed from JSON.
        kind: the message type the route implies (None in a batch: ``type`` says).
        batch_sent_at: the batch envelope's ``sentAt``.
        received_at: when the request arrived.

    Raises:
        MessageError: naming each field at fault.
    """
    if not isinstance(raw, dict):
        raise _fail("message", "must be a JSON object")
    fast = plain_input(raw, kind, batch_sent_at=batch_sent_at, received_at=received_at)
    if fast is not None:
        return fast
    message: Message | None = plain_message(raw)
    if message is None:
        try:
            message = SegmentMessage.model_validate(raw)
        except ValidationError as exc:
            raise MessageError(
                [
                    ItemError(field=error_field(e["loc"]) or "message", message=e["msg"])
                    for e in exc.errors()
                ]
            ) from None
    return map_message(message, kind, batch_sent_at=batch_sent_at, received_at=received_at)


def map_message(
    message: Message,
    kind: SegmentType | None,
    *,
    batch_sent_at: datetime | None,
    received_at: datetime,
) -> EventInput | AliasInput:
    """Map one validated Segment message onto ingest input (see :func:`to_input`).

    Raises:
        MessageError: naming each field at fault.
    """
    kind = kind or message.type
    if kind is None:
        raise _fail("type", "is required in a batch (track, identify, alias, page, screen, group)")
    when = occurred_at(message, batch_sent_at, received_at)
    key = _idempotency_key(message)
    user_id = _id(message.user_id, "userId")

    if kind == "alias":
        previous_id = _id(message.previous_id, "previousId")
        if previous_id is None:
            raise _fail("previousId", "is required for alias")
        if user_id is None:
            raise _fail("userId", "is required for alias")
        return AliasInput(
            user_id=user_id,
            previous_id=previous_id,
            idempotency_key=key,
            occurred_at=when,
            properties={"previousId": previous_id, "userId": user_id},
        )

    anonymous_id = _id(message.anonymous_id, "anonymousId")
    traits = _traits(message, kind)
    email = _email_of(traits, message)
    if user_id is None and anonymous_id is None and email is None:
        raise _fail("userId", "userId or anonymousId is required")
    patch = {name: value for name, value in traits.items() if name != "email"}

    properties: dict[str, Any]
    if kind == "track":
        if not message.event or not message.event.strip():
            raise _fail("event", "is required for track")
        name = message.event
        properties = dict(message.properties or {})
    elif kind == "identify":
        name = "identify"
        properties = dict(message.traits or {})
    elif kind in ("page", "screen"):
        name = kind
        properties = dict(message.properties or {})
        if message.name is not None:
            properties["name"] = message.name
        if message.category is not None:
            properties["category"] = message.category
    else:  # group
        group_id = _id(message.group_id, "groupId")
        if group_id is None:
            raise _fail("groupId", "is required for group")
        name = "group"
        properties = {"groupId": group_id, "traits": dict(message.traits or {})}
    return EventInput(
        name=name,
        identity=Identity(user_id=user_id, email=email, anonymous_id=anonymous_id),
        properties=properties,
        contact_properties=patch or None,
        idempotency_key=key,
        occurred_at=when,
        source=SOURCE,
    )


# --------------------------------------------------------------------------- storing


async def _store_alias(session: AsyncSession, alias: AliasInput) -> IngestResult:
    # The alias merges before its event is stored, so the key is checked first, under
    # its lock: a repeated alias must not merge anything again.
    if alias.idempotency_key is not None:
        await contacts.advisory_lock(session, [events.idempotency_lock_name(alias.idempotency_key)])
        original = await events.stored_event(session, alias.idempotency_key)
        if original is not None:
            return original
    resolution = await contacts.alias_contact(
        session, user_id=alias.user_id, previous_id=alias.previous_id
    )
    return await events.ingest_event(
        session,
        EventInput(
            name="alias",
            contact_id=resolution.contact_id,
            properties=alias.properties,
            idempotency_key=alias.idempotency_key,
            occurred_at=alias.occurred_at,
            source=SOURCE,
        ),
    )


async def store_messages(
    request: Request, inputs: Sequence[EventInput | AliasInput]
) -> list[IngestResult]:
    """Store mapped messages in order, in one transaction.

    Runs of ordinary messages go through the set-based batch ingest; an ``alias``
    between them is carried out on its own, so later messages see its merge.
    """
    if not inputs:
        return []
    throttle = notify_throttle_of(request)

    async def store(session: AsyncSession) -> list[IngestResult]:
        results: list[IngestResult] = []
        run: list[EventInput] = []
        for item in inputs:
            if isinstance(item, AliasInput):
                if run:
                    results.extend(await events.ingest_batch(session, run))
                    run = []
                results.append(await _store_alias(session, item))
            else:
                run.append(item)
        if run:
            results.extend(await events.ingest_batch(session, run))
        if any(r.status == "stored" for r in results):
            await outbox.notify_outbox(session, throttle)
        return results

    return await in_transaction(request, store)


async def _json_body(request: Request) -> Any:
    body = await request.body()
    try:
        return parse_json(body)
    except (ValueError, RecursionError) as exc:
        raise RequestValidationError(
            [
                {
                    "type": "json_invalid",
                    "loc": ("body", 0),
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": str(exc) or type(exc).__name__},
                }
            ]
        ) from None


def _message_schema() -> dict[str, Any]:
    return SegmentMessage.model_json_schema(by_alias=True, mode="validation")


_EXAMPLES: dict[str, dict[str, Any]] = {
    "track": {
        "type": "track",
        "event": "Order Completed",
        "userId": "user-42",
        "properties": {"total": 42.5},
        "messageId": "3f4b1c2e-0d4e-4f5a-9b8c-7d6e5f4a3b2c",
        "timestamp": "2026-01-31T12:00:00Z",
    },
    "identify": {
        "type": "identify",
        "userId": "user-42",
        "anonymousId": "visitor-7",
        "traits": {"email": "ann@example.com", "plan": "pro"},
    },
    "alias": {"type": "alias", "userId": "user-42", "previousId": "visitor-7"},
    "page": {"type": "page", "anonymousId": "visitor-7", "name": "Pricing", "properties": {}},
    "screen": {"type": "screen", "userId": "user-42", "name": "Settings"},
    "group": {
        "type": "group",
        "userId": "user-42",
        "groupId": "acme",
        "traits": {"name": "Acme Inc."},
    },
}


def _body_doc(schema: dict[str, Any], example: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "example": example}},
        }
    }


async def _single(request: Request, kind: SegmentType) -> SegmentAck:
    raw = await _json_body(request)
    try:
        item = to_input(raw, kind, batch_sent_at=None, received_at=datetime.now(UTC))
    except MessageError as exc:
        raise RequestValidationError(
            [
                {
                    "type": "value_error",
                    "loc": ("body", *e.field.split(".")),
                    "msg": e.message,
                    "input": None,
                }
                for e in exc.errors
            ]
        ) from None
    [result] = await store_messages(request, [item])
    if result.status == "rejected":
        raise invalid_field(("body",), result.reason or "the message could not be stored")
    return SegmentAck(success=True)


def _single_route(kind: SegmentType, summary: str) -> None:
    async def endpoint(request: Request) -> SegmentAck:
        return await _single(request, kind)

    endpoint.__name__ = f"segment_{kind}"
    endpoint.__doc__ = (
        f"A Segment `{kind}` message; unknown fields are ignored. 200 "
        '`{"success": true}` once stored (or already stored under the same `messageId`).'
    )
    router.add_api_route(
        f"/{kind}",
        endpoint,
        methods=["POST"],
        summary=summary,
        dependencies=[Security(_guard)],
        responses=problem_responses(503),
        openapi_extra=_body_doc(_message_schema(), _EXAMPLES[kind]),
    )


_SINGLE_ROUTES: tuple[tuple[SegmentType, str], ...] = (
    ("track", "Segment track"),
    ("identify", "Segment identify"),
    ("alias", "Segment alias"),
    ("page", "Segment page"),
    ("screen", "Segment screen"),
    ("group", "Segment group"),
)
for _kind, _summary in _SINGLE_ROUTES:
    _single_route(_kind, _summary)


@router.post(
    "/batch",
    summary="Segment batch",
    dependencies=[Security(_guard)],
    responses=problem_responses(503),
    openapi_extra={
        MAX_BODY_BYTES_EXTRA: "batch_max_body_bytes",
        **_body_doc(
            SegmentBatch.model_json_schema(by_alias=True, mode="validation"),
            {"batch": list(_EXAMPLES.values()), "sentAt": "2026-01-31T12:00:01Z"},
        ),
    },
)
async def segment_batch(request: Request) -> SegmentBatchAck:
    """Up to `HOGSEND_BATCH_MAX_EVENTS` messages of any type, stored in order in one
    transaction. A bad message is skipped and listed in `rejections`; the answer is 200
    `{"success": true, ...}` whenever the batch itself is well-formed, so clients never
    retry (or drop) a whole batch for one bad message."""
    raw = await _json_body(request)
    try:
        envelope = SegmentBatch.model_validate(raw)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        ) from None
    limit = settings_of(request).batch_max_events
    if len(envelope.batch) > limit:
        raise invalid_field(("body", "batch"), f"at most {limit} messages per batch")
    received_at = datetime.now(UTC)
    outcomes: list[EventInput | AliasInput | MessageError] = []
    message_ids: list[object] = []
    for message in envelope.batch:
        message_ids.append(message.get("messageId") if isinstance(message, dict) else None)
        try:
            outcomes.append(
                to_input(message, None, batch_sent_at=envelope.sent_at, received_at=received_at)
            )
        except MessageError as exc:
            outcomes.append(exc)
    # The parsed messages are not needed once mapped (the rejections need only their
    # ids): let them go before the database work, so that the garbage collector does
    # not walk every in-flight batch's messages (their context objects included).
    del raw, envelope
    inputs = [o for o in outcomes if not isinstance(o, MessageError)]
    results = iter(await store_messages(request, inputs))
    rejections: list[SegmentRejection] = []
    stored = duplicates = 0
    for index, outcome in enumerate(outcomes):
        errors: list[ItemError] | None = None
        if isinstance(outcome, MessageError):
            errors = outcome.errors
        else:
            result = next(results)
            if result.status == "stored":
                stored += 1
            elif result.status == "duplicate":
                duplicates += 1
            else:
                errors = [ItemError(field="message", message=result.reason or "not stored")]
        if errors is not None:
            message_id = message_ids[index]
            rejections.append(
                SegmentRejection(
                    index=index,
                    message_id=message_id if isinstance(message_id, str) else None,
                    errors=errors,
                )
            )
    return SegmentBatchAck(
        success=True,
        stored=stored,
        duplicates=duplicates,
        rejected=len(rejections),
        rejections=rejections,
    )
