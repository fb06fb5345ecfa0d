"""Send pacing shared by every delivery worker, kept in the database (``rate_bucket``).

Each bucket (Telegram overall, one Telegram chat, one sending number) is a GCRA: the row holds
the bucket's *theoretical arrival time* ``tat``; a send reserves its slot with one atomic upsert
(``tat = max(tat, now) + 1/rate``) and sleeps until the slot. Because the reservation is made
in the database, workers in several processes share one limit without talking to each other.

Sends are paced at ``rate x headroom`` (default 97%): the provider counts in its own windows and
jitter can bunch two sends into one of them; the headroom keeps every window under the limit as
long as a send goes within about 30 ms of its slot (see bench/bench_pacing.py). A send that wakes
up later than that (a busy machine) takes a new slot instead of going at once. The caller sends
right after the wait, from the same thread or task, so nothing queues between slot and send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from storage.rate_buckets import bucket_tat, hold_bucket, prune_buckets, take_slot

DEFAULT_HEADROOM = 0.97
LATE = 0.025  # seconds behind its slot after which a send takes a new slot rather than go
RETAKES = 3


@dataclass(frozen=True, slots=True)
class Limit:
    """At most ``per_second`` sends a second on ``key``, with up to ``burst`` at once."""

    key: str
    per_second: float
    burst: int = 1


class SharedLimiter:
    """Reserves send slots in the database so every process shares one pace per key."""

    def __init__(
        self, db: Engine, *, headroom: float = DEFAULT_HEADROOM, clock: Callable[[], float] = time.time
    ) -> None:
        if not 0 < headroom <= 1:
            raise ValueError("headroom must be in (0, 1]")
        self.db = db
        self.headroom = headroom
        self.clock = clock

    async def acquire(self, *limits: Limit) -> None:
        """Wait for a slot in each bucket in turn (from the event loop); see :meth:`wait`."""
        *narrow, last = limits
        for limit in narrow:
            if (wait := await asyncio.to_thread(self.reserve, limit) - self.clock()) > 0:
                await asyncio.sleep(wait)
        for _ in range(RETAKES + 1):
            at = await asyncio.to_thread(self.reserve, last)
            due = max(at, self.clock())  # a slot that is already due counts from now
            if (wait := at - self.clock()) > 0:
                await asyncio.sleep(wait)
            if not self._late(due):
                return

    def wait(self, *limits: Limit) -> None:
        """Wait for a slot in each bucket in turn, narrowest first (a chat, then the whole
        channel), blocking: from the thread that then sends. A send held back by a narrow bucket
        takes its slot in the wider ones only once it may go, so it uses up nobody's slot."""
        *narrow, last = limits
        for limit in narrow:
            if (wait := self.reserve(limit) - self.clock()) > 0:
                time.sleep(wait)
        for _ in range(RETAKES + 1):
            at = self.reserve(last)
            due = max(at, self.clock())  # a slot that is already due counts from now
            if (wait := at - self.clock()) > 0:
                time.sleep(wait)
            if not self._late(due):
                return

    def _late(self, due: float) -> bool:
        # Woken well after its slot (a busy machine): going now would bunch with the next sends
        # and could push a second over the limit, so it takes a new slot (a few times at most).
        return self.clock() - due > LATE

    def reserve(self, limit: Limit) -> float:
        """Take the bucket's next slot; the epoch time the send may go."""
        gap = 1.0 / (limit.per_second * self.headroom)
        tolerance = gap * (max(limit.burst, 1) - 1)
        with self.db.begin() as conn:
            now = self.clock()  # read once the transaction holds the write lock (SQLite)
            tat = take_slot(conn, key=limit.key, now=now, gap=gap)
        return max(now, tat - gap - tolerance)

    def hold(self, key: str, seconds: float) -> None:
        """Send nothing on ``key`` for ``seconds`` (the provider said to wait)."""
        until = self.clock() + seconds
        with self.db.begin() as conn:
            hold_bucket(conn, key=key, until=until)

    def held_for(self, key: str) -> float:
        """Seconds until ``key``'s next free slot (0 when it is free now)."""
        with self.db.connect() as conn:
            tat = bucket_tat(conn, key=key)
        return max(0.0, tat - self.clock()) if tat is not None else 0.0

    def prune(self, *, idle_for: float = 3600.0) -> int:
        """Forget buckets idle for ``idle_for`` seconds (one-off chats); how many went."""
        with self.db.begin() as conn:
            return prune_buckets(conn, before=self.clock() - idle_for)
