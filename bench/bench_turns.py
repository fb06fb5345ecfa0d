"""Inbound turns per second through ``DialogEngine.handle()``, next to a bare-driver baseline.

For each backend it runs the same scripted conversations twice on fresh databases:
  engine    every message through ``handle()`` (parse, policy, state, outbox) in one transaction
  baseline  the same rows written with the bare driver (sqlite3 / psycopg) and one commit a turn:
            the inbound message, the preference, the replies, the dialog state
and prints turns/s, p50/p99 latency and the engine/baseline ratio. Targets (issue 2): at least
1,000 turns/s on SQLite in one process, within 4x of the baseline.

    python bench/bench_turns.py [--customers 200] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from _shared import postgres_db, postgres_server
from rich.console import Console
from rich.table import Table
from sqlalchemy.engine import make_url

from dialogs.bank import QuestionBank
from dialogs.engine import DialogEngine, EngineConfig, Inbound
from storage.db import make_engine, upgrade

# One customer's conversation: a greeting, then an answer to each question in the default bank.
SCRIPT = [
    "hi",
    "text me",
    "evnings",
    "about 40 bucks",
    "price",
    "no contract",
    "none",
    "nope",
    "just me",
    "5 gigs",
    "email",
    "yes please",
    "maps and music",
]
START = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Result:
    name: str
    turns: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.turns / self.seconds

    def pct(self, q: float) -> float:
        return statistics.quantiles(self.latencies, n=100, method="inclusive")[int(q) - 1] * 1000


def turns(customers: int) -> Iterator[tuple[str, int, str]]:
    """(address, message index, text) interleaved across customers, like real traffic."""
    for step, line in enumerate(SCRIPT):
        for c in range(customers):
            yield f"+1415{c:07d}", step, line


def run_engine(url: str, customers: int, bank: QuestionBank) -> Result:
    db = make_engine(url)
    dialog = DialogEngine(db, bank, EngineConfig())
    latencies: list[float] = []
    started = time.perf_counter()
    for address, step, line in turns(customers):
        t0 = time.perf_counter()
        dialog.handle(
            Inbound(
                channel="sms",
                address=address,
                text=line,
                provider_id=f"{address}-{step}",
                received_at=START + timedelta(minutes=step),
            )
        )
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    db.dispose()
    return Result("engine", len(latencies), elapsed, latencies)


# The baseline writes what a turn writes, with bound parameters and one commit a turn.
_BASELINE = {
    "customer": "INSERT INTO customer (marketing_consent, created_at) VALUES (false, {p}) RETURNING id",
    "identity": "INSERT INTO channel_identity (channel, address, customer_id, verified, created_at) "
    "VALUES ('sms', {p}, {p}, false, {p})",
    "state": "INSERT INTO dialog_state (customer_id, reask_count, deferred, version) "
    "VALUES ({p}, 0, '{{}}', 0)",
    "inbound": "INSERT INTO message (customer_id, channel, direction, address, provider_message_id, text, "
    "needs_review, created_at) VALUES ({p}, 'sms', 'in', {p}, {p}, {p}, false, {p}) RETURNING id",
    "pref": "INSERT INTO preference (customer_id, key, value, source, message_id, stated_at, confirmed_at) "
    "VALUES ({p}, {p}, '\"v\"', 'asked', {p}, {p}, {p})",
    "reply": "INSERT INTO message (customer_id, channel, direction, address, text, needs_review, "
    "reply_to_id, status, created_at) VALUES ({p}, 'sms', 'out', {p}, {p}, false, {p}, 'queued', {p})",
    "update": "UPDATE dialog_state SET version = version + 1, last_activity = {p} WHERE customer_id = {p}",
}


def run_baseline(connect: Callable[[], object], placeholder: str, customers: int, *, sqlite: bool) -> Result:
    sql = {k: v.format(p=placeholder) for k, v in _BASELINE.items()}
    conn = connect()
    cur = conn.cursor()  # type: ignore[attr-defined]
    ids: dict[str, int] = {}
    latencies: list[float] = []
    started = time.perf_counter()
    for address, step, line in turns(customers):
        t0 = time.perf_counter()
        now = (START + timedelta(minutes=step)).replace(tzinfo=None if sqlite else UTC)
        if sqlite:
            cur.execute("BEGIN IMMEDIATE")
        if address not in ids:
            cur.execute(sql["customer"], (now,))
            ids[address] = cur.fetchone()[0]
            cur.execute(sql["identity"], (address, ids[address], now))
            cur.execute(sql["state"], (ids[address],))
        cid = ids[address]
        cur.execute(sql["inbound"], (cid, address, f"{address}-{step}", line, now))
        inbound_id = cur.fetchone()[0]
        if step:
            cur.execute(sql["pref"], (cid, f"k{step}", inbound_id, now, now))
        for reply in ("Got it.", "Next question?"):
            cur.execute(sql["reply"], (cid, address, reply, inbound_id, now))
        cur.execute(sql["update"], (now, cid))
        conn.commit()  # type: ignore[attr-defined]
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    conn.close()  # type: ignore[attr-defined]
    return Result("baseline", len(latencies), elapsed, latencies)


@contextmanager
def sqlite_db() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        upgrade(make_engine(f"sqlite:///{path}"))
        yield str(path)


def sqlite_connect(path: str) -> Callable[[], object]:
    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    return connect


def bench_backend(
    backend: str, customers: int, bank: QuestionBank, repeat: int
) -> tuple[Result, Result, float]:
    """``repeat`` back-to-back pairs of runs (engine, then baseline): the median engine run, the
    median baseline run, and the median of the pairs' time ratios. Pairing matters: the disk's
    speed drifts over minutes, and a ratio of two runs made at the same time cancels that out."""
    runs = [_bench_once(backend, customers, bank) for _ in range(repeat)]
    engines = sorted((r[0] for r in runs), key=lambda r: r.seconds)
    baselines = sorted((r[1] for r in runs), key=lambda r: r.seconds)
    ratio = statistics.median(e.seconds / b.seconds for e, b in runs)
    return engines[len(runs) // 2], baselines[len(runs) // 2], ratio


def _bench_once(backend: str, customers: int, bank: QuestionBank) -> tuple[Result, Result]:
    if backend == "sqlite":
        with sqlite_db() as path:
            engine = run_engine(f"sqlite:///{path}", customers, bank)
        with sqlite_db() as path:
            baseline = run_baseline(sqlite_connect(path), "?", customers, sqlite=True)
        return engine, baseline
    server = postgres_server()
    with postgres_db(server, migrate=True) as url:
        engine = run_engine(url, customers, bank)
    with postgres_db(server, migrate=True) as url:
        dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
        baseline = run_baseline(lambda: psycopg.connect(dsn), "%s", customers, sqlite=False)
    return engine, baseline


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend; the median is shown")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    bank = QuestionBank.load()
    console = Console()
    table = Table(
        title=f"turns through handle() ({args.customers} customers x {len(SCRIPT)} messages, "
        f"median of {args.repeat} runs)"
    )
    for col in ("backend", "run", "turns", "turns/s", "p50 ms", "p99 ms", "time vs baseline (median pair)"):
        table.add_column(col, justify="right" if col not in ("backend", "run") else "left")
    figures = []
    for backend in args.backends.split(","):
        engine, baseline, ratio = bench_backend(backend, args.customers, bank, args.repeat)
        for r in (baseline, engine):
            table.add_row(
                backend,
                r.name,
                str(r.turns),
                f"{r.rate:,.0f}",
                f"{r.pct(50):.2f}",
                f"{r.pct(99):.2f}",
                f"{ratio:.2f}x" if r is engine else "1.00x",
            )
        figures.append(
            {
                "backend": backend,
                "engine_turns_per_s": round(engine.rate),
                "baseline_turns_per_s": round(baseline.rate),
                "ratio": round(ratio, 2),
                "engine_p50_ms": round(engine.pct(50), 3),
                "engine_p99_ms": round(engine.pct(99), 3),
            }
        )
    console.print(table)
    sqlite_fig = next((f for f in figures if f["backend"] == "sqlite"), None)
    if sqlite_fig:
        ok = sqlite_fig["engine_turns_per_s"] >= 1000 and sqlite_fig["ratio"] <= 4
        console.print(
            f"target (SQLite >= 1,000 turns/s and within 4x of the baseline): {'met' if ok else 'NOT met'}"
        )
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
