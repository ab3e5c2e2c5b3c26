"""/v1/admin/templates: list the app's templates, preview one, send a test.

Listing and previewing are GETs (``admin:read``) and write nothing. A test send
(``full-admin``, audited) goes out at once through the mailer with kind ``test``: the
unsubscribe and cap gates are skipped, suppression still applies, and the subject is
prefixed with ``[Test]``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import require_scope
from hogsend.api.deps import hogsend_of, mailer_of, sessionmaker_of
from hogsend.api.errors import problem_responses
from hogsend.api.previews import (
    SAMPLE_ADDRESS,
    render_or_422,
    stand_in_contact,
    unknown_template_message,
)
from hogsend.api.routes.transactions import invalid_field
from hogsend.api.schemas.emails import SendTestIn, SendTestOut
from hogsend.api.schemas.templates import (
    TemplateList,
    TemplateOut,
    TemplatePreviewOut,
    TemplatePreviewQuery,
)
from hogsend.channels.mailer import Mailer, SendOutcome, SendRequest
from hogsend.channels.templates import TemplateRegistry
from hogsend.core.contact import Contact
from hogsend.core.mailer_gates import TRANSACTIONAL_CATEGORY
from hogsend.core.templates import EmailTemplate
from hogsend.db.repos import contacts as contacts_repo
from hogsend.db.repos import sends
from hogsend.errors import NotFound, TemplateNotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: templates"])

TEST_SUBJECT_PREFIX = "[Test] "
TemplateKey = Annotated[
    str, Path(max_length=64, description="The template key.", examples=["welcome"])
]


def _registry(request: Request) -> TemplateRegistry | None:
    return hogsend_of(request).templates


def _template(request: Request, key: str) -> tuple[TemplateRegistry, EmailTemplate]:
    registry = _registry(request)
    try:
        if registry is None:
            raise TemplateNotFound("no templates", key=key)
        return registry, registry.get(key)
    except TemplateNotFound:
        raise NotFound(unknown_template_message(registry, key)) from None


def _template_out(registry: TemplateRegistry, template: EmailTemplate) -> TemplateOut:
    model = registry.props_models.get(template.key)
    return TemplateOut(
        key=template.key,
        default_subject=template.meta.subject,
        category=template.meta.category,
        preheader=template.meta.preheader,
        description=template.meta.description,
        format=template.format,
        has_text=template.text_source is not None,
        has_preview=template.key in registry.examples,
        props_model=template.props_model,
        props_schema=model.model_json_schema() if model is not None else None,
    )


def _decode_props(encoded: str | None) -> dict[str, Any]:
    if encoded is None:
        return {}
    try:
        raw = base64.b64decode(
            encoded.replace("-", "+").replace("_", "/") + "=" * (-len(encoded) % 4),
            validate=True,
        )
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        raise invalid_field(
            ("query", "props"), "must be base64 of a JSON object (standard or URL-safe)"
        ) from None
    if not isinstance(value, dict):
        raise invalid_field(("query", "props"), "must be base64 of a JSON object")
    return value


async def _contact(request: Request, contact_id: UUID | None) -> Contact:
    if contact_id is None:
        return stand_in_contact(SAMPLE_ADDRESS)
    async with sessionmaker_of(request)() as session:
        contact = await contacts_repo.get_contact(session, contact_id)
    if contact is None:
        raise NotFound(f"contact {contact_id} does not exist")
    return contact


@router.get(
    "/templates",
    summary="List the app's email templates",
    dependencies=[require_scope("admin:read")],
)
async def list_templates(request: Request) -> TemplateList:
    """Every template with its metadata (default subject, category, preheader), whether
    it has a hand-written text part and example props, and its props model's JSON Schema."""
    registry = _registry(request)
    if registry is None:
        return TemplateList(templates=[])
    return TemplateList(templates=[_template_out(registry, t) for t in registry.templates()])


_PREVIEW_CONTENT: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The rendered template: JSON, or one part with `format=html|text`.",
        "content": {
            "text/html": {"schema": {"type": "string"}},
            "text/plain": {"schema": {"type": "string"}},
        },
    },
    **problem_responses(404),
}


@router.get(
    "/templates/{key}/preview",
    summary="Render a template without sending it",
    dependencies=[require_scope("admin:read")],
    responses=_PREVIEW_CONTENT,
    response_model=TemplatePreviewOut,
)
async def preview_template(
    key: TemplateKey, query: Annotated[TemplatePreviewQuery, Query()], request: Request
) -> Response:
    """Render with the template's example props, overridden by `props` (base64 of a JSON
    object), for a sample contact or `contactId`. Unsubscribe and preference links are
    placeholders. 404 for an unknown template or contact; 422 when the props fail the
    template's props model or leave a variable undefined. Writes nothing."""
    registry, template = _template(request, key)
    props = {**registry.preview_props(key), **_decode_props(query.props)}
    contact = await _contact(request, query.contact_id)
    rendered = render_or_422(
        registry,
        key,
        contact=contact,
        props=props,
        subject=None,
        marketing=True,
        location=("query", "props"),
    )
    if query.format == "html":
        return HTMLResponse(rendered.html)
    if query.format == "text":
        return PlainTextResponse(rendered.text)
    out = TemplatePreviewOut(
        key=key,
        subject=rendered.subject,
        preheader=rendered.preheader,
        category=template.meta.category,
        html=rendered.html,
        text=rendered.text,
        props=props,
    )
    return JSONResponse(out.model_dump(mode="json"))


def test_mailer(mailer: Mailer) -> Mailer:
    """``mailer`` with one provider call per send: whoever asked for a test waits on it."""
    settings = mailer.settings.model_copy(update={"mailer_max_attempts": 1})
    return Mailer(mailer.app, settings, mailer.engine, mailer.provider)


async def send_test_message(
    mailer: Mailer,
    registry: TemplateRegistry,
    template: EmailTemplate,
    *,
    to: str,
    props: dict[str, Any],
    contact: Contact,
    contact_id: UUID | None,
    location: tuple[str | int, ...] = ("body", "props"),
) -> SendOutcome:
    """Render ``template`` for ``contact`` (422 on bad props) and send it to ``to`` now.

    The one path of a test send (the admin API and Studio): subject prefixed ``[Test]``,
    kind ``test`` (exempt from unsubscribes and the cap; suppression still applies).
    """
    rendered = render_or_422(
        registry,
        template.key,
        contact=contact,
        props=props,
        subject=None,
        marketing=True,
        location=location,
    )
    return await test_mailer(mailer).send(
        SendRequest(
            template=template.key,
            contact_id=contact_id,
            to_email=to,
            props=props,
            subject=TEST_SUBJECT_PREFIX + rendered.subject,
            category=template.meta.category or TRANSACTIONAL_CATEGORY,
            kind="test",
            skip_preference_check=True,
        )
    )


@router.post(
    "/templates/{key}/send-test",
    summary="Send a template to one address as a test",
    responses=problem_responses(404),
)
async def send_test(
    key: TemplateKey,
    body: SendTestIn,
    request: Request,
    change: AdminChange = audited("full-admin", resource="templates", action="templates.send-test"),
) -> SendTestOut:
    """Render the template (example props, overridden by `props`; for `contactId` or a
    stand-in contact) and send it at once to `to` with the subject prefixed `[Test]`.
    Recorded as an attempt of kind `test`: exempt from unsubscribes and the frequency
    cap, but a suppressed address is still refused (`status: skipped`, decision
    `suppressed`). 200 with the outcome, a provider failure included."""
    registry, template = _template(request, key)
    props = {**registry.preview_props(key), **(body.props or {})}
    contact = await _contact(request, body.contact_id)
    outcome = await send_test_message(
        mailer_of(request),
        registry,
        template,
        to=body.to,
        props=props,
        contact=contact if body.contact_id is not None else stand_in_contact(body.to),
        contact_id=body.contact_id,
    )
    record = await sends.get_send(change.session, outcome.send_id)
    assert record is not None
    change.resource_id = key
    change.detail = {
        "to": body.to,
        "sendId": str(outcome.send_id),
        "decision": outcome.decision,
        "before": {"send": None},
        "after": {"send": str(outcome.send_id), "status": record.status},
    }
    return SendTestOut(
        email_send_id=outcome.send_id,
        status="sent"
        if outcome.went_out
        else ("failed" if record.status == "failed" else "skipped"),
        decision=record.decision,
        subject=record.subject,
        error=record.last_error,
    )
