"""The scheduler's jobs and job store on both databases: jobs run from the bound context, are
stored in the database with the stated misfire policy, and a new scheduler finds them."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, time

import pytest
from sqlalchemy import Engine, MetaData, Table, inspect, select

from dialogs.engine import DialogEngine
from schedulers import jobs
from schedulers.jobs import GRACE, JobContext, ScheduleConfig, Scheduler, ensure_jobs, job_specs
from schedulers.leader import AlwaysLeader
from schedulers.nudges import NudgeConfig
from schedulers.policy import PolicyConfig
from storage.tables import MESSAGE
from tests.schedulers.test_proactive import MORNING_NY, customer


@pytest.fixture
def table(db: Engine) -> Iterator[str]:
    """A job-store table of its own, dropped afterwards (it is not one of Rapport's tables)."""
    name = f"apscheduler_test_{uuid.uuid4().hex[:8]}"
    yield name
    if inspect(db).has_table(name):
        Table(name, MetaData(), autoload_with=db).drop(db)


def context(dialog: DialogEngine, now: datetime = MORNING_NY) -> JobContext:
    return JobContext(
        db=dialog.db,
        advisor=dialog.advisor,
        bank=dialog.bank,
        policy=PolicyConfig(),
        nudges=NudgeConfig(),
        billing=None,
        clock=lambda: now,
    )


def test_job_functions_run_the_cores_with_the_bound_context(db: Engine, dialog: DialogEngine) -> None:
    customer(db)
    jobs.bind(context(dialog))
    try:
        scanned, nudged = jobs.daily_scan(), jobs.send_nudges()
        assert scanned is not None and scanned.queued == 1
        assert nudged is not None and nudged.queued == 0
        assert jobs.deliver_billing() is None  # no BILLING_WEBHOOK_URL
        assert jobs.recover() == 0  # no idle rate buckets
        assert jobs.prepare_broadcasts() == {}  # none waiting
    finally:
        jobs.bind(None)
    with db.connect() as conn:
        assert conn.execute(select(MESSAGE.c.intent).where(MESSAGE.c.direction == "out")).scalars().all() == [
            "suggestion"
        ]
    with pytest.raises(RuntimeError, match="no job context"):
        jobs.daily_scan()


def test_jobs_persist_with_the_misfire_policy_and_a_restart_keeps_them(
    db: Engine, dialog: DialogEngine, table: str
) -> None:
    ctx = context(dialog)
    first = jobs.make_apscheduler(db, table=table)
    first.start(paused=True)
    ensure_jobs(first, job_specs(ScheduleConfig(scan_at=time(9, 30)), ctx))
    stored = {job.id: job for job in first.get_jobs()}
    first.shutdown()
    assert set(stored) == {
        jobs.SCAN_JOB,
        jobs.NUDGE_JOB,
        jobs.RECOVER_JOB,
        jobs.BROADCAST_JOB,
        jobs.HANDOFF_JOB,
        jobs.DASHBOARD_JOB,
    }
    for job in stored.values():
        assert job.coalesce is True
        assert job.misfire_grace_time == GRACE[job.id].total_seconds()
        assert job.max_instances == 1
    assert stored[jobs.SCAN_JOB].func_ref == "schedulers.jobs:daily_scan"

    again = jobs.make_apscheduler(db, table=table)  # a restart: a new scheduler, the same database
    again.start(paused=True)
    seen = {job.id: job for job in again.get_jobs()}
    assert set(seen) == set(stored)
    ensure_jobs(again, job_specs(ScheduleConfig(scan_at=time(9, 30)), ctx))
    scan = again.get_job(jobs.SCAN_JOB)
    assert scan is not None and scan.next_run_time == stored[jobs.SCAN_JOB].next_run_time  # kept
    ensure_jobs(again, job_specs(ScheduleConfig(scan_at=time(7, 0)), ctx))  # the setting changed
    moved = again.get_job(jobs.SCAN_JOB)
    assert moved is not None and (moved.next_run_time.hour, moved.next_run_time.minute) == (7, 0)
    again.shutdown()


def test_billing_job_follows_the_setting(db: Engine, dialog: DialogEngine, table: str) -> None:
    from schedulers.billing import BillingConfig

    ctx = context(dialog)
    with_billing = dataclasses.replace(ctx, billing=BillingConfig("http://billing.invalid", "s"))
    aps = jobs.make_apscheduler(db, table=table)
    aps.start(paused=True)
    ensure_jobs(aps, job_specs(ScheduleConfig(), with_billing))
    assert aps.get_job(jobs.BILLING_JOB) is not None
    ensure_jobs(aps, job_specs(ScheduleConfig(), ctx))
    assert aps.get_job(jobs.BILLING_JOB) is None
    aps.shutdown()


def test_the_scheduler_leads_runs_recovery_and_stores_its_jobs(
    db: Engine, dialog: DialogEngine, table: str
) -> None:
    scheduler = Scheduler(
        context(dialog, datetime.now(UTC)), ScheduleConfig(leader_retry=0.1), lock=AlwaysLeader(), table=table
    )
    scheduler.start()
    try:
        assert scheduler.became_leader.wait(5)
        assert scheduler.is_leader
    finally:
        scheduler.stop()
        jobs.bind(None)
    assert not scheduler.is_leader
    assert inspect(db).has_table(table)
