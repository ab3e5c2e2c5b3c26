"""``hogsend import contacts FILE``: import a CSV or JSON-lines file of contacts.

The file becomes an import job like one uploaded to ``POST /v1/admin/imports``, but this
process imports it, chunk by chunk, with a progress bar; each chunk commits with the
job's cursor, so an interrupted import continues with ``--resume JOB_ID`` and creates no
contact twice. ``--dry-run`` checks every line and writes nothing.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from hogsend.app import Hogsend
from hogsend.cli.context import (
    cli_state,
    database,
    load_user_app,
    quiet_one_off_settings,
    resolve_app_path,
)
from hogsend.core.contact_imports import (
    MappingError,
    RowError,
    parse_csv_line,
    parse_json_line,
    prepare,
)
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import imports as repo
from hogsend.db.tables.imports import ImportJob
from hogsend.runtime.imports import import_chunk

import_cli = typer.Typer(
    name="import",
    help="Import contacts from a file.",
    no_args_is_help=True,
    add_completion=False,
)

SHOWN_ERRORS = 10


def _lines_in(raw: bytes, kind: str) -> int:
    lines = [line for line in raw.split(b"\n") if line.strip()]
    return max(len(lines) - (1 if kind == "csv" else 0), 0)


async def _run(
    url: str,
    app: Hogsend,
    raw: bytes | None,
    stored: dict[str, object],
    *,
    kind: str,
    name: str | None,
    resume: uuid.UUID | None,
    console: Console,
) -> uuid.UUID:
    engine = make_async_engine(url, pool_size=2)
    owner = f"cli:{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    try:
        async with make_sessionmaker(engine)() as session, session.begin():
            if resume is None:
                assert raw is not None
                job = await repo.create_job(
                    session,
                    file_name=name,
                    format=kind,
                    content=raw,
                    size_bytes=len(raw),
                    mapping=stored,
                    status="processing",
                    workflow_id=owner,
                    started_at=now,
                    created_by="hogsend cli",
                )
                total = _lines_in(raw, kind)
                done = 0
            else:
                found = await repo.get_job(session, resume)
                if found is None or found.status not in ("pending", "processing"):
                    raise typer.BadParameter(
                        f"no unfinished import job {resume}", param_hint="--resume"
                    )
                job = found
                job.status, job.workflow_id = "processing", owner
                content = await repo.read_slice(session, job.id, 0, job.size_bytes or 0)
                total = _lines_in(content, job.format)
                done = job.processed_rows
        with Progress(
            TextColumn("[bold]importing"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task("rows", total=total, completed=done, failed=job.failed_rows)
            failed = job.failed_rows
            while True:
                chunk = await import_chunk(engine, app, job.id, owner)
                if chunk.state != "more":
                    break
                failed += chunk.failed
                bar.update(task, advance=chunk.processed, failed=failed)
        return job.id
    finally:
        await engine.dispose()


@import_cli.command()
def contacts(
    ctx: typer.Context,
    file: Annotated[
        Path | None, typer.Argument(help="CSV (header first) or JSON lines (.jsonl).")
    ] = None,
    mapping: Annotated[
        str | None,
        typer.Option(help='Column → field as JSON, e.g. \'{"E-mail": "email"}\' (CSV only).'),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check every line; write nothing.")
    ] = False,
    resume: Annotated[
        str | None, typer.Option(help="Continue an interrupted import job by its id.")
    ] = None,
) -> None:
    """Import contacts; bad lines are reported by line number and the rest imported."""
    console = Console(stderr=True)
    settings = quiet_one_off_settings()
    app = (
        load_user_app(resolve_app_path(cli_state(ctx), settings, default=None))
        if (cli_state(ctx).app_path or settings.app)
        else Hogsend()
    )
    known = frozenset(item.id for item in app.lists)
    resume_id: uuid.UUID | None = None
    raw: bytes | None = None
    stored: dict[str, object] = {}
    kind: Literal["csv", "jsonl"] = "csv"
    if resume is not None:
        try:
            resume_id = uuid.UUID(resume)
        except ValueError:
            raise typer.BadParameter("is not a job id", param_hint="--resume") from None
    else:
        if file is None:
            raise typer.BadParameter("give a FILE (or --resume JOB_ID)", param_hint="FILE")
        try:
            raw = file.read_bytes().removeprefix(b"\xef\xbb\xbf")
        except OSError as exc:
            raise typer.BadParameter(str(exc), param_hint="FILE") from None
        kind = "jsonl" if file.suffix in (".jsonl", ".ndjson") else "csv"
        try:
            given = json.loads(mapping) if mapping else {}
            stored = prepare(raw, kind, given, known)
        except (ValueError, MappingError) as exc:
            raise typer.BadParameter(str(exc), param_hint="--mapping") from None
    if dry_run:
        if raw is None:
            raise typer.BadParameter("--dry-run checks a FILE", param_hint="--dry-run")
        _dry_run(raw, kind, stored, known)
        return
    with database(settings) as url:
        job_id = asyncio.run(
            _run(
                url,
                app,
                raw,
                stored,
                kind=kind,
                name=file.name if file else None,
                resume=resume_id,
                console=console,
            )
        )
        job = asyncio.run(_job(url, job_id))
    typer.echo(
        f"import {job.id}: {job.status}; {job.processed_rows} rows, {job.failed_rows} failed, "
        f"{job.created_contacts} contacts created, {job.updated_contacts} updated"
    )
    for error in (job.errors or [])[:SHOWN_ERRORS]:
        typer.echo(f"  line {error['line']}: {error['reason']}")
    if job.failed_rows:
        typer.echo(f"every rejected line: GET /v1/admin/imports/{job.id}/errors")


async def _job(url: str, job_id: uuid.UUID) -> ImportJob:
    engine = make_async_engine(url, pool_size=1)
    try:
        async with make_sessionmaker(engine)() as session:
            job = await repo.get_job(session, job_id)
            assert job is not None
            return job
    finally:
        await engine.dispose()


def _dry_run(raw: bytes, kind: str, stored: dict[str, object], known: frozenset[str]) -> None:
    errors: list[RowError] = []
    total = 0
    lines = raw.decode("utf-8", errors="replace").splitlines()
    start = 2 if kind == "csv" else 1
    for number, line in enumerate(lines[start - 1 :], start=start):
        if not line.strip():
            continue
        total += 1
        parsed = (
            parse_csv_line(number, line, stored["columns"], stored["targets"], known)  # type: ignore[arg-type]
            if kind == "csv"
            else parse_json_line(number, line, known)
        )
        if isinstance(parsed, RowError):
            errors.append(parsed)
    typer.echo(f"dry run: {total} rows, {total - len(errors)} valid, {len(errors)} failed")
    for error in errors[:SHOWN_ERRORS]:
        typer.echo(f"  line {error.line}: {error.reason}")
