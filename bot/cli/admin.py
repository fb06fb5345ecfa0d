"""``rapport users`` (console accounts) and ``rapport db`` (the schema)."""

from __future__ import annotations

from typing import Annotated

import typer

from bot.cli.common import console, err, load_settings

users_app = typer.Typer(help="Console accounts (operators, staff, admins).", no_args_is_help=True)


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

    settings = load_settings()
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


db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations up to the newest schema."""
    from storage.db import current_revision, head_revision, make_engine, upgrade

    settings = load_settings()
    engine = make_engine(settings.database_url)
    before = current_revision(engine)
    upgrade(engine)
    console.print(f"Database at {head_revision()} (was {before or 'empty'}).")


@db_app.command("status")
def db_status() -> None:
    """Show the database backend and schema revision."""
    from storage.db import database_status, make_engine

    settings = load_settings()
    status = database_status(make_engine(settings.database_url))
    for key, value in status.items():
        console.print(f"{key}: {value}")
    if not status["ok"]:
        raise typer.Exit(1)
