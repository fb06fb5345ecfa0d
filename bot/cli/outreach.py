"""``rapport outreach`` (proactive plan suggestions) and ``rapport switches`` (the switch
requests customers made, for billing)."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from bot.cli.common import console, err, load_runtime, load_settings

outreach_app = typer.Typer(help="Proactive plan suggestions.", no_args_is_help=True)
switches_app = typer.Typer(help="Plan switch requests (customers who said YES).", no_args_is_help=True)


@outreach_app.command("scan")
def outreach_scan() -> None:
    """Queue a plan suggestion for every customer it would help and the contact policy allows.

    Messages outside a customer's allowed hours wait in the outbox for the next allowed moment;
    `rapport run` sends them when they are due.
    """
    from schedulers.proactive import scan
    from storage.models import utcnow

    runtime = load_runtime()
    report = scan(runtime.db, runtime.dialog.advisor, runtime.policy, utcnow())
    console.print(
        f"{report.considered} customers with a suggestion: {report.queued} queued to go now, "
        f"{report.deferred} deferred to their next allowed moment."
    )
    for reason, count in report.skipped_by_reason.most_common():
        console.print(f"  skipped, {reason}: {count}")


@switches_app.command("export")
def switches_export(
    out: Annotated[Path | None, typer.Option(help="CSV file to write (default: standard output).")] = None,
    since: Annotated[
        datetime | None, typer.Option(help="Only requests made at or after this time (UTC).")
    ] = None,
) -> None:
    """Write switch requests as CSV."""
    from schedulers.billing import export_switches
    from storage.db import open_database

    db = open_database(load_settings().database_url)
    when = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    if out is None:
        count = export_switches(db, sys.stdout, when)
    else:
        with out.open("w", newline="", encoding="utf-8") as handle:
            count = export_switches(db, handle, when)
    err.print(f"{count} switch requests exported.")


@switches_app.command("deliver")
def switches_deliver() -> None:
    """POST due switch requests to BILLING_WEBHOOK_URL once (signed; failures retried later)."""
    from schedulers.billing import deliver_switches
    from storage.db import open_database
    from storage.models import utcnow

    settings = load_settings()
    config = settings.billing_config()
    if config is None:
        err.print("[red]BILLING_WEBHOOK_URL is not set.[/red] Set it (and BILLING_WEBHOOK_SECRET) in .env.")
        raise typer.Exit(2)
    report = deliver_switches(open_database(settings.database_url), config, now=utcnow())
    console.print(f"{report.sent} delivered, {report.failed} failed (to be retried).")
