"""Preparing a staff broadcast for a large segment through ``schedulers.broadcasts``, next to a
bare-driver baseline.

It builds a migrated SQLite file (or a throwaway PostgreSQL database) holding 6 plans and
``--customers`` customers (name, US phone, a time zone or none, marketing consent, a current plan)
with 3 months x 3 metrics of usage each, written with the bare driver (sqlite3 executemany /
psycopg COPY): setup is timed and printed, not judged. The file is copied before anything runs, so
both runs start from the same book. Then, each in a fresh subprocess so that its peak memory
(VmHWM) is its own:
  broadcast  ``create`` (segment ``consent and months >= 1``: every customer), ``dry_run``, then
             ``send`` at a moment inside every customer's contact window: per batch of 5,000, the
             customer facts (preferences, usage -> plan fit, channel, recent marketing, declines),
             the segment, the contact policy, the template rendered per customer, and the messages
             and ``broadcast_recipient`` rows inserted. Send's time is split by timing wrappers
             around the module's steps.
  baseline   the same template (same sandboxed Jinja2 settings) rendered for every customer from
             one bare-driver read (name, plan name, mean data use), and the same number of message
             and recipient rows inserted with the bare driver, one transaction per 5,000.
and prints recipients/s, peak memory and the ratio to the baseline. Target (issue): 100,000
recipients prepared in under 20 s, peak memory under 500 MB. Both write marketing messages, which
the console's full-text index leaves out (migration 0009); before that, indexing them was most of
the time of either (SQLite: send 77 s, baseline 64 s).

    python bench/bench_broadcast.py [--customers 100000] [--backend sqlite|postgresql]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import psycopg
from _shared import child, mib, peak_memory, pg_dsn, postgres_db, postgres_server
from jinja2 import StrictUndefined
from jinja2.sandbox import SandboxedEnvironment
from rich.console import Console
from rich.table import Table
from sqlalchemy import func, insert, select

import schedulers.broadcasts as bc
from dialogs.advisor import Advisor
from dialogs.bank import QuestionBank
from schedulers.broadcasts import facts, lifecycle
from schedulers.policy import PolicyConfig
from storage.broadcast_models import BROADCAST_RECIPIENT
from storage.db import make_engine, upgrade
from storage.tables import MESSAGE, PLAN

TARGET_CUSTOMERS = 100_000
TARGET_SECONDS = 20.0
TARGET_BYTES = 500 * 2**20
SEED = 2026
BATCH = 5_000
CREATED = datetime(2026, 1, 1, tzinfo=UTC)
# 17:00 UTC: 13:00 in New York, 10:00 in Los Angeles, 18:00 in London: inside every default window.
NOW = datetime(2026, 4, 7, 17, 0, tzinfo=UTC)
PERIODS = (202601, 202602, 202603)
METRICS = ("data_gb", "minutes", "sms")
ZONES = ("America/New_York", "America/Los_Angeles", "Europe/London", None)
NAMES = ("Dana", "Eve", "Finn", "Gus", "Hana", "Ivy", "Jon", "Kai", "Lena", "Marco", "Nia", "Omar")
SURNAMES = ("Smith", "Jones", "Garcia", "Chen", "Novak", "Okafor", "Silva", "Haddad", "Tanaka", "Rossi")
SEGMENT = "consent and months >= 1"
TEMPLATE = (
    "Hi {{ name }}, you use about {{ usage.data_gb }} a month on {{ current_plan }}. "
    "{{ suggested_plan }} saves you {{ monthly_saving }} a month ({{ yearly_saving }} a year). Reply YES."
)
# (id, name, data GB or None for unlimited, price, data overage price or None for a hard cap)
_PLANS: tuple[tuple[str, str, int | None, str, str | None], ...] = (
    ("mini-2", "Mini 2 GB", 2, "12.00", "10.00"),
    ("basic-5", "Basic 5 GB", 5, "20.00", "8.00"),
    ("plus-10", "Plus 10 GB", 10, "28.00", "6.00"),
    ("plus-20", "Plus 20 GB", 20, "35.00", "5.00"),
    ("max-50", "Max 50 GB", 50, "45.00", None),
    ("unlimited", "Unlimited", None, "60.00", None),
)


def plan_rows() -> list[dict[str, Any]]:
    rows = []
    for pid, name, data, price, overage in _PLANS:
        rows.append(
            {
                "id": pid,
                "name": name,
                "currency": "USD",
                "monthly_price": Decimal(price),
                "contract_months": 0,
                "available": True,
                "perks": [],
                "allowance": {
                    "data_gb": data if data is not None else "unlimited",
                    "minutes": "unlimited",
                    "sms": "unlimited",
                },
                "overage": {"data_gb": overage} if overage else {},
                "updated_at": CREATED,
            }
        )
    return rows


# -- the synthetic book ---------------------------------------------------------------------------


def book(n: int) -> tuple[list[tuple[int, str, str, str | None, str]], list[tuple[int, int, str, int]]]:
    """Customers (id, name, phone, timezone, plan id) and usage rows (customer, period, metric,
    thousandths): data a lognormal share of the plan's allowance, so many would save on another."""
    rng = np.random.default_rng(SEED)
    plan = rng.integers(0, len(_PLANS), size=n).tolist()
    level = rng.lognormal(np.log(0.5), 0.9, size=n).tolist()
    wobble = rng.lognormal(0.0, 0.2, size=(n, len(PERIODS))).tolist()
    minutes = rng.integers(50, 1500, size=(n, len(PERIODS))).tolist()
    texts = rng.integers(0, 600, size=(n, len(PERIODS))).tolist()
    customers: list[tuple[int, str, str, str | None, str]] = []
    usage: list[tuple[int, int, str, int]] = []
    for i in range(n):
        cid = i + 1
        pid, _, data, _, _ = _PLANS[plan[i]]
        customers.append(
            (
                cid,
                f"{NAMES[cid % len(NAMES)]} {SURNAMES[cid // len(NAMES) % len(SURNAMES)]}",
                f"+1415{cid:07d}",
                ZONES[cid % len(ZONES)],
                pid,
            )
        )
        for m, period in enumerate(PERIODS):
            gb = (data or 40) * level[i] * wobble[i][m]
            usage.append((cid, period, "data_gb", round(gb * 1000)))
            usage.append((cid, period, "minutes", minutes[i][m] * 1000))
            usage.append((cid, period, "sms", texts[i][m] * 1000))
    return customers, usage


@dataclass(frozen=True, slots=True)
class Setup:
    customers: int
    usage_rows: int
    seconds: float


def _schema(url: str) -> None:
    engine = make_engine(url)
    upgrade(engine)
    with engine.begin() as conn:
        conn.execute(insert(PLAN), plan_rows())
    engine.dispose()


def build_sqlite(path: Path, n: int) -> Setup:
    _schema(f"sqlite:///{path}")
    t0 = time.perf_counter()
    customers, usage = book(n)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO customer (id, name, phone, timezone, current_plan_id, marketing_consent, created_at) "
        "VALUES (?, ?, ?, ?, ?, 1, '2026-01-01 00:00:00.000000')",
        ((cid, name, phone, tz, pid) for cid, name, phone, tz, pid in customers),
    )
    conn.executemany(
        "INSERT INTO usage (customer_id, period, metric, quantity_milli) VALUES (?, ?, ?, ?)", usage
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return Setup(n, len(usage), time.perf_counter() - t0)


def build_postgres(url: str, n: int) -> Setup:
    _schema(url)
    t0 = time.perf_counter()
    customers, usage = book(n)
    with psycopg.connect(pg_dsn(url)) as conn, conn.cursor() as cur:
        with cur.copy(
            "COPY customer (id, name, phone, timezone, current_plan_id, marketing_consent, created_at) "
            "FROM STDIN"
        ) as copy:
            for row in customers:
                copy.write_row((*row, True, CREATED))
        with cur.copy("COPY usage (customer_id, period, metric, quantity_milli) FROM STDIN") as copy:
            for u in usage:
                copy.write_row(u)
        cur.execute("SELECT setval(pg_get_serial_sequence('customer', 'id'), max(id)) FROM customer")
        conn.commit()
    with psycopg.connect(pg_dsn(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return Setup(n, len(usage), time.perf_counter() - t0)


# -- the runs (each in its own process) -----------------------------------------------------------


def _instrument(timers: dict[str, float]) -> None:
    """Time send's steps: each module of the package looks them up in its namespace at each call."""

    def timed(module: ModuleType, name: str, label: str) -> None:
        inner: Callable[..., Any] = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                timers[label] += time.perf_counter() - t0

        setattr(module, name, wrapper)

    timed(lifecycle, "facts_batch", "facts (customers, usage, fit, channels, recent, declines)")
    timed(lifecycle, "_send_batch", "send batch (segment, policy, render, insert)")
    timed(facts, "evaluate", "  segment (evaluate)")
    timed(facts, "decide", "  policy (decide)")
    timed(lifecycle, "template_context", "  template context")
    timed(lifecycle, "render", "  render")


def run_broadcast(url: str) -> dict[str, Any]:
    timers: dict[str, float] = defaultdict(float)
    engine = make_engine(url)
    advisor = Advisor(QuestionBank.load())
    config = PolicyConfig()  # both channels
    rss_start = peak_memory()
    t0 = time.perf_counter()
    bid = bc.create(
        engine, advisor, name="spring", segment=SEGMENT, template=TEMPLATE, created_by="ops", now=NOW
    )
    t1 = time.perf_counter()
    dry = bc.dry_run(engine, advisor, config, bid, NOW)
    t2 = time.perf_counter()
    rss_dry = peak_memory()
    _instrument(timers)
    t3 = time.perf_counter()
    sent = bc.send(engine, advisor, config, bid, NOW)
    t4 = time.perf_counter()
    with engine.connect() as conn:
        messages = conn.execute(  # offers are queued as suggestions: count by marketing flag
            select(func.count()).select_from(MESSAGE).where(MESSAGE.c.marketing.is_(True))
        ).scalar_one()
        recipients = conn.execute(select(func.count()).select_from(BROADCAST_RECIPIENT)).scalar_one()
        sample = conn.execute(
            select(MESSAGE.c.text).where(MESSAGE.c.marketing.is_(True)).order_by(MESSAGE.c.id).limit(1)
        ).scalar_one_or_none()
    engine.dispose()
    return {
        "create_s": t1 - t0,
        "dry_run_s": t2 - t1,
        "send_s": t4 - t3,
        "considered": dry.considered,
        "would_queue": dry.would_queue,
        "excluded": dict(dry.excluded),
        "queued": sent.queued,
        "deferred": dict(sent.deferred),
        "send_excluded": dict(sent.excluded),
        "messages": int(messages),
        "recipients": int(recipients),
        "sample": sample,
        "timers": dict(timers),
        "rss_start": rss_start,
        "rss_dry": rss_dry,
        "rss_peak": peak_memory(),
    }


_MSG_COLUMNS = (
    "id, customer_id, channel, direction, address, text, intent, needs_review, status, attempts, "
    "marketing, created_at"
)
_REC_COLUMNS = "broadcast_id, customer_id, message_id, status, created_at"


def run_baseline(url: str) -> dict[str, Any]:
    """Bare driver: one read, the same template rendered per customer, the same rows inserted."""
    postgres = url.startswith("postgresql")
    env = SandboxedEnvironment(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=False)
    template = env.from_string(TEMPLATE)
    conn: Any = psycopg.connect(pg_dsn(url)) if postgres else sqlite3.connect(url.removeprefix("sqlite:///"))
    p = "%s" if postgres else "?"
    now: Any = NOW if postgres else NOW.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
    rss_start = peak_memory()
    t0 = time.perf_counter()
    cur = conn.cursor()
    cur.execute(
        "INSERT INTO broadcast (name, segment, template, created_by, created_at, status) "  # noqa: S608
        f"VALUES ('baseline', {p}, {p}, 'ops', {p}, 'scheduled') RETURNING id",
        (SEGMENT, TEMPLATE, now),
    )
    bid = cur.fetchone()[0]
    cur.execute("SELECT coalesce(max(id), 0) FROM message")
    next_id = cur.fetchone()[0] + 1
    conn.commit()
    cur.execute(
        "SELECT c.id, c.name, c.phone, p.name, avg(u.quantity_milli) FROM customer c "
        "JOIN plan p ON p.id = c.current_plan_id "
        "LEFT JOIN usage u ON u.customer_id = c.id AND u.metric = 'data_gb' "
        "GROUP BY c.id, c.name, c.phone, p.name ORDER BY c.id"
    )
    customers = cur.fetchall()
    t1 = time.perf_counter()
    msg_sql = f"INSERT INTO message ({_MSG_COLUMNS}) VALUES ({', '.join([p] * 12)})"  # noqa: S608
    rec_sql = f"INSERT INTO broadcast_recipient ({_REC_COLUMNS}) VALUES ({p}, {p}, {p}, 'queued', {p})"  # noqa: S608
    render_s = 0.0
    for start in range(0, len(customers), BATCH):
        messages, recipients = [], []
        r0 = time.perf_counter()
        for cid, name, phone, plan_name, data in customers[start : start + BATCH]:
            body = template.render(
                name=name,
                current_plan=plan_name,
                suggested_plan="Basic 5 GB",
                monthly_saving="$8.00",
                yearly_saving="$96.00",
                usage={"data_gb": f"{float(data or 0) / 1000:.1f} GB"},
            ).strip()
            messages.append(
                (next_id, cid, "sms", "out", phone, body, "broadcast", False, "queued", 0, True, now)
            )
            recipients.append((bid, cid, next_id, now))
            next_id += 1
        render_s += time.perf_counter() - r0
        cur.executemany(msg_sql, messages)
        cur.executemany(rec_sql, recipients)
        conn.commit()
    seconds = time.perf_counter() - t0
    conn.close()
    return {
        "seconds": seconds,
        "read_s": t1 - t0,
        "render_s": render_s,
        "rows": len(customers),
        "rss_start": rss_start,
        "rss_peak": peak_memory(),
    }


# -- the report -----------------------------------------------------------------------------------


def report(console: Console, backend: str, setup: Setup, run: dict[str, Any], base: dict[str, Any]) -> None:
    console.print(
        f"setup ({backend}, bare driver, not judged): {setup.customers:,} customers and "
        f"{setup.usage_rows:,} usage rows in {setup.seconds:.1f} s"
    )
    console.print(
        f"dry run: {run['considered']:,} considered, {run['would_queue']:,} would be queued, excluded "
        f"{run['excluded'] or 'none'}; send: {run['queued']:,} queued (deferred {run['deferred'] or 'none'}, "
        f"excluded {run['send_excluded'] or 'none'}); rows written: {run['messages']:,} messages, "
        f"{run['recipients']:,} recipients"
    )
    console.print(f"first message: {run['sample']!r}", markup=False, highlight=False)
    n = run["queued"]
    table = Table(title=f"preparing a broadcast for {n:,} recipients ({backend})")
    for col in ("run", "seconds", "recipients/s", "peak memory (VmHWM)", "memory before", "time vs baseline"):
        table.add_column(col, justify="left" if col == "run" else "right")
    table.add_row(
        "baseline (bare driver: read, render, insert)",
        f"{base['seconds']:.2f}",
        f"{base['rows'] / base['seconds']:,.0f}",
        mib(base["rss_peak"]),
        mib(base["rss_start"]),
        "1.00x",
    )
    dry = run["dry_run_s"]
    table.add_row(
        "dry_run", f"{dry:.2f}", f"{run['considered'] / dry:,.0f}", mib(run["rss_dry"]),
        mib(run["rss_start"]), f"{dry / base['seconds']:.1f}x",
    )  # fmt: skip
    table.add_row(
        "send", f"{run['send_s']:.2f}", f"{n / run['send_s']:,.0f}", mib(run["rss_peak"]), "",
        f"{run['send_s'] / base['seconds']:.1f}x",
    )  # fmt: skip
    both = run["dry_run_s"] + run["send_s"]
    table.add_row(
        "dry_run + send", f"{both:.2f}", f"{n / both:,.0f}", mib(run["rss_peak"]), "",
        f"{both / base['seconds']:.1f}x",
    )  # fmt: skip
    console.print(table)
    split = Table(title="where send's time goes")
    split.add_column("step")
    split.add_column("seconds", justify="right")
    split.add_column("share", justify="right")
    timers: dict[str, float] = run["timers"]
    total = run["send_s"]
    for key in sorted(timers, key=lambda k: (not k.startswith("facts"), k.startswith("  "), k)):
        split.add_row(key, f"{timers[key]:.2f}", f"{timers[key] / total:.0%}")
    batch = timers.get("send batch (segment, policy, render, insert)", 0.0)
    inner = sum(v for k, v in timers.items() if k.startswith("  "))
    split.add_row(
        "  insert messages + recipients, other", f"{batch - inner:.2f}", f"{(batch - inner) / total:.0%}"
    )
    console.print(split)
    console.print(
        f"baseline split: read {base['read_s']:.2f} s, render {base['render_s']:.2f} s, insert "
        f"{base['seconds'] - base['read_s'] - base['render_s']:.2f} s"
    )
    scale = n / TARGET_CUSTOMERS
    projected = run["send_s"] / scale if scale else float("inf")
    note = "" if n == TARGET_CUSTOMERS else f" (projected linearly from {n:,})"
    console.print(
        f"target: 100,000 recipients in under {TARGET_SECONDS:.0f} s: send {projected:.1f} s{note}, "
        f"dry_run + send {both / scale:.1f} s: {'met' if projected < TARGET_SECONDS else 'NOT met'} "
        f"(send), {'met' if both / scale < TARGET_SECONDS else 'NOT met'} (dry_run + send); peak memory "
        f"under 500 MB: {mib(run['rss_peak'])}: {'met' if run['rss_peak'] < TARGET_BYTES else 'NOT met'}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=TARGET_CUSTOMERS)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--phase", choices=("broadcast", "baseline"), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "broadcast":
        print(json.dumps(run_broadcast(args.url)))
        return
    if args.phase == "baseline":
        print(json.dumps(run_baseline(args.url)))
        return
    console = Console() if sys.stdout.isatty() else Console(width=130)
    console.print(f"building the book ({args.customers:,} customers) ...")
    if args.backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            first, second = Path(tmp) / "broadcast.db", Path(tmp) / "baseline.db"
            setup = build_sqlite(first, args.customers)
            shutil.copyfile(first, second)
            run = child(__file__, ["--phase", "broadcast", "--url", f"sqlite:///{first}"])
            base = child(__file__, ["--phase", "baseline", "--url", f"sqlite:///{second}"])
    else:
        server = postgres_server()
        with postgres_db(server) as one, postgres_db(server) as two:
            setup = build_postgres(one, args.customers)
            build_postgres(two, args.customers)
            run = child(__file__, ["--phase", "broadcast", "--url", one])
            base = child(__file__, ["--phase", "baseline", "--url", two])
    report(console, args.backend, setup, run, base)
    if args.json:
        print(
            json.dumps({"backend": args.backend, "setup": asdict(setup), "broadcast": run, "baseline": base})
        )


if __name__ == "__main__":
    main()
