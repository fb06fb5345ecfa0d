"""The scheduler: APScheduler 3 with its jobs persisted in Rapport's database, run by one leader.

Jobs are module-level functions without arguments, so the job store keeps only a reference
(``schedulers.jobs:daily_scan``); they take their inputs from the :class:`JobContext` the running
process bound with :func:`bind` and call plain cores that take explicit inputs
(:func:`schedulers.proactive.scan`, :func:`schedulers.nudges.nudge`,
:func:`schedulers.broadcasts.prepare_due`, :func:`schedulers.billing.deliver_switches`). A job
that finds the database unavailable logs one line and waits for its next run.

Missed runs (no leader at the time, a restart): every job has ``coalesce=True`` (however many runs
were missed, it runs once) and a ``misfire_grace_time`` (how late it may still run; later than
that the run is skipped and the next regular one is waited for): the daily scan 6 hours, nudges
30 minutes, waiting broadcasts 5 minutes (a broadcast whose run was skipped is prepared by the
next one: it waits until then), billing 1 minute, pruning idle rate buckets 5 minutes, the
handoff timeouts (every minute) 1 minute. ``max_instances=1``. Jobs are safe to overlap anyway:
each customer is decided under their dialog lock.

``BackgroundScheduler``, not ``AsyncIOScheduler``: the job store and the jobs are synchronous
database work (a scan may take a while, SQLite may wait on its write lock) that must not block the
web app's event loop; its own thread and a small thread pool keep them off it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from typing import Any, TypeVar

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from dialogs.advisor import Advisor
from dialogs.bank import QuestionBank
from schedulers.billing import BillingConfig, BillingReport, deliver_switches
from schedulers.broadcasts import SendReport, prepare_due, settle
from schedulers.dashboard import RollupReport, rollup
from schedulers.handoff import close_idle_conversations, notify_timeouts
from schedulers.health import Part, describe
from schedulers.leader import LeaderLock, leader_lock
from schedulers.nudges import NudgeConfig, NudgeReport, nudge
from schedulers.policy import PolicyConfig
from schedulers.proactive import ScanReport, scan
from schedulers.ratelimit import SharedLimiter
from storage.db import ping
from storage.models import utcnow

log = logging.getLogger(__name__)

JOBSTORE_TABLE = "apscheduler_jobs"  # APScheduler's own table, created by it (not a migration)
SCAN_JOB, NUDGE_JOB, BILLING_JOB, RECOVER_JOB = "proactive-scan", "nudges", "billing", "recover-stuck"
BROADCAST_JOB, HANDOFF_JOB = "broadcasts", "handoff-timeouts"
DASHBOARD_JOB = "dashboard-rollup"
GRACE = {
    SCAN_JOB: timedelta(hours=6),
    BROADCAST_JOB: timedelta(minutes=5),
    NUDGE_JOB: timedelta(minutes=30),
    BILLING_JOB: timedelta(minutes=1),
    RECOVER_JOB: timedelta(minutes=5),
    HANDOFF_JOB: timedelta(minutes=1),
    DASHBOARD_JOB: timedelta(minutes=30),
}


@dataclass(frozen=True, slots=True)
class JobContext:
    """What the jobs work with, built once by the process that runs the scheduler."""

    db: Engine
    advisor: Advisor
    bank: QuestionBank
    policy: PolicyConfig
    nudges: NudgeConfig
    billing: BillingConfig | None
    clock: Callable[[], datetime] = utcnow
    handoff_timeout: timedelta = timedelta(minutes=15)
    conversation_idle: timedelta = timedelta(hours=24)  # RESUME_AFTER_HOURS


@dataclass(frozen=True, slots=True)
class ScheduleConfig:
    """When jobs run (settings ``PROACTIVE_SCAN_AT`` in UTC, ``NUDGE_EVERY_MINUTES``,
    ``SCHEDULER_LEADER_RETRY_SECONDS``); billing runs every minute when configured, and waiting
    broadcasts are looked for every minute."""

    scan_at: time = time(9, 0)
    nudge_every: timedelta = timedelta(hours=1)
    billing_every: timedelta = timedelta(minutes=1)
    broadcasts_every: timedelta = timedelta(minutes=1)
    leader_retry: float = 5.0


_context: JobContext | None = None


def bind(context: JobContext | None) -> None:
    """Make ``context`` what this process's jobs use (None: unbind)."""
    global _context
    _context = context


def _bound() -> JobContext:
    if _context is None:
        raise RuntimeError("no job context bound in this process: call schedulers.jobs.bind() first")
    return _context


_T = TypeVar("_T")


def _quiet_outage(job: Callable[[], _T]) -> Callable[[], _T | None]:
    """A job that logs one line, not a traceback, when the database is unavailable (the next
    regular run tries again); other errors still reach APScheduler's log with their traceback."""

    @functools.wraps(job)
    def run() -> _T | None:
        try:
            return job()
        except DBAPIError as exc:
            if not exc.connection_invalidated and not isinstance(exc, OperationalError):
                raise
            log.warning("job %s skipped: database unavailable (%s)", job.__name__, describe(exc))
            return None

    return run


@_quiet_outage
def daily_scan() -> ScanReport:
    """Job: the daily proactive-suggestion scan (deferred messages go out via the outbox loop)."""
    ctx = _bound()
    report = scan(ctx.db, ctx.advisor, ctx.policy, ctx.clock())
    log.info(
        "proactive scan: %d considered, %d queued, %d deferred, skipped %s",
        report.considered,
        report.queued,
        report.deferred,
        dict(report.skipped_by_reason),
    )
    return report


@_quiet_outage
def send_nudges() -> NudgeReport:
    """Job: nudge customers who left the profile half done."""
    ctx = _bound()
    report = nudge(ctx.db, ctx.bank, ctx.nudges, ctx.policy, ctx.clock())
    log.info("nudges: %d queued, skipped %s", report.queued, dict(report.skipped_by_reason))
    return report


@_quiet_outage
def deliver_billing() -> BillingReport | None:
    """Job: POST due switch requests to billing (nothing when no webhook is configured)."""
    ctx = _bound()
    if ctx.billing is None:
        return None
    return deliver_switches(ctx.db, ctx.billing, now=ctx.clock())


@_quiet_outage
def prepare_broadcasts() -> dict[int, SendReport]:
    """Job: prepare the broadcasts scheduled for now (``rapport broadcast send --at``), and record
    how far their messages have moved the prepared ones (sending, done)."""
    ctx = _bound()
    reports = prepare_due(ctx.db, ctx.advisor, ctx.policy, ctx.clock())
    for broadcast_id, state in settle(ctx.db).items():
        log.info("broadcast %d is %s", broadcast_id, state)
    for broadcast_id, report in reports.items():
        log.info(
            "broadcast %d prepared: %d queued (%d deferred), excluded %s",
            broadcast_id,
            report.queued,
            sum(report.deferred.values()),
            dict(report.excluded),
        )
    return reports


@_quiet_outage
def recover() -> int:
    """Job: forget idle rate buckets; how many went. (Claims of a dead worker are taken over
    by the delivery loops themselves: see :func:`schedulers.delivery.release_expired`.)"""
    return SharedLimiter(_bound().db).prune()


@_quiet_outage
def handoff_timeouts() -> list[int]:
    """Job: tell customers nobody answered within ``HANDOFF_TIMEOUT_MINUTES`` (once each); close
    idle conversations with the bot."""
    ctx = _bound()
    now = ctx.clock()
    queued = notify_timeouts(ctx.db, timeout=ctx.handoff_timeout, now=now)
    if queued:
        log.info("handoff: told %d waiting customers nobody is free yet", len(queued))
    closed = close_idle_conversations(ctx.db, idle=ctx.conversation_idle, now=now)
    if closed:
        log.info("handoff: closed %d idle conversations with the bot", closed)
    return queued


@_quiet_outage
def dashboard_rollup() -> RollupReport:
    """Job: roll the dashboard's last days up (and snapshot the book as of now)."""
    ctx = _bound()
    report = rollup(ctx.db, ctx.bank, ctx.clock())
    log.info(
        "dashboard: rolled up %d days (%d rows, %d cohort rows)", report.days, report.rows, report.cohort_rows
    )
    return report


def _ref(func: Callable[..., Any]) -> str:
    return f"{func.__module__}:{func.__qualname__}"


def job_specs(schedule: ScheduleConfig, context: JobContext) -> dict[str, tuple[str, BaseTrigger]]:
    """Job id -> (function reference, trigger) for this configuration."""
    specs: dict[str, tuple[str, BaseTrigger]] = {
        SCAN_JOB: (
            _ref(daily_scan),
            CronTrigger(hour=schedule.scan_at.hour, minute=schedule.scan_at.minute, timezone=UTC),
        ),
        NUDGE_JOB: (_ref(send_nudges), IntervalTrigger(seconds=schedule.nudge_every.total_seconds())),
        RECOVER_JOB: (_ref(recover), IntervalTrigger(minutes=5)),
        BROADCAST_JOB: (
            _ref(prepare_broadcasts),
            IntervalTrigger(seconds=schedule.broadcasts_every.total_seconds()),
        ),
        HANDOFF_JOB: (_ref(handoff_timeouts), IntervalTrigger(minutes=1)),
        DASHBOARD_JOB: (_ref(dashboard_rollup), IntervalTrigger(hours=1)),
    }
    if context.billing is not None:
        specs[BILLING_JOB] = (
            _ref(deliver_billing),
            IntervalTrigger(seconds=schedule.billing_every.total_seconds()),
        )
    return specs


def ensure_jobs(scheduler: BackgroundScheduler, specs: dict[str, tuple[str, BaseTrigger]]) -> None:
    """Add the jobs, keeping a stored job whose function and trigger are unchanged (so its
    missed run still fires under the misfire policy), replacing changed ones, removing those
    no longer configured."""
    for job_id in (BILLING_JOB,):
        if job_id not in specs and scheduler.get_job(job_id) is not None:
            scheduler.remove_job(job_id)
    for job_id, (func, trigger) in specs.items():
        policy = {
            "coalesce": True,
            "misfire_grace_time": int(GRACE[job_id].total_seconds()),
            "max_instances": 1,
        }
        existing = scheduler.get_job(job_id)
        if existing is not None and existing.func_ref == func and str(existing.trigger) == str(trigger):
            scheduler.modify_job(job_id, **policy)
            continue
        scheduler.add_job(func, trigger, id=job_id, name=job_id, replace_existing=True, **policy)


def make_apscheduler(db: Engine, *, table: str = JOBSTORE_TABLE) -> BackgroundScheduler:
    """An APScheduler whose jobs live in ``db`` (table ``table``), in UTC, with 2 worker threads."""
    return BackgroundScheduler(
        jobstores={"default": SQLAlchemyJobStore(engine=db, tablename=table)},
        executors={"default": ThreadPoolExecutor(2)},
        timezone=UTC,
    )


class Scheduler:
    """Runs the jobs in this process while it is the leader; the others wait to take over.

    A thread tries the :class:`~schedulers.leader.LeaderLock` every ``leader_retry`` seconds.
    On winning it starts APScheduler; when the lock is lost (its connection died) it stops
    APScheduler and tries again like the others. Any error in a round (the database is down, the
    lock file cannot be opened) makes it give leadership up, log one line per outage, back off
    (capped exponential) and try again: the thread never dies, and once the database is back one
    process leads again. ``health`` says ``leader``, ``follower`` or ``down``, and since when.
    """

    def __init__(
        self,
        context: JobContext,
        schedule: ScheduleConfig | None = None,
        *,
        lock: LeaderLock | None = None,
        table: str = JOBSTORE_TABLE,
    ) -> None:
        self.context = context
        self.schedule = schedule or ScheduleConfig()
        self.lock = lock or leader_lock(context.db)
        self.table = table
        self.apscheduler: BackgroundScheduler | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.became_leader = threading.Event()
        self.health = Part(
            "scheduler", logger=log, backoff_cap=max(self.schedule.leader_retry, 1.0), state="stopped"
        )

    @property
    def is_leader(self) -> bool:
        return self.apscheduler is not None

    def start(self) -> None:
        """Bind the context and start competing for leadership (returns at once)."""
        bind(self.context)
        self._stop.clear()
        self.health.set("starting")
        self._thread = threading.Thread(target=self._run, name="rapport-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the jobs (waiting for a running one) and give leadership up."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self.health.set("stopped")

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._round()
                    wait = self.schedule.leader_retry
                except Exception as exc:  # the database (or anything else): never end the thread
                    self._step_down()
                    with contextlib.suppress(Exception):
                        self.lock.release()
                    wait = self.health.down(exc)
                self._stop.wait(wait)
        finally:
            self._step_down()
            with contextlib.suppress(Exception):
                self.lock.release()

    def _round(self) -> None:
        """One look at the lock: take the lead, keep it, or lose it."""
        if self.apscheduler is None:
            if self.lock.try_acquire():
                self._lead()
        elif not self.lock.held():
            log.warning("lost the scheduler lock: stopping the jobs here")
            self._step_down()
            if not self.lock.try_acquire():  # raises while the database is down
                self.health.up("follower")
                return
            self._lead()
        if self.is_leader:  # the lock may outlive the database (a lock file): check it too
            ping(self.context.db)
        self.health.up("leader" if self.is_leader else "follower")

    def _lead(self) -> None:
        aps = make_apscheduler(self.context.db, table=self.table)
        try:
            aps.start(paused=True)  # the job store is open: stored jobs can be looked at
            ensure_jobs(aps, job_specs(self.schedule, self.context))
            aps.resume()
        except BaseException:
            with contextlib.suppress(Exception):
                aps.shutdown(wait=False)
            self.lock.release()
            raise
        log.info("this process now runs the scheduler")
        self.apscheduler = aps
        self.became_leader.set()

    def _step_down(self) -> None:
        aps, self.apscheduler = self.apscheduler, None
        self.became_leader.clear()
        if aps is not None:
            with contextlib.suppress(Exception):
                aps.shutdown(wait=True)


async def run_scheduler(scheduler: Scheduler, stop: asyncio.Event) -> None:
    """Run ``scheduler`` until ``stop`` is set (for an app's lifespan, next to the outbox loop)."""
    await asyncio.to_thread(scheduler.start)
    try:
        await stop.wait()
    finally:
        await asyncio.to_thread(scheduler.stop)
