"""``hogsend buckets``: list the app's buckets and run a bucket's backfill by hand.

``backfill`` runs in this process, chunk by chunk, with a progress bar. It takes the
same lease a worker takes, so it never runs next to another runner of the same bucket;
if it is interrupted, the next run (here or in a worker) resumes from its cursor once
the lease expired (``HOGSEND_BUCKET_BACKFILL_LEASE_SECONDS``).
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from hogsend.app import Hogsend
from hogsend.cli.context import (
    cli_state,
    database,
    load_user_app,
    quiet_one_off_settings,
    resolve_app_path,
)
from hogsend.core.definitions import BucketDefinition
from hogsend.db.engine import make_async_engine, make_sessionmaker
from hogsend.db.repos import bucket_sweeps as sweeps
from hogsend.runtime.reconcile import BackfillReport, BucketSweeper
from hogsend.settings import Settings

buckets_cli = typer.Typer(
    name="buckets",
    help="List buckets and run their backfill.",
    no_args_is_help=True,
    add_completion=False,
)


def _app(ctx: typer.Context, settings: Settings) -> Hogsend:
    return load_user_app(resolve_app_path(cli_state(ctx), settings))


def _bucket(app: Hogsend, bucket_id: str) -> BucketDefinition:
    for bucket in app.buckets:
        if bucket.id == bucket_id:
            return bucket
    known = ", ".join(b.id for b in app.buckets) or "none"
    raise typer.BadParameter(f"no bucket {bucket_id!r} in the app (known: {known})")


@buckets_cli.command("list")
def list_buckets(ctx: typer.Context) -> None:
    """Every bucket of the app with its members, switch and backfill state."""
    settings = quiet_one_off_settings()
    app = _app(ctx, settings)

    async def read(url: str) -> tuple[dict[str, sweeps.BucketState], dict[str, tuple[int, int]]]:
        engine = make_async_engine(url, pool_size=1)
        try:
            async with make_sessionmaker(engine)() as session:
                return await sweeps.bucket_states(session), await sweeps.member_counts(session)
        finally:
            await engine.dispose()

    with database(settings) as url:
        states, counts = asyncio.run(read(url))
    table = Table("id", "kind", "enabled", "time-based", "members", "left", "backfill")
    for bucket in app.buckets:
        state = states.get(bucket.id)
        active, left = counts.get(bucket.id, (0, 0))
        if bucket.criteria is None:
            backfill = "-"
        elif state is None or state.backfill_status is None:
            backfill = "needed"
        elif state.backfill_status == "running":
            backfill = f"running {state.backfill_processed}/{state.backfill_total or 0}"
        elif sweeps.backfill_needed(bucket, state):
            backfill = "needed" if state.backfill_status == "completed" else state.backfill_status
        else:
            backfill = "done"
        table.add_row(
            bucket.id,
            bucket.kind,
            "yes" if sweeps.is_enabled(bucket, state) else "no",
            "yes" if sweeps.is_time_based(bucket) else "no",
            str(active),
            str(left),
            backfill,
        )
    Console().print(table)


@buckets_cli.command()
def backfill(
    ctx: typer.Context,
    bucket_id: Annotated[str, typer.Argument(help="The bucket's id.")],
    force: Annotated[
        bool, typer.Option("--force", help="Re-evaluate even if the criteria did not change.")
    ] = False,
) -> None:
    """Compute a bucket's membership silently (no transition events), with progress."""
    settings = quiet_one_off_settings()
    app = _app(ctx, settings)
    bucket = _bucket(app, bucket_id)
    if bucket.criteria is None:
        raise typer.BadParameter(f"bucket {bucket_id!r} is manual: nothing to backfill")

    with database(settings) as url:
        report = asyncio.run(_run_backfill(app, settings, url, bucket, force=force))
    if report.error is not None:
        typer.secho(f"backfill failed: {report.error}", fg="red", err=True)
        raise typer.Exit(1)
    if report.lost_lease:
        typer.secho("another runner took the backfill over", fg="yellow", err=True)
        raise typer.Exit(1)
    if not report.ran:
        typer.echo(
            f"nothing to do for {bucket_id}: its membership is up to date "
            "(use --force to re-evaluate) or another runner is backfilling it"
        )
        return
    typer.echo(
        f"{bucket_id}: {report.mode} backfill done, {report.processed} contacts looked at, "
        f"{report.joined} joined, {report.left} left (silently)"
    )


async def _run_backfill(
    app: Hogsend, settings: Settings, url: str, bucket: BucketDefinition, *, force: bool
) -> BackfillReport:
    engine = make_async_engine(url, pool_size=1)
    sweeper = BucketSweeper(
        app,
        engine,
        chunk_size=settings.bucket_backfill_chunk_size,
        lease=timedelta(seconds=settings.bucket_backfill_lease_seconds),
    )
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
    )
    task = progress.add_task(f"backfill {bucket.id}", total=None)

    def show(claim: sweeps.BackfillClaim) -> None:
        progress.update(task, total=claim.total or None, completed=claim.processed)

    try:
        with progress:
            return await sweeper.backfill(bucket, force=force, progress=show)
    finally:
        await engine.dispose()
