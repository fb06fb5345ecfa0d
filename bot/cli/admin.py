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


@users_app.command("list")
def users_list() -> None:
    """Every console account: role, state (active, locked, disabled) and last login."""
    from rich.markup import escape
    from rich.table import Table

    from storage import console_queries as q
    from storage.db import open_database

    db = open_database(load_settings().database_url)
    with db.connect() as conn:
        rows = q.users(conn)
    table = Table("id", "e-mail", "role", "state", "last login")
    for u in rows:
        state = (
            "disabled"
            if u["disabled_at"]
            else f"locked until {u['locked_until']:%Y-%m-%d %H:%M}"
            if (u["locked_until"])
            else "active"
        )
        last = f"{u['last_login_at']:%Y-%m-%d %H:%M}" if u["last_login_at"] else ""
        table.add_row(str(u["id"]), escape(u["email"]), u["role"], state, last)
    console.print(table)


def _manage(email: str, action: str, role: str | None = None, by: str | None = None) -> None:
    """Run one account change through the console's own :func:`bot.console.auth.manage`."""
    import getpass

    from bot.console.auth import AccountAction, manage
    from storage.db import open_database
    from storage.types import utcnow

    db = open_database(load_settings().database_url)
    try:
        with db.begin() as conn:
            done = manage(
                conn, email=email, action=AccountAction(action), actor=f"cli:{by or getpass.getuser()}",
                now=utcnow(), role=role,
            )  # fmt: skip
    except ValueError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    console.print(f"{done.email}: {action.replace('_', ' ')}.")
    if done.password:
        console.print(f"New password (shown once, keep it safe): {done.password}")


By = Annotated[str | None, typer.Option(help="who does it, for the audit log (default: your user name)")]
Email = Annotated[str, typer.Argument(help="the account's e-mail address")]


@users_app.command("unlock")
def users_unlock(email: Email, by: By = None) -> None:
    """Unlock an account locked by failed logins."""
    _manage(email, "unlocked", by=by)


@users_app.command("reset")
def users_reset(email: Email, by: By = None) -> None:
    """Give an account a new generated password (printed once); its sessions end."""
    _manage(email, "password_reset", by=by)


@users_app.command("role")
def users_role(
    email: Email,
    role: Annotated[str, typer.Argument(help="operator, staff or admin")],
    by: By = None,
) -> None:
    """Change an account's role; its sessions end."""
    _manage(email, "role_changed", role=role, by=by)


@users_app.command("disable")
def users_disable(email: Email, by: By = None) -> None:
    """Disable an account; its sessions end."""
    _manage(email, "disabled", by=by)


@users_app.command("enable")
def users_enable(email: Email, by: By = None) -> None:
    """Enable a disabled account again."""
    _manage(email, "enabled", by=by)


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
