"""What the delivery-worker tests and bench/bench_pacing.py share: a broadcast queued for many
SMS customers, and ``rapport worker`` processes pointed at the Twilio stand-in."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from datetime import time as clock_time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, insert, select

from bot.runtime import build_runtime
from bot.settings import Settings
from schedulers import broadcasts as bc
from schedulers.policy import PolicyConfig, Window
from storage.models import utcnow
from storage.tables import CUSTOMER, MESSAGE
from tests.twilio_standin import ACCOUNT, FROM, TOKEN, TwilioStandin

ALL_DAY = PolicyConfig(window=Window(clock_time(0), clock_time(23, 59, 59, 999999)))
TEMPLATE = "Hi {{ name }}, our spring offer is here. Reply STOP to opt out."


def phone(i: int) -> str:
    """The phone number of test customer ``i``."""
    return f"+1415{7_000_000 + i:07d}"


def queue_broadcast(db_url: str, customers: int, *, start: int = 0) -> int:
    """Add ``customers`` SMS customers with marketing consent and queue a broadcast to all of
    them, due now; the broadcast's id."""
    runtime = build_runtime(Settings(database_url=db_url, _env_file=None))
    try:
        now = utcnow()
        with runtime.db.begin() as conn:
            conn.execute(
                insert(CUSTOMER),
                [
                    {
                        "name": f"Customer {i}",
                        "phone": phone(i),
                        "marketing_consent": True,
                        "timezone": "UTC",
                        "created_at": now,
                    }
                    for i in range(start, start + customers)
                ],
            )
        advisor = runtime.dialog.advisor
        broadcast_id = bc.create(
            runtime.db,
            advisor,
            name="spring",
            segment="consent",
            template=TEMPLATE,
            created_by="test",
            now=now,
        )
        report = bc.send(runtime.db, advisor, ALL_DAY, broadcast_id, now)
        assert report.queued == customers, report
        return broadcast_id
    finally:
        runtime.db.dispose()


def worker_env(db_url: str, standin: TwilioStandin, **settings: Any) -> dict[str, str]:
    """The environment of a ``rapport worker`` sending SMS through ``standin``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TWILIO_", "TELEGRAM_"))}
    values: Mapping[str, Any] = {
        "DATABASE_URL": db_url,
        "TWILIO_ACCOUNT_SID": ACCOUNT,
        "TWILIO_AUTH_TOKEN": TOKEN,
        "TWILIO_FROM_NUMBER": FROM,
        "TWILIO_API_BASE_URL": standin.url,
        "PUBLIC_BASE_URL": "https://rapport.example.com",
        "LOG_LEVEL": "WARNING",
        **{k.upper(): v for k, v in settings.items()},
    }
    env.update({k: str(v) for k, v in values.items()})
    return env


def start_worker(env: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """``rapport worker`` in a child process (``cwd`` holds no .env file); what it prints goes
    to ``cwd/worker.log``."""
    with (cwd / "worker.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "bot", "worker"], env=dict(env), cwd=cwd, stdout=log, stderr=log
        )


def worker_log(cwd: Path) -> str:
    """What the workers started in ``cwd`` printed."""
    path = cwd / "worker.log"
    return path.read_text(errors="replace") if path.exists() else ""


def outbox_counts(db: Engine) -> Counter[str]:
    """Outbound messages by delivery status."""
    with db.connect() as conn:
        rows = conn.execute(
            select(MESSAGE.c.status, func.count())
            .where(MESSAGE.c.direction == "out")
            .group_by(MESSAGE.c.status)
        ).all()
    return Counter({str(s): int(n) for s, n in rows})


def wait_drained(db: Engine, timeout: float) -> Counter[str]:
    """The outbox's counts once nothing is queued or sending (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        counts = outbox_counts(db)
        if not counts["queued"] and not counts["sending"]:
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"the outbox did not drain in {timeout:.0f} s: {dict(counts)}")
        time.sleep(0.2)


def per_second(standin: TwilioStandin) -> Counter[int]:
    """How many messages the stand-in accepted in each whole second of wall-clock time."""
    with standin._lock:
        return Counter(int(s.at) for s in standin.sent)
