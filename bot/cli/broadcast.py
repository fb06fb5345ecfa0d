"""`rapport broadcast`: create, preview, dry-run, send, status and cancel staff broadcasts.

A thin layer over :mod:`schedulers.broadcasts`; see the README for the segment and template syntax.
"""

from __future__ import annotations

import getpass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from bot.cli.common import console, fail, load_runtime

broadcast_app = typer.Typer(help="Staff broadcasts to customer segments.", no_args_is_help=True)


def _now() -> datetime:
    return datetime.now(UTC)


@broadcast_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="A name staff recognise.")],
    segment: Annotated[
        str, typer.Option("--segment", help="Filter, e.g. 'plan == \"plus-20\" and saving >= 10'.")
    ],
    template: Annotated[
        Path, typer.Option("--template", exists=True, dir_okay=False, help="Jinja2 text file.")
    ],
    created_by: Annotated[str | None, typer.Option("--by", help="Who creates it (default: $USER).")] = None,
) -> None:
    """Define a broadcast (a draft): the segment and template are checked now."""
    from schedulers.broadcasts import BroadcastError
    from schedulers.broadcasts import create as create_broadcast

    rt = load_runtime()
    try:
        broadcast_id = create_broadcast(
            rt.db,
            rt.dialog.advisor,
            name=name,
            segment=segment,
            template=template.read_text(encoding="utf-8"),
            created_by=created_by or getpass.getuser(),
            now=_now(),
        )
    except BroadcastError as exc:
        raise fail(exc) from None
    console.print(f"Broadcast {broadcast_id} created (draft). Next: rapport broadcast dry-run {broadcast_id}")


@broadcast_app.command("list")
def list_() -> None:
    """Every broadcast, newest first."""
    from schedulers.broadcasts import list_broadcasts

    table = Table("id", "name", "status", "created", "by", "scheduled")
    for b in list_broadcasts(load_runtime().db):
        table.add_row(
            str(b["id"]), b["name"], b["status"], f"{b['created_at']:%Y-%m-%d %H:%M}", b["created_by"],
            f"{b['scheduled_at']:%Y-%m-%d %H:%M}" if b["scheduled_at"] else "",
        )  # fmt: skip
    console.print(table)


@broadcast_app.command("preview")
def preview(
    broadcast_id: Annotated[int, typer.Argument(help="The broadcast id.")],
    count: Annotated[int, typer.Option("--count", "-n", min=1, help="How many recipients.")] = 3,
) -> None:
    """Render the broadcast for a few real recipients, with SMS segments and cost."""
    from schedulers.broadcasts import BroadcastError
    from schedulers.broadcasts import preview as preview_broadcast

    rt = load_runtime()
    price = rt.settings.sms_price_per_segment
    try:
        shown = preview_broadcast(
            rt.db, rt.dialog.advisor, rt.policy, broadcast_id, _now(),
            price_per_segment=price, limit=count,
        )  # fmt: skip
    except BroadcastError as exc:
        raise fail(exc) from None
    if not shown:
        console.print("Nobody in the segment may be contacted: see `rapport broadcast dry-run`.")
    for p in shown:
        console.rule(f"customer {p.customer_id} ({p.name or 'no name'}) via {p.channel}")
        console.print(p.text)
        e = p.estimate
        console.print(
            f"[dim]{len(p.text)} chars, {e.encoding}, {e.segments} SMS segment(s), ${e.cost} per send[/dim]"
        )


@broadcast_app.command("dry-run")
def dry_run(broadcast_id: Annotated[int, typer.Argument(help="The broadcast id.")]) -> None:
    """Count who would get it now and who is excluded by which rule (nothing is queued)."""
    from schedulers.broadcasts import BroadcastError
    from schedulers.broadcasts import dry_run as dry_run_broadcast

    rt = load_runtime()
    try:
        r = dry_run_broadcast(rt.db, rt.dialog.advisor, rt.policy, broadcast_id, _now())
    except BroadcastError as exc:
        raise fail(exc) from None
    if r.no_channel:
        console.print(f"[red]Nobody would get it: {r.no_channel_reason}.[/red]")
    console.print(f"{r.considered} customers, {r.matched} in the segment, {r.would_queue} would get it")
    for reason, n in r.deferred.most_common():
        console.print(f"  deferred (sent later), {reason}: {n}")
    for reason, n in r.excluded.most_common():
        console.print(f"  excluded, {reason}: {n}")


@broadcast_app.command("send")
def send(
    broadcast_id: Annotated[int, typer.Argument(help="The broadcast id.")],
    at: Annotated[
        str | None, typer.Option("--at", help="ISO time (UTC unless it says); default now.")
    ] = None,
    local_time: Annotated[
        str | None, typer.Option("--local-time", help="HH:MM in each recipient's own time zone.")
    ] = None,
) -> None:
    """Queue one message per recipient now, or at --at (idempotent: a re-run never sends twice)."""
    from schedulers.broadcasts import BroadcastError
    from schedulers.broadcasts import send as send_broadcast

    start: datetime | None = None
    if at is not None:
        try:
            start = datetime.fromisoformat(at)
        except ValueError:
            raise fail(ValueError(f"--at: expected an ISO time like 2026-12-01T09:00, got {at!r}")) from None
        start = start if start.tzinfo else start.replace(tzinfo=UTC)
    rt = load_runtime()
    try:
        r = send_broadcast(
            rt.db, rt.dialog.advisor, rt.policy, broadcast_id, _now(),
            at=start, local_time=local_time,
        )  # fmt: skip
    except (BroadcastError, ValueError) as exc:
        raise fail(exc) from None
    if r.waiting_until is not None:
        console.print(
            f"Scheduled for {r.waiting_until:%Y-%m-%d %H:%M %Z}: the scheduler of `rapport run` prepares it "
            "then (segment, contact policy, texts as of that moment) and queues the messages."
        )
        return
    console.print(f"{r.queued} message(s) queued ({sum(r.deferred.values())} deferred by the policy)")
    if r.already:
        console.print(f"  {r.already} already had this broadcast: skipped")
    for reason, n in r.excluded.most_common():
        console.print(f"  excluded, {reason}: {n}")
    console.print("`rapport run` (or `rapport worker`) delivers them when due.")


@broadcast_app.command("status")
def status(broadcast_id: Annotated[int, typer.Argument(help="The broadcast id.")]) -> None:
    """Progress (queued/sent/delivered/failed/unknown/cancelled, excluded) and results."""
    from schedulers.broadcasts import BroadcastError
    from schedulers.broadcasts import status as broadcast_status

    try:
        s = broadcast_status(load_runtime().db, broadcast_id)
    except BroadcastError as exc:
        raise fail(exc) from None
    console.print(f"Broadcast {s.broadcast_id} {s.name!r}: {s.status}, {s.recipients} recipient rows")
    if console.is_terminal and s.total:
        with Progress(TextColumn("delivery"), BarColumn(), TaskProgressColumn(), console=console) as bar:
            bar.add_task("delivery", total=s.total, completed=s.finished)
    for key in ("queued", "sending", "sent", "delivered", "failed", "undelivered", "unknown", "cancelled"):
        if s.messages.get(key):
            console.print(f"  {key}: {s.messages[key]}")
    for reason, n in sorted(s.excluded.items()):
        console.print(f"  excluded, {reason}: {n}")
    console.print(f"  results: {s.accepted} accepted (switch requests), {s.declined} declined")


@broadcast_app.command("cancel")
def cancel(broadcast_id: Annotated[int, typer.Argument(help="The broadcast id.")]) -> None:
    """Stop what has not gone yet: queued messages are cancelled and never sent."""
    from schedulers.broadcasts import BroadcastError
    from schedulers.broadcasts import cancel as cancel_broadcast

    try:
        n = cancel_broadcast(load_runtime().db, broadcast_id, _now())
    except BroadcastError as exc:
        raise fail(exc) from None
    console.print(f"Broadcast {broadcast_id} cancelled: {n} queued message(s) will not be sent.")
