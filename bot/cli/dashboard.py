"""``rapport dashboard``: the console dashboard's daily roll-up, run by hand (a backfill)."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Annotated

import typer

from bot.cli.common import console, fail, load_runtime

dashboard_app = typer.Typer(help="The console dashboard's figures.", no_args_is_help=True)


@dashboard_app.command("rollup")
def dashboard_rollup(
    start: Annotated[
        str | None,
        typer.Option(help="First day (YYYY-MM-DD; default: the first message's day, or 8 days ago)."),
    ] = None,
    end: Annotated[str | None, typer.Option(help="Last day (YYYY-MM-DD; default: today, UTC).")] = None,
    days: Annotated[
        int | None, typer.Option(min=1, help="The last DAYS days up to END instead of START.")
    ] = None,
) -> None:
    """Roll the dashboard up for a range of days (the scheduler does the last 8 days hourly).

    Replaces those days' figures (safe to run again), snapshots the book on the last day, and
    recomputes the offered-versus-holdout cohorts.
    """
    from schedulers.dashboard import rollup
    from storage import dashboard as store
    from storage.models import utcnow

    try:
        last = date.fromisoformat(end) if end else None
        first = date.fromisoformat(start) if start else None
    except ValueError as exc:
        raise fail(f"Not a date: {exc}", "Give days as YYYY-MM-DD.") from None
    if days is not None and first is not None:
        raise fail("Give --start or --days, not both.")
    runtime = load_runtime()
    now = utcnow()
    last = last or now.date()
    if days is not None:
        first = last - timedelta(days=days - 1)
    elif first is None:
        with runtime.db.connect() as conn:
            first = store.first_activity(conn) or last - timedelta(days=7)
    if first > last:
        raise fail(f"The range starts ({first}) after it ends ({last}).")
    report = rollup(runtime.db, runtime.bank, now, start=first, end=last)
    console.print(
        f"Rolled up {report.days} days ({first} to {last}): {report.rows} rows, "
        f"{report.cohort_rows} holdout cohort rows."
    )
