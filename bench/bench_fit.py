"""Plan fit over a whole customer book read from the database, next to a NumPy baseline.

It builds a database (a SQLite file, or a throwaway PostgreSQL database) holding 30 synthetic plans,
``--customers`` customers with a current plan and 3 months x 4 metrics of usage each (12 usage rows
a customer), written with the bare driver (sqlite3 executemany / psycopg COPY): setup is timed and
printed, not judged. Then, each in a fresh subprocess so that its peak memory is its own:
  fit_book  ``plans.fit.fit_book`` over every customer (roles {}), consuming every result; its time
            split into loading (customer and usage reads, ``usage_batch``) and computing
            (``fit_batch``) by timing wrappers around those functions
  baseline  the same rule in plain NumPy on the same usage already in memory (N x 3 x 4 arrays),
            vectorised over customers, a loop over plans
and prints customers/s, peak memory (ru_maxrss), where fit_book's time goes, the ratio to the
baseline, whether both agree (best plan and suggestion of a sample of customers, suggestions over
the whole book), and whether the targets are met (issue: 1,000,000 customers in under 60 s on a
2-core machine, peak memory under 1 GB).

    python bench/bench_fit.py [--customers 1000000] [--backend sqlite|postgresql] [--db PATH]
                              [--profile 100000]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
from _shared import child, mib, peak_memory, postgres_db, postgres_server
from rich.console import Console
from rich.table import Table
from sqlalchemy import insert
from sqlalchemy.engine import make_url

import plans.fit as fit
from storage.db import make_engine, upgrade
from storage.tables import PLAN

METRICS = ("data_gb", "minutes", "roaming_data_gb", "sms")  # sorted, as the Catalog orders them
PERIODS = (202601, 202602, 202603)
CHUNK = 100_000  # customers generated (and written) at a time
SEED = 2026
SAMPLE = 2_000
NOW = datetime(2026, 4, 1, tzinfo=UTC)
TARGET_CUSTOMERS = 1_000_000
TARGET_SECONDS = 60.0
TARGET_BYTES = 1 << 30
QTY, MONEY = 1_000, 10_000  # as plans.fit: thousandths of a unit, ten-thousandths of money
NO_LIMIT = 2**62

I64 = npt.NDArray[np.int64]

# -- the synthetic catalog and book --------------------------------------------------------------

# Ten tiers x three terms (month-to-month, 12 and 24 months): 30 plans.
_TIERS: list[tuple[int | str, str]] = [
    (1, "10.00"),
    (2, "15.00"),
    (3, "18.00"),
    (5, "22.00"),
    (8, "28.00"),
    (12, "34.00"),
    (20, "42.00"),
    (30, "50.00"),
    (50, "60.00"),
    ("unlimited", "75.00"),
]
_TERMS = (0, 12, 24)
_RETIRED = {4, 17}
# A typical month's use where the allowance is unlimited (what "a share of the allowance" means).
_UNLIMITED_USE = {"data_gb": 40.0, "minutes": 800.0, "roaming_data_gb": 0.0, "sms": 400.0}


def synthetic_plans() -> list[dict[str, Any]]:
    """30 plan rows: every kind of allowance (capped, overage, unlimited), two retired."""
    rows = []
    for i in range(3 * len(_TIERS)):
        tier, term = divmod(i, 3)
        data, price = _TIERS[tier]
        contract = _TERMS[term]
        allowance: dict[str, int | str] = {
            "data_gb": data,
            "minutes": (300, 500, 1000)[tier] if tier < 3 else "unlimited",
            "sms": (200, 500)[tier] if tier < 2 else "unlimited",
            "roaming_data_gb": (0, 0, 0, 0, 0, 0, 1, 2, 5, 5)[tier],
        }
        overage = {"data_gb": ("10.00", "8.00", "5.00")[term], "roaming_data_gb": f"{15 - tier}.00"}
        if tier < 3:
            overage["minutes"] = "0.05"
        if tier < 2:
            overage["sms"] = "0.0125"
        if data == "unlimited":
            del overage["data_gb"]
        if tier == 2 and term == 0:
            del overage["data_gb"]  # a prepaid plan: the data stops at the cap
        rows.append(
            {
                "id": f"p{i:02d}-{data}{'gb' if data != 'unlimited' else ''}-{contract}m",
                "name": f"Plan {i:02d}",
                "currency": "USD",
                "monthly_price": Decimal(price) - Decimal(2 * term),
                "contract_months": contract,
                "available": i not in _RETIRED,
                "perks": ["hotspot"] if tier >= 5 else [],
                "allowance": allowance,
                "overage": overage,
            }
        )
    return rows


@dataclass(frozen=True, slots=True)
class PlanArrays:
    """The catalog as the baseline sees it (plan x metric, metrics in ``METRICS`` order)."""

    ids: list[str]
    price: I64
    allowance: I64
    overage: I64
    capped: npt.NDArray[np.bool_]
    available: npt.NDArray[np.bool_]
    rank: I64
    reference: npt.NDArray[np.float64]  # typical monthly use per metric, to draw usage from

    @classmethod
    def build(cls, rows: list[dict[str, Any]]) -> PlanArrays:
        n, k = len(rows), len(METRICS)
        allowance = np.full((n, k), NO_LIMIT, dtype=np.int64)
        overage = np.zeros((n, k), dtype=np.int64)
        capped = np.zeros((n, k), dtype=np.bool_)
        reference = np.zeros((n, k))
        for i, row in enumerate(rows):
            for j, metric in enumerate(METRICS):
                limit, price = row["allowance"].get(metric), row["overage"].get(metric)
                if limit != "unlimited":
                    allowance[i, j] = int(Decimal(limit) * QTY)
                    capped[i, j] = price is None
                    overage[i, j] = 0 if price is None else int(Decimal(price) * MONEY)
                reference[i, j] = _UNLIMITED_USE[metric] if limit == "unlimited" else float(limit)
        order = sorted(range(n), key=lambda i: (rows[i]["contract_months"], rows[i]["monthly_price"], i))
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n)
        return cls(
            ids=[r["id"] for r in rows],
            price=np.array([int(r["monthly_price"] * MONEY) for r in rows], dtype=np.int64),
            allowance=allowance,
            overage=overage,
            capped=capped,
            available=np.array([r["available"] for r in rows]),
            rank=rank,
            reference=reference,
        )


def synth_chunk(plans: PlanArrays, start: int, count: int) -> tuple[I64, I64]:
    """Current plan (index) and usage (count x 3 months x 4 metrics, thousandths) of customers
    ``start + 1 ..``: a lognormal share of the allowance (median 40%, about 1 in 6 over), roaming
    for about 1 in 10 in about 1 month in 3. The same ``start`` always draws the same numbers."""
    rng = np.random.default_rng([SEED, start])
    weights = np.where(plans.available, 1.0, 0.5)
    current = rng.choice(len(plans.ids), size=count, p=weights / weights.sum())
    level = rng.lognormal(np.log(0.4), 0.85, size=(count, 1, len(METRICS)))
    wobble = rng.lognormal(0.0, 0.2, size=(count, len(PERIODS), len(METRICS)))
    quantity = plans.reference[current][:, None, :] * level * wobble
    traveller = rng.random(count) < 0.1
    trips = rng.random((count, len(PERIODS))) < 0.35
    roaming = rng.lognormal(np.log(1.5), 0.8, size=(count, len(PERIODS)))
    quantity[:, :, 2] = np.where(traveller[:, None] & trips, roaming, 0.0)
    quantity[:, :, [1, 3]] = np.round(quantity[:, :, [1, 3]])  # whole minutes and texts
    return current.astype(np.int64), np.round(quantity * QTY).astype(np.int64)


def chunks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, CHUNK):
        yield start, min(CHUNK, n - start)


def sample_ids(n: int) -> list[int]:
    rng = np.random.default_rng(SEED + 1)
    return sorted(int(i) for i in rng.choice(np.arange(1, n + 1), size=min(SAMPLE, n), replace=False))


# -- setup with the bare driver ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setup:
    customers: int
    usage_rows: int
    customer_seconds: float
    usage_seconds: float
    reused: bool = False


def _insert_plans(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(insert(PLAN), [{**row, "updated_at": NOW} for row in synthetic_plans()])
    engine.dispose()


def _usage_rows(plans: PlanArrays, start: int, count: int) -> Iterator[tuple[int, int, str, int]]:
    _, usage = synth_chunk(plans, start, count)
    ids = np.arange(start + 1, start + count + 1)
    per = len(PERIODS) * len(METRICS)
    cid = np.repeat(ids, per).tolist()
    period = np.tile(np.repeat(PERIODS, len(METRICS)), count).tolist()
    metric = list(METRICS) * (len(PERIODS) * count)
    yield from zip(cid, period, metric, usage.reshape(-1).tolist(), strict=True)


def build_sqlite(path: Path, n: int, plans: PlanArrays) -> Setup:
    """A SQLite file with the schema, the plans, ``n`` customers and their usage."""
    if path.exists():
        conn = sqlite3.connect(path)
        found = conn.execute("SELECT count(*) FROM customer").fetchone()[0]
        usage = conn.execute("SELECT count(*) FROM usage").fetchone()[0]
        conn.close()
        if found == n:
            return Setup(found, usage, 0.0, 0.0, reused=True)
        raise SystemExit(f"{path} holds {found} customers, not {n}: delete it or pass another --db")
    _insert_plans(f"sqlite:///{path}")
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    conn.execute("BEGIN")
    t0 = time.perf_counter()
    for start, count in chunks(n):
        current, _ = synth_chunk(plans, start, count)
        conn.executemany(
            "INSERT INTO customer (id, external_id, marketing_consent, created_at, current_plan_id) "
            "VALUES (?, ?, 0, '2026-01-01 00:00:00.000000', ?)",
            ((start + b + 1, f"C{start + b + 1:08d}", plans.ids[p]) for b, p in enumerate(current.tolist())),
        )
    t1 = time.perf_counter()
    for start, count in chunks(n):
        conn.executemany(
            "INSERT INTO usage (customer_id, period, metric, quantity_milli) VALUES (?, ?, ?, ?)",
            _usage_rows(plans, start, count),
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    t2 = time.perf_counter()
    conn.close()
    return Setup(n, 12 * n, t1 - t0, t2 - t1)


def build_postgres(url: str, n: int, plans: PlanArrays) -> Setup:
    """The same in PostgreSQL, written with COPY."""
    _insert_plans(url)
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        t0 = time.perf_counter()
        with cur.copy(
            "COPY customer (id, external_id, marketing_consent, created_at, current_plan_id) FROM STDIN"
        ) as copy:
            for start, count in chunks(n):
                current, _ = synth_chunk(plans, start, count)
                copy.write(
                    "".join(
                        f"{start + b + 1}\tC{start + b + 1:08d}\tf\t2026-01-01 00:00:00+00\t{plans.ids[p]}\n"
                        for b, p in enumerate(current.tolist())
                    )
                )
        t1 = time.perf_counter()
        with cur.copy("COPY usage (customer_id, period, metric, quantity_milli) FROM STDIN") as copy:
            for start, count in chunks(n):
                copy.write(
                    "".join(f"{c}\t{p}\t{m}\t{q}\n" for c, p, m, q in _usage_rows(plans, start, count))
                )
        conn.commit()
        cur.execute("ANALYZE customer")
        cur.execute("ANALYZE usage")
        conn.commit()
        t2 = time.perf_counter()
    return Setup(n, 12 * n, t1 - t0, t2 - t1)


# -- the runs (each in its own process) ----------------------------------------------------------


def _instrument(timers: dict[str, float], limit: int | None) -> None:
    """Wrap plans.fit's steps with timers (fit_book looks them up in its module at each call)."""
    read_usage, usage_batch, fit_batch, fit_arrays, iter_customers = (
        fit.read_usage,
        fit.usage_batch,
        fit.fit_batch,
        fit._fit_arrays,
        fit.iter_customers,
    )

    def timed_read_usage(*args: Any) -> Any:
        t0 = time.perf_counter()
        rows = read_usage(*args)
        timers["load: query and fetch usage rows"] += time.perf_counter() - t0
        return rows

    def timed_usage_batch(ids: Any, rows: Any, metrics: Any, lookback: int) -> fit.UsageBatch:
        t0 = time.perf_counter()
        batch = usage_batch(ids, rows, metrics, lookback)
        timers["load: arrange (usage_batch)"] += time.perf_counter() - t0
        return batch

    def timed_fit_batch(*args: Any, **kwargs: Any) -> list[fit.Fit]:
        t0 = time.perf_counter()
        result = fit_batch(*args, **kwargs)
        timers["compute (fit_batch)"] += time.perf_counter() - t0
        return result

    def timed_fit_arrays(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        result = fit_arrays(*args, **kwargs)
        timers["  of which the vectorised rule (_fit_arrays)"] += time.perf_counter() - t0
        return result

    def timed_iter_customers(conn: Any, **kwargs: Any) -> Iterator[list[tuple[int, str | None, str | None]]]:
        batches, seen = iter_customers(conn, **kwargs), 0
        while limit is None or seen < limit:
            t0 = time.perf_counter()
            batch = next(batches, None)
            timers["load: read customers"] += time.perf_counter() - t0
            if batch is None:
                return
            batch = batch if limit is None else batch[: limit - seen]
            seen += len(batch)
            yield batch

    wrappers = {
        "read_usage": timed_read_usage,
        "usage_batch": timed_usage_batch,
        "fit_batch": timed_fit_batch,
        "_fit_arrays": timed_fit_arrays,
        "iter_customers": timed_iter_customers,
    }
    for name, wrapper in wrappers.items():
        setattr(fit, name, wrapper)


def run_fit(url: str, n: int, batch_size: int, profile: int | None) -> dict[str, Any]:
    """fit_book over the book; with ``profile``, over that many customers under cProfile."""
    timers: dict[str, float] = defaultdict(float)
    _instrument(timers, profile)
    engine = make_engine(url)

    wanted = set(sample_ids(n))
    sample: dict[int, tuple[str | None, bool]] = {}
    customers = suggestions = 0
    rss_start = peak_memory()
    profiler = cProfile.Profile() if profile else None
    started = time.perf_counter()
    if profiler:
        profiler.enable()
    with engine.connect() as conn:
        t0 = time.perf_counter()
        catalog = fit.load_catalog(conn)
        timers["load: catalog"] += time.perf_counter() - t0
        for _, result in fit.fit_book(conn, catalog, roles={}, config=fit.FitConfig(), batch_size=batch_size):
            customers += 1
            suggestions += result.suggest
            if result.customer_id in wanted:
                sample[result.customer_id] = (result.best_plan, result.suggest)
    if profiler:
        profiler.disable()
    seconds = time.perf_counter() - started
    engine.dispose()
    out: dict[str, Any] = {
        "customers": customers,
        "suggestions": suggestions,
        "seconds": seconds,
        "timers": dict(timers),
        "rss_start": rss_start,
        "rss_peak": peak_memory(),
        "sample": {str(k): v for k, v in sample.items()},
        "plans": len(catalog.plans),
    }
    if profiler:
        text_out = io.StringIO()
        stats = pstats.Stats(profiler, stream=text_out).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        out["profile"] = text_out.getvalue()
    return out


def numpy_fit(
    plans: PlanArrays, usage: I64, current: I64, *, min_abs: int = 5 * MONEY, chunk: int = 50_000
) -> tuple[I64, npt.NDArray[np.bool_]]:
    """The rule in plain NumPy: best plan index and suggest flag per customer (every customer has
    usage in all ``len(PERIODS)`` months); vectorised over customers, a loop over plans."""
    n, months = len(current), usage.shape[1]
    best_out = np.empty(n, dtype=np.int64)
    suggest_out = np.empty(n, dtype=np.bool_)
    n_plans = len(plans.ids)
    for s in range(0, n, chunk):
        u, cur = usage[s : s + chunk], current[s : s + chunk]
        total = np.empty((len(u), n_plans), dtype=np.int64)
        feasible = np.empty((len(u), n_plans), dtype=np.bool_)
        for p in range(n_plans):
            excess = np.maximum(u - plans.allowance[p], 0)
            total[:, p] = months * plans.price[p] * QTY + (excess * plans.overage[p]).sum(axis=(1, 2))
            feasible[:, p] = ~((excess > 0) & plans.capped[p]).any(axis=(1, 2))
        candidate = feasible & plans.available
        masked = np.where(candidate, total, np.iinfo(np.int64).max)
        best_total = masked.min(axis=1)
        best = np.where(candidate & (masked == best_total[:, None]), plans.rank, n_plans).argmin(axis=1)
        current_total = total[np.arange(len(u)), cur]
        saving = current_total - best_total
        enough = (saving >= min_abs * QTY * months) & (saving * 10 >= current_total)
        best_out[s : s + chunk] = best
        suggest_out[s : s + chunk] = (best != cur) & enough
    return best_out, suggest_out


def run_baseline(n: int) -> dict[str, Any]:
    """The NumPy rule over the whole book, its usage generated into memory first (not timed)."""
    plans = PlanArrays.build(synthetic_plans())
    current = np.empty(n, dtype=np.int64)
    usage = np.empty((n, len(PERIODS), len(METRICS)), dtype=np.int64)
    for start, count in chunks(n):
        current[start : start + count], usage[start : start + count] = synth_chunk(plans, start, count)
    rss_start = peak_memory()
    started = time.perf_counter()
    best, suggest = numpy_fit(plans, usage, current)
    seconds = time.perf_counter() - started
    return {
        "customers": n,
        "suggestions": int(suggest.sum()),
        "seconds": seconds,
        "rss_start": rss_start,
        "rss_peak": peak_memory(),
        "sample": {str(i): (plans.ids[best[i - 1]], bool(suggest[i - 1])) for i in sample_ids(n)},
    }


# -- the report ----------------------------------------------------------------------------------


def report(
    console: Console, backend: str, setup: Setup, fitted: dict[str, Any], base: dict[str, Any]
) -> None:
    n = fitted["customers"]
    if setup.reused:
        console.print(
            f"setup: reused a database of {setup.customers:,} customers, {setup.usage_rows:,} usage rows"
        )
    else:
        rate = setup.usage_rows / setup.usage_seconds if setup.usage_seconds else 0.0
        console.print(
            f"setup ({backend}, bare driver, not judged): {setup.customers:,} customers in "
            f"{setup.customer_seconds:.1f} s, {setup.usage_rows:,} usage rows in {setup.usage_seconds:.1f} s "
            f"({rate:,.0f} rows/s)"
        )
    table = Table(
        title=f"plan fit: {n:,} customers x {len(PERIODS)} months x {len(METRICS)} metrics x "
        f"{fitted['plans']} plans"
    )
    for col in ("run", "seconds", "customers/s", "peak memory", "memory before the run", "time vs baseline"):
        table.add_column(col, justify="left" if col == "run" else "right")
    ratio = fitted["seconds"] / base["seconds"]
    table.add_row(
        "baseline (NumPy, in memory)",
        f"{base['seconds']:.2f}",
        f"{n / base['seconds']:,.0f}",
        mib(base["rss_peak"]),
        mib(base["rss_start"]),
        "1.00x",
    )
    table.add_row(
        f"fit_book from {backend}",
        f"{fitted['seconds']:.2f}",
        f"{n / fitted['seconds']:,.0f}",
        mib(fitted["rss_peak"]),
        mib(fitted["rss_start"]),
        f"{ratio:.1f}x",
    )
    console.print(table)

    split = Table(title="where fit_book's time goes")
    split.add_column("step")
    split.add_column("seconds", justify="right")
    split.add_column("share", justify="right")
    timers: dict[str, float] = fitted["timers"]
    total = fitted["seconds"]
    measured = sum(v for k, v in timers.items() if not k.startswith(" "))
    rows = sorted((k for k in timers if k.startswith("load")), key=lambda k: -timers[k])
    loading = sum(timers[k] for k in rows)
    for key in rows:
        split.add_row(key, f"{timers[key]:.2f}", f"{timers[key] / total:.0%}")
    split.add_row("[bold]loading[/bold]", f"{loading:.2f}", f"{loading / total:.0%}")
    compute = timers.get("compute (fit_batch)", 0.0)
    vector = timers.get("  of which the vectorised rule (_fit_arrays)", 0.0)
    split.add_row("  vectorised rule (_fit_arrays)", f"{vector:.2f}", f"{vector / total:.0%}")
    split.add_row(
        "  one Fit object per customer", f"{compute - vector:.2f}", f"{(compute - vector) / total:.0%}"
    )
    split.add_row("[bold]computing (fit_batch)[/bold]", f"{compute:.2f}", f"{compute / total:.0%}")
    other = total - measured
    split.add_row("other (needs, iteration, consuming results)", f"{other:.2f}", f"{other / total:.0%}")
    console.print(split)

    agree = sum(fitted["sample"].get(k) == list(v) for k, v in base["sample"].items())
    console.print(
        f"agreement: best plan and suggestion equal for {agree:,} of {len(base['sample']):,} sampled "
        f"customers; suggestions over the book: fit_book {fitted['suggestions']:,}, "
        f"baseline {base['suggestions']:,}"
        + (
            ""
            if agree == len(base["sample"]) and fitted["suggestions"] == base["suggestions"]
            else "  [red]MISMATCH[/red]"
        )
    )
    projected = fitted["seconds"] * TARGET_CUSTOMERS / n
    time_ok, memory_ok = projected < TARGET_SECONDS, fitted["rss_peak"] < TARGET_BYTES
    scale = "" if n == TARGET_CUSTOMERS else f" (projected linearly from {n:,} customers)"
    console.print(
        f"target: 1,000,000 customers in under {TARGET_SECONDS:.0f} s: {projected:.1f} s{scale}: "
        f"{'met' if time_ok else 'NOT met'}; peak memory under 1 GB: {mib(fitted['rss_peak'])}"
        f"{' (at this size)' if scale else ''}: {'met' if memory_ok else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=TARGET_CUSTOMERS)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--db", type=Path, help="SQLite file to build, or reuse when it already holds the book"
    )
    parser.add_argument("--batch-size", type=int, default=20_000, help="fit_book's batch_size")
    parser.add_argument(
        "--profile", type=int, metavar="N", help="also cProfile fit_book over the first N customers"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--phase", choices=("fit", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "fit":
        print(json.dumps(run_fit(args.url, args.customers, args.batch_size, args.profile)))
        return
    if args.phase == "baseline":
        print(json.dumps(run_baseline(args.customers)))
        return

    console = Console() if sys.stdout.isatty() else Console(width=120)
    plans = PlanArrays.build(synthetic_plans())
    with _database(args.backend, args.db) as (url, build):
        console.print(f"building the book ({args.customers:,} customers) ...")
        setup = build(args.customers, plans)
        common = ["--customers", str(args.customers), "--batch-size", str(args.batch_size)]
        fitted = child(__file__, ["--phase", "fit", "--url", url, *common])
        base = child(__file__, ["--phase", "baseline", *common])
        report(console, args.backend, setup, fitted, base)
        if args.profile:
            profiled = child(
                __file__, ["--phase", "fit", "--url", url, *common, "--profile", str(args.profile)]
            )
            console.print(
                f"cProfile of fit_book over {profiled['customers']:,} customers "
                f"({profiled['seconds']:.2f} s under the profiler), by own time:"
            )
            console.print(profiled["profile"], markup=False, highlight=False)
    if args.json:
        drop = ("sample", "profile")
        print(
            json.dumps(
                {
                    "backend": args.backend,
                    "setup": asdict(setup),
                    "fit_book": {k: v for k, v in fitted.items() if k not in drop},
                    "baseline": {k: v for k, v in base.items() if k not in drop},
                }
            )
        )


@contextmanager
def _database(backend: str, path: Path | None) -> Iterator[tuple[str, Callable[[int, PlanArrays], Setup]]]:
    if backend == "postgresql":
        with postgres_db(postgres_server()) as url:
            yield url, lambda n, plans: build_postgres(url, n, plans)
        return
    if path is not None:
        yield f"sqlite:///{path}", lambda n, plans: build_sqlite(path, n, plans)
        return
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench_fit.db"
        yield f"sqlite:///{db}", lambda n, plans: build_sqlite(db, n, plans)


if __name__ == "__main__":
    main()
