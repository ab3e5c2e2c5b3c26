"""/v1/admin/imports: upload contacts (CSV or JSON lines), dry-run them, follow the import.

The upload is validated in the request (a CSV header whose mapping cannot describe a
contact is a 422 naming it); a dry run parses every line and reports the bad ones by
line number without writing anything. A real import stores the file in its job row and
answers 202; a worker imports it in durable chunks (:mod:`hogsend.runtime.imports`).
"""

from __future__ import annotations

import csv
import io
import json
from typing import Annotated, Any, Literal
from uuid import UUID

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from hogsend.api.audit import AdminChange, audited
from hogsend.api.auth import require_scope
from hogsend.api.deps import DbSession, hogsend_of
from hogsend.api.errors import problem_responses
from hogsend.api.middleware import MAX_BODY_BYTES_EXTRA
from hogsend.api.routes.transactions import invalid_field
from hogsend.api.schemas.imports import (
    DryRunReport,
    ImportAccepted,
    ImportJobOut,
    LineError,
    job_out,
)
from hogsend.core.contact_imports import (
    MappingError,
    RowError,
    parse_csv_line,
    parse_json_line,
    prepare,
)
from hogsend.db.repos import imports as repo
from hogsend.errors import NotFound

router = APIRouter(prefix="/v1/admin", tags=["admin: imports"])

_JSONL_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines")
_UPLOAD_DOC: dict[str, Any] = {
    # A contact export is often far larger than an API batch (1M contacts: about 45 MB).
    MAX_BODY_BYTES_EXTRA: "import_max_body_bytes",
    "requestBody": {
        "required": True,
        "description": "The file: CSV with a header line, or JSON lines (send those as "
        "`application/x-ndjson`, or as a multipart `file` named `*.jsonl`).",
        "content": {
            "text/csv": {"schema": {"type": "string"}},
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


async def _upload(request: Request) -> tuple[bytes, Literal["csv", "jsonl"] | None, str | None]:
    """(file bytes, format implied by the content type, file name)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await request.form()
        upload = form.get("file")
        if isinstance(upload, UploadFile):
            name = upload.filename
            raw = await upload.read()
            implied: Literal["jsonl"] | None = (
                "jsonl" if name and name.endswith((".jsonl", ".ndjson")) else None
            )
            return raw, implied, name
        raise invalid_field(("body", "file"), "is required: the file's form field")
    if content_type in ("text/csv", "text/plain", ""):
        return await request.body(), "csv" if content_type == "text/csv" else None, None
    if content_type in _JSONL_TYPES:
        return await request.body(), "jsonl", None
    raise HTTPException(
        415, f"Send the file as text/csv, JSON lines or multipart, not {content_type}"
    )


def _lines(raw: bytes) -> list[str]:
    try:
        return raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise invalid_field(("body",), "is not UTF-8 text") from None


@router.post(
    "/imports",
    status_code=202,
    summary="Import contacts from a file",
    responses={200: {"model": DryRunReport}, **problem_responses(413, 415)},
    openapi_extra=_UPLOAD_DOC,
)
async def create_import(
    request: Request,
    format: Annotated[
        Literal["csv", "jsonl"] | None,
        Query(description="Default: from the content type or file name, else csv."),
    ] = None,
    dry_run: Annotated[
        bool, Query(alias="dryRun", description="Validate every line; write nothing.")
    ] = False,
    mapping: Annotated[
        str | None,
        Query(
            max_length=10_000,
            description='JSON object column → field, e.g. `{"E-mail": "email", "Plan": '
            '"properties.plan", "News": "lists.newsletter"}`; unmapped columns use the '
            "defaults (docs/imports.md).",
        ),
    ] = None,
    file_name: Annotated[str | None, Query(alias="fileName", max_length=255)] = None,
    change: AdminChange = audited("admin:write", resource="imports", action="imports.create"),
) -> Any:
    """Upload contacts as CSV (header line first) or JSON lines, as the body or a
    multipart `file` field. With `dryRun=true` every line is checked and the bad ones
    reported by line number (200, nothing written); otherwise the job is created and a
    worker imports it (202 with its id; follow it with `GET /v1/admin/imports/{id}`)."""
    raw, implied, uploaded_name = await _upload(request)
    kind: Literal["csv", "jsonl"] = format or implied or "csv"
    if "\x00" in (file_name or ""):
        raise invalid_field(("query", "fileName"), "cannot contain NUL")
    given: dict[str, str] = {}
    if mapping is not None:
        try:
            loaded = json.loads(mapping)
        except ValueError:
            raise invalid_field(("query", "mapping"), "is not JSON") from None
        if not isinstance(loaded, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in loaded.items()
        ):
            raise invalid_field(("query", "mapping"), "must be an object of strings")
        given = loaded
    # Spreadsheet exports often start with a byte-order mark; it is not part of the data.
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    lines = _lines(raw)
    known = frozenset(item.id for item in hogsend_of(request).lists)
    if kind == "csv" and not raw.strip():
        raise invalid_field(("body",), "is empty: expected a header line")
    try:
        stored = prepare(raw, kind, given, known)
    except MappingError as exc:
        raise invalid_field(("query", "mapping"), str(exc)) from None
    if dry_run:
        return _dry_run(lines, kind, stored, known, change)
    job = await repo.create_job(
        change.session,
        file_name=file_name or uploaded_name,
        format=kind,
        content=raw,
        size_bytes=len(raw),
        mapping=stored,
        created_by=change.principal.name,
    )
    change.resource_id = str(job.id)
    change.detail = {
        "format": kind,
        "bytes": len(raw),
        "before": {"job": None},
        "after": {"job": str(job.id), "status": "pending"},
    }
    return ImportAccepted(job_id=job.id, status="pending")


def _dry_run(
    lines: list[str], kind: str, stored: dict[str, Any], known: frozenset[str], change: AdminChange
) -> Response:
    start = 2 if kind == "csv" else 1
    errors: list[RowError] = []
    total = 0
    for number, line in enumerate(lines[start - 1 :], start=start):
        if not line.strip():
            continue
        total += 1
        parsed = (
            parse_csv_line(number, line, stored["columns"], stored["targets"], known)
            if kind == "csv"
            else parse_json_line(number, line, known)
        )
        if isinstance(parsed, RowError):
            errors.append(parsed)
    change.action = "imports.dry-run"
    # A dry run writes nothing: both sides are the same (no job).
    change.detail = {
        "format": kind,
        "rows": total,
        "failed": len(errors),
        "before": {"job": None},
        "after": {"job": None},
    }
    report = DryRunReport(
        total_rows=total,
        valid_rows=total - len(errors),
        failed_rows=len(errors),
        mapping=stored.get("targets", {}),
        errors=[LineError(line=e.line, reason=e.reason) for e in errors[:100]],
    )
    return Response(
        report.model_dump_json(by_alias=True), status_code=200, media_type="application/json"
    )


@router.get(
    "/imports/{id}",
    summary="Get an import job",
    responses=problem_responses(404),
    dependencies=[require_scope("admin:read")],
)
async def get_import(
    id: Annotated[UUID, Path(description="The job id.")], session: DbSession
) -> ImportJobOut:
    """Status and progress: rows processed and failed, contacts created and updated, the
    first rejected lines."""
    job = await repo.get_job(session, id)
    if job is None:
        raise NotFound("Import job not found")
    return job_out(job)


@router.get(
    "/imports/{id}/errors",
    summary="Download an import's rejected lines",
    responses={200: {"content": {"text/csv": {}}}, **problem_responses(404)},
    dependencies=[require_scope("admin:read")],
    response_class=Response,
)
async def import_errors(
    id: Annotated[UUID, Path(description="The job id.")], session: DbSession
) -> Response:
    """Every rejected line as CSV: `line,reason,raw`."""
    job = await repo.get_job(session, id)
    if job is None:
        raise NotFound("Import job not found")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["line", "reason", "raw"])
    for error in await repo.row_errors(session, id):
        writer.writerow([error.line_number, error.reason, error.raw or ""])
    return Response(
        out.getvalue(),
        media_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="import-{id}-errors.csv"'},
    )
