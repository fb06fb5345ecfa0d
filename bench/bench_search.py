"""Console message search over a large message table, next to a bare-driver LIKE baseline.

For each backend it builds a freshly migrated database (a SQLite file, or a throwaway PostgreSQL
database) holding ``--messages`` messages from ``messages / 10`` customers (a name, a phone, an SMS
identity each), texts drawn from a Zipf-distributed vocabulary, 3 channels, a year of dates and
about 1% of inbound messages flagged for review; ``--marketing`` makes that share of them
outbound marketing (broadcasts, offers: default none), which text search leaves out (migration
0009). The data is written with the bare driver (sqlite3 executemany / psycopg COPY); the
full-text index of conversations is built once after the load (SQLite: the FTS5 insert trigger is
dropped during the load, put back verbatim, then ``INSERT INTO message_fts(message_fts)
VALUES('rebuild')``, which reads the non-marketing rows through the view it indexes; PostgreSQL:
the partial GIN index is dropped and recreated from its own definition). Setup is timed and
printed, not judged.

Then a mix of the console's searches, each a first page (50 rows, newest first, with the customer's
name and phone), warm (the mix is run once untimed first), ``--repeat`` times with varying values:
  word, common / rare   one word of text                   SearchFilter(text=...)
  two words             two words, all required            SearchFilter(text="a b")
  who: name / phone     part of a name, digits of a phone  SearchFilter(who=...)
  channel + 7 days      a channel and a date range         SearchFilter(channel=, since=, until=)
  word + channel + 30d  text with a channel and dates      all three
  needs review          the review filter                  SearchFilter(needs_review=True)
  console   ``storage.console_queries.search_messages`` on a SQLAlchemy connection (what the
            conversations page calls): FTS5 MATCH on SQLite, to_tsvector @@ plainto_tsquery on
            PostgreSQL
  baseline  the same SQL written by hand and run with the bare driver (sqlite3 / psycopg), with
            the text matched by ``LIKE '%word%'`` (ILIKE on PostgreSQL) instead of the full-text
            index, marketing left out as the console does: what search would cost without it.
            The non-text filters are the same predicates on the same indexes, so for those kinds
            the ratio is the cost of the query layer.
and prints p50/p99 per kind and over the whole mix. Target (issue): p99 under 200 ms at 1,000,000
messages.

    python bench/bench_search.py [--messages 1000000] [--backends sqlite,postgresql] [--repeat 20]
                                 [--marketing 0.0]
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from _shared import pg_dsn, postgres_db, postgres_server
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from storage.console_queries import PAGE_SIZE, SearchFilter, search_messages
from storage.db import make_engine, upgrade

TARGET_MESSAGES = 1_000_000
TARGET_P99_MS = 200.0
SEED = 2026
CHUNK = 100_000
START = datetime(2025, 11, 1, tzinfo=UTC)
SPAN = timedelta(days=365)
CHANNELS = ("sms", "telegram", "terminal")
CHANNEL_WEIGHTS = (0.6, 0.3, 0.1)
VOCABULARY = 20_000
FIRST = [
    "Dana",
    "Eve",
    "Finn",
    "Gus",
    "Hana",
    "Ivy",
    "Jon",
    "Kai",
    "Lena",
    "Marco",
    "Nia",
    "Omar",
    "Pia",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Uma",
    "Vic",
    "Wes",
    "Xena",
    "Yuri",
    "Zoe",
    "Ada",
    "Ben",
    "Cleo",
    "Dev",
    "Elif",
    "Femi",
    "Greta",
]
LAST = [
    "Smith",
    "Jones",
    "Garcia",
    "Chen",
    "Novak",
    "Okafor",
    "Silva",
    "Kowalski",
    "Haddad",
    "Ivanova",
    "Tanaka",
    "Moreau",
    "Rossi",
    "Berg",
    "Murphy",
    "Kim",
    "Patel",
    "Costa",
    "Nagy",
    "Lund",
]
# The most frequent words: what customers and the bot actually say; the rest are made up.
COMMON = [
    "the",
    "you",
    "a",
    "to",
    "plan",
    "i",
    "my",
    "data",
    "is",
    "it",
    "no",
    "yes",
    "and",
    "for",
    "please",
    "price",
    "contract",
    "month",
    "text",
    "minutes",
    "sms",
    "roaming",
    "cheaper",
    "bill",
    "help",
    "about",
    "what",
    "how",
    "much",
    "gb",
    "unlimited",
    "evenings",
]
_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pa", "be", "do", "fi", "gu", "ha"]


def word(rank: int) -> str:
    """The word of frequency rank ``rank`` (0 = most frequent)."""
    if rank < len(COMMON):
        return COMMON[rank]
    n, parts = rank, []
    for _ in range(4):
        n, r = divmod(n, len(_SYLLABLES))
        parts.append(_SYLLABLES[r])
    return "".join(parts) + "x"


# -- the synthetic book ---------------------------------------------------------------------------


def customer_rows(customers: int) -> Iterator[tuple[int, str, str]]:
    """(id, name, phone) of every customer."""
    for cid in range(1, customers + 1):
        name = f"{FIRST[cid % len(FIRST)]} {LAST[(cid // len(FIRST)) % len(LAST)]}"
        yield cid, name, f"+1415{cid:07d}"


def message_chunk(
    start: int, count: int, customers: int, total: int, marketing: float = 0.0
) -> Iterator[tuple[int, int, str, str, str, str, bool, str, bool]]:
    """(id, customer_id, channel, direction, address, text, needs_review, created_at, marketing)
    of messages ``start + 1 ..``; the same ``start`` always draws the same rows. created_at grows
    with the id. A ``marketing`` share of them are outbound marketing (same kind of text)."""
    rng = np.random.default_rng([SEED, start])
    ranks = np.arange(1, VOCABULARY + 1, dtype=np.float64)
    p = 1.0 / ranks**1.05
    p /= p.sum()
    lengths = rng.integers(3, 16, size=count)
    words = rng.choice(VOCABULARY, size=int(lengths.sum()), p=p).tolist()
    vocab = [word(i) for i in range(VOCABULARY)]
    cust = rng.integers(1, customers + 1, size=count).tolist()
    chan = rng.choice(len(CHANNELS), size=count, p=CHANNEL_WEIGHTS).tolist()
    inbound = (rng.random(count) < 0.5).tolist()
    review = (rng.random(count) < 0.01).tolist()
    offer = (rng.random(count) < marketing).tolist()  # drawn last: share 0 leaves the rest as it was
    pos = 0
    for b in range(count):
        mid = start + b + 1
        n = int(lengths[b])
        body = " ".join(vocab[w] for w in words[pos : pos + n])
        pos += n
        cid = cust[b]
        created = START + SPAN * (mid / total)
        yield (
            mid,
            cid,
            CHANNELS[chan[b]],
            "in" if inbound[b] and not offer[b] else "out",
            f"+1415{cid:07d}",
            body,
            bool(inbound[b] and review[b] and not offer[b]),
            created.strftime("%Y-%m-%d %H:%M:%S.%f"),
            bool(offer[b]),
        )


@dataclass(frozen=True, slots=True)
class Setup:
    messages: int
    customers: int
    load_seconds: float
    index_seconds: float


def build_sqlite(path: Path, messages: int, marketing: float) -> Setup:
    """A migrated SQLite file with the book; the FTS5 index rebuilt once after the load."""
    upgrade(make_engine(f"sqlite:///{path}"))
    customers = max(1, messages // 10)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    (trigger,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'message_fts_ai'"
    ).fetchone()
    t0 = time.perf_counter()
    conn.execute("BEGIN")
    conn.execute("DROP TRIGGER message_fts_ai")
    conn.executemany(
        "INSERT INTO customer (id, name, phone, marketing_consent, created_at) "
        "VALUES (?, ?, ?, 1, '2025-01-01 00:00:00.000000')",
        customer_rows(customers),
    )
    conn.executemany(
        "INSERT INTO channel_identity (channel, address, customer_id, verified, created_at) "
        "VALUES ('sms', ?, ?, 1, '2025-01-01 00:00:00.000000')",
        ((phone, cid) for cid, _, phone in customer_rows(customers)),
    )
    for start in range(0, messages, CHUNK):
        conn.executemany(
            "INSERT INTO message (id, customer_id, channel, direction, address, text, needs_review, "
            "created_at, marketing, attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            message_chunk(start, min(CHUNK, messages - start), customers, messages, marketing),
        )
    conn.execute(trigger)
    conn.execute("COMMIT")
    t1 = time.perf_counter()
    conn.execute("INSERT INTO message_fts(message_fts) VALUES('rebuild')")
    conn.execute("ANALYZE")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    t2 = time.perf_counter()
    conn.close()
    return Setup(messages, customers, t1 - t0, t2 - t1)


def build_postgres(url: str, messages: int, marketing: float) -> Setup:
    """The same in a migrated PostgreSQL database, written with COPY; the GIN index rebuilt after."""
    upgrade(make_engine(url))
    customers = max(1, messages // 10)
    with psycopg.connect(pg_dsn(url)) as conn, conn.cursor() as cur:
        cur.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_message_text_fts'")
        row = cur.fetchone()
        assert row is not None
        gin = str(row[0])
        t0 = time.perf_counter()
        cur.execute("DROP INDEX ix_message_text_fts")
        with cur.copy("COPY customer (id, name, phone, marketing_consent, created_at) FROM STDIN") as copy:
            for cid, name, phone in customer_rows(customers):
                copy.write_row((cid, name, phone, True, "2025-01-01 00:00:00+00"))
        with cur.copy(
            "COPY channel_identity (channel, address, customer_id, verified, created_at) FROM STDIN"
        ) as copy:
            for cid, _, phone in customer_rows(customers):
                copy.write_row(("sms", phone, cid, True, "2025-01-01 00:00:00+00"))
        with cur.copy(
            "COPY message (id, customer_id, channel, direction, address, text, needs_review, created_at, "
            "marketing, attempts) FROM STDIN"
        ) as copy:
            for start in range(0, messages, CHUNK):
                for r in message_chunk(start, min(CHUNK, messages - start), customers, messages, marketing):
                    copy.write_row((*r[:7], r[7] + "+00", r[8], 0))
        for table in ("customer", "channel_identity", "message"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}")  # noqa: S608
        conn.commit()
        t1 = time.perf_counter()
        cur.execute(gin)
        conn.commit()
    with psycopg.connect(pg_dsn(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    t2 = time.perf_counter()
    return Setup(messages, customers, t1 - t0, t2 - t1)


# -- the query mix --------------------------------------------------------------------------------

KINDS = (
    "word, common",
    "word, rare",
    "two words",
    "who: name",
    "who: phone",
    "channel + 7 days",
    "word + channel + 30 days",
    "needs review",
)


def query_mix(messages: int, repeat: int) -> list[tuple[str, SearchFilter]]:
    """``repeat`` filters of every kind, values drawn at random (seeded), interleaved by kind."""
    rng = random.Random(SEED)
    customers = max(1, messages // 10)

    def day() -> date:
        return (START + SPAN * rng.random()).date()

    def pick(kind: str) -> SearchFilter:
        match kind:
            case "word, common":
                return SearchFilter(text=word(rng.randrange(5, 30)))
            case "word, rare":  # about 3-10 occurrences a million messages
                return SearchFilter(text=word(rng.randrange(5_000, 15_000)))
            case "two words":
                return SearchFilter(text=f"{word(rng.randrange(20, 300))} {word(rng.randrange(20, 300))}")
            case "who: name":
                return SearchFilter(who=rng.choice(LAST).lower() if rng.random() < 0.5 else rng.choice(FIRST))
            case "who: phone":
                return SearchFilter(who=f"{rng.randrange(1, customers + 1):07d}")
            case "channel + 7 days":
                since = day()
                return SearchFilter(
                    channel=rng.choice(CHANNELS), since=since, until=since + timedelta(days=6)
                )
            case "word + channel + 30 days":
                since = day()
                return SearchFilter(
                    text=word(rng.randrange(30, 500)),
                    channel=rng.choice(CHANNELS),
                    since=since,
                    until=since + timedelta(days=29),
                )
            case "needs review":
                return SearchFilter(needs_review=True)
        raise AssertionError(kind)

    return [(kind, pick(kind)) for _ in range(repeat) for kind in KINDS]


def _baseline_sql(f: SearchFilter, *, postgres: bool) -> tuple[str, list[Any]]:
    """The console's query written by hand; text by LIKE instead of the full-text index."""
    p = "%s" if postgres else "?"
    like = "ILIKE" if postgres else "LIKE"  # SQLite's LIKE is case-insensitive for ASCII already
    where: list[str] = []
    params: list[Any] = []
    for w in f.text.split()[:16]:
        where.append(f"m.text {like} {p}")
        params.append(f"%{w}%")
    if f.text.split():  # text search leaves out marketing (migration 0009), so must this
        where.append("NOT m.marketing" if postgres else "m.marketing = 0")
    if f.who:
        digits = "".join(ch for ch in f.who if ch.isdigit())
        who = [f"lower(c2.name) LIKE {p}"]
        params.append(f"%{f.who.lower()}%")
        if len(digits) >= 3:
            who.append(f"c2.phone LIKE {p}")
            who.append(f"c2.id IN (SELECT customer_id FROM channel_identity WHERE address LIKE {p})")  # noqa: S608
            params += [f"%{digits}%", f"%{digits}%"]
        # Only placeholders and fixed SQL are pasted into these strings; every value is bound.
        where.append(f"m.customer_id IN (SELECT c2.id FROM customer c2 WHERE {' OR '.join(who)})")  # noqa: S608
    if f.channel:
        where.append(f"m.channel = {p}")
        params.append(f.channel)
    fmt: Callable[[date], Any] = (
        (lambda d: datetime.combine(d, datetime.min.time(), tzinfo=UTC))
        if postgres
        else (lambda d: f"{d.isoformat()} 00:00:00.000000")
    )
    if f.since:
        where.append(f"m.created_at >= {p}")
        params.append(fmt(f.since))
    if f.until:
        where.append(f"m.created_at < {p}")
        params.append(fmt(f.until + timedelta(days=1)))
    if f.needs_review:
        where.append("m.needs_review = " + ("true" if postgres else "1"))
    sql = (
        "SELECT m.id, m.customer_id, m.channel, m.direction, m.address, m.text, m.question_key, "  # noqa: S608
        "m.parsed_value, m.confidence, m.intent, m.needs_review, m.reply_to_id, m.status, m.attempts, "
        "m.error, m.created_at, m.sent_at, m.delivered_at, c.name, c.phone "
        "FROM message m LEFT OUTER JOIN customer c ON c.id = m.customer_id "
        f"WHERE {' AND '.join(where) or '1 = 1'} ORDER BY m.id DESC LIMIT {PAGE_SIZE}"
    )
    return sql, params


@dataclass(slots=True)
class Timings:
    by_kind: dict[str, list[float]] = field(default_factory=dict)
    rows: dict[str, list[int]] = field(default_factory=dict)

    def add(self, kind: str, seconds: float, rows: int) -> None:
        self.by_kind.setdefault(kind, []).append(seconds)
        self.rows.setdefault(kind, []).append(rows)

    def all(self) -> list[float]:
        return [s for v in self.by_kind.values() for s in v]


def pct(values: Sequence[float], q: int) -> float:
    if len(values) == 1:
        return values[0] * 1000
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000


def run_mix(
    engine: Engine, raw: Any, mix: list[tuple[str, SearchFilter]], *, postgres: bool
) -> tuple[Timings, Timings]:
    """Each filter through the console's query, then the baseline, alternating (same cache state)."""
    console, baseline = Timings(), Timings()
    with engine.connect() as conn:
        for timed in (False, True):  # the first pass warms the caches
            for kind, f in mix:
                t0 = time.perf_counter()
                rows = search_messages(conn, f)
                t1 = time.perf_counter()
                sql, params = _baseline_sql(f, postgres=postgres)
                cur = raw.cursor()
                cur.execute(sql, params)
                found = cur.fetchall()
                t2 = time.perf_counter()
                if postgres:
                    raw.commit()
                if timed:
                    console.add(kind, t1 - t0, len(rows))
                    baseline.add(kind, t2 - t1, len(found))
            conn.commit()
    return console, baseline


def bench_backend(
    backend: str, messages: int, repeat: int, marketing: float
) -> tuple[Setup, Timings, Timings]:
    mix = query_mix(messages, repeat)
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bench_search.db"
            setup = build_sqlite(path, messages, marketing)
            engine = make_engine(f"sqlite:///{path}")
            raw = sqlite3.connect(path)
            try:
                console, baseline = run_mix(engine, raw, mix, postgres=False)
            finally:
                raw.close()
                engine.dispose()
            return setup, console, baseline
    with postgres_db(postgres_server()) as url:
        setup = build_postgres(url, messages, marketing)
        engine = make_engine(url)
        with psycopg.connect(pg_dsn(url)) as pg:
            console, baseline = run_mix(engine, pg, mix, postgres=True)
        engine.dispose()
        return setup, console, baseline


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=TARGET_MESSAGES)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--repeat", type=int, default=20, help="timed searches of each kind")
    parser.add_argument(
        "--marketing", type=float, default=0.0, help="share of messages that are outbound marketing"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args()
    out = Console(width=140)
    figures: list[dict[str, Any]] = []
    for backend in args.backends.split(","):
        out.print(f"building {backend}: {args.messages:,} messages ...")
        setup, console, baseline = bench_backend(backend, args.messages, args.repeat, args.marketing)
        out.print(
            f"setup ({backend}, bare driver, not judged): {setup.messages:,} messages, {setup.customers:,} "
            f"customers loaded in {setup.load_seconds:.1f} s, full-text index built in "
            f"{setup.index_seconds:.1f} s"
        )
        table = Table(
            title=f"console search on {backend}: {args.messages:,} messages ({args.marketing:.0%} "
            f"marketing), first page of {PAGE_SIZE}, {args.repeat} searches a kind (warm)"
        )
        for col in (
            "kind",
            "rows (median)",
            "console p50 ms",
            "console p99 ms",
            "baseline p50 ms",
            "baseline p99 ms",
            "p50 vs baseline",
        ):
            table.add_column(col, justify="left" if col == "kind" else "right")
        for kind in (*KINDS, "all"):
            c = console.all() if kind == "all" else console.by_kind[kind]
            b = baseline.all() if kind == "all" else baseline.by_kind[kind]
            rows = "" if kind == "all" else f"{statistics.median(console.rows[kind]):.0f}"
            table.add_row(
                f"[bold]{kind}[/bold]" if kind == "all" else kind,
                rows,
                f"{pct(c, 50):.1f}",
                f"{pct(c, 99):.1f}",
                f"{pct(b, 50):.1f}",
                f"{pct(b, 99):.1f}",
                f"{pct(c, 50) / pct(b, 50):.2f}x",
            )
        out.print(table)
        worst = max(KINDS, key=lambda k: pct(console.by_kind[k], 99))
        p99 = pct(console.all(), 99)
        scale = "" if args.messages == TARGET_MESSAGES else f" (at {args.messages:,} messages, not 1,000,000)"
        out.print(
            f"target (p99 under {TARGET_P99_MS:.0f} ms){scale}: mix p99 {p99:.1f} ms, worst kind "
            f"'{worst}' p99 {pct(console.by_kind[worst], 99):.1f} ms: "
            f"{'met' if pct(console.by_kind[worst], 99) < TARGET_P99_MS else 'NOT met'}"
        )
        figures.append(
            {
                "backend": backend,
                "messages": args.messages,
                "marketing": args.marketing,
                "load_s": round(setup.load_seconds, 1),
                "index_s": round(setup.index_seconds, 1),
                "console": {
                    k: [round(pct(v, 50), 2), round(pct(v, 99), 2)] for k, v in console.by_kind.items()
                },
                "baseline": {
                    k: [round(pct(v, 50), 2), round(pct(v, 99), 2)] for k, v in baseline.by_kind.items()
                },
            }
        )
    if args.json:
        print(json.dumps(figures))


if __name__ == "__main__":
    main()
