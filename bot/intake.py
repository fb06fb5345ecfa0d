"""Where channels hand what they received: nothing is lost while the database is down.

A channel verifies a webhook and normalises it; :class:`Intake` then runs the turn through the
engine (or records a delivery status through the outbox). When the database cannot be reached
the webhook goes to the :class:`Spool`, a small SQLite file on local disk (every write fsync'd),
and the provider gets its 2xx: Twilio does not retry an SMS webhook, so refusing it would lose
the message. The spool is replayed in arrival order once the database answers again; while it
holds messages, new ones queue behind them, so a customer's messages keep their order. An outage
gives one log line when it starts and one when it ends, never a traceback per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from bot.runtime import Runtime
from dialogs.engine import Inbound, Media, TurnResult
from schedulers.delivery import record_status
from storage.models import utcnow

log = logging.getLogger(__name__)

INBOUND = "inbound"
STATUS = "status"


def is_outage(exc: BaseException) -> bool:
    """True when ``exc`` says the database cannot be reached (not that a statement was wrong)."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


@dataclass(frozen=True, slots=True)
class StatusReport:
    """A provider's report on a message it took: ``state`` in its words, ``error`` its
    explanation, ``opted_out`` when it says the recipient unsubscribed."""

    channel: str
    provider_id: str
    state: str
    error: str | None = None
    opted_out: bool = False


@dataclass(frozen=True, slots=True)
class Spooled:
    """One webhook kept in the spool."""

    id: int
    kind: str
    payload: dict[str, Any]
    spooled_at: float


class Spool:
    """A durable first-in first-out queue of webhooks in a local SQLite file.

    The file is created on the first :meth:`put` (a process that never needs it leaves nothing
    behind). Several processes may share it: SQLite serialises writers, and :meth:`replaying`
    lets one of them replay at a time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _db(self, *, create: bool) -> sqlite3.Connection | None:
        if self._conn is None:
            if not create and not self.path.exists():
                return None
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # every commit is on disk before the 2xx
            conn.execute(
                "CREATE TABLE IF NOT EXISTS spooled (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " kind TEXT NOT NULL, payload TEXT NOT NULL, spooled_at REAL NOT NULL,"
                " next_try REAL NOT NULL DEFAULT 0, failed TEXT)"
            )
            self._conn = conn
        return self._conn

    def put(self, kind: str, payload: dict[str, Any]) -> int:
        """Keep one webhook; its place in the queue."""
        with self._lock:
            conn = self._db(create=True)
            assert conn is not None
            cursor = conn.execute(
                "INSERT INTO spooled (kind, payload, spooled_at) VALUES (?, ?, ?)",
                (kind, json.dumps(payload), time.time()),
            )
            return int(cursor.lastrowid or 0)

    def count(self, kind: str | None = None) -> int:
        """How many webhooks wait to be replayed (of ``kind``, or all)."""
        with self._lock:
            conn = self._db(create=False)
            if conn is None:
                return 0
            sql = "SELECT count(*) FROM spooled WHERE failed IS NULL"
            row = conn.execute(sql + " AND kind = ?", (kind,)) if kind else conn.execute(sql)
            return int(row.fetchone()[0])

    def due(self, limit: int = 100) -> list[Spooled]:
        """The oldest webhooks due for replay, in arrival order."""
        with self._lock:
            conn = self._db(create=False)
            if conn is None:
                return []
            rows = conn.execute(
                "SELECT id, kind, payload, spooled_at FROM spooled WHERE failed IS NULL AND next_try <= ?"
                " ORDER BY id LIMIT ?",
                (time.time(), limit),
            ).fetchall()
        return [Spooled(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def done(self, item_id: int) -> None:
        """Forget a replayed webhook."""
        with self._lock:
            conn = self._db(create=True)
            assert conn is not None
            conn.execute("DELETE FROM spooled WHERE id = ?", (item_id,))

    def later(self, item_id: int, seconds: float) -> None:
        """Try this webhook again in ``seconds``."""
        with self._lock:
            conn = self._db(create=True)
            assert conn is not None
            conn.execute("UPDATE spooled SET next_try = ? WHERE id = ?", (time.time() + seconds, item_id))

    def fail(self, item_id: int, reason: str) -> None:
        """Keep a webhook that cannot be replayed for an operator to look at; replay goes on."""
        with self._lock:
            conn = self._db(create=True)
            assert conn is not None
            conn.execute("UPDATE spooled SET failed = ? WHERE id = ?", (reason[:500], item_id))

    @contextlib.contextmanager
    def replaying(self) -> Iterator[bool]:
        """True while this process may replay (no other process is at it)."""
        if not self.path.exists():
            yield False
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


class Outage:
    """One log line when the database stops answering, one when it is back."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self._since: float | None = None
        self._lock = threading.Lock()

    @property
    def down(self) -> bool:
        return self._since is not None

    def started(self, exc: BaseException) -> None:
        with self._lock:
            if self._since is not None:
                return
            self._since = time.monotonic()
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0][:200]
        log.error(
            "database unavailable (%s: %s): webhooks are kept in %s and replayed when it is back",
            type(exc).__name__,
            reason,
            self.spool.path,
        )

    def ended(self) -> None:
        with self._lock:
            if self._since is None:
                return
            lasted, self._since = time.monotonic() - self._since, None
        log.warning(
            "database available again after %.0f s; replaying %d spooled webhook(s)",
            lasted,
            self.spool.count(),
        )


def inbound_payload(inbound: Inbound) -> dict[str, Any]:
    payload = asdict(inbound)
    payload["received_at"] = inbound.received_at.isoformat() if inbound.received_at else None
    return payload


def inbound_from(payload: dict[str, Any]) -> Inbound:
    values = dict(payload)
    values["media"] = tuple(Media(**m) for m in values.get("media") or ())
    received = values.get("received_at")
    values["received_at"] = datetime.fromisoformat(received) if received else None
    return Inbound(**values)


class Intake:
    """Runs what channels received through the engine and the outbox, or spools it."""

    def __init__(
        self,
        runtime: Runtime,
        spool: Spool | None = None,
        *,
        status_keep: timedelta = timedelta(minutes=15),
        status_retry: float = 5.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.runtime = runtime
        self.spool = spool or Spool(runtime.settings.spool_path)
        self.outage = Outage(self.spool)
        self.status_keep = status_keep
        self.status_retry = status_retry
        self.clock = clock
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- from the channels (in the event loop) --------------------------------------------------

    async def turn(self, inbound: Inbound) -> TurnResult | None:
        """The turn for ``inbound``; None when it was spooled (replayed later, in order)."""
        return await asyncio.to_thread(self.turn_now, inbound)

    def turn_now(self, inbound: Inbound) -> TurnResult | None:
        """:meth:`turn`, in a worker thread."""
        if self.spool.count(INBOUND):  # older messages wait in the spool: keep the order
            self._put(INBOUND, inbound_payload(inbound))
            return None
        try:
            result = self.runtime.dialog.handle(inbound)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.outage.started(exc)
            self._put(INBOUND, inbound_payload(inbound))
            return None
        self.outage.ended()
        return result

    async def status(self, report: StatusReport, *, grace: float = 0.0) -> bool:
        """Record a delivery status; False when the message is still unknown after ``grace``
        seconds (the send may not have finished recording it): the report is then kept and tried
        again for ``status_keep``. While the database is down it is spooled (True)."""
        deadline = time.monotonic() + grace
        while not await asyncio.to_thread(self.status_now, report):
            if time.monotonic() >= deadline:
                self.spool.later(self._put(STATUS, asdict(report)), self.status_retry)
                log.info(
                    "%s status %r for unknown message %s kept to try again",
                    report.channel,
                    report.state,
                    report.provider_id,
                )
                return False
            await asyncio.sleep(0.05)
        return True

    def status_now(self, report: StatusReport) -> bool:
        """Record a status now (in a worker thread); False if the message is unknown. While the
        database is down the report is spooled (True)."""
        if self.outage.down:  # known to be down: do not wait on it; the replay notices it is back
            self._put(STATUS, asdict(report))
            return True
        try:
            known = self._record(report)
        except Exception as exc:
            if not is_outage(exc):
                raise
            self.outage.started(exc)
            self._put(STATUS, asdict(report))
            return True
        self.outage.ended()
        return known

    def _record(self, report: StatusReport) -> bool:
        return record_status(
            self.runtime.db,
            channel=report.channel,
            provider_id=report.provider_id,
            state=report.state,
            error=report.error,
            opted_out=report.opted_out,
            now=self.clock(),
        )

    def _put(self, kind: str, payload: dict[str, Any]) -> int:
        item = self.spool.put(kind, payload)
        if self._loop is not None:  # replay soon (a no-op while the database is still down)
            with contextlib.suppress(RuntimeError):  # the loop has closed
                self._loop.call_soon_threadsafe(self._wake.set)
        return item

    # -- replay --------------------------------------------------------------------------------

    def replay(self) -> int:
        """Replay what is due in the spool, oldest first, until it is empty or the database
        fails again; how many were settled."""
        settled = 0
        with self.spool.replaying() as mine:
            if not mine:
                return 0
            while batch := self.spool.due():
                for item in batch:
                    try:
                        self._replay_one(item)
                    except Exception as exc:
                        if is_outage(exc):
                            self.outage.started(exc)
                            return settled
                        log.exception(
                            "spooled webhook %d cannot be replayed; kept in %s", item.id, self.spool.path
                        )
                        self.spool.fail(item.id, f"{type(exc).__name__}: {exc}")
                        continue
                    settled += 1
                    self.outage.ended()
                if len(batch) < 100:
                    break
        return settled

    def _replay_one(self, item: Spooled) -> None:
        if item.kind == INBOUND:
            self.runtime.dialog.handle(inbound_from(item.payload))
            self.spool.done(item.id)
            return
        report = StatusReport(**item.payload)
        if self._record(report):
            self.spool.done(item.id)
        elif time.time() - item.spooled_at > self.status_keep.total_seconds():
            log.info(
                "%s status %r for unknown message %s dropped",
                report.channel,
                report.state,
                report.provider_id,
            )
            self.spool.done(item.id)
        else:
            self.spool.later(item.id, self.status_retry)

    async def run(self, *, stop: asyncio.Event, interval: float = 1.0) -> None:
        """Replay the spool whenever it holds something due, until ``stop``."""
        self._loop = asyncio.get_running_loop()
        while not stop.is_set():
            try:
                if self.spool.path.exists():
                    await asyncio.to_thread(self.replay)
            except Exception:  # the spool file itself: say so, keep going
                log.exception("replaying the webhook spool %s failed", self.spool.path)
            with contextlib.suppress(TimeoutError):
                waker = asyncio.create_task(self._wake.wait())
                stopper = asyncio.create_task(stop.wait())
                await asyncio.wait({waker, stopper}, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
                stopper.cancel()
            self._wake.clear()
