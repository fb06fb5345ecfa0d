"""The console dashboard over a big book: its page rendered over HTTP at 30 and 365 days.

For each backend it builds a freshly migrated database (a SQLite file, or a throwaway PostgreSQL
database) with ``--customers`` customers (a plan of four, consent for 70 %, 2 % opted out, one
preference each) and ``--messages`` messages spread over a year (half inbound, with intents and
question keys drawn from a realistic mix, 10 % of inbound not understood), a tenth of the customers
with a proactive offer decision (10 % of those held out) and a tenth of those with a switch request.
The data is written with the bare driver (sqlite3 executemany / psycopg COPY). The full-text
search index of the console's message search is dropped for the load and not rebuilt (the
dashboard does not read it; a throwaway database).

Then ``rapport dashboard rollup`` over the whole year (timed and printed: the scheduler does only
the last 8 days hourly, also timed), and the dashboard page as an admin sees it (every section),
``--repeat`` times at 30 and at 365 days through the real web app (TestClient: routing, login
session, queries, SVG, template), warm. Target (issue): under 2 s at 1,000,000 customers and
10,000,000 messages.

    python bench/bench_dashboard.py [--customers 1000000] [--messages 10000000]
                                    [--backends sqlite,postgresql] [--repeat 5]
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import psycopg
from _shared import pg_dsn, postgres_db, postgres_server
from fastapi.testclient import TestClient
from rich.console import Console
from rich.table import Table
from sqlmodel import Session

from bot.console.auth import ConsoleConfig, add_user
from bot.runtime import build_runtime
from bot.settings import Settings
from bot.web import create_app
from schedulers.dashboard import rollup
from storage.db import make_engine, upgrade

END = datetime(2026, 12, 1, tzinfo=UTC)
START = END - timedelta(days=365)
CHUNK = 200_000
SEED = 16
PLANS = (("basic-5", "15.00"), ("plus-20", "30.00"), ("max-50", "45.00"), ("unlimited", "65.00"))
KEYS = ("monthly_budget", "data_estimate_gb", "priority", "contract", "contact_time", "travel_abroad")
IN_INTENTS = (
    ("answer", 0.45),
    ("unparsed", 0.10),
    ("chat", 0.15),
    ("command:skip", 0.05),
    ("reconfirmed", 0.05),
    ("suggestion_yes", 0.02),
    ("suggestion_no", 0.03),
    ("keyword:stop", 0.01),
    ("out_of_turn", 0.14),
)
OUT_INTENTS = (
    ("ask", 0.5),
    ("reask", 0.1),
    ("ack", 0.2),
    ("fallback", 0.05),
    ("suggestion", 0.05),
    ("done", 0.1),
)
PHRASES = ("kumquat", "what?", "idk", "maybe later", "call me", "hmm", "no idea", "why", "ok?", "lol")
ADMIN, PASSWORD = "bench@example.com", "bench-password-1"


def _stamp(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def customer_rows(n: int) -> Iterator[tuple[int, str, bool, str | None]]:
    rng = np.random.default_rng(SEED)
    plans = rng.integers(0, len(PLANS), n)
    consent = rng.random(n) < 0.7
    opted = rng.random(n) < 0.02
    for i in range(n):
        cid = i + 1
        out = _stamp(START + timedelta(days=float(cid % 365))) if opted[i] else None
        yield cid, PLANS[int(plans[i])][0], bool(consent[i]), out


def message_chunk(start: int, count: int, customers: int, total: int) -> Iterator[tuple[object, ...]]:
    rng = np.random.default_rng(SEED + start)
    cust = rng.integers(1, customers + 1, count)
    inbound = rng.random(count) < 0.5
    in_names = [k for k, _ in IN_INTENTS]
    out_names = [k for k, _ in OUT_INTENTS]
    in_pick = rng.choice(len(in_names), count, p=[p for _, p in IN_INTENTS])
    out_pick = rng.choice(len(out_names), count, p=[p for _, p in OUT_INTENTS])
    keys = rng.integers(0, len(KEYS), count)
    phrase = rng.integers(0, len(PHRASES), count)
    span = (END - START).total_seconds()
    for b in range(count):
        mid = start + b + 1
        created = START + timedelta(seconds=span * mid / (total + 1))
        if inbound[b]:
            intent = in_names[int(in_pick[b])]
            text = PHRASES[int(phrase[b])] if intent == "unparsed" else "answer text"
            direction = "in"
        else:
            intent = out_names[int(out_pick[b])]
            text, direction = "a reply from the bot", "out"
        key = KEYS[int(keys[b])] if intent in ("answer", "unparsed", "command:skip", "ask", "reask") else None
        status = "delivered" if direction == "out" else None
        yield (mid, int(cust[b]), "sms", direction, "+1415", text, intent, key, status, _stamp(created))


def offers(customers: int) -> Iterator[tuple[int, str, str | None, str, str]]:
    """(customer, kind, reason, plan, at) for every tenth customer; a tenth of those held out."""
    for cid in range(1, customers + 1, 10):
        at = _stamp(START + timedelta(days=float(cid % 365), hours=9))
        held = (cid // 10) % 10 == 0
        yield cid, "skipped" if held else "queued", "holdout" if held else None, "basic-5", at


def switches(customers: int) -> Iterator[tuple[int, str, str, str, str]]:
    for cid in range(1, customers + 1, 100):
        yield cid, "plus-20", "basic-5", "15.00", _stamp(START + timedelta(days=float(cid % 365), hours=12))


def build_sqlite(path: Path, customers: int, messages: int) -> float:
    upgrade(make_engine(f"sqlite:///{path}"))
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.execute("DROP TRIGGER IF EXISTS message_fts_ai")
    conn.executemany(
        "INSERT INTO plan (id, name, currency, monthly_price, contract_months, available, perks, allowance, "
        "overage, updated_at) VALUES (?, ?, 'USD', ?, 0, 1, '[]', '{}', '{}', '2025-01-01 00:00:00.000000')",
        [(p, p, price) for p, price in PLANS],
    )
    conn.executemany(
        "INSERT INTO customer (id, current_plan_id, marketing_consent, opted_out_at, created_at) "
        "VALUES (?, ?, ?, ?, '2025-01-01 00:00:00.000000')",
        customer_rows(customers),
    )
    conn.executemany(
        "INSERT INTO preference (customer_id, key, value, source, stated_at, confirmed_at) "
        "VALUES (?, ?, '1', ?, '2025-06-01 00:00:00.000000', '2025-06-01 00:00:00.000000')",
        ((c, KEYS[c % len(KEYS)], ("asked", "usage", "operator")[c % 3]) for c in range(1, customers + 1)),
    )
    for start in range(0, messages, CHUNK):
        conn.executemany(
            "INSERT INTO message (id, customer_id, channel, direction, address, text, intent, question_key, "
            "status, created_at, needs_review, marketing, attempts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 0, 0)",
            message_chunk(start, min(CHUNK, messages - start), customers, messages),
        )
    conn.executemany(
        "INSERT INTO outreach_event (customer_id, kind, reason, plan_id, at) VALUES (?, ?, ?, ?, ?)",
        offers(customers),
    )
    conn.executemany(
        "INSERT INTO switch_request (customer_id, from_plan_id, to_plan_id, monthly_saving, status, "
        "created_at) VALUES (?, ?, ?, ?, 'requested', ?)",
        switches(customers),
    )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - t0


def build_postgres(url: str, customers: int, messages: int) -> float:
    upgrade(make_engine(url))
    with psycopg.connect(pg_dsn(url)) as conn, conn.cursor() as cur:
        t0 = time.perf_counter()
        cur.execute("DROP INDEX IF EXISTS ix_message_text_fts")
        with cur.copy(
            "COPY plan (id, name, currency, monthly_price, contract_months, available, perks, allowance, "
            "overage, updated_at) FROM STDIN"
        ) as copy:
            for p, price in PLANS:
                copy.write_row((p, p, "USD", price, 0, True, "[]", "{}", "{}", "2025-01-01 00:00:00+00"))
        with cur.copy(
            "COPY customer (id, current_plan_id, marketing_consent, opted_out_at, created_at) FROM STDIN"
        ) as copy:
            for cid, plan, consent, out in customer_rows(customers):
                copy.write_row((cid, plan, consent, out + "+00" if out else None, "2025-01-01 00:00:00+00"))
        with cur.copy(
            "COPY preference (customer_id, key, value, source, stated_at, confirmed_at) FROM STDIN"
        ) as copy:
            for c in range(1, customers + 1):
                when = "2025-06-01 00:00:00+00"
                copy.write_row(
                    (c, KEYS[c % len(KEYS)], "1", ("asked", "usage", "operator")[c % 3], when, when)
                )
        with cur.copy(
            "COPY message (id, customer_id, channel, direction, address, text, intent, question_key, status, "
            "created_at, needs_review, marketing, attempts) FROM STDIN"
        ) as copy:
            for start in range(0, messages, CHUNK):
                for r in message_chunk(start, min(CHUNK, messages - start), customers, messages):
                    copy.write_row((*r[:9], str(r[9]) + "+00", False, False, 0))
        with cur.copy("COPY outreach_event (customer_id, kind, reason, plan_id, at) FROM STDIN") as copy:
            for o in offers(customers):
                copy.write_row((*o[:4], o[4] + "+00"))
        with cur.copy(
            "COPY switch_request (customer_id, from_plan_id, to_plan_id, monthly_saving, status, created_at) "
            "FROM STDIN"
        ) as copy:
            for s in switches(customers):
                copy.write_row((*s[:4], "requested", s[4] + "+00"))
        for table in ("customer", "message"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}")  # noqa: S608
        conn.commit()
    with psycopg.connect(pg_dsn(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return time.perf_counter() - t0


def measure(url: str, customers: int, messages: int, repeat: int, build_seconds: float) -> dict[str, float]:
    settings = Settings(database_url=url, _env_file=None)
    runtime = build_runtime(settings)
    with Session(runtime.db, expire_on_commit=False) as session, session.begin():
        add_user(session, ADMIN, "admin", PASSWORD)
    t0 = time.perf_counter()
    rollup(runtime.db, runtime.bank, END, start=START.date(), end=END.date())
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    rollup(runtime.db, runtime.bank, END)  # what the hourly job does
    hourly = time.perf_counter() - t0
    app = create_app(runtime, console=ConsoleConfig(clock=lambda: END))
    result = {"build_s": build_seconds, "rollup_year_s": full, "rollup_hourly_s": hourly}
    with TestClient(app) as client:
        page = client.get("/console/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
        assert token is not None
        data = {"email": ADMIN, "password": PASSWORD, "csrf_token": token.group(1)}
        assert client.post("/console/login", data=data, follow_redirects=False).status_code == 303
        for days in (30, 365):
            path = f"/console/dashboard?days={days}"
            first = client.get(path)
            assert first.status_code == 200 and 'id="figure-holdout"' in first.text, first.text[:300]
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                assert client.get(path).status_code == 200
                times.append(time.perf_counter() - t0)
            result[f"page_{days}d_median_s"] = statistics.median(times)
            result[f"page_{days}d_max_s"] = max(times)
    runtime.db.dispose()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=10_000_000)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    out = Console()
    table = Table(title=f"dashboard: {args.customers:,} customers, {args.messages:,} messages")
    for col in ("backend", "load", "rollup 365 d", "rollup hourly", "page 30 d", "page 365 d", "target"):
        table.add_column(col)
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "bench.db"
                seconds = build_sqlite(path, args.customers, args.messages)
                r = measure(f"sqlite:///{path}", args.customers, args.messages, args.repeat, seconds)
        else:
            with postgres_db(postgres_server(), migrate=True) as url:
                seconds = build_postgres(url, args.customers, args.messages)
                r = measure(url, args.customers, args.messages, args.repeat, seconds)
        ok = max(r["page_30d_max_s"], r["page_365d_max_s"]) < 2
        table.add_row(
            backend,
            f"{r['build_s']:.0f} s",
            f"{r['rollup_year_s']:.0f} s",
            f"{r['rollup_hourly_s']:.1f} s",
            f"{r['page_30d_median_s'] * 1000:.0f} ms (max {r['page_30d_max_s'] * 1000:.0f})",
            f"{r['page_365d_median_s'] * 1000:.0f} ms (max {r['page_365d_max_s'] * 1000:.0f})",
            "< 2 s: " + ("met" if ok else "NOT met"),
        )
        out.print(f"{backend}: {r}")
    out.print(table)


if __name__ == "__main__":
    main()
