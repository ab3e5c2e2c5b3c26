"""Email: the template gallery (previews, test sends), the dev outbox viewer, suppressions.

Rendered email is shown in sandboxed frames whose documents come from their own routes
(``.../html``), not from ``srcdoc``: a ``srcdoc`` frame inherits Studio's strict
Content-Security-Policy, which forbids the inline styles every email depends on. The
frame routes answer with a policy of their own (inline styles, images; no script, no
requests elsewhere, framed only by Studio), and the frame's ``sandbox`` attribute keeps
the message away from Studio's origin, scripts, forms and the top window.
"""

from __future__ import annotations

import uuid
from typing import Any, cast, get_args
from urllib.parse import urlencode

from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from hogsend.api.previews import SAMPLE_ADDRESS, render_or_422, stand_in_contact
from hogsend.api.routes.admin.templates import send_test_message
from hogsend.channels.mailer import Mailer
from hogsend.channels.templates import TemplateRegistry
from hogsend.core.clock import aware_now
from hogsend.core.identity import IdentityError, normalize_email
from hogsend.core.pagination import InvalidCursor
from hogsend.core.suppression import AddressHealth, Reason, after_manual, lifted
from hogsend.core.suppression_imports import parse_import
from hogsend.core.templates import EmailTemplate, RenderedEmail
from hogsend.core.tracking import strip_open_pixel
from hogsend.db.repos import outbox_messages, sends, suppressions
from hogsend.errors import TemplateError, TemplateNotFound
from hogsend.studio.error_pages import PageError
from hogsend.studio.rendering import render
from hogsend.studio.security import record_change, require_admin, require_form, require_viewer
from hogsend.studio.state import database, studio_of

PAGE_SIZE = 50
DESKTOP_WIDTH = 640
MOBILE_WIDTH = 375
MAX_IMPORT_BYTES = 2_000_000

FRAME_POLICY = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data: https:; font-src data: https:; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'"
)
"""The policy of a rendered email in its frame: it may style itself and show images,
never run script, submit a form or be framed by another site."""

_SUPPRESSION_STATUS = {"suppressed": True, "unsuppressed": False, "all": None}
SUPPRESSION_REASONS: tuple[str, ...] = get_args(Reason)


def routes() -> list[BaseRoute]:
    """The Email section's routes, relative to Studio's mount point."""
    return [
        Route("/email", gallery, methods=["GET"]),
        Route("/email/templates/{key}", template_page, methods=["GET"]),
        Route("/email/templates/{key}/html", template_html, methods=["GET"]),
        Route("/email/templates/{key}/send-test", send_test, methods=["POST"]),
        Route("/email/outbox", outbox_list, methods=["GET"]),
        Route("/email/outbox/{id}", outbox_message, methods=["GET"]),
        Route("/email/outbox/{id}/html", outbox_html, methods=["GET"]),
        Route("/email/suppressions", suppression_list, methods=["GET"]),
        Route("/email/suppressions", add_suppression, methods=["POST"]),
        Route("/email/suppressions/remove", remove_suppression, methods=["POST"]),
        Route("/email/suppressions/import", import_suppressions, methods=["POST"]),
    ]


def email_frame(html: str) -> HTMLResponse:
    """A rendered email as the document of a sandboxed frame, under its own policy."""
    return HTMLResponse(
        html,
        headers={"Content-Security-Policy": FRAME_POLICY, "X-Frame-Options": "SAMEORIGIN"},
    )


def api_mailer(request: Request) -> Mailer:
    """The API's mailer (the one ``/v1`` routes use), built on first use like theirs."""
    studio = studio_of(request)
    state = studio.api.state
    mailer = getattr(state, "mailer", None)
    if mailer is None:
        from hogsend.channels.email import build_provider

        engine, settings = state.engine, studio.settings
        mailer = Mailer(studio.app, settings, engine, build_provider(settings, engine))
        state.mailer = mailer
    assert isinstance(mailer, Mailer)
    return mailer


def registry_of(request: Request) -> TemplateRegistry:
    """The app's templates; a 404 page when it registers none."""
    registry = studio_of(request).app.templates
    if registry is None:
        raise PageError(404, "The app registers no templates (Hogsend(templates=...)).")
    return registry


def template_of(registry: TemplateRegistry, key: str) -> EmailTemplate:
    """The template ``key``, or a 404 page."""
    try:
        return registry.get(key)
    except TemplateNotFound:
        raise PageError(404, f"There is no template {key!r}.") from None


def preview(registry: TemplateRegistry, key: str) -> tuple[RenderedEmail | None, str | None]:
    """``key`` rendered with its example props for a sample contact, or why it cannot be."""
    try:
        return (
            render_or_422(
                registry,
                key,
                contact=stand_in_contact(SAMPLE_ADDRESS),
                props=registry.preview_props(key),
                subject=None,
                marketing=True,
                location=("props",),
            ),
            None,
        )
    except RequestValidationError as exc:
        return None, "; ".join(str(e.get("msg")) for e in exc.errors())
    except TemplateError as exc:
        return None, str(exc)


# -------------------------------------------------------------------------- templates


async def gallery(request: Request) -> Response:
    """Every template as a card: its metadata and a rendered thumbnail."""
    async with database(request) as db:
        await require_viewer(request, db)
    registry = studio_of(request).app.templates
    templates = registry.templates() if registry is not None else []
    cards = []
    for template in templates:
        rendered, problem = preview(registry, template.key) if registry else (None, None)
        cards.append({"template": template, "rendered": rendered, "problem": problem})
    return render(
        request,
        "email.html",
        title="Email",
        current="email",
        section="templates",
        cards=cards,
        mobile_width=MOBILE_WIDTH,
    )


async def template_page(request: Request) -> Response:
    """One template: desktop and mobile previews, its text part, and the test-send form."""
    async with database(request) as db:
        me = await require_viewer(request, db)
    registry = registry_of(request)
    key = str(request.path_params["key"])
    template = template_of(registry, key)
    rendered, problem = preview(registry, key)
    sent = request.query_params.get("sent")
    return render(
        request,
        "email_template.html",
        title=f"Template {key}",
        current="email",
        section="templates",
        item=template,
        rendered=rendered,
        problem=problem,
        desktop_width=DESKTOP_WIDTH,
        mobile_width=MOBILE_WIDTH,
        can_send=me.user.is_admin,
        sent=sent,
        decision=request.query_params.get("decision"),
        notice=None,
    )


async def template_html(request: Request) -> Response:
    """The rendered HTML of a template preview, for its frame."""
    async with database(request) as db:
        await require_viewer(request, db)
    registry = registry_of(request)
    key = str(request.path_params["key"])
    template_of(registry, key)
    rendered, problem = preview(registry, key)
    if rendered is None:
        raise PageError(400, f"The template cannot be rendered with its example props: {problem}")
    return email_frame(rendered.html)


async def send_test(request: Request) -> Response:
    """POST: send the template to one address now, as the admin API's send-test does."""
    async with database(request) as db:
        me, form = await require_admin(request, db)
        registry = registry_of(request)
        key = str(request.path_params["key"])
        template = template_of(registry, key)
        try:
            to = normalize_email(str(form.get("to") or ""))
        except IdentityError as exc:
            raise PageError(400, f"The address {exc.reason}.") from None
        if to is None:
            raise PageError(400, "Give the address to send the test to.")
        try:
            outcome = await send_test_message(
                api_mailer(request),
                registry,
                template,
                to=to,
                props=registry.preview_props(key),
                contact=stand_in_contact(to),
                contact_id=None,
                location=("props",),
            )
        except RequestValidationError as exc:
            messages = "; ".join(str(e.get("msg")) for e in exc.errors())
            raise PageError(400, f"The template cannot be rendered: {messages}") from None
        record = await sends.get_send(db, outcome.send_id)
        await record_change(
            request,
            db,
            me,
            action="templates.send-test",
            resource="templates",
            resource_id=key,
            detail={
                "to": to,
                "sendId": str(outcome.send_id),
                "decision": outcome.decision,
                "before": {"send": None},
                "after": {
                    "send": str(outcome.send_id),
                    "status": record.status if record is not None else None,
                },
            },
        )
        await db.commit()
    decision = record.decision if record is not None else outcome.decision
    target = studio_of(request).url(f"/email/templates/{key}")
    return RedirectResponse(f"{target}?sent={outcome.send_id}&decision={decision}", 303)


# ----------------------------------------------------------------------------- outbox


async def outbox_list(request: Request) -> Response:
    """The dev outbox, newest first, searchable by recipient, sender or subject."""
    params = request.query_params
    search = params.get("search", "").strip()
    cursor = params.get("cursor") or None
    async with database(request) as db:
        await require_viewer(request, db)
        try:
            page = await outbox_messages.page_messages(
                db, search=search or None, cursor=cursor, limit=PAGE_SIZE
            )
        except InvalidCursor as exc:
            raise PageError(400, str(exc)) from None
        total = await outbox_messages.count(db)
    return render(
        request,
        "outbox.html",
        title="Outbox",
        current="email",
        section="outbox",
        page=page,
        total=total,
        search=search,
        paged=cursor is not None,
        provider=studio_of(request).settings.email_provider,
    )


def _message_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(str(request.path_params["id"]))
    except ValueError:
        raise PageError(404, "That is not an outbox message id.") from None


async def outbox_message(request: Request) -> Response:
    """One stored message: headers, text part, and the HTML part in a frame."""
    message_id = _message_id(request)
    async with database(request) as db:
        await require_viewer(request, db)
        message = await outbox_messages.get(db, message_id)
        send_id = message.email_send_id if message is not None else None
        send = await sends.get_send(db, send_id) if send_id is not None else None
    if message is None:
        raise PageError(404, f"Outbox message {message_id} does not exist.")
    return render(
        request,
        "outbox_message.html",
        title=message.subject,
        current="email",
        section="outbox",
        message=message,
        send=send,
        headers=sorted(message.headers.items()),
        desktop_width=DESKTOP_WIDTH,
    )


async def outbox_html(request: Request) -> Response:
    """A stored message's HTML for its frame, without the open pixel (viewing is no open)."""
    message_id = _message_id(request)
    async with database(request) as db:
        await require_viewer(request, db)
        message = await outbox_messages.get(db, message_id)
    if message is None or message.html is None:
        raise PageError(404, f"Outbox message {message_id} has no HTML part.")
    return email_frame(strip_open_pixel(message.html))


# ----------------------------------------------------------------------- suppressions


async def suppression_list(request: Request) -> Response:
    """Suppressed addresses (or all with a bounce or complaint on record), with the forms."""
    params = request.query_params
    status = params.get("status", "suppressed")
    if status not in _SUPPRESSION_STATUS:
        status = "suppressed"
    reason = params.get("reason", "")
    if reason not in SUPPRESSION_REASONS:
        reason = ""
    search = params.get("search", "").strip()
    cursor = params.get("cursor") or None
    async with database(request) as db:
        me = await require_viewer(request, db)
        try:
            page = await suppressions.list_suppressions(
                db,
                suppressed=_SUPPRESSION_STATUS[status],
                reason=cast("Reason | None", reason or None),
                search=search or None,
                cursor=cursor,
                limit=PAGE_SIZE,
            )
        except InvalidCursor as exc:
            raise PageError(400, str(exc)) from None
    filters = {"status": status, "reason": reason, "search": search}
    return render(
        request,
        "suppressions.html",
        title="Suppressions",
        current="email",
        section="suppressions",
        page=page,
        filters=filters,
        statuses=tuple(_SUPPRESSION_STATUS),
        reasons=SUPPRESSION_REASONS,
        paged=cursor is not None,
        can_change=me.user.is_admin,
        notice=_suppression_notice(params),
    )


def _suppression_notice(params: Any) -> str | None:
    done = params.get("done")
    email = params.get("email", "")
    if done == "added":
        return f"{email} is suppressed: nothing more will be sent to it."
    if done == "kept":
        return f"{email} was already suppressed; its reason is unchanged."
    if done == "removed":
        return f"{email} is no longer suppressed."
    if done == "imported":
        return (
            f"Imported: {params.get('suppressed', '0')} addresses suppressed, "
            f"{params.get('already', '0')} already were, {params.get('invalid', '0')} lines "
            "refused."
        )
    return None


def _address(value: object) -> str:
    try:
        address = normalize_email(str(value or ""))
    except IdentityError as exc:
        raise PageError(400, f"The address {exc.reason}.") from None
    if address is None:
        raise PageError(400, "Give an email address.")
    return address


def _back(request: Request, **params: object) -> RedirectResponse:
    query = urlencode({k: str(v) for k, v in params.items()})
    return RedirectResponse(studio_of(request).url(f"/email/suppressions?{query}"), 303)


async def add_suppression(request: Request) -> Response:
    """POST: suppress one address by hand, as ``POST /v1/admin/suppressions`` does."""
    async with database(request) as db:
        me, form = await require_admin(request, db)
        address = _address(form.get("email"))
        note = str(form.get("note") or "").strip()[:500] or None
        now = aware_now()

        def manual(health: AddressHealth) -> AddressHealth:
            return after_manual(health, "manual", now=now)

        before, after = await suppressions.change(db, address, manual, note=note)
        assert after is not None
        was = before is not None and before.health.suppressed
        await record_change(
            request,
            db,
            me,
            action="suppressions.create",
            resource="suppressions",
            resource_id=after.email,
            detail={
                "email": after.email,
                "reason": after.health.reason,
                "changed": not was,
                "before": suppressions.audit_state(before),
                "after": suppressions.audit_state(after),
            },
        )
        await db.commit()
    return _back(request, done="kept" if was else "added", email=after.email)


async def remove_suppression(request: Request) -> Response:
    """POST: lift an address's suppression, as ``DELETE /v1/admin/suppressions/{email}``."""
    async with database(request) as db:
        me, form = await require_admin(request, db)
        address = _address(form.get("email"))
        before, after = await suppressions.change(db, address, lifted, create=False)
        if before is None or after is None or not before.health.suppressed:
            await db.rollback()
            raise PageError(404, f"{address} is not suppressed.")
        await record_change(
            request,
            db,
            me,
            action="suppressions.delete",
            resource="suppressions",
            resource_id=after.email,
            detail={
                "email": after.email,
                "previousReason": before.health.reason,
                "before": suppressions.audit_state(before),
                "after": suppressions.audit_state(after),
            },
        )
        await db.commit()
    return _back(request, done="removed", email=after.email)


async def import_suppressions(request: Request) -> Response:
    """POST (multipart): suppress every address of a CSV file, as the import API does."""
    async with database(request) as db:
        me, form = await require_form(request, db, admin=True, max_files=1)
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise PageError(400, "Choose a CSV file to import.")
        raw = await upload.read(MAX_IMPORT_BYTES + 1)
        if len(raw) > MAX_IMPORT_BYTES:
            raise PageError(400, f"The file is larger than {MAX_IMPORT_BYTES:,} bytes.")
        try:
            parsed = parse_import(raw.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise PageError(400, "The file is not UTF-8 text.") from None
        except ValueError as exc:
            raise PageError(400, f"The file cannot be read: {exc}") from None
        limit = studio_of(request).settings.suppression_import_max_rows
        if parsed.received > limit:
            raise PageError(400, f"The file has {parsed.received} rows; at most {limit}.")
        if parsed.received == 0:
            raise PageError(400, "The file has no rows: one address per line.")
        rows = [
            suppressions.ImportRow(email=line.email, reason=line.reason, note=line.note)
            for line in parsed.lines
        ]
        outcome = await suppressions.import_rows(db, rows, now=aware_now())
        await record_change(
            request,
            db,
            me,
            action="suppressions.import",
            resource="suppressions",
            resource_id="import",
            detail={
                "received": parsed.received,
                "suppressed": outcome.suppressed,
                "invalid": len(parsed.errors),
                "before": {"suppressedOfFile": outcome.already_suppressed},
                "after": {"suppressedOfFile": outcome.already_suppressed + outcome.suppressed},
            },
        )
        await db.commit()
    return _back(
        request,
        done="imported",
        suppressed=outcome.suppressed,
        already=outcome.already_suppressed,
        invalid=len(parsed.errors),
    )
