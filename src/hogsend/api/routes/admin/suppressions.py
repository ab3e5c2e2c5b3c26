"""/v1/admin/suppressions: list, add, remove and bulk-import suppressed addresses.

GET needs ``admin:read``; changes need ``admin:write`` and are audited. Addresses are
normalised like everywhere else (trimmed, domain lower-cased) and matched
case-insensitively; a suppression applies to every send to the address, whether or
not a contact or preference row exists for it.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, settings_of
from hogsend.api.errors import problem_responses
from hogsend.api.middleware import MAX_BODY_BYTES_EXTRA
from hogsend.api.routes.transactions import invalid_cursor, invalid_field
from hogsend.api.schemas.suppressions import (
    CreateSuppression,
    ImportLineError,
    ImportReport,
    SuppressionChange,
    SuppressionPage,
    SuppressionQuery,
    suppression_out,
)
from hogsend.core.clock import aware_now
from hogsend.core.identity import MAX_EMAIL_LENGTH, IdentityError, normalize_email
from hogsend.core.pagination import InvalidCursor
from hogsend.core.suppression import AddressHealth, after_manual, lifted
from hogsend.core.suppression_imports import ParsedImport, parse_import
from hogsend.db.repos import suppressions
from hogsend.errors import NotFound, PayloadTooLarge

router = APIRouter(prefix="/v1/admin", tags=["admin: suppressions"])

MAX_REPORTED_ERRORS = 1000
_STATUS_FILTER = {"suppressed": True, "unsuppressed": False, "all": None}


@router.get(
    "/suppressions",
    summary="List suppressed addresses",
    dependencies=[require_scope("admin:read")],
)
async def list_suppressions(
    query: Annotated[SuppressionQuery, Query()], session: DbSession
) -> SuppressionPage:
    """Addresses newest record first: by default the suppressed ones; `status=unsuppressed`
    shows addresses with bounces or complaints on record that can still be sent to,
    `status=all` both. `reason` and `search` (part of the address) narrow it down."""
    try:
        page = await suppressions.list_suppressions(
            session,
            suppressed=_STATUS_FILTER[query.status],
            reason=query.reason,
            search=query.search,
            cursor=query.cursor,
            limit=query.limit,
        )
    except InvalidCursor as exc:
        raise invalid_cursor(exc) from None
    return SuppressionPage(
        suppressions=[suppression_out(r) for r in page.items], next_cursor=page.next_cursor
    )


@router.post("/suppressions", summary="Suppress an address")
async def add_suppression(
    body: CreateSuppression,
    change: AdminChange = audited(
        "admin:write", resource="suppressions", action="suppressions.create"
    ),
) -> SuppressionChange:
    """Suppress one address by hand (reason `manual`). An address already suppressed keeps
    its reason and time; only the note is replaced when one is given (`changed: false`)."""
    now = aware_now()

    def manual(health: AddressHealth) -> AddressHealth:
        return after_manual(health, "manual", now=now)

    before, after = await suppressions.change(change.session, body.email, manual, note=body.note)
    assert after is not None
    was = before is not None and before.health.suppressed
    change.resource_id = after.email
    change.detail = {
        "email": after.email,
        "reason": after.health.reason,
        "changed": not was,
        "before": suppressions.audit_state(before),
        "after": suppressions.audit_state(after),
    }
    return SuppressionChange(suppression=suppression_out(after), changed=not was)


@router.delete(
    "/suppressions/{email}",
    summary="Unsuppress an address",
    responses=problem_responses(404),
)
async def remove_suppression(
    email: Annotated[
        str,
        Path(
            max_length=MAX_EMAIL_LENGTH,
            description="The address (matched case-insensitively).",
            json_schema_extra={"format": "email"},
        ),
    ],
    change: AdminChange = audited(
        "admin:write", resource="suppressions", action="suppressions.delete"
    ),
) -> SuppressionChange:
    """Lift the suppression of an address so it can be sent to again. Its bounce and
    complaint counts stay as history; the soft-bounce streak starts over. 404 when the
    address is not suppressed."""
    try:
        address = normalize_email(email)
    except IdentityError as exc:
        raise invalid_field(("path", "email"), exc.reason) from None
    if address is None:
        raise invalid_field(("path", "email"), "is blank")
    before, after = await suppressions.change(change.session, address, lifted, create=False)
    if before is None or after is None or not before.health.suppressed:
        # Raising rolls back the streak reset ``lifted`` wrote on an unsuppressed row.
        raise NotFound(f"{address} is not suppressed")
    change.resource_id = after.email
    change.detail = {
        "email": after.email,
        "previousReason": before.health.reason,
        "before": suppressions.audit_state(before),
        "after": suppressions.audit_state(after),
    }
    return SuppressionChange(suppression=suppression_out(after), changed=True)


# --------------------------------------------------------------------------- import

_IMPORT_DOC: dict[str, Any] = {
    MAX_BODY_BYTES_EXTRA: "batch_max_body_bytes",
    "requestBody": {
        "required": True,
        "description": "A CSV file: `email[,reason[,note]]` per line, optional header.",
        "content": {
            "text/csv": {
                "schema": {"type": "string"},
                "example": "email,reason,note\nann@example.com,manual,asked by phone\n",
            },
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            },
        },
    },
}


async def _upload_text(request: Request) -> str:
    """The uploaded file's text: the body itself, or the multipart form's ``file`` part."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if isinstance(upload, UploadFile):
            raw = await upload.read()
        elif isinstance(upload, str):
            raw = upload.encode()
        else:
            raise invalid_field(("body", "file"), "is required: the CSV file's form field")
    elif content_type in ("text/csv", "text/plain", ""):
        raw = await request.body()
    else:
        raise HTTPException(
            415, f"Send the CSV as text/csv or multipart/form-data, not {content_type}"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise invalid_field(("body",), "is not UTF-8 text") from None


def _strict_failure(parsed: ParsedImport) -> RequestValidationError:
    return RequestValidationError(
        [
            {
                "type": "value_error",
                "loc": ("body", "line", error.line, error.field),
                "msg": error.message,
                "input": None,
            }
            for error in parsed.errors[:MAX_REPORTED_ERRORS]
        ]
    )


@router.post(
    "/suppressions/import",
    summary="Suppress a CSV list of addresses",
    responses=problem_responses(413, 415),
    openapi_extra=_IMPORT_DOC,
)
async def import_suppressions(
    request: Request,
    strict: Annotated[
        bool,
        Query(description="Refuse the whole file (422, nothing written) if any line is bad."),
    ] = False,
    change: AdminChange = audited(
        "admin:write", resource="suppressions", action="suppressions.import"
    ),
) -> ImportReport:
    """Suppress every address of a CSV file (`text/csv` body, or a multipart form with a
    `file` field): one address per line, optionally with a reason (default `import`) and
    a note; a first line starting with `email` is a header naming the columns. Valid
    lines are imported in one statement and bad ones reported by line number; with
    `strict=true` one bad line refuses the whole file. Addresses already suppressed keep
    their reason. At most `HOGSEND_SUPPRESSION_IMPORT_MAX_ROWS` lines and
    `HOGSEND_BATCH_MAX_BODY_BYTES` bytes (413 beyond)."""
    text = await _upload_text(request)
    try:
        parsed = parse_import(text)
    except ValueError as exc:
        raise invalid_field(("body",), str(exc)) from None
    limit = settings_of(request).suppression_import_max_rows
    if parsed.received > limit:
        raise PayloadTooLarge(f"The file has {parsed.received} rows; at most {limit} are accepted")
    if parsed.received == 0:
        raise invalid_field(("body",), "has no rows: expected one address per line")
    if strict and parsed.errors:
        raise _strict_failure(parsed)
    rows = [
        suppressions.ImportRow(email=line.email, reason=line.reason, note=line.note)
        for line in parsed.lines
    ]
    outcome = await suppressions.import_rows(change.session, rows, now=aware_now())
    change.resource_id = "import"
    # A whole file has no single row to show: its before/after is the count of addresses
    # of the file that were suppressed (the rest were newly suppressed by it).
    already = outcome.already_suppressed
    change.detail = {
        "received": parsed.received,
        "suppressed": outcome.suppressed,
        "invalid": len(parsed.errors),
        "before": {"suppressedOfFile": already},
        "after": {"suppressedOfFile": already + outcome.suppressed},
    }
    return ImportReport(
        received=parsed.received,
        suppressed=outcome.suppressed,
        already_suppressed=outcome.already_suppressed,
        duplicates=outcome.duplicates,
        invalid=len(parsed.errors),
        errors=[
            ImportLineError(line=e.line, field=e.field, value=e.value, message=e.message)
            for e in parsed.errors[:MAX_REPORTED_ERRORS]
        ],
        errors_truncated=len(parsed.errors) > MAX_REPORTED_ERRORS,
    )
