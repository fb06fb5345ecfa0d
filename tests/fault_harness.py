"""A fault run, shared by tests/test_faults.py and bench/bench_faults.py.

Real processes on a private PostgreSQL (tests/private_postgres.py): ``rapport run`` (webhooks,
scheduler, delivery) and ``rapport worker`` x N, the Twilio stand-in as the provider. Customers
text it with signed webhooks while the database is stopped for a while and a worker and the web
app are killed with SIGKILL and restarted; then the figures are counted from the database and
from what the stand-in received.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from twilio.request_validator import RequestValidator

from storage.db import make_engine
from storage.outreach_models import DELIVERY_ATTEMPT
from storage.tables import MESSAGE
from tests.delivery_harness import worker_env
from tests.private_postgres import PrivatePostgres, free_port
from tests.twilio_standin import ACCOUNT, FROM, TOKEN, TwilioStandin

TEXTS = ("hi", "1", "2", "$40", "what do you know about me?", "3", "evenings", "thanks")


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and how hard: customers texting every ``every`` seconds for ``load`` seconds;
    the database stops ``outage_at`` seconds in for ``outage`` seconds; a worker and the web app
    are killed ``kill_after`` seconds after it is back and restarted ``down_for`` seconds later."""

    customers: int = 30
    every: float = 2.0
    load: float = 30.0
    outage_at: float = 4.0
    outage: float = 15.0
    kill_after: float = 3.0
    down_for: float = 2.0
    workers: int = 2
    lease: float = 2.0
    drain_timeout: float = 90.0
    faults: bool = True  # False: the same load without faults (a baseline)
    after_fault: float = 8.0  # at least this much load after the last fault ended


@dataclass
class Figures:
    """What a fault run counts."""

    inbound: int = 0
    ok: int = 0  # answered 2xx by the app
    refused: int = 0  # 4xx/5xx: Twilio would retry or report it
    unreachable: int = 0  # no answer (the app was down)
    stored: int = 0  # of the 2xx
    answered: int = 0  # of the 2xx, with a reply the provider accepted
    duplicates: int = 0  # sends at the provider beyond one per reply
    undelivered: int = 0  # replies not accepted by the provider at the end
    left_sent: int = 0  # replies whose delivery callback was lost (still "sent")
    max_wait_after_fault: float = 0.0  # seconds from max(inbound, fault end) to its first reply
    latency_p50: float = 0.0  # seconds from an inbound to its first reply, all 2xx
    latency_max: float = 0.0
    leader_regained_after: float | None = None  # seconds after the database came back
    leader_at_end: bool = False
    healthz_at_end: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    duplicate_notes: list[str] = field(default_factory=list)  # what each duplicate was
    healthz_in_outage: Counter[int] = field(default_factory=Counter)  # status code -> times seen
    scheduler_in_outage: set[str] = field(default_factory=set)  # its states seen in /healthz
    log_tracebacks: int = 0

    def lines(self) -> list[str]:
        """The figures as lines of text."""
        regained = (
            f"{self.leader_regained_after:.1f} s" if self.leader_regained_after is not None else "never"
        )
        return [
            f"inbound webhooks        {self.inbound}",
            f"  answered 2xx          {self.ok}",
            f"  refused (4xx/5xx)     {self.refused}",
            f"  no answer (app down)  {self.unreachable}",
            f"2xx stored              {self.stored} / {self.ok}",
            f"2xx answered            {self.answered} / {self.ok}",
            f"duplicate replies       {self.duplicates}",
            f"undelivered replies     {self.undelivered}",
            f"callback lost (sent)    {self.left_sent}",
            f"max wait after fault    {self.max_wait_after_fault:.1f} s",
            f"reply latency           p50 {self.latency_p50:.2f} s, max {self.latency_max:.1f} s",
            f"leader regained after   {regained}; leading at the end: {self.leader_at_end}",
            f"/healthz in the outage  {dict(self.healthz_in_outage)}",
            f"  scheduler states      {sorted(self.scheduler_in_outage)}",
            f"/healthz at the end     {self.healthz_at_end}",
            f"outbox                  {dict(self.statuses)}",
            f"tracebacks in the logs  {self.log_tracebacks}",
            *self.duplicate_notes,
        ]


@dataclass
class _Sent:
    sid: str
    phone: str
    at: float
    status: int  # 0: no answer


class Cluster:
    """``rapport run`` and ``rapport worker`` processes on one database, sending to ``standin``."""

    def __init__(self, url: str, standin: TwilioStandin, workdir: Path, plan: Plan) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.env = worker_env(
            url,
            standin,
            public_base_url=self.base,
            sms_rate_per_second=100,
            claim_lease_seconds=plan.lease,
            scheduler_leader_retry_seconds=1,
        )
        self.web: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []

    def _spawn(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        with (self.workdir / f"{name}.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "bot", *args], env=self.env, cwd=self.workdir, stdout=log, stderr=log
            )

    def start_web(self) -> None:
        self.web = self._spawn("run", "--port", str(self.port), name="web")

    def start_worker(self, index: int) -> None:
        proc = self._spawn("worker", name=f"worker{index}")
        if index < len(self.workers):
            self.workers[index] = proc
        else:
            self.workers.append(proc)

    def healthz(self) -> tuple[int, dict[str, Any]]:
        """(status code, body) of ``/healthz``; (0, {}) when the app does not answer."""
        try:
            response = httpx.get(self.base + "/healthz", timeout=3)
            return response.status_code, response.json()
        except (httpx.HTTPError, ValueError):
            return 0, {}

    def wait_up(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while self.healthz()[0] == 0:
            if self.web is not None and self.web.poll() is not None:
                raise AssertionError(f"rapport run exited:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"rapport run did not answer in {timeout:.0f} s:\n{self.logs()}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in [*self.workers, *([self.web] if self.web else [])]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*self.workers, *([self.web] if self.web else [])]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def logs(self) -> str:
        return "\n".join(
            f"== {path.name}\n{path.read_text(errors='replace')[-4000:]}"
            for path in sorted(self.workdir.glob("*.log"))
        )


class Customers:
    """Customers texting the app with signed webhooks, each one message after another."""

    def __init__(self, base: str, plan: Plan) -> None:
        self.url = base + "/sms/inbound"
        self.plan = plan
        self.sent: list[_Sent] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._validator = RequestValidator(TOKEN)
        self._threads = [
            threading.Thread(target=self._texting, args=(f"+1415{8_000_000 + i:07d}", i), daemon=True)
            for i in range(plan.customers)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _texting(self, phone: str, index: int) -> None:
        rng = random.Random(index)
        time.sleep(rng.uniform(0, self.plan.every))
        with httpx.Client(timeout=15) as client:
            n = 0
            while not self._stop.is_set():
                sid = f"SM{uuid.uuid4().hex}"
                form = {
                    "MessageSid": sid,
                    "SmsMessageSid": sid,
                    "AccountSid": ACCOUNT,
                    "From": phone,
                    "To": FROM,
                    "Body": TEXTS[n % len(TEXTS)],
                    "NumMedia": "0",
                    "NumSegments": "1",
                    "ApiVersion": "2010-04-01",
                }
                signature = self._validator.compute_signature(self.url, form)
                at = time.time()
                try:
                    status = client.post(
                        self.url, data=form, headers={"X-Twilio-Signature": signature}
                    ).status_code
                except httpx.HTTPError:
                    status = 0
                with self._lock:
                    self.sent.append(_Sent(sid, phone, at, status))
                n += 1
                self._stop.wait(self.plan.every * rng.uniform(0.7, 1.3))


def run_faults(
    server: PrivatePostgres, workdir: Path, plan: Plan, say: Callable[[str], None] = lambda _: None
) -> Figures:
    """One fault run on a new database of ``server``; its figures."""
    url = server.new_database()
    figures = Figures()
    with TwilioStandin(ACCOUNT, TOKEN) as standin:
        cluster = Cluster(url, standin, workdir, plan)
        customers = Customers(cluster.base, plan)
        try:
            cluster.start_web()
            for i in range(plan.workers):
                cluster.start_worker(i)
            cluster.wait_up()
            started = time.monotonic()
            customers.start()
            say(f"{plan.customers} customers texting")
            fault_end = time.time()
            if plan.faults:
                time.sleep(plan.outage_at)
                fault_end = _faults(server, cluster, plan, figures, say)
            time.sleep(max(plan.after_fault, plan.load - (time.monotonic() - started)))
            customers.stop()
            say("load stopped; draining")
            _drain(url, plan.drain_timeout)
            time.sleep(1.5)  # the last status callbacks
            figures.healthz_at_end, body = cluster.healthz()
            figures.leader_at_end = body.get("parts", {}).get("scheduler", {}).get("state") == "leader"
        finally:
            customers.stop()
            cluster.stop()
        _count(figures, url, customers.sent, standin, fault_end)
        figures.log_tracebacks = cluster.logs().count("Traceback")
    return figures


def _faults(
    server: PrivatePostgres, cluster: Cluster, plan: Plan, figures: Figures, say: Callable[[str], None]
) -> float:
    """Stop the database for a while, then kill the web app and a worker and restart them; when
    the last fault ended (``time.time()``)."""
    server.stop()
    say(f"database stopped for {plan.outage:.0f} s")
    outage_ends = time.monotonic() + plan.outage
    while time.monotonic() < outage_ends:
        code, body = cluster.healthz()
        figures.healthz_in_outage[code] += 1
        figures.scheduler_in_outage.add(body.get("parts", {}).get("scheduler", {}).get("state", "?"))
        time.sleep(0.5)
    server.start()
    back = time.monotonic()
    say("database back")
    deadline = back + 60
    while time.monotonic() < deadline:
        _, body = cluster.healthz()
        if body.get("parts", {}).get("scheduler", {}).get("state") == "leader":
            figures.leader_regained_after = time.monotonic() - back
            break
        time.sleep(0.2)
    time.sleep(max(0.0, plan.kill_after - (time.monotonic() - back)))
    assert cluster.web is not None
    cluster.web.send_signal(signal.SIGKILL)
    cluster.workers[0].send_signal(signal.SIGKILL)
    cluster.web.wait()
    cluster.workers[0].wait()
    say("web app and worker 0 killed (SIGKILL)")
    time.sleep(plan.down_for)
    cluster.start_web()
    cluster.start_worker(0)
    cluster.wait_up()
    fault_end = time.time()
    say("restarted")
    return fault_end


def _drain(url: str, timeout: float) -> None:
    db = make_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with db.connect() as conn:
                waiting = conn.execute(
                    select(MESSAGE.c.id).where(
                        MESSAGE.c.direction == "out", MESSAGE.c.status.in_(("queued", "sending"))
                    )
                ).first()
            if waiting is None:
                return
            time.sleep(0.5)
    finally:
        db.dispose()


def _explain(conn: Any, orphan: Any) -> str:
    """What the database knows about the reply a duplicate send was a copy of."""
    a = DELIVERY_ATTEMPT
    rows = conn.execute(
        select(MESSAGE.c.id, MESSAGE.c.status, MESSAGE.c.provider_message_id, MESSAGE.c.text)
        .where(MESSAGE.c.direction == "out", MESSAGE.c.address == orphan.to)
        .order_by(MESSAGE.c.id)
    ).all()
    lines = [f"{orphan.sid} to {orphan.to} at {orphan.at:.2f}: {orphan.body[:60]!r}"]
    for row in rows:
        if row.text[:30] in orphan.body:
            tries = conn.execute(
                select(a.c.attempt, a.c.outcome, a.c.error, a.c.provider_message_id, a.c.at)
                .where(a.c.message_id == row.id)
                .order_by(a.c.id)
            ).all()
            lines.append(f"  row {row.id} {row.status} {row.provider_message_id} {[tuple(t) for t in tries]}")
    return "\n".join(lines)


def _count(figures: Figures, url: str, sent: list[_Sent], standin: TwilioStandin, fault_end: float) -> None:
    db = make_engine(url)
    try:
        with db.connect() as conn:
            inbound = {
                r.provider_message_id: r.id
                for r in conn.execute(
                    select(MESSAGE.c.id, MESSAGE.c.provider_message_id).where(MESSAGE.c.direction == "in")
                )
            }
            replies = conn.execute(
                select(
                    MESSAGE.c.id, MESSAGE.c.reply_to_id, MESSAGE.c.status, MESSAGE.c.provider_message_id
                ).where(MESSAGE.c.direction == "out")
            ).all()
            accepted = {s.sid: s.at for s in standin.sent}
            recorded_sids = {r.provider_message_id for r in replies}
            for orphan in (s for s in standin.sent if s.sid not in recorded_sids):
                figures.duplicate_notes.append(_explain(conn, orphan))
    finally:
        db.dispose()
    first_reply: dict[int, float] = {}
    recorded: set[str] = set()
    for reply in replies:
        sid = reply.provider_message_id
        if sid in accepted:
            recorded.add(sid)
            if reply.reply_to_id is not None:
                first_reply[reply.reply_to_id] = min(first_reply.get(reply.reply_to_id, 1e18), accepted[sid])
    figures.statuses = Counter(str(r.status) for r in replies)
    figures.duplicates = len(standin.sent) - len(recorded)
    figures.undelivered = sum(1 for r in replies if r.provider_message_id not in accepted)
    figures.left_sent = figures.statuses["sent"]
    figures.inbound = len(sent)
    ok = [s for s in sent if 200 <= s.status < 300]
    figures.ok = len(ok)
    figures.unreachable = sum(1 for s in sent if s.status == 0)
    figures.refused = len(sent) - figures.ok - figures.unreachable
    figures.stored = sum(1 for s in ok if s.sid in inbound)
    waits, latencies = [], []
    for s in ok:
        message_id = inbound.get(s.sid)
        if message_id is not None and message_id in first_reply:
            figures.answered += 1
            waits.append(first_reply[message_id] - max(s.at, fault_end))
            latencies.append(first_reply[message_id] - s.at)
        else:
            waits.append(float("inf"))
    figures.max_wait_after_fault = max(waits, default=0.0)
    latencies.sort()
    figures.latency_p50 = latencies[len(latencies) // 2] if latencies else 0.0
    figures.latency_max = latencies[-1] if latencies else 0.0
