"""Faults: the database goes away, processes die. Nothing is lost, frozen or sent twice.

PostgreSQL outages are real: these tests start a PostgreSQL server of their own in a temporary
directory (tests/private_postgres.py; never the shared one) and stop it. SQLite failures are
injected at the driver's edge (an engine event that raises), never inside Rapport's code.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, event, select
from sqlalchemy.exc import OperationalError

from dialogs.bank import QuestionBank
from dialogs.engine import DialogEngine, EngineConfig
from schedulers.jobs import JobContext, ScheduleConfig, Scheduler
from schedulers.nudges import NudgeConfig
from schedulers.policy import PolicyConfig
from storage.db import make_engine
from storage.outreach_models import DELIVERY_ATTEMPT
from storage.tables import MESSAGE
from tests.delivery_harness import queue_broadcast, start_worker, wait_drained, worker_env, worker_log
from tests.private_postgres import PrivatePostgres, available
from tests.twilio_standin import ACCOUNT, TOKEN, SmsApp, TwilioStandin, serve_sms_app

needs_private_pg = pytest.mark.skipif(available() is not None, reason=str(available()))


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    """A PostgreSQL server of this module's own (stopped and started by the tests)."""
    server = PrivatePostgres()
    try:
        yield server
    finally:
        server.close()


class Outage:
    """Makes every statement on ``engine`` fail while on (the driver's edge, as when the
    database is unreachable)."""

    def __init__(self, engine: Engine) -> None:
        self.on = threading.Event()
        event.listen(engine, "before_cursor_execute", self._check)

    def _check(self, *_: Any) -> None:
        if self.on.is_set():
            raise OperationalError("SELECT", {}, ConnectionRefusedError("connection refused (injected)"))


def wait_for(check: Any, timeout: float, what: str) -> float:
    """Seconds until ``check()`` was true (AssertionError after ``timeout``)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.05)
    return time.monotonic() - started


def scheduler(db: Engine, bank: QuestionBank, table: str) -> Scheduler:
    dialog = DialogEngine(db, bank, EngineConfig())
    context = JobContext(
        db=db, advisor=dialog.advisor, bank=bank, policy=PolicyConfig(), nudges=NudgeConfig(), billing=None
    )
    return Scheduler(context, ScheduleConfig(leader_retry=0.2), table=table)


# -- 1. scheduler leadership survives any database error -----------------------------------------


@needs_private_pg
def test_after_a_postgres_outage_exactly_one_scheduler_leads_again(
    private_pg: PrivatePostgres, bank: QuestionBank, caplog: pytest.LogCaptureFixture
) -> None:
    url = private_pg.new_database()
    engines = [make_engine(url), make_engine(url)]
    table = f"apscheduler_{uuid.uuid4().hex[:8]}"
    first, second = (scheduler(e, bank, table) for e in engines)
    caplog.set_level(logging.WARNING, logger="schedulers.jobs")
    try:
        first.start()
        assert first.became_leader.wait(10)
        second.start()
        wait_for(lambda: second.health.state == "follower", 10, "the second process follows")

        private_pg.stop()  # "connection refused" for every process from now on
        wait_for(lambda: not first.is_leader, 10, "the leader notices it lost its lock")
        time.sleep(3)  # several rounds of retries while the database is away
        assert not first.is_leader and not second.is_leader
        assert {first.health.state, second.health.state} == {"down"}
        assert first.health.last_error and "refused" in first.health.last_error.lower()
        private_pg.start()

        regained = wait_for(lambda: first.is_leader or second.is_leader, 15, "a leader again")
        time.sleep(1)  # and only one
        assert sum(s.is_leader for s in (first, second)) == 1
        assert {first.health.state, second.health.state} == {"leader", "follower"}
        assert regained < 10
    finally:
        first.stop()
        second.stop()
        for engine in engines:
            engine.dispose()
    outage_lines = [r for r in caplog.records if r.getMessage().startswith("scheduler: database unavailable")]
    assert len(outage_lines) == 2, [r.getMessage() for r in outage_lines]  # one per process
    assert not any(r.exc_info for r in caplog.records)  # no traceback per try


def test_after_a_sqlite_outage_the_scheduler_leads_again(
    tmp_path: Path, bank: QuestionBank, caplog: pytest.LogCaptureFixture
) -> None:
    db = make_engine(f"sqlite:///{tmp_path / 'rapport.db'}")
    from storage.db import upgrade

    upgrade(db)
    outage = Outage(db)
    first = scheduler(db, bank, "apscheduler_jobs")
    caplog.set_level(logging.WARNING, logger="schedulers.jobs")
    outage.on.set()  # down from the start: leading needs the job store
    try:
        first.start()
        wait_for(lambda: first.health.state == "down", 30, "the scheduler reports the outage")
        time.sleep(1.5)
        assert not first.is_leader and first._thread is not None and first._thread.is_alive()
        outage.on.clear()
        wait_for(lambda: first.is_leader, 30, "the scheduler leads once the database is back")
        assert first.health.state == "leader"
        assert not first.lock.try_acquire() or first.lock.held()  # it holds the lock file
    finally:
        first.stop()
        db.dispose()
    said = [m for r in caplog.records if (m := r.getMessage()).startswith("scheduler: database unavailable")]
    assert len(said) == 1, said  # one line for the outage, however many tries


# -- 2. at most once for every message a provider accepted ---------------------------------------


def outbound(db: Engine) -> list[Any]:
    """The outbound rows, oldest first (read on the test's own engine, outside any outage)."""
    with db.connect() as conn:
        return list(conn.execute(select(MESSAGE).where(MESSAGE.c.direction == "out").order_by(MESSAGE.c.id)))


def sent_once(app: SmsApp, db: Engine, replies: int) -> list[Any]:
    """The outbound rows once all ``replies`` are sent; asserts each went to Twilio exactly once,
    under the SID recorded on its row."""
    app.wait_until(
        lambda: len(rows := outbound(db)) == replies and all(r.status == "sent" for r in rows), timeout=30
    )
    out = outbound(db)
    at_twilio = [s.sid for s in app.standin.sent]
    assert sorted(at_twilio) == sorted(r.provider_message_id for r in out)  # one send each, no extra
    return out


@pytest.fixture
def reader(db_url: str) -> Iterator[Engine]:
    """The test's own engine on the app's database (faults are injected into the app's)."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_a_reply_twilio_accepted_is_not_sent_again_when_the_database_fails_right_after(
    db_url: str, reader: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="schedulers.delivery")
    with serve_sms_app(db_url) as app:
        app.standin.post_callbacks = False  # the callbacks are another story (the webhooks')
        outage = Outage(app.runtime.db)

        def database_goes_away(sent: Any) -> None:  # the moment Twilio took the message
            if not outage.on.is_set() and not app.standin.sent[1:]:
                outage.on.set()
                threading.Timer(2.0, outage.on.clear).start()

        app.standin.on_accept = database_goes_away
        app.sms("hi", sid="SMdb1")
        out = sent_once(app, reader, 2)
        assert outage.on.is_set() is False and len(app.standin.sent) == 2
        first = attempts_of(reader, out[0].id)
        assert [a.outcome for a in first] == ["sent"]  # written late, never turned into a retry
        assert app.outbox.health.outages == 1
    delivery = [r for r in caplog.records if r.name == "schedulers.delivery"]
    assert len([r for r in delivery if "database unavailable" in r.getMessage()]) == 1  # one line
    assert not any(r.exc_info for r in delivery)  # and no traceback per try


def test_a_send_cut_off_after_twilio_took_it_is_looked_up_and_not_sent_again(
    db_url: str, reader: Engine
) -> None:
    with serve_sms_app(db_url) as app:
        app.standin.post_callbacks = False
        app.standin.drop_next(accept=True)  # Twilio takes the first reply; its answer never comes
        app.sms("hi", sid="SMcut1")
        out = sent_once(app, reader, 2)
        cut = attempts_of(reader, out[0].id)
        assert [a.outcome for a in cut] == ["retry", "sent"]
        assert "looked up" in cut[0].error and "not sent again" in cut[1].error
        assert app.standin.requests == 2  # the cut-off send and the second reply; nothing resent


def test_a_send_cut_off_before_twilio_took_it_is_sent_once_after_the_look_up(
    db_url: str, reader: Engine
) -> None:
    with serve_sms_app(db_url) as app:
        app.standin.post_callbacks = False
        app.standin.drop_next(accept=False)  # the connection breaks before Twilio took it
        app.sms("hi", sid="SMcut2")
        out = sent_once(app, reader, 2)
        assert [a.outcome for a in attempts_of(reader, out[0].id)] == ["retry", "sent"]
        assert app.standin.requests == 3  # tried, looked up (not there), sent once


def attempts_of(db: Engine, message_id: int) -> list[Any]:
    a = DELIVERY_ATTEMPT
    with db.connect() as conn:
        return list(conn.execute(select(a).where(a.c.message_id == message_id).order_by(a.c.id)).all())


def test_without_a_look_up_telegram_resends_a_reply_after_a_recorded_decision_and_marketing_never(
    db_url: str, reader: Engine
) -> None:
    """A worker died mid-send on Telegram (no look-up exists): its reply goes again once, after an
    attempt records the decision; its marketing message is reported ``unknown``, never resent."""
    from datetime import timedelta

    from sqlalchemy import insert

    from bot.runtime import build_runtime
    from bot.services import build_services
    from bot.settings import Settings
    from bot.worker import run_worker
    from storage.models import utcnow
    from storage.tables import CUSTOMER
    from tests.telegram_standin import TOKEN as BOT_TOKEN
    from tests.telegram_standin import BotApiStandin

    with BotApiStandin() as api:
        settings = Settings(
            database_url=db_url,
            telegram_bot_token=BOT_TOKEN,
            telegram_api_base_url=api.root,
            claim_lease_seconds=1,
            _env_file=None,
        )
        runtime = build_runtime(settings)
        cut_off = utcnow() - timedelta(seconds=5)  # claimed by a worker that died since
        ids = {}
        with runtime.db.begin() as conn:
            cid = conn.execute(
                insert(CUSTOMER)
                .values(name="Ada", marketing_consent=True, created_at=cut_off)
                .returning(CUSTOMER.c.id)
            ).scalar_one()
            for chat, marketing in (("4242", False), ("4343", True)):
                ids[chat] = conn.execute(
                    insert(MESSAGE).values(
                        customer_id=cid, channel="telegram", direction="out", address=chat, text=f"to {chat}",
                        status="sending", attempts=1, marketing=marketing, needs_review=False,
                        created_at=cut_off, claimed_at=cut_off, claimed_by="dead", lease_expires_at=cut_off,
                    ).returning(MESSAGE.c.id)
                ).scalar_one()  # fmt: skip

        async def scenario() -> None:
            stop = asyncio.Event()
            worker = asyncio.create_task(run_worker(runtime, build_services(runtime), stop))
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not (
                api.sent_messages(4242) and all(r.status in ("sent", "unknown") for r in outbound(reader))
            ):
                await asyncio.sleep(0.1)
            stop.set()
            await worker

        asyncio.run(scenario())
        runtime.db.dispose()
        assert [m.text for m in api.sent_messages(4242)] == ["to 4242"]  # the reply, once
        assert api.sent_messages(4343) == []  # marketing: never again
    reply, offer = attempts_of(reader, ids["4242"]), attempts_of(reader, ids["4343"])
    assert [a.outcome for a in reply] == ["retry", "resend", "sent"]
    assert "lease expired" in reply[0].error and "no look-up" in reply[1].error
    assert [a.outcome for a in offer] == ["retry", "unknown"] and "not re-sent" in offer[1].error
    assert {r.id: r.status for r in outbound(reader)} == {ids["4242"]: "sent", ids["4343"]: "unknown"}


# -- 3. a dead worker's claims are taken over in seconds -----------------------------------------


@pytest.mark.slow
def test_a_killed_workers_claims_are_taken_over_in_seconds_and_nothing_is_sent_twice(
    db_url: str, tmp_path: Path
) -> None:
    recipients, lease = 300, 2.0
    queue_broadcast(db_url, recipients)
    db = make_engine(db_url)
    # A slow provider: the worker always has a full batch of claims in flight when it dies.
    with TwilioStandin(ACCOUNT, TOKEN, post_callbacks=False, delay=0.25) as standin:
        env = worker_env(db_url, standin, sms_rate_per_second=100, claim_lease_seconds=lease)
        first = start_worker(env, tmp_path)
        wait_for(lambda: len(standin.sent) >= 20, 60, "the first worker sends")
        first.send_signal(signal.SIGKILL)
        first.wait()
        with db.connect() as conn:
            held = conn.execute(
                select(MESSAGE.c.id, MESSAGE.c.claimed_by).where(MESSAGE.c.status == "sending")
            ).all()
        assert held, "the worker died holding claims"
        dead = {r.claimed_by for r in held}
        second = start_worker(env, tmp_path)
        try:

            def taken_over() -> bool:
                with db.connect() as conn:
                    return not conn.execute(
                        select(MESSAGE.c.id).where(
                            MESSAGE.c.status == "sending", MESSAGE.c.claimed_by.in_(dead)
                        )
                    ).first()

            took = wait_for(taken_over, 30, "the dead worker's claims are taken over")
            wait_drained(db, timeout=120)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(timeout=30) == 0, worker_log(tmp_path)
        received = Counter(s.to for s in standin.sent)
        sids = [s.sid for s in standin.sent]
    with db.connect() as conn:
        rows = conn.execute(
            select(MESSAGE.c.status, MESSAGE.c.provider_message_id).where(MESSAGE.c.direction == "out")
        ).all()
    db.dispose()
    print(f"{len(held)} claims of the killed worker taken over {took:.1f} s after the kill (lease {lease} s)")
    assert took < 20  # a new process's start-up, one lease of its own health, the dead lease
    assert len(received) == recipients and max(received.values()) == 1  # everyone once
    assert Counter(r.status for r in rows) == {"sent": recipients}  # reconciled: none unknown
    assert sorted(sids) == sorted(r.provider_message_id for r in rows)


# -- 4. /healthz says which parts run -------------------------------------------------------------


def test_healthz_says_which_parts_run_since_when_and_is_503_while_one_is_down(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from bot.runtime import build_runtime
    from bot.settings import Settings
    from bot.web import create_app, make_scheduler

    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'r.db'}", scheduler_leader_retry_seconds=0.2, _env_file=None
    )
    runtime = build_runtime(settings)
    scheduler = make_scheduler(runtime)
    outage = Outage(runtime.db)
    try:
        with TestClient(create_app(runtime, scheduler=scheduler)) as client:
            wait_for(lambda: scheduler.is_leader, 10, "the scheduler leads")
            healthy = client.get("/healthz")
            outage.on.set()
            wait_for(lambda: scheduler.health.state == "down", 10, "the scheduler notices")
            down = client.get("/healthz")
            outage.on.clear()
            wait_for(lambda: scheduler.is_leader, 15, "the scheduler leads again")
            again = client.get("/healthz")
    finally:
        runtime.db.dispose()
    assert healthy.status_code == 200 and healthy.json()["status"] == "ok"
    parts = healthy.json()["parts"]
    assert (parts["web"]["state"], parts["scheduler"]["state"]) == ("running", "leader")
    assert parts["scheduler"]["since"] >= parts["web"]["since"] and parts["scheduler"]["last_error"] is None
    assert down.status_code == 503 and down.json()["status"] == "degraded"
    assert down.json()["parts"]["scheduler"]["state"] == "down"
    assert "refused" in down.json()["parts"]["scheduler"]["last_error"]
    assert again.status_code == 200 and again.json()["parts"]["scheduler"]["outages"] == 1


# -- 5. the whole system under load: database stopped, processes killed ---------------------------


@needs_private_pg
@pytest.mark.slow
def test_under_load_a_database_outage_and_killed_processes_lose_and_repeat_nothing(
    private_pg: PrivatePostgres, tmp_path: Path
) -> None:
    from tests.fault_harness import Plan, run_faults

    figures = run_faults(private_pg, tmp_path, Plan(), say=print)
    print("\n".join(figures.lines()))
    assert figures.ok > 50 and figures.unreachable > 0  # real load, and the app really was down
    assert figures.stored == figures.ok  # every inbound that got a 2xx is stored...
    assert figures.answered == figures.ok  # ...and answered
    assert figures.duplicates == 0
    assert figures.undelivered == 0 and set(figures.statuses) <= {"sent", "delivered"}
    assert figures.max_wait_after_fault <= 60
    assert figures.leader_regained_after is not None and figures.leader_regained_after < 15
    assert figures.leader_at_end and figures.healthz_at_end == 200
    assert set(figures.healthz_in_outage) == {503} and "down" in figures.scheduler_in_outage
