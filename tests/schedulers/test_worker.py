"""``rapport worker`` processes delivering a broadcast through the Twilio stand-in over real HTTP:
killed with SIGKILL mid-send and restarted (no customer gets it twice; everyone gets it or is
reported ``unknown``), and several side by side on PostgreSQL (no duplicates, the global rate
kept in every second, measured at the stand-in)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from sqlalchemy import insert, select

from bot.runtime import build_runtime
from bot.services import build_services
from bot.settings import Settings
from bot.worker import run_worker
from storage.broadcast_models import BROADCAST_RECIPIENT
from storage.db import make_engine
from storage.models import utcnow
from storage.tables import CUSTOMER, MESSAGE
from tests.delivery_harness import (
    per_second,
    queue_broadcast,
    start_worker,
    wait_drained,
    worker_env,
    worker_log,
)
from tests.telegram_standin import TOKEN as BOT_TOKEN
from tests.telegram_standin import BotApiStandin
from tests.twilio_standin import ACCOUNT, TOKEN, TwilioStandin

RECIPIENTS = 5_000


def test_a_worker_without_a_channel_says_what_to_set(tmp_path: Path) -> None:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}", "TELEGRAM_BOT_TOKEN": ""}
    env = {k: v for k, v in env.items() if not k.startswith("TWILIO_")}
    done = subprocess.run(
        [sys.executable, "-m", "bot", "worker"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "No channel is configured" in done.stderr and "TELEGRAM_BOT_TOKEN" in done.stderr


def test_a_worker_sends_telegram_without_taking_updates(db_url: str) -> None:
    """``rapport worker`` only sends: no polling, no webhook, no command menu (the app does those)."""
    with BotApiStandin() as api:
        settings = Settings(
            database_url=db_url, telegram_bot_token=BOT_TOKEN, telegram_api_base_url=api.root, _env_file=None
        )
        runtime = build_runtime(settings)
        with runtime.db.begin() as conn:
            cid = conn.execute(
                insert(CUSTOMER).values(name="Ada", created_at=utcnow()).returning(CUSTOMER.c.id)
            ).scalar_one()
            conn.execute(
                insert(MESSAGE).values(
                    customer_id=cid, channel="telegram", direction="out", address="4242", text="Plan news",
                    status="queued", attempts=0, marketing=False, needs_review=False, created_at=utcnow(),
                )
            )  # fmt: skip

        async def scenario() -> None:
            stop = asyncio.Event()
            worker = asyncio.create_task(run_worker(runtime, build_services(runtime), stop))
            deadline = time.monotonic() + 10
            while not api.sent_messages(4242) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            await worker

        asyncio.run(scenario())
        with runtime.db.connect() as conn:
            status = conn.execute(select(MESSAGE.c.status)).scalar_one()
        runtime.db.dispose()
        assert [m.text for m in api.sent_messages(4242)] == ["Plan news"] and status == "sent"
        for method in ("getUpdates", "setWebhook", "deleteWebhook", "setMyCommands"):
            assert api.called(method) == [], method


def test_a_worker_killed_mid_send_never_sends_a_broadcast_twice(db_url: str, tmp_path: Path) -> None:
    broadcast_id = queue_broadcast(db_url, RECIPIENTS)
    db = make_engine(db_url)
    rng = random.Random(20261123)
    kills_mid_send = 0
    with TwilioStandin(ACCOUNT, TOKEN, post_callbacks=False) as standin:
        # A claim not renewed for 1 s is a dead worker's (a live one renews it every 1/3 s).
        env = worker_env(db_url, standin, sms_rate_per_second=1000, claim_lease_seconds=1)
        for _ in range(6):
            worker = start_worker(env, tmp_path)
            before = len(standin.sent)
            deadline = time.monotonic() + 30
            while len(standin.sent) == before and worker.poll() is None and time.monotonic() < deadline:
                time.sleep(0.02)  # started and sending
            time.sleep(rng.uniform(0.05, 0.8))
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            assert worker.returncode == -signal.SIGKILL, worker_log(tmp_path)
            if before < len(standin.sent) < RECIPIENTS:
                kills_mid_send += 1
        last = start_worker(env, tmp_path)
        try:
            counts = wait_drained(db, timeout=180)
        finally:
            last.send_signal(signal.SIGTERM)
            assert last.wait(timeout=30) == 0, worker_log(tmp_path)
        received = Counter(s.to for s in standin.sent)

    assert kills_mid_send >= 3  # the crashes really cut sending off
    assert max(received.values()) == 1  # nobody got the broadcast twice
    with db.connect() as conn:
        rows = conn.execute(
            select(MESSAGE.c.address, MESSAGE.c.status, MESSAGE.c.provider_message_id)
            .join(BROADCAST_RECIPIENT, BROADCAST_RECIPIENT.c.message_id == MESSAGE.c.id)
            .where(BROADCAST_RECIPIENT.c.broadcast_id == broadcast_id)
        ).all()
    db.dispose()
    assert len(rows) == RECIPIENTS
    status = Counter(r.status for r in rows)
    assert set(status) <= {"sent", "unknown"}, status  # nothing failed, nothing left behind
    sent = {r.address for r in rows if r.status == "sent"}
    unknown = {r.address for r in rows if r.status == "unknown"}
    assert sent <= set(received)  # everyone recorded as sent did receive it...
    assert set(received) <= sent | unknown  # ...and nobody else did, but those we cannot know about
    assert len(unknown) <= 6 * 32  # at most a dead worker's claims each time
    assert counts["sent"] == len(sent)


def test_several_workers_on_postgresql_share_the_work_and_the_rate(pg_url: str, tmp_path: Path) -> None:
    limit, recipients = 40, 480
    queue_broadcast(pg_url, recipients)
    db = make_engine(pg_url)
    with TwilioStandin(ACCOUNT, TOKEN, post_callbacks=False) as standin:
        env = worker_env(pg_url, standin, sms_rate_per_second=limit)
        workers = [start_worker(env, tmp_path) for _ in range(3)]
        try:
            wait_drained(db, timeout=120)
        finally:
            for worker in workers:
                worker.send_signal(signal.SIGTERM)
            codes = [w.wait(timeout=30) for w in workers]
        seconds = per_second(standin)
        received = Counter(s.to for s in standin.sent)
    db.dispose()

    assert codes == [0, 0, 0], worker_log(tmp_path)
    assert len(received) == recipients and max(received.values()) == 1
    assert max(seconds.values()) <= limit  # never over the limit in any second
    full = [seconds[s] for s in sorted(seconds)[1:-1]]  # the first and last seconds are partial
    assert sum(full) / len(full) >= 0.9 * limit  # and close to it
