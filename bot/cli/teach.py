"""`rapport teach`: list, add and undo what operators taught the bot (intent phrasings and answers).

A thin layer over :mod:`dialogs.taught`, the one place that teaches (the console uses it too).
Teaching works on messages waiting for review (the review queue): ``rapport teach queue`` lists them.
"""

from __future__ import annotations

import getpass
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from bot.cli.common import console, err, load_runtime
from bot.runtime import Runtime
from dialogs import taught
from dialogs.understanding import INTENTS
from storage import console_queries as q

teach_app = typer.Typer(help="Teach the bot what customers mean.", no_args_is_help=True)


@teach_app.command("queue")
def queue_command() -> None:
    """Customer messages waiting for review, with the intent the bot chose."""
    runtime = load_runtime()
    with runtime.db.connect() as conn:
        rows = q.review_queue(conn)
    table = Table("message", "intent", "confidence", "text")
    for row in rows:
        confidence = "" if row["confidence"] is None else f"{row['confidence']:.2f}"
        table.add_row(str(row["id"]), row["intent"] or "", confidence, escape((row["text"] or "")[:80]))
    console.print(table)


@teach_app.command("list")
def list_command() -> None:
    """Everything taught, oldest first."""
    runtime = load_runtime()
    with runtime.db.connect() as conn:
        rows = taught.list_taught(conn)
    table = Table("id", "phrase", "means", "message", "by", "when")
    for row in rows:
        table.add_row(
            str(row.id),
            escape(row.phrase),
            row.meaning,
            str(row.message_id or ""),
            row.taught_by,
            f"{row.taught_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@teach_app.command("add")
def add_command(
    message_id: Annotated[int, typer.Argument(help="the customer message (from `rapport teach queue`)")],
    intent: Annotated[str | None, typer.Option(help=f"what it meant: {', '.join(INTENTS)}")] = None,
    answer: Annotated[
        str | None, typer.Option(help="or the answer it gave: question_key=option_value")
    ] = None,
    by: Annotated[str | None, typer.Option(help="who teaches (default: your user name)")] = None,
) -> None:
    """Teach what a reviewable message meant: an intent, or an answer to a question."""
    if (intent is None) == (answer is None):
        err.print("[red]Give exactly one of --intent or --answer.[/red]")
        raise typer.Exit(2)
    key, value = [*answer.split("=", 1), ""][:2] if answer else (None, None)
    runtime = load_runtime()
    try:
        with runtime.db.begin() as conn:
            done = taught.teach(
                conn,
                message_id=message_id,
                by=by or getpass.getuser(),
                bank=runtime.bank,
                intent=intent,
                question_key=key,
                option_value=_option_value(runtime, key, value),
            )
    except taught.TeachError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Taught #{done.id}: '{escape(done.phrase)}' means {done.meaning}.")


def _option_value(runtime: Runtime, key: str | None, value: str | None) -> object:
    # Option values may be numbers in the bank ("household_lines=2").
    question = runtime.bank.get(key)
    if question is None or value is None:
        return value
    return next((o.value for o in question.options if str(o.value) == value), value)


@teach_app.command("undo")
def undo_command(taught_id: Annotated[int, typer.Argument(help="the id from `rapport teach list`")]) -> None:
    """Forget one taught phrase."""
    runtime = load_runtime()
    try:
        with runtime.db.begin() as conn:
            gone = taught.undo(conn, taught_id)
    except taught.TeachError as exc:
        err.print(f"[red]{escape(str(exc))}[/red]")
        raise typer.Exit(2) from None
    console.print(f"Forgot #{gone.id}: '{escape(gone.phrase)}' ({gone.meaning}).")
