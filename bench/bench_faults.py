"""Faults under load, a longer run than the test: what is lost, repeated or late when the database
stops and processes are killed.

On a PostgreSQL server of its own (a temporary directory, never the shared one), ``rapport run``
and ``--workers`` ``rapport worker`` processes serve ``--customers`` customers texting through
signed webhooks for ``--load`` seconds, with the Twilio stand-in as the provider. Two runs:
  baseline   the same load, no fault: reply latency when nothing goes wrong.
  faults     the database stopped for ``--outage`` seconds, then the web app and a worker killed
             with SIGKILL and restarted.
Printed for each: inbound webhooks, how many got a 2xx, how many of those are stored and answered,
duplicate replies at the provider, undelivered replies, the longest wait after the fault ended,
after how long a scheduler leader was back, and the reply latency (the faults run against the
baseline). Targets (issue 12): every 2xx stored and answered, 0 duplicates, 0 undelivered, no
customer waiting more than 60 s after the fault, the scheduler leading again.

    python bench/bench_faults.py [--customers 60] [--load 120] [--outage 15] [--workers 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the harness lives in tests/

from tests.fault_harness import Figures, Plan, run_faults
from tests.private_postgres import PrivatePostgres, available


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=60)
    parser.add_argument("--every", type=float, default=2.0, help="seconds between a customer's texts")
    parser.add_argument("--load", type=float, default=120.0, help="seconds of load")
    parser.add_argument("--outage", type=float, default=15.0, help="seconds the database is stopped")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    console = Console()
    why = available()
    if why is not None:
        console.print(f"[red]cannot run a private PostgreSQL:[/red] {why}")
        raise SystemExit(2)
    common = {"customers": args.customers, "every": args.every, "load": args.load, "workers": args.workers}
    server = PrivatePostgres()
    try:
        runs: dict[str, Figures] = {}
        for name, plan in (
            ("baseline", Plan(**common, faults=False)),
            ("faults", Plan(**common, outage=args.outage, outage_at=args.load / 5, kill_after=10.0)),
        ):
            with tempfile.TemporaryDirectory(prefix=f"rapport-bench-{name}-") as workdir:
                console.print(f"[bold]{name}[/bold]")
                runs[name] = run_faults(
                    server, Path(workdir), plan, say=lambda line: console.print("  " + line)
                )
    finally:
        server.close()
    table = Table(title=f"Faults: {args.customers} customers, {args.load:.0f} s, outage {args.outage:.0f} s")
    table.add_column("figure")
    for name in runs:
        table.add_column(name, justify="right")
    for label, value in _rows(runs["baseline"], runs["faults"]):
        table.add_row(label, *value)
    console.print(table)
    base, hit = runs["baseline"], runs["faults"]
    ratio = hit.latency_p50 / base.latency_p50 if base.latency_p50 else float("nan")
    console.print(f"reply latency p50 with faults / baseline: {ratio:.2f}x")
    for note in [*base.duplicate_notes, *hit.duplicate_notes]:
        console.print(note, markup=False)
    ok = (
        hit.stored == hit.ok == hit.answered
        and hit.duplicates == 0
        and hit.undelivered == 0
        and hit.max_wait_after_fault <= 60
        and hit.leader_regained_after is not None
        and hit.leader_at_end
    )
    console.print("[green]targets met[/green]" if ok else "[red]targets missed[/red]")


def _rows(base: Figures, hit: Figures) -> list[tuple[str, tuple[str, str]]]:
    def both(get: Callable[[Figures], object]) -> tuple[str, str]:
        return str(get(base)), str(get(hit))

    def secs(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} s"

    return [
        ("inbound webhooks", both(lambda f: f.inbound)),
        ("answered 2xx", both(lambda f: f.ok)),
        ("refused 4xx/5xx", both(lambda f: f.refused)),
        ("no answer (app down)", both(lambda f: f.unreachable)),
        ("2xx stored", both(lambda f: f.stored)),
        ("2xx answered", both(lambda f: f.answered)),
        ("duplicate replies", both(lambda f: f.duplicates)),
        ("undelivered replies", both(lambda f: f.undelivered)),
        ("delivery callback lost", both(lambda f: f.left_sent)),
        ("max wait after the fault", both(lambda f: f"{f.max_wait_after_fault:.1f} s")),
        ("leader regained after", both(lambda f: secs(f.leader_regained_after))),
        ("leading at the end", both(lambda f: f.leader_at_end)),
        ("/healthz in the outage", both(lambda f: dict(f.healthz_in_outage) or "-")),
        ("reply latency p50", both(lambda f: f"{f.latency_p50:.2f} s")),
        ("reply latency max", both(lambda f: f"{f.latency_max:.1f} s")),
        ("tracebacks in the logs", both(lambda f: f.log_tracebacks)),
    ]


if __name__ == "__main__":
    main()
