"""Inbound turns per second through ``DialogEngine.handle()``, next to a bare-driver baseline.

For each backend it runs the same scripted conversations on fresh databases, the engine and then
the baseline, ``--repeat`` times:
  engine    every message through ``handle()``: one transaction that finds the customer, locks and
            reads the dialog state and preferences, parses, picks the next question, writes the turn
            (after the engine's start-up, :meth:`DialogEngine.warm_up`: training the understanding
            step happens once per process, not in a turn)
  baseline  the turn's writes with the bare driver (sqlite3 / psycopg), one transaction a turn:
            BEGIN (IMMEDIATE on SQLite, as the engine's), for a first message the customer, its
            channel identity and dialog state; the inbound message, the preferences it stated, its
            replies (in one statement), the dialog state's update (every column handle() sets, with
            its version check); COMMIT
and prints turns/s, p50/p99 latency and engine time / baseline time (the median of the pairs, and
their range). Targets (issue 2): at least 1,000 turns/s on SQLite in one process, within 4x of
the baseline.

The baseline is kept honest both ways:
- It writes exactly what handle() wrote. The rows are read back from the engine's database after
  its run (untimed) and written again; afterwards both databases must hold the same rows, ids
  included (customer, channel_identity, dialog_state, message, preference), or the bench stops.
  Only the dialog state's values between turns are not stored: they are worked out from each
  turn's replies, and the comparison checks the final ones.
- In the same statements: one a row, a turn's replies in one, ids got as handle() gets them
  (lastrowid for one row on SQLite, else RETURNING), the state update with its version check.
- From the same Python values: it turns JSON (json.dumps) and, on SQLite, times (isoformat) into
  what is stored itself, as any program writing these rows must (psycopg adapts times itself).
- And no more: it reads nothing. The customer lookup, the locked read of the state and the
  preferences, parsing and the policy all count against the engine.

With ``--sqlite-dir /dev/shm`` the SQLite files live in memory, where commits cost least and so
the ratio is at its highest: the hard case for the target.

    python bench/bench_turns.py [--customers 200] [--repeat 3] [--backends sqlite,postgresql]
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
from typing import Any

import psycopg
from _shared import pg_dsn, postgres_db, postgres_server
from psycopg.types.json import Json
from psycopg.types.string import TextLoader
from rich.console import Console
from rich.table import Table

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
    dialog.warm_up()  # start-up (training the understanding step) is not a turn
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


# The tables a turn writes, with their keys: both databases are compared row by row.
TABLES = {
    "customer": "id",
    "channel_identity": "id",
    "dialog_state": "customer_id",
    "message": "id",
    "preference": "id",
}


def _cols(names: str) -> list[str]:
    return names.split()


# The columns handle() writes in each statement of a turn; the baseline writes the same ones.
CUSTOMER_COLS = _cols("name phone marketing_consent created_at")
IDENTITY_COLS = _cols("channel address customer_id verified created_at")
NEW_STATE_COLS = _cols("customer_id reask_count deferred version")
INBOUND_COLS = _cols(
    "customer_id channel direction address provider_message_id text question_key parsed_value "
    "confidence intent needs_review state_version attempts created_at marketing"
)
REPLY_COLS = _cols(
    "customer_id channel direction address text question_key intent needs_review reply_to_id status "
    "attempts created_at marketing"
)
PREFERENCE_COLS = _cols("customer_id key value source message_id channel stated_at confirmed_at")
STATE_COLS = _cols("pending_key pending_kind reask_count deferred finished_at last_activity version")
# The state update's parameters: the columns it sets, then the row and the version it found.
STATE_UPDATE_COLS = [*STATE_COLS, "customer_id", "version_found"]
# Values a program holds as Python objects and turns into what is stored as it writes them.
JSON_COLS = frozenset(_cols("parsed_value value deferred"))
TIME_COLS = frozenset(_cols("created_at stated_at confirmed_at finished_at last_activity opted_out_at"))
Row = dict[str, Any]
Dump = dict[str, list[Row]]
Values = list[Any]


@dataclass(slots=True)
class TurnWrites:
    """One turn of handle()'s: each statement's values in its columns' order, as Python objects
    (the ids the baseline gets from its own database still the engine's)."""

    customer_id: int
    new_customer: tuple[Values, Values, Values] | None  # customer, identity, dialog state
    inbound: Values
    preferences: list[Values]
    replies: list[Values]
    state: Values  # STATE_UPDATE_COLS


def dump(cur: Any) -> Dump:
    """Every row of the tables a turn writes, by key."""
    tables: Dump = {}
    for table, key in TABLES.items():
        cur.execute(f"SELECT * FROM {table} ORDER BY {key}")  # noqa: S608 (names from TABLES)
        names = [d[0] for d in cur.description]
        tables[table] = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
    return tables


def as_python(rows: Dump, *, sqlite: bool) -> Dump:
    """The stored rows with JSON values (and, from SQLite, times) as Python objects."""

    def convert(column: str, value: Any) -> Any:
        if column in JSON_COLS and isinstance(value, str):  # SQLite turns JSON numbers into numbers
            return json.loads(value)
        if sqlite and column in TIME_COLS and value is not None:
            return datetime.fromisoformat(value)
        return value

    return {t: [{c: convert(c, v) for c, v in row.items()} for row in table] for t, table in rows.items()}


def turn_writes(engine_rows: Dump) -> list[TurnWrites]:
    """The engine's turns, in order, read back from what it stored (see :func:`as_python`): each
    inbound message with the preferences it stated, its replies and the dialog state it left. Only
    the intermediate dialog states are not stored; each turn's is worked out from its replies (the
    question asked is the one pending, "done" finishes), and :func:`check_same` compares the
    final ones."""
    customers = {r["id"]: r for r in engine_rows["customer"]}
    identities = {r["customer_id"]: r for r in engine_rows["channel_identity"]}
    replies: dict[int, list[Row]] = {}
    for r in engine_rows["message"]:
        if r["reply_to_id"] is not None:
            replies.setdefault(r["reply_to_id"], []).append(r)
    stated: dict[int, list[Row]] = {}
    for r in engine_rows["preference"]:
        stated.setdefault(r["message_id"], []).append(r)
    states: dict[int, Row] = {}
    writes = []
    for m in engine_rows["message"]:
        if m["direction"] != "in":
            continue
        cid = m["customer_id"]
        new = None
        if cid not in states:
            first = {"customer_id": cid, "reask_count": 0, "deferred": {}, "version": 0}
            new = (
                [customers[cid][c] for c in CUSTOMER_COLS],
                [identities[cid][c] for c in IDENTITY_COLS],
                [first[c] for c in NEW_STATE_COLS],
            )
            states[cid] = {**dict.fromkeys(STATE_COLS), **first}
        state = states[cid]
        found = state["version"]
        assert found == m["state_version"], "a turn the baseline cannot replay"
        out = replies.get(m["id"], [])
        last = out[-1]["intent"] if out else None
        if last in ("ask", "reask", "reconfirm"):
            state["pending_key"] = out[-1]["question_key"]
            state["pending_kind"] = "reconfirm" if last == "reconfirm" else "ask"
            state["finished_at"] = None
        elif last == "done":
            state["pending_key"] = state["pending_kind"] = None
            state["finished_at"] = m["created_at"]
        state.update(version=found + 1, last_activity=m["created_at"], version_found=found)
        writes.append(
            TurnWrites(
                cid,
                new,
                [m[c] for c in INBOUND_COLS],
                [[p[c] for c in PREFERENCE_COLS] for p in stated.get(m["id"], [])],
                [[r[c] for c in REPLY_COLS] for r in out],
                [state[c] for c in STATE_UPDATE_COLS],
            )
        )
    return writes


def check_same(engine_rows: Dump, baseline_rows: Dump) -> None:
    """The baseline must leave exactly the rows handle() left, ids included."""
    for table in TABLES:
        if engine_rows[table] != baseline_rows[table]:
            raise SystemExit(f"the baseline did not write what handle() wrote: {table} differs")


def _stored_time(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat(" ", "microseconds")


@dataclass(frozen=True, slots=True)
class Statement:
    """A statement of the baseline's, and how a turn's values become its parameters: JSON as text,
    on SQLite times as the text SQLAlchemy stores (sqlite3's datetime adapter is deprecated), and
    the ids the database gave this run (the customer's, the inbound message's) put in."""

    sql: str
    conversions: list[tuple[int, Callable[[Any], Any]]]  # (position, how its value is stored)
    links: list[int]  # positions of the ids, in the order params() takes them

    @classmethod
    def of(cls, sql: str, columns: list[str], *, sqlite: bool, links: tuple[str, ...] = ()) -> Statement:
        conversions: list[tuple[int, Callable[[Any], Any]]] = []
        for i, c in enumerate(columns):
            if c in JSON_COLS:
                conversions.append((i, json.dumps if sqlite else Json))
            elif sqlite and c in TIME_COLS:
                conversions.append((i, _stored_time))
        return cls(sql, conversions, [columns.index(c) for c in links])

    @classmethod
    def insert(
        cls,
        table: str,
        columns: list[str],
        *,
        sqlite: bool,
        links: tuple[str, ...] = (),
        rows: int = 1,
        ids: bool = False,
    ) -> Statement:
        """Insert ``rows`` rows; with ``ids``, ids as handle() gets them: lastrowid for one row on
        SQLite, else RETURNING."""
        p = "?" if sqlite else "%s"
        values = ", ".join(["(" + ", ".join([p] * len(columns)) + ")"] * rows)
        names = ", ".join(f'"{c}"' for c in columns)
        returning = " RETURNING id" if ids and (rows > 1 or not sqlite) else ""
        sql = f"INSERT INTO {table} ({names}) VALUES {values}{returning}"  # noqa: S608 (our own names)
        return cls.of(sql, columns, sqlite=sqlite, links=links)

    def params(self, values: Values, *ids: int) -> Values:
        params = values.copy()
        for i, to_param in self.conversions:
            params[i] = to_param(params[i])
        for i, value in zip(self.links, ids, strict=True):
            params[i] = value
        return params


def run_baseline(connect: Callable[[], Any], writes: list[TurnWrites], *, sqlite: bool) -> Result:
    """Each turn's writes with the bare driver, one transaction a turn, ids as the database gives
    them (the inbound message's id links its preferences and replies)."""
    by_customer = ("customer_id",)
    insert_customer = Statement.insert("customer", CUSTOMER_COLS, sqlite=sqlite, ids=True)
    insert_identity = Statement.insert(
        "channel_identity", IDENTITY_COLS, sqlite=sqlite, links=("customer_id",)
    )
    insert_state = Statement.insert("dialog_state", NEW_STATE_COLS, sqlite=sqlite, links=by_customer)
    insert_inbound = Statement.insert(
        "message", INBOUND_COLS, sqlite=sqlite, links=("customer_id",), ids=True
    )
    insert_preference = Statement.insert(
        "preference", PREFERENCE_COLS, sqlite=sqlite, links=("customer_id", "message_id")
    )
    reply = ("customer_id", "reply_to_id")
    insert_replies = {
        n: Statement.insert("message", REPLY_COLS, sqlite=sqlite, links=reply, rows=n, ids=True)
        for n in range(1, 6)
    }
    p = "?" if sqlite else "%s"
    assignments = ", ".join(f'"{c}" = {p}' for c in STATE_COLS)
    update_state = Statement.of(
        f"UPDATE dialog_state SET {assignments} WHERE customer_id = {p} AND version = {p}",  # noqa: S608
        STATE_UPDATE_COLS,
        sqlite=sqlite,
        links=("customer_id",),
    )
    conn = connect()
    cur = conn.cursor()
    ids: dict[int, int] = {}  # the engine's customer id -> the baseline's
    latencies: list[float] = []
    started = time.perf_counter()
    for turn in writes:
        t0 = time.perf_counter()
        if sqlite:
            cur.execute("BEGIN IMMEDIATE")
        if turn.new_customer is not None:
            customer, identity, new_state = turn.new_customer
            cur.execute(insert_customer.sql, insert_customer.params(customer))
            cid = ids[turn.customer_id] = cur.lastrowid if sqlite else cur.fetchone()[0]
            cur.execute(insert_identity.sql, insert_identity.params(identity, cid))
            cur.execute(insert_state.sql, insert_state.params(new_state, cid))
        cid = ids[turn.customer_id]
        cur.execute(insert_inbound.sql, insert_inbound.params(turn.inbound, cid))
        inbound_id = cur.lastrowid if sqlite else cur.fetchone()[0]
        for pref in turn.preferences:
            cur.execute(insert_preference.sql, insert_preference.params(pref, cid, inbound_id))
        if turn.replies:
            n = len(turn.replies)
            params = [v for r in turn.replies for v in insert_replies[1].params(r, cid, inbound_id)]
            cur.execute(insert_replies[n].sql, params)
            reply_ids = [cur.lastrowid] if sqlite and n == 1 else sorted(r[0] for r in cur.fetchall())
            assert len(reply_ids) == n
        cur.execute(update_state.sql, update_state.params(turn.state, cid))
        if cur.rowcount != 1:
            raise SystemExit("the baseline's dialog state changed under it")
        conn.commit()
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    conn.close()
    return Result("baseline", len(latencies), elapsed, latencies)


@contextmanager
def sqlite_db(directory: str | None) -> Iterator[str]:
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        path = Path(tmp) / "bench.db"
        upgrade(make_engine(f"sqlite:///{path}"))
        yield str(path)


def sqlite_connect(path: str) -> Callable[[], sqlite3.Connection]:
    """Connections set up as :func:`storage.db.make_engine` sets up its own."""

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    return connect


def postgres_connect(url: str) -> Callable[[], psycopg.Connection[Any]]:
    def connect() -> psycopg.Connection[Any]:
        conn = psycopg.connect(pg_dsn(url))
        conn.adapters.register_loader("json", TextLoader)  # JSON as stored, as on SQLite
        return conn

    return connect


def read_back(connect: Callable[[], Any]) -> Dump:
    conn = connect()
    try:
        return dump(conn.cursor())
    finally:
        conn.close()


def bench_backend(
    backend: str, customers: int, bank: QuestionBank, repeat: int, sqlite_dir: str | None
) -> tuple[Result, Result, float, list[float]]:
    """``repeat`` back-to-back pairs of runs (engine, then baseline): the median engine run, the
    median baseline run, the median of the pairs' time ratios and every pair's ratio. Pairing
    matters: the disk's speed drifts over minutes, and a ratio of two runs made at the same time
    cancels that out."""
    runs = [_bench_once(backend, customers, bank, sqlite_dir) for _ in range(repeat)]
    engines = sorted((r[0] for r in runs), key=lambda r: r.seconds)
    baselines = sorted((r[1] for r in runs), key=lambda r: r.seconds)
    ratios = [e.seconds / b.seconds for e, b in runs]
    return engines[len(runs) // 2], baselines[len(runs) // 2], statistics.median(ratios), ratios


def _bench_once(
    backend: str, customers: int, bank: QuestionBank, sqlite_dir: str | None
) -> tuple[Result, Result]:
    if backend == "sqlite":
        with sqlite_db(sqlite_dir) as path:
            engine = run_engine(f"sqlite:///{path}", customers, bank)
            engine_rows = read_back(sqlite_connect(path))
        with sqlite_db(sqlite_dir) as path:
            writes = turn_writes(as_python(engine_rows, sqlite=True))
            baseline = run_baseline(sqlite_connect(path), writes, sqlite=True)
            check_same(engine_rows, read_back(sqlite_connect(path)))
        return engine, baseline
    server = postgres_server()
    with postgres_db(server, migrate=True) as url:
        engine = run_engine(url, customers, bank)
        engine_rows = read_back(postgres_connect(url))
    with postgres_db(server, migrate=True) as url:
        connect = postgres_connect(url)
        writes = turn_writes(as_python(engine_rows, sqlite=False))
        baseline = run_baseline(connect, writes, sqlite=False)
        check_same(engine_rows, read_back(connect))
    return engine, baseline


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=3, help="runs per backend; the median is shown")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument(
        "--sqlite-dir", help="where the SQLite files go (default: the temp dir; /dev/shm takes the disk out)"
    )
    args = parser.parse_args()
    bank = QuestionBank.load()
    console = Console()
    table = Table(
        title=f"turns through handle() ({args.customers} customers x {len(SCRIPT)} messages, "
        f"median of {args.repeat} runs)"
    )
    for col in (
        "backend",
        "run",
        "turns",
        "turns/s",
        "p50 ms",
        "p99 ms",
        "time vs baseline: median pair (range)",
    ):
        table.add_column(col, justify="right" if col not in ("backend", "run") else "left")
    figures = []
    for backend in args.backends.split(","):
        engine, baseline, ratio, ratios = bench_backend(
            backend, args.customers, bank, args.repeat, args.sqlite_dir
        )
        for r in (baseline, engine):
            table.add_row(
                backend,
                r.name,
                str(r.turns),
                f"{r.rate:,.0f}",
                f"{r.pct(50):.2f}",
                f"{r.pct(99):.2f}",
                f"{ratio:.2f}x ({min(ratios):.2f}-{max(ratios):.2f})" if r is engine else "1.00x",
            )
        figures.append(
            {
                "backend": backend,
                "engine_turns_per_s": round(engine.rate),
                "baseline_turns_per_s": round(baseline.rate),
                "ratio": round(ratio, 2),
                "ratios": [round(r, 2) for r in ratios],
                "baseline_p50_ms": round(baseline.pct(50), 3),
                "baseline_p99_ms": round(baseline.pct(99), 3),
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
