"""``rapport plans`` and ``rapport import``: load the plan catalog, import customers and usage.

``bot.cli`` mounts these sub-apps; each command imports its helpers from ``bot.cli`` when it runs,
so either module can be imported first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy import Engine

from bot.fit_report import Format, write_report
from plans.catalog import CatalogError, apply_catalog, load_catalog_file
from plans.imports import CsvImportError, ImportSummary, import_customers, import_usage

plans_app = typer.Typer(help="The plan catalog.", no_args_is_help=True)
import_app = typer.Typer(help="Import customers and usage from CSV files.", no_args_is_help=True)

FileArgument = Annotated[Path, typer.Argument(help="The file to read.", dir_okay=False)]


def _fail(problem: object, hint: str = "Fix the file and run the command again.") -> typer.Exit:
    from bot.cli import err

    err.print(str(problem), style="red", markup=False, soft_wrap=True)
    err.print(hint, markup=False, soft_wrap=True)
    return typer.Exit(2)


@contextmanager
def _database() -> Iterator[Engine]:
    from bot.cli import _settings
    from storage.db import open_database

    engine = open_database(_settings().database_url)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def _progress_bar(path: Path) -> Iterator[Callable[[int, int], None]]:
    from bot.cli import err

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
    from bot.cli import console

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
        raise _fail(f"No such file: {path}", "Check the path (relative to the current directory).")


@plans_app.command("load")
def plans_load(file: FileArgument) -> None:
    """Load a plan catalog (TOML): plans are upserted by id; plans not in the file are kept."""
    from bot.cli import console
    from storage.db import transaction

    _check_file(file)
    try:
        catalog = load_catalog_file(file)
    except CatalogError as exc:
        raise _fail(f"The catalog was not loaded:\n{exc}") from None
    with _database() as engine, transaction(engine) as session:
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

    from bot.cli import _settings, err
    from dialogs.bank import QuestionBank
    from plans.fit import fit_book, load_catalog

    settings = _settings()
    config = settings.fit_config()
    if lookback is not None:
        config = replace(config, lookback=lookback)
    roles = QuestionBank.load(settings.question_bank).fit_roles()
    with _database() as engine, engine.connect() as conn:
        catalog = load_catalog(conn)
        if not catalog.plans:
            raise _fail("No plans in the catalog.", "Load one first: rapport plans load FILE")
        totals = write_report(fit_book(conn, catalog, roles, config, external_id=customer), sys.stdout, fmt)
    if customer is not None and totals.customers == 0:
        raise _fail(f"No customer with external id {customer!r}.", "Check the id (rapport import customers).")
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
    from bot.cli import _settings

    _check_file(file)
    region = _settings().default_region
    try:
        with _database() as engine, _progress_bar(file) as progress:
            summary = import_customers(engine, file, default_region=region, progress=progress)
    except CsvImportError as exc:
        raise _fail(f"Nothing was imported: {exc}") from None
    _report(file, summary)


@import_app.command("usage")
def import_usage_command(file: FileArgument) -> None:
    """Import monthly usage from CSV; a customer's periods in the file replace the stored ones.

    Columns: external_id, period (YYYY-MM), metric, quantity. Import customers first.
    """
    _check_file(file)
    try:
        with _database() as engine, _progress_bar(file) as progress:
            summary = import_usage(engine, file, progress=progress)
    except CsvImportError as exc:
        raise _fail(f"Nothing was imported: {exc}") from None
    _report(file, summary)
