"""The ``rapport`` command line."""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from bot.cli_broadcast import broadcast_app
from bot.cli_data import import_app, plans_app
from bot.cli_teach import teach_app
from bot.runtime import Runtime, build_runtime
from bot.settings import Settings, get_settings
from dialogs.bank import BankError

if TYPE_CHECKING:  # the channels pull in the web stack: only when a command needs them
    from bot.channels.base import ChannelService

app = typer.Typer(help="Rapport: a conversational customer-preference assistant.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(plans_app, name="plans")
app.add_typer(import_app, name="import")
app.add_typer(broadcast_app, name="broadcast")
app.add_typer(teach_app, name="teach")

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def _settings() -> Settings:
    try:
        settings = get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"]).upper()
            err.print(f"[red]Setting {name}:[/red] {error['msg']}")
        err.print("Fix it in .env or the environment (see .env.example).")
        raise typer.Exit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False)],
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)  # migrations say what they did themselves
    return settings


def _runtime() -> Runtime:
    settings = _settings()
    try:
        return build_runtime(settings)
    except BankError as exc:
        err.print(f"[red]Question bank error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def chat(
    phone: Annotated[str, typer.Option(help="Talk as the customer with this phone number.")],
) -> None:
    """Talk to the bot in the terminal: each line you type is one message."""
    from bot.channels.terminal import TerminalChat
    from storage.phones import to_e164

    runtime = _runtime()
    try:
        number = to_e164(phone, runtime.settings.default_region)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--phone") from None
    session = TerminalChat(runtime, number, console)
    if not sys.stdin.isatty():
        session.run(sys.stdin)
        return
    console.print(
        f"[dim]Talking to {runtime.settings.bot_name} as {number}. Ctrl-D or Ctrl-C to leave.[/dim]"
    )
    while True:
        try:
            line = console.input("[bold green]you>[/bold green] ")
        except (EOFError, KeyboardInterrupt):
            console.print()
            return
        session.send(line)


@app.command()
def run(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the web app and start every configured channel and job."""
    import uvicorn

    from bot.components import components
    from bot.web import create_app, make_scheduler

    runtime = _runtime()
    services = _delivery_services(runtime)
    table = Table(title="Rapport", show_header=True, header_style="bold")
    table.add_column("part")
    table.add_column("state")
    table.add_column("")
    for part in components(runtime.settings, services, host=host, port=port):
        table.add_row(part.name, "[green]on[/green]" if part.on else "[yellow]off[/yellow]", part.detail)
    console.print(table)
    app = create_app(runtime, services, scheduler=make_scheduler(runtime, services))
    uvicorn.run(app, host=host, port=port, log_level=runtime.settings.log_level.lower())


@app.command()
def worker() -> None:
    """Deliver queued messages (replies, suggestions, broadcasts) without serving webhooks.

    Run as many as you like on PostgreSQL: they share the work and each channel's pace. On SQLite
    one process delivers at a time; the others wait to take over.
    """
    import asyncio

    from bot.worker import run_worker

    runtime = _runtime()
    services = _delivery_services(runtime)
    if not services:
        err.print(
            "[red]No channel is configured[/red]: set TELEGRAM_BOT_TOKEN, or the TWILIO_* settings and "
            "PUBLIC_BASE_URL, so there is something to deliver through."
        )
        raise typer.Exit(2)
    console.print(f"Delivering on {', '.join(s.name for s in services)}. Ctrl-C to stop.")
    asyncio.run(run_worker(runtime, services))
    console.print("Stopped.")


def _delivery_services(runtime: Runtime) -> list[ChannelService]:
    """Settle what a crash left in ``sending``, then the configured channels (exit 2 if one
    cannot work)."""
    from bot.services import build_services
    from schedulers.delivery import recover_stuck

    recovered = recover_stuck(
        runtime.db, older_than=timedelta(minutes=runtime.settings.stuck_sending_minutes)
    )
    if recovered.unknown or recovered.requeued:
        err.print(
            f"{len(recovered.requeued)} replies cut off by a crash queued again; "
            f"{len(recovered.unknown)} marketing messages marked unknown (not re-sent: review them)."
        )
    try:
        return build_services(runtime)
    except ValueError as exc:
        err.print(f"[red]Cannot start a channel:[/red] {exc}")
        raise typer.Exit(2) from None


telegram_app = typer.Typer(help="The Telegram channel on its own (development).", invoke_without_command=True)
app.add_typer(telegram_app, name="telegram")


@telegram_app.callback()
def telegram(ctx: typer.Context) -> None:
    """Run the Telegram channel alone: long polling and the outbox, Ctrl-C to stop."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    from bot.channels.telegram import run_telegram

    runtime = _runtime()
    try:
        asyncio.run(run_telegram(runtime))
    except ValueError as exc:
        err.print(f"[red]Cannot start Telegram:[/red] {exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print("Stopped.")


@telegram_app.command("link-code")
def telegram_link_code(
    phone: Annotated[str, typer.Option(help="The customer's phone number.")],
) -> None:
    """A one-time link that joins a Telegram chat to the customer with this phone (valid 24 h)."""
    import asyncio

    from bot.channels.telegram import deep_link, new_link_code

    runtime = _runtime()
    try:
        code = new_link_code(runtime, phone)
    except (LookupError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(asyncio.run(deep_link(runtime, code)))


@app.command()
def demo() -> None:
    """Load demo customers into the configured database, then say what to try."""
    from bot.demo import DEMO_PHONE, load_demo

    runtime = _runtime()
    summary = load_demo(runtime.db)
    console.print(
        f"Demo data loaded into {runtime.db.url.render_as_string(hide_password=True)}: "
        f"{summary.plans_created} plans created, {summary.plans_updated} updated; "
        f"{summary.customers_created} customers created, {summary.customers_updated} updated, "
        f"{summary.preferences} preferences on file; {summary.usage_rows} usage rows."
    )
    console.print("Try next:")
    console.print(
        f'  rapport chat --phone {DEMO_PHONE}     talk to the bot as Alex; ask "which plan fits me?"'
    )
    console.print("  rapport plans fit                     the plan fit of every demo customer")
    console.print("  rapport run                           serve the web app on http://127.0.0.1:8000")


outreach_app = typer.Typer(help="Proactive plan suggestions.", no_args_is_help=True)
app.add_typer(outreach_app, name="outreach")
switches_app = typer.Typer(help="Plan switch requests (customers who said YES).", no_args_is_help=True)
app.add_typer(switches_app, name="switches")


@outreach_app.command("scan")
def outreach_scan() -> None:
    """Queue a plan suggestion for every customer it would help and the contact policy allows.

    Messages outside a customer's allowed hours wait in the outbox for the next allowed moment;
    `rapport run` sends them when they are due.
    """
    from schedulers.proactive import scan
    from storage.models import utcnow

    runtime = _runtime()
    report = scan(runtime.db, runtime.dialog.advisor, runtime.settings.policy_config(), utcnow())
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

    db = open_database(_settings().database_url)
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

    settings = _settings()
    config = settings.billing_config()
    if config is None:
        err.print("[red]BILLING_WEBHOOK_URL is not set.[/red] Set it (and BILLING_WEBHOOK_SECRET) in .env.")
        raise typer.Exit(2)
    report = deliver_switches(open_database(settings.database_url), config, now=utcnow())
    console.print(f"{report.sent} delivered, {report.failed} failed (to be retried).")


users_app = typer.Typer(help="Console accounts (operators, staff, admins).", no_args_is_help=True)
app.add_typer(users_app, name="users")


@users_app.command("add")
def users_add(
    email: Annotated[str, typer.Argument(help="The account's e-mail address (its login).")],
    role: Annotated[
        str, typer.Option(help="operator (reads), staff (also broadcasts) or admin.")
    ] = "operator",
    ask: Annotated[
        bool, typer.Option("--password", help="Type a password instead of generating one.")
    ] = False,
) -> None:
    """Create a console account; a generated password is printed once."""
    from bot.console import add_user
    from storage.db import open_database, transaction

    settings = _settings()
    password = typer.prompt("Password", hide_input=True, confirmation_prompt=True) if ask else None
    db = open_database(settings.database_url)
    try:
        with transaction(db) as session:
            user, generated = add_user(session, email, role, password)
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"Created {user.email} ({user.role}).")
    if generated:
        console.print(f"Password (shown once, keep it safe): {generated}")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations up to the newest schema."""
    from storage.db import current_revision, head_revision, make_engine, upgrade

    settings = _settings()
    engine = make_engine(settings.database_url)
    before = current_revision(engine)
    upgrade(engine)
    console.print(f"Database at {head_revision()} (was {before or 'empty'}).")


@db_app.command("status")
def db_status() -> None:
    """Show the database backend and schema revision."""
    from storage.db import database_status, make_engine

    settings = _settings()
    status = database_status(make_engine(settings.database_url))
    for key, value in status.items():
        console.print(f"{key}: {value}")
    if not status["ok"]:
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the ``rapport`` script."""
    app()
