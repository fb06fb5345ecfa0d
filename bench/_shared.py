"""What the benchmark scripts share: throwaway PostgreSQL databases, peak memory, child runs.

The scripts run by path (``python bench/bench_fit.py``), so they import this as ``_shared``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from storage.db import make_engine, normalize_url, upgrade

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def postgres_server() -> str:
    """The PostgreSQL server to make throwaway databases on (``RAPPORT_BENCH_POSTGRES_URL``)."""
    return os.environ.get("RAPPORT_BENCH_POSTGRES_URL", PG_DEFAULT)


@contextmanager
def postgres_db(server: str, *, migrate: bool = False) -> Iterator[str]:
    """A new database on ``server`` (migrated when asked), dropped afterwards; its URL."""
    server = normalize_url(server)
    name = f"rapport_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    try:
        if migrate:
            engine = make_engine(url)
            upgrade(engine)
            engine.dispose()
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def pg_dsn(url: str) -> str:
    """A SQLAlchemy URL as a plain libpq connection string, for psycopg itself."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def peak_memory() -> int:
    """Peak resident memory of this process, in bytes (VmHWM: unlike ru_maxrss, not inherited
    from the parent that started this process)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(script: str, args: list[str]) -> dict[str, Any]:
    """Run ``script`` with ``args`` in a fresh interpreter; its JSON answer is its last line."""
    proc = subprocess.run(
        [sys.executable, script, *args], capture_output=True, text=True, check=False, env=os.environ.copy()
    )
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def mib(n: float) -> str:
    """Bytes as MiB."""
    return f"{n / 2**20:,.0f} MiB"
