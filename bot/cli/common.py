"""What every ``rapport`` command shares: the output consoles, settings, the runtime, the
database, and one way to stop with a problem."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from sqlalchemy import Engine

from bot.logs import configure_logging
from bot.runtime import Runtime, build_runtime
from bot.settings import Settings, get_settings
from dialogs.bank import BankError

console = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def fail(problem: object, hint: str | None = None, *, code: int = 2) -> typer.Exit:
    """Print the problem (red) and what to do about it on stderr; the exit to raise.

    The text is printed as it is (no markup), so a file's content cannot restyle the output.
    """
    err.print(str(problem), style="red", markup=False, soft_wrap=True)
    if hint:
        err.print(hint, markup=False, soft_wrap=True)
    return typer.Exit(code)


def load_settings() -> Settings:
    """The settings (exit 2 with each problem when they are invalid), with logging set up."""
    try:
        found = get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = ".".join(str(p) for p in error["loc"]).upper()
            err.print(f"[red]Setting {name}:[/red] {error['msg']}")
        err.print("Fix it in .env or the environment (see .env.example).")
        raise typer.Exit(2) from None
    # Libraries (alembic, httpx, twilio...) at LIBRARY_LOG_LEVEL; secrets redacted everywhere.
    configure_logging(found, RichHandler(console=err, show_path=False))
    return found


def load_runtime() -> Runtime:
    """The runtime (database, question bank, dialog engine); exit 2 on a bad question bank."""
    configured = load_settings()
    try:
        return build_runtime(configured)
    except BankError as exc:
        err.print(f"[red]Question bank error:[/red] {exc}")
        raise typer.Exit(2) from None


@contextmanager
def database() -> Iterator[Engine]:
    """The configured database (migrated), disposed of afterwards."""
    from storage.db import open_database

    engine = open_database(load_settings().database_url)
    try:
        yield engine
    finally:
        engine.dispose()
