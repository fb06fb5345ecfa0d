"""Leader election: one process runs the scheduler; another takes over when it dies (PostgreSQL
advisory lock; a file lock on SQLite)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, MetaData, Table, create_engine, inspect, text

from dialogs.engine import DialogEngine
from schedulers.jobs import JobContext, ScheduleConfig, Scheduler
from schedulers.leader import FileLeaderLock, PostgresLeaderLock, leader_lock
from schedulers.nudges import NudgeConfig
from schedulers.policy import PolicyConfig
from storage.db import make_engine
from tests.conftest import BACKENDS

needs_pg = pytest.mark.skipif("postgresql" not in BACKENDS, reason="PostgreSQL not among the backends")


@pytest.fixture
def engines(postgres_url: str) -> Iterator[tuple[Engine, Engine]]:
    """Two engines on one PostgreSQL database, as two processes would have."""
    a, b = make_engine(postgres_url), make_engine(postgres_url)
    yield a, b
    a.dispose()
    b.dispose()


def kill(postgres_url: str, lock: PostgresLeaderLock) -> None:
    """What the server sees when the leader's process dies: its connection is gone."""
    assert lock._conn is not None
    pid = lock._conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    admin = create_engine(postgres_url)
    with admin.connect() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    admin.dispose()


@needs_pg
def test_one_postgres_process_holds_the_lock_and_another_takes_over_when_it_dies(
    postgres_url: str, engines: tuple[Engine, Engine]
) -> None:
    a, b = PostgresLeaderLock(engines[0]), PostgresLeaderLock(engines[1])
    assert a.try_acquire() and a.held()
    assert not b.try_acquire()
    kill(postgres_url, a)
    assert not a.held()
    assert b.try_acquire() and b.held()
    assert not a.try_acquire()
    b.release()
    assert a.try_acquire()
    a.release()


@needs_pg
def test_a_waiting_scheduler_takes_over_within_seconds(
    postgres_url: str, engines: tuple[Engine, Engine], dialog_pg: DialogEngine
) -> None:
    table = f"apscheduler_test_{uuid.uuid4().hex[:8]}"
    schedule = ScheduleConfig(leader_retry=0.2)

    def scheduler(db: Engine) -> Scheduler:
        ctx = JobContext(
            db=db,
            advisor=dialog_pg.advisor,
            bank=dialog_pg.bank,
            policy=PolicyConfig(),
            nudges=NudgeConfig(),
            billing=None,
        )
        return Scheduler(ctx, schedule, table=table)

    first, second = scheduler(engines[0]), scheduler(engines[1])
    try:
        first.start()
        assert first.became_leader.wait(5)
        second.start()
        assert not second.became_leader.wait(1)  # the lock is taken: it keeps waiting
        first.stop()  # the leader goes away
        assert second.became_leader.wait(5)
        assert second.is_leader and not first.is_leader
    finally:
        first.stop()
        second.stop()
        if inspect(engines[0]).has_table(table):
            Table(table, MetaData(), autoload_with=engines[0]).drop(engines[0])


@pytest.fixture
def dialog_pg(postgres_url: str, bank: object) -> Iterator[DialogEngine]:
    from dialogs.bank import QuestionBank
    from dialogs.engine import EngineConfig

    assert isinstance(bank, QuestionBank)
    engine = make_engine(postgres_url)
    yield DialogEngine(engine, bank, EngineConfig())
    engine.dispose()


def test_on_sqlite_a_file_lock_lets_one_process_lead(tmp_path: Path) -> None:
    path = tmp_path / "rapport.db.scheduler.lock"
    a, b = FileLeaderLock(path), FileLeaderLock(path)
    assert a.try_acquire() and a.held()
    assert not b.try_acquire()
    a.release()  # as when the process dies: the OS drops the lock with the file
    assert b.try_acquire()
    b.release()


def test_the_lock_fits_the_database(tmp_path: Path) -> None:
    lock = leader_lock(make_engine(f"sqlite:///{tmp_path / 'r.db'}"))
    assert isinstance(lock, FileLeaderLock) and lock.path == tmp_path / "r.db.scheduler.lock"
