"""Serving: ``rapport run`` (web app, channels, jobs), ``worker`` (delivery only), ``chat`` (the
terminal) and ``telegram`` (the Telegram channel alone, and link codes)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from bot.cli.common import console, err, load_runtime
from bot.runtime import Runtime

if TYPE_CHECKING:  # the channels pull in the web stack: only when a command needs them
    from bot.channels.base import ChannelService


def chat(
    phone: Annotated[str, typer.Option(help="Talk as the customer with this phone number.")],
) -> None:
    """Talk to the bot in the terminal: each line you type is one message."""
    from bot.channels.terminal import TerminalChat
    from storage.phones import to_e164

    runtime = load_runtime()
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


def run(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Serve the web app and start every configured channel and job."""
    import uvicorn

    from bot.components import components
    from bot.web import create_app, make_scheduler

    runtime = load_runtime()
    services = _delivery_services(runtime)
    table = Table(title="Rapport", show_header=True, header_style="bold")
    table.add_column("part")
    table.add_column("state")
    table.add_column("")
    for part in components(runtime.settings, services, host=host, port=port):
        table.add_row(part.name, "[green]on[/green]" if part.on else "[yellow]off[/yellow]", part.detail)
    console.print(table)
    app = create_app(runtime, services, scheduler=make_scheduler(runtime))
    uvicorn.run(app, host=host, port=port, log_level=runtime.settings.log_level.lower())


def worker() -> None:
    """Deliver queued messages (replies, suggestions, broadcasts) without serving webhooks.

    Run as many as you like on PostgreSQL: they share the work and each channel's pace. On SQLite
    one process delivers at a time; the others wait to take over.
    """
    import asyncio

    from bot.worker import run_worker

    runtime = load_runtime()
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
    """The configured channels (exit 2 if one cannot work). What a crash left in ``sending``
    is taken over by the delivery loop once its lease runs out (``CLAIM_LEASE_SECONDS``)."""
    from bot.services import build_services

    try:
        return build_services(runtime)
    except ValueError as exc:
        err.print(f"[red]Cannot start a channel:[/red] {exc}")
        raise typer.Exit(2) from None


telegram_app = typer.Typer(help="The Telegram channel on its own (development).", invoke_without_command=True)


@telegram_app.callback()
def telegram(ctx: typer.Context) -> None:
    """Run the Telegram channel alone: long polling and the outbox, Ctrl-C to stop."""
    if ctx.invoked_subcommand is not None:
        return
    import asyncio

    from bot.channels.telegram import run_telegram

    runtime = load_runtime()
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

    runtime = load_runtime()
    try:
        code = new_link_code(runtime, phone)
    except (LookupError, ValueError) as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(asyncio.run(deep_link(runtime, code)))
