"""The shared send pacer on both databases: even spacing, bursts, holds, several "processes"
(engines) sharing one bucket, and pruning."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, func, select

from schedulers.ratelimit import LATE, Limit, SharedLimiter
from storage.db import make_engine
from storage.outreach_models import RATE_BUCKET

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_slots_are_spaced_evenly_at_the_rate_with_headroom(db: Engine) -> None:
    clock = Clock()
    limiter = SharedLimiter(db, headroom=0.8, clock=clock)
    slots = [limiter.reserve(Limit("sms:+15005550006", 10)) for _ in range(5)]
    gap = 1 / (10 * 0.8)
    assert slots == pytest.approx([T0 + i * gap for i in range(5)])
    clock.now = T0 + 10  # idle for a while: the next send goes at once, not "catching up"
    assert limiter.reserve(Limit("sms:+15005550006", 10)) == pytest.approx(T0 + 10)
    assert limiter.reserve(Limit("sms:+15005550006", 10)) == pytest.approx(T0 + 10 + gap)


def test_a_burst_goes_at_once_then_the_rate_applies(db: Engine) -> None:
    limiter = SharedLimiter(db, headroom=1.0, clock=Clock())
    chat = Limit("telegram:chat:7", 1, burst=3)
    slots = [limiter.reserve(chat) for _ in range(5)]
    assert slots == pytest.approx([T0, T0, T0, T0 + 1, T0 + 2])


def test_hold_pauses_a_bucket_and_held_for_says_how_long(db: Engine) -> None:
    clock = Clock()
    limiter = SharedLimiter(db, headroom=1.0, clock=clock)
    assert limiter.held_for("sms:x") == 0
    limiter.hold("sms:x", 30)
    assert limiter.held_for("sms:x") == pytest.approx(30)
    assert limiter.reserve(Limit("sms:x", 1)) == pytest.approx(T0 + 30)
    limiter.hold("sms:x", 5)  # a shorter hold does not shorten the longer one
    assert limiter.held_for("sms:x") == pytest.approx(31)


def test_two_processes_share_one_pace(db_url: str) -> None:
    """Two engines (as two worker processes would have) reserving from threads at once: every
    slot is distinct and the spacing holds across both."""
    engines = [make_engine(db_url), make_engine(db_url)]
    clock = Clock()
    limiters = [SharedLimiter(e, headroom=1.0, clock=clock) for e in engines]
    slots: list[float] = []
    lock = threading.Lock()

    def reserve(limiter: SharedLimiter) -> None:
        for _ in range(25):
            slot = limiter.reserve(Limit("sms:shared", 20))
            with lock:
                slots.append(slot)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(reserve, limiters * 2))
    for engine in engines:
        engine.dispose()
    assert sorted(slots) == pytest.approx([T0 + i / 20 for i in range(100)])


def test_acquire_sleeps_until_the_slot(db: Engine) -> None:
    limiter = SharedLimiter(db, headroom=1.0)
    limiter.reserve(Limit("sms:warm-up", 10))  # the first connection is not what is timed

    async def three() -> list[float]:
        loop = asyncio.get_running_loop()
        times = [loop.time()]
        for _ in range(3):
            await limiter.acquire(Limit("sms:real-time", 10))
            times.append(loop.time())
        return times

    times = asyncio.run(three())
    # The first slot is free (reserve() says so above); only the lower bound is timed, since a busy
    # machine may be late to any slot but never early: three slots span two gaps of 0.1 s.
    assert times[3] - times[0] >= 0.195


def test_prune_forgets_idle_buckets_only(db: Engine) -> None:
    clock = Clock()
    limiter = SharedLimiter(db, clock=clock)
    limiter.reserve(Limit("telegram:chat:old", 1))
    clock.now = T0 + 7200
    limiter.reserve(Limit("telegram:chat:new", 1))
    assert limiter.prune(idle_for=3600) == 1
    with db.connect() as conn:
        assert conn.execute(select(RATE_BUCKET.c.key)).scalars().all() == ["telegram:chat:new"]
        assert conn.execute(select(func.count()).select_from(RATE_BUCKET)).scalar_one() == 1


def test_headroom_must_be_a_share(db: Engine) -> None:
    for bad in (0, 1.5, -1):
        with pytest.raises(ValueError, match="headroom"):
            SharedLimiter(db, headroom=bad)


class Script:
    """A clock that reads out the given times, then keeps the last."""

    def __init__(self, *times: float) -> None:
        self.times = list(times)

    def __call__(self) -> float:
        return self.times.pop(0) if len(self.times) > 1 else self.times[0]


def test_a_send_woken_well_after_its_slot_takes_a_new_one(db: Engine) -> None:
    late = T0 + LATE + 0.01
    # reserve, due, wait, late-check: first woken too late, then on time.
    limiter = SharedLimiter(db, headroom=1.0, clock=Script(T0, T0, T0, late, late, late, late, late))
    limiter.wait(Limit("sms:busy", 10))
    with db.connect() as conn:
        tat = conn.execute(select(RATE_BUCKET.c.tat).where(RATE_BUCKET.c.key == "sms:busy")).scalar_one()
    assert tat == pytest.approx(late + 0.1)  # two slots taken: the first given up
    on_time = SharedLimiter(db, headroom=1.0, clock=Script(T0 + 5, T0 + 5, T0 + 5, T0 + 5 + LATE / 2))
    on_time.wait(Limit("sms:calm", 10))
    with db.connect() as conn:
        tat = conn.execute(select(RATE_BUCKET.c.tat).where(RATE_BUCKET.c.key == "sms:calm")).scalar_one()
    assert tat == pytest.approx(T0 + 5.1)  # one slot


def test_a_send_held_back_by_its_chat_takes_no_overall_slot_meanwhile(db: Engine) -> None:
    limiter = SharedLimiter(db, headroom=1.0)
    overall = Limit("telegram:all", 20)

    async def send(chat: str) -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await limiter.acquire(Limit(f"telegram:chat:{chat}", 5), overall)
        return loop.time() - start

    async def scene() -> tuple[float, float, float]:
        a1 = await send("a")
        a2, b1 = await asyncio.gather(send("a"), send("b"))  # a's second waits 0.2 s for its chat
        return a1, a2, b1

    began = time.time()
    a1, a2, b1 = asyncio.run(scene())
    assert a1 < 0.1 and a2 >= 0.18 and b1 < 0.15  # chat b went at once
    with db.connect() as conn:
        tat = conn.execute(select(RATE_BUCKET.c.tat).where(RATE_BUCKET.c.key == "telegram:all")).scalar_one()
    # a's second overall slot was taken when its chat let it go (about 0.2 s in), not at once
    # beside a1's and b1's (which would have left the bucket at 3 gaps, 0.15 s, and a slot unused).
    assert tat >= began + 0.2 + 1 / 20 - 0.01
