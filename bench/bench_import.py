"""Usage import speed (rows/s) and peak memory of ``plans.imports.import_usage``, next to baselines.

It creates the customers with the bare driver and writes usage CSV files (external_id, period,
metric, quantity: customers x 10 months x 4 metrics, with one bad row in ``--bad-every``), then
runs, each in a fresh subprocess so that its peak memory is its own:
  csv     reading and parsing the file with the csv module alone, no database (period to yyyymm,
          quantity to integer thousandths): the floor for any CSV import in Python
  driver  the parsed rows written with the bare driver (sqlite3 executemany / psycopg COPY), the
          external id mapped to the customer id through a dict, one commit
  import  ``import_usage`` on the file, into a database holding the customers and no usage
at two sizes, ``--rows``/10 and ``--rows``, and prints rows/s, peak memory and the ratio to the
csv baseline, and whether the import's peak memory stayed flat as the file grew tenfold.

    python bench/bench_import.py [--rows 10000000] [--backend sqlite|postgresql] [--no-driver]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from _shared import child, mib, peak_memory, postgres_db, postgres_server
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from plans.imports import import_usage
from storage.db import make_engine, upgrade

METRICS = ("data_gb", "minutes", "sms", "roaming_data_gb")
PERIODS = tuple(f"2025-{m:02d}" for m in range(1, 11))
PER_CUSTOMER = len(PERIODS) * len(METRICS)
SEED = 2026
CHUNK = 10_000  # customers written at a time
MEMORY_GROWTH_LIMIT = 1.25  # "flat": the big file's peak within 25% of the small one's


# -- set-up ----------------------------------------------------------------------------------------


def customers_for(rows: int) -> int:
    return -(-rows // PER_CUSTOMER)


def external_id(i: int) -> str:
    return f"CUST-{i:08d}"


def write_csv(path: Path, rows: int, bad_every: int) -> None:
    """``rows`` data rows: customers in order, each with every period x metric; every
    ``bad_every``-th row is bad (alternately an unknown customer and a quantity that is not a number)."""
    rng = np.random.default_rng(SEED)
    written = 0
    with path.open("w", encoding="utf-8", newline="") as file:
        file.write("external_id,period,metric,quantity\n")
        for start in range(0, customers_for(rows), CHUNK):
            count = min(CHUNK, customers_for(rows) - start)
            data = rng.lognormal(np.log(4.0), 1.0, size=(count, len(PERIODS)))
            minutes = rng.lognormal(np.log(250), 0.8, size=(count, len(PERIODS))).astype(int)
            sms = rng.lognormal(np.log(80), 1.0, size=(count, len(PERIODS))).astype(int)
            roaming = np.where(rng.random((count, len(PERIODS))) < 0.05, rng.lognormal(0.3, 0.8), 0.0)
            lines = []
            for b in range(count):
                ext = external_id(start + b + 1)
                for m, period in enumerate(PERIODS):
                    values = (f"{data[b, m]:.3f}", str(minutes[b, m]), str(sms[b, m]), f"{roaming[b, m]:.3f}")
                    for metric, quantity in zip(METRICS, values, strict=True):
                        written += 1
                        if written > rows:
                            break
                        if bad_every and written % bad_every == 0:
                            unknown = (written // bad_every) % 2 == 1
                            ext_out, quantity = ("NOBODY", quantity) if unknown else (ext, "n/a")
                            lines.append(f"{ext_out},{period},{metric},{quantity}\n")
                        else:
                            lines.append(f"{ext},{period},{metric},{quantity}\n")
            file.write("".join(lines))


@dataclass(frozen=True, slots=True)
class Backend:
    """A database holding the customers; ``fresh()`` gives a URL to one with no usage."""

    name: str
    url: str
    template: Path | None  # SQLite: a file to copy for each run
    workdir: Path

    def fresh(self) -> str:
        if self.template is not None:
            path = self.workdir / f"run-{uuid.uuid4().hex[:8]}.db"
            shutil.copyfile(self.template, path)
            return f"sqlite:///{path}"
        engine = create_engine(self.url)
        with engine.begin() as conn:
            conn.execute(text("TRUNCATE usage"))
        engine.dispose()
        return self.url

    def dsn(self, url: str) -> str:
        return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_customers(backend: Backend, count: int) -> float:
    """``count`` customers written with the bare driver; the seconds it took."""
    started = time.perf_counter()
    rows = ((i, external_id(i)) for i in range(1, count + 1))
    if backend.template is not None:
        conn = sqlite3.connect(backend.template, isolation_level=None)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO customer (id, external_id, marketing_consent, created_at) "
            "VALUES (?, ?, 0, '2026-01-01 00:00:00.000000')",
            rows,
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    else:
        with psycopg.connect(backend.dsn(backend.url)) as pg, pg.cursor() as cur:
            with cur.copy(
                "COPY customer (id, external_id, marketing_consent, created_at) FROM STDIN"
            ) as copy:
                for i, ext in rows:
                    copy.write_row((i, ext, False, "2026-01-01 00:00:00+00"))
            cur.execute("ANALYZE customer")
    return time.perf_counter() - started


@contextmanager
def database(name: str, workdir: Path) -> Iterator[Backend]:
    if name == "sqlite":
        template = workdir / "customers.db"
        engine = make_engine(f"sqlite:///{template}")
        upgrade(engine)
        engine.dispose()
        yield Backend(name, f"sqlite:///{template}", template, workdir)
        return
    with postgres_db(postgres_server(), migrate=True) as url:
        yield Backend(name, url, None, workdir)


# -- the runs (each in its own process) ----------------------------------------------------------


_MILLI = Decimal(1000)


def parsed(path: Path) -> Iterator[tuple[str, int, str, int] | None]:
    """The file's rows parsed (None for a row that does not parse), with the csv module alone."""
    with path.open(encoding="utf-8", newline="") as file:
        reader = csv.reader(file)
        next(reader)
        for ext, period, metric, quantity in reader:
            try:
                milli = int((Decimal(quantity) * _MILLI).to_integral_value(ROUND_HALF_UP))
            except ArithmeticError:
                yield None
                continue
            yield ext, int(period[:4]) * 100 + int(period[5:7]), metric, milli


def run_csv(path: Path) -> dict[str, Any]:
    start_memory = peak_memory()
    started = time.perf_counter()
    rows = bad = 0
    for row in parsed(path):
        rows += 1
        bad += row is None
    return {
        "rows": rows,
        "rejected": bad,
        "seconds": time.perf_counter() - started,
        "memory": peak_memory(),
        "start_memory": start_memory,
    }


def run_driver(path: Path, url: str) -> dict[str, Any]:
    """Parse with the csv module, map external ids to customer ids, insert with the bare driver."""
    start_memory = peak_memory()
    started = time.perf_counter()
    rows = bad = 0
    sqlite = url.startswith("sqlite")
    conn: Any = (
        sqlite3.connect(make_url(url).database or "", isolation_level=None)
        if sqlite
        else psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    )
    cur = conn.cursor()
    cur.execute("SELECT external_id, id FROM customer")
    ids = dict(cur.fetchall())

    def good() -> Iterator[tuple[int, int, str, int]]:
        nonlocal rows, bad
        for row in parsed(path):
            rows += 1
            customer = ids.get(row[0]) if row is not None else None
            if row is None or customer is None:
                bad += 1
                continue
            yield customer, row[1], row[2], row[3]

    if sqlite:
        cur.execute("BEGIN")
        cur.executemany(
            "INSERT INTO usage (customer_id, period, metric, quantity_milli) VALUES (?, ?, ?, ?)", good()
        )
        cur.execute("COMMIT")
    else:
        with cur.copy("COPY usage (customer_id, period, metric, quantity_milli) FROM STDIN") as copy:
            for row in good():
                copy.write_row(row)
        conn.commit()
    conn.close()
    return {
        "rows": rows,
        "rejected": bad,
        "seconds": time.perf_counter() - started,
        "memory": peak_memory(),
        "start_memory": start_memory,
    }


def run_import(path: Path, url: str) -> dict[str, Any]:
    engine = make_engine(url)
    start_memory = peak_memory()
    started = time.perf_counter()
    summary = import_usage(engine, path)
    seconds = time.perf_counter() - started
    engine.dispose()
    return {
        "rows": summary.rows,
        "rejected": summary.rejected,
        "imported": summary.imported,
        "seconds": seconds,
        "memory": peak_memory(),
        "start_memory": start_memory,
    }


# -- the report ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=10_000_000, help="rows of the big file; the small has a tenth"
    )
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--bad-every", type=int, default=100_000, help="one bad row in this many (0: none)")
    parser.add_argument("--no-driver", action="store_true", help="skip the bare-driver baseline")
    parser.add_argument(
        "--workdir", type=Path, help="where to put the files (default: a temporary directory)"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--phase", choices=("csv", "driver", "import"), help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "csv":
        print(json.dumps(run_csv(args.file)))
        return
    if args.phase == "driver":
        print(json.dumps(run_driver(args.file, args.url)))
        return
    if args.phase == "import":
        print(json.dumps(run_import(args.file, args.url)))
        return

    console = Console() if sys.stdout.isatty() else Console(width=120)
    sizes = [max(args.rows // 10, 1), args.rows]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        workdir = Path(tmp)
        with database(args.backend, workdir) as backend:
            seconds = create_customers(backend, customers_for(args.rows))
            console.print(
                f"setup ({args.backend}, bare driver): {customers_for(args.rows):,} customers "
                f"in {seconds:.1f} s"
            )
            table = Table(
                title=f"usage import ({args.backend}): rows/s and peak memory, each run in its own process"
            )
            for col in ("file rows", "run", "seconds", "rows/s", "rejected", "peak memory", "time vs csv"):
                table.add_column(col, justify="left" if col == "run" else "right")
            figures: list[dict[str, Any]] = []
            for rows in sizes:
                path = workdir / f"usage-{rows}.csv"
                started = time.perf_counter()
                write_csv(path, rows, args.bad_every)
                console.print(
                    f"wrote {path.name}: {rows:,} rows, {path.stat().st_size / 2**20:,.0f} MiB "
                    f"in {time.perf_counter() - started:.1f} s"
                )
                runs = {"csv": child(__file__, ["--phase", "csv", "--file", str(path)])}
                if not args.no_driver:
                    runs["driver"] = child(
                        __file__, ["--phase", "driver", "--file", str(path), "--url", backend.fresh()]
                    )
                runs["import"] = child(
                    __file__, ["--phase", "import", "--file", str(path), "--url", backend.fresh()]
                )
                labels = {
                    "csv": "csv module alone (parse)",
                    "driver": "csv + bare-driver insert",
                    "import": "import_usage",
                }
                for name, result in runs.items():
                    table.add_row(
                        f"{rows:,}",
                        labels[name],
                        f"{result['seconds']:.1f}",
                        f"{result['rows'] / result['seconds']:,.0f}",
                        f"{result['rejected']:,}",
                        mib(result["memory"]),
                        f"{result['seconds'] / runs['csv']['seconds']:.1f}x",
                    )
                    figures.append({"file_rows": rows, "run": name, **result})
                path.unlink()
            console.print(table)
    imports = [f for f in figures if f["run"] == "import"]
    small, big = imports[0]["memory"], imports[-1]["memory"]
    flat = big <= small * MEMORY_GROWTH_LIMIT
    console.print(
        f"import peak memory: {mib(small)} at {sizes[0]:,} rows, {mib(big)} at {sizes[1]:,} rows "
        f"({big / small:.2f}x for a file 10x larger): {'flat' if flat else 'GROWS with the file'}"
    )
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
