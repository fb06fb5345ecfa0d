"""Delivery pacing: how close ``rapport worker`` processes keep to a channel's rate limit, measured
where the provider would measure it (at the Twilio stand-in, per whole second of wall-clock time).

For each case it queues a broadcast to ``--messages`` SMS customers (SQLite file, or a throwaway
PostgreSQL database), starts the workers, and counts what the stand-in accepted in every second:
  paced      ``SMS_RATE_PER_SECOND=--rate``: achieved rate (messages in the full seconds / their
             count) as a share of the limit, the busiest second, and the seconds over the limit.
  baseline   the same delivery with no effective limit (``SMS_RATE_PER_SECOND=100000``): what the
             workers and the stand-in can do at most, so the paced figure is the limiter's doing.
Cases: SQLite with one worker; PostgreSQL with one and with ``--workers`` workers sharing the
limit. Target (issue): achieved rate at least 95% of the limit, zero seconds over it.

    python bench/bench_pacing.py [--rate 50] [--messages 1000] [--workers 3] [--backend both]
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from _shared import postgres_db, postgres_server
from rich.console import Console
from rich.table import Table

from storage.db import make_engine, upgrade

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the stand-in lives in tests/

from tests.delivery_harness import queue_broadcast, start_worker, wait_drained, worker_env
from tests.twilio_standin import ACCOUNT, TOKEN, TwilioStandin

UNLIMITED = 100_000


@dataclass(frozen=True, slots=True)
class Run:
    """What the stand-in saw in one delivery."""

    messages: int
    seconds: Counter[int]
    elapsed: float

    @property
    def full(self) -> list[int]:
        """Counts of the whole seconds (the first and last are partial)."""
        return [self.seconds[s] for s in sorted(self.seconds)[1:-1]]

    @property
    def rate(self) -> float:
        """Messages per second over the full seconds (overall when there are none)."""
        return sum(self.full) / len(self.full) if self.full else self.messages / self.elapsed


@contextmanager
def fresh(backend: str) -> Iterator[str]:
    """A new migrated database of ``backend``, gone afterwards; its URL."""
    if backend == "postgresql":
        with postgres_db(postgres_server(), migrate=True) as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'pacing.db'}"
        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        yield url


def deliver(backend: str, messages: int, workers: int, rate: float) -> Run:
    """Queue a broadcast to ``messages`` customers and deliver it with ``workers`` workers."""
    with fresh(backend) as db_url:
        return _deliver(db_url, messages, workers, rate)


def _deliver(db_url: str, messages: int, workers: int, rate: float) -> Run:
    queue_broadcast(db_url, messages)
    db = make_engine(db_url)
    with tempfile.TemporaryDirectory() as cwd, TwilioStandin(ACCOUNT, TOKEN, post_callbacks=False) as standin:
        env = worker_env(db_url, standin, sms_rate_per_second=rate)
        began = time.monotonic()
        procs = [start_worker(env, Path(cwd)) for _ in range(workers)]
        try:
            wait_drained(db, timeout=messages / min(rate, 50) * 4 + 60)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                proc.wait(timeout=60)
        elapsed = time.monotonic() - began
        seconds = Counter(int(s.at) for s in standin.sent)
        sent = len(standin.sent)
    db.dispose()
    if sent != messages:
        raise SystemExit(f"{sent} of {messages} messages arrived")
    return Run(sent, seconds, elapsed)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=50.0, help="SMS_RATE_PER_SECOND for the paced runs")
    parser.add_argument("--messages", type=int, default=1000, help="recipients per run")
    parser.add_argument("--workers", type=int, default=3, help="workers in the PostgreSQL multi-worker case")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    console = Console()
    table = Table(title=f"Delivery pacing: limit {args.rate:g}/s, {args.messages:,} messages a run")
    for column in ("case", "achieved", "of limit", "busiest s", "s over", "baseline (no limit)"):
        table.add_column(column, justify="right" if column != "case" else "left")
    cases: list[tuple[str, str, int]] = []
    if args.backend in ("sqlite", "both"):
        cases.append(("SQLite, 1 worker", "sqlite", 1))
    if args.backend in ("postgresql", "both"):
        cases += [("PostgreSQL, 1 worker", "postgresql", 1)]
        cases += [(f"PostgreSQL, {args.workers} workers", "postgresql", args.workers)]
    for name, backend, workers in cases:
        console.print(f"[dim]{name}: baseline, then paced...[/dim]")
        baseline = deliver(backend, args.messages, workers, UNLIMITED)
        paced = deliver(backend, args.messages, workers, args.rate)
        over = sum(1 for n in paced.seconds.values() if n > args.rate)
        table.add_row(
            name,
            f"{paced.rate:,.1f}/s",
            f"{paced.rate / args.rate:.1%}",
            f"{max(paced.seconds.values())}",
            f"{over}",
            f"{baseline.rate:,.0f}/s ({baseline.rate / args.rate:.1f}x the limit)",
        )
    console.print(table)
    console.print("Target: achieved >= 95% of the limit, 0 seconds over it.")


if __name__ == "__main__":
    main()
