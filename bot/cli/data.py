"""``rapport plans``, ``rapport import`` and ``rapport demo``: load the plan catalog, import
customers and usage, load the demo data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

from bot.cli.common import console, database, err, fail, load_runtime, load_settings
from bot.fit_report import Format, write_report
from plans.catalog import CatalogError, apply_catalog, load_catalog_file
from plans.imports import CsvImportError, ImportSummary, import_customers, import_usage

plans_app = typer.Typer(help="The plan catalog.", no_args_is_help=True)
import_app = typer.Typer(help="Import customers and usage from CSV files.", no_args_is_help=True)

FileArgument = Annotated[Path, typer.Argument(help="The file to read.", dir_okay=False)]


FIX_THE_FILE = "Fix the file and run the command again."


@contextmanager
def _progress_bar(path: Path) -> Iterator[Callable[[int, int], None]]:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(f"Reading {path.name}", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _report(path: Path, summary: ImportSummary) -> None:
    console.print(
        f"{path.name}: {summary.rows} rows, {summary.imported} imported, {summary.rejected} rejected.",
        markup=False,
        soft_wrap=True,
    )
    if summary.rejects_path is not None:
        console.print(
            f"Rejected rows (line, reason, row): {summary.rejects_path}\n"
            "Correct those rows in the file and import the whole file again.",
            markup=False,
            soft_wrap=True,
        )
    if summary.ignored_columns:
        console.print(f"Ignored columns: {', '.join(summary.ignored_columns)}", markup=False, soft_wrap=True)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise fail(f"No such file: {path}", "Check the path (relative to the current directory).")


@plans_app.command("load")
def plans_load(file: FileArgument) -> None:
    """Load a plan catalog (TOML): plans are upserted by id; plans not in the file are kept."""
    from storage.db import transaction

    _check_file(file)
    try:
        catalog = load_catalog_file(file)
    except CatalogError as exc:
        raise fail(f"The catalog was not loaded:\n{exc}", FIX_THE_FILE) from None
    with database() as engine, transaction(engine) as session:
        summary = apply_catalog(session, catalog)
    console.print(
        f"{file.name}: {summary.created} created, {summary.updated} updated, "
        f"{summary.unchanged} unchanged, {summary.kept} kept (stored, not in the file: left as they are).",
        markup=False,
        soft_wrap=True,
    )


@plans_app.command("fit")
def plans_fit(
    customer: Annotated[str | None, typer.Option(help="Only the customer with this external id.")] = None,
    fmt: Annotated[Format, typer.Option("--format", help="Output format.")] = Format.TABLE,
    lookback: Annotated[int | None, typer.Option(min=1, max=24, help="Months of usage to use.")] = None,
) -> None:
    """Which plan fits each customer best on their actual usage, and whether to suggest it."""
    import sys
    from dataclasses import replace

    from dialogs.bank import QuestionBank
    from plans.fit import fit_book, load_catalog

    configured = load_settings()
    config = configured.fit_config()
    if lookback is not None:
        config = replace(config, lookback=lookback)
    roles = QuestionBank.load(configured.question_bank).fit_roles()
    with database() as engine, engine.connect() as conn:
        catalog = load_catalog(conn)
        if not catalog.plans:
            raise fail("No plans in the catalog.", "Load one first: rapport plans load FILE")
        totals = write_report(fit_book(conn, catalog, roles, config, external_id=customer), sys.stdout, fmt)
    if customer is not None and totals.customers == 0:
        raise fail(f"No customer with external id {customer!r}.", "Check the id (rapport import customers).")
    err.print(
        f"{totals.customers} customers, {totals.suggestions} suggestions, "
        f"{totals.monthly_saving.quantize(Decimal('0.01'))} a month in savings suggested.",
        markup=False,
    )


@import_app.command("customers")
def import_customers_command(file: FileArgument) -> None:
    """Import customers from CSV, upserted by external_id.

    Columns: external_id, phone, name, current_plan; optional: timezone, marketing_consent, email,
    telegram_username. Load the plan catalog first.
    """
    _check_file(file)
    region = load_settings().default_region
    try:
        with database() as engine, _progress_bar(file) as progress:
            summary = import_customers(engine, file, default_region=region, progress=progress)
    except CsvImportError as exc:
        raise fail(f"Nothing was imported: {exc}", FIX_THE_FILE) from None
    _report(file, summary)


@import_app.command("usage")
def import_usage_command(file: FileArgument) -> None:
    """Import monthly usage from CSV; a customer's periods in the file replace the stored ones.

    Columns: external_id, period (YYYY-MM), metric, quantity. Import customers first.
    """
    _check_file(file)
    try:
        with database() as engine, _progress_bar(file) as progress:
            summary = import_usage(engine, file, progress=progress)
    except CsvImportError as exc:
        raise fail(f"Nothing was imported: {exc}", FIX_THE_FILE) from None
    _report(file, summary)


def demo() -> None:
    """Load demo customers into the configured database, then say what to try."""
    from bot.demo import DEMO_PHONE, load_demo

    rt = load_runtime()
    summary = load_demo(rt.db)
    console.print(
        f"Demo data loaded into {rt.db.url.render_as_string(hide_password=True)}: "
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
