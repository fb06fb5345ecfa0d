"""The ``rapport`` command line: every command group mounted on one app."""

from __future__ import annotations

import typer

from bot.cli import admin, data, outreach, serve
from bot.cli.broadcast import broadcast_app
from bot.cli.dashboard import dashboard_app
from bot.cli.teach import teach_app

app = typer.Typer(help="Rapport: a conversational customer-preference assistant.", no_args_is_help=True)
app.command()(serve.chat)
app.command()(serve.run)
app.command()(serve.worker)
app.command()(data.demo)
app.add_typer(admin.db_app, name="db")
app.add_typer(data.plans_app, name="plans")
app.add_typer(data.import_app, name="import")
app.add_typer(broadcast_app, name="broadcast")
app.add_typer(teach_app, name="teach")
app.add_typer(serve.telegram_app, name="telegram")
app.add_typer(outreach.outreach_app, name="outreach")
app.add_typer(outreach.switches_app, name="switches")
app.add_typer(admin.users_app, name="users")
app.add_typer(dashboard_app, name="dashboard")


def main() -> None:
    """Entry point of the ``rapport`` script."""
    app()
