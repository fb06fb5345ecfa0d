"""How a background loop is doing, for ``/healthz``, and how it rides out a database outage.

Each long-running part of a process (the web app, the scheduler's leadership loop, a delivery
loop) owns a :class:`Part`. A loop calls :meth:`Part.up` after every round that reached the
database and :meth:`Part.down` when a round failed; ``down`` logs ONE line when an outage starts
(not a traceback per try), ``up`` one line when it ends, and ``down`` returns how long to wait
before the next try (capped exponential backoff), so every loop backs off and carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime
from typing import Any

from storage.models import utcnow

DOWN = "down"


def describe(exc: BaseException) -> str:
    """A one-line, secret-free description of an error (the driver's first line, no SQL)."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's error
    shown = orig if isinstance(orig, BaseException) else exc
    first = str(shown).strip().splitlines()[0] if str(shown).strip() else ""
    return f"{type(shown).__name__}: {first}"[:300] if first else type(shown).__name__


class Part:
    """The state of one part (``running``, ``leader``, ``follower``, ``standby``, ``down``...),
    since when, and its last error. Thread-safe: loops and ``/healthz`` share it."""

    def __init__(
        self,
        name: str,
        *,
        logger: logging.Logger | None = None,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        state: str = "starting",
    ) -> None:
        self.name = name
        self.log = logger or logging.getLogger(__name__)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self._lock = threading.Lock()
        self._state = state
        self._since = utcnow()
        self._up_since: float | None = None  # monotonic; None while down or not yet up
        self._outage_started: float | None = None
        self._failures = 0
        self.last_error: str | None = None
        self.last_error_at: datetime | None = None
        self.outages = 0

    @property
    def state(self) -> str:
        return self._state

    @property
    def ok(self) -> bool:
        """False while the part is down (its last round failed) or stopped."""
        return self._state not in (DOWN, "stopped")

    def up(self, state: str = "running") -> None:
        """A round went through: the part runs as ``state`` (one log line if an outage ended)."""
        with self._lock:
            ended = self._outage_started
            self._outage_started, self._failures = None, 0
            if self._up_since is None:
                self._up_since = time.monotonic()
            changed = state != self._state
            if changed:
                self._state, self._since = state, utcnow()
        if ended is not None:
            self.log.warning(
                "%s: the database answers again after %.1f s; carrying on as %s",
                self.name,
                time.monotonic() - ended,
                state,
            )

    def set(self, state: str) -> None:
        """Change the state without saying anything about the database (``stopped``...)."""
        with self._lock:
            if state != self._state:
                self._state, self._since = state, utcnow()

    def down(self, exc: BaseException) -> float:
        """A round failed with ``exc``: record it, log once per outage, and return the seconds
        to wait before trying again (exponential from ``backoff_base``, at most ``backoff_cap``)."""
        reason = describe(exc)
        with self._lock:
            first = self._outage_started is None
            if first:
                self._outage_started = time.monotonic()
                self.outages += 1
            self._up_since = None
            self._failures += 1
            if self._state != DOWN:
                self._state, self._since = DOWN, utcnow()
            self.last_error, self.last_error_at = reason, utcnow()
            delay = min(self.backoff_cap, self.backoff_base * 2.0 ** (self._failures - 1))
        if first:
            self.log.warning(
                "%s: database unavailable (%s); retrying with backoff (up to %.0f s) until it is back",
                self.name,
                reason,
                self.backoff_cap,
            )
        return delay

    def healthy_for(self) -> float:
        """Seconds since the part last came up without a failure in between (0 while down)."""
        up = self._up_since
        return 0.0 if up is None else time.monotonic() - up

    def snapshot(self) -> dict[str, Any]:
        """What ``/healthz`` shows for this part."""
        with self._lock:
            return {
                "state": self._state,
                "since": self._since.isoformat(),
                "ok": self.ok,
                "last_error": self.last_error,
                "last_error_at": self.last_error_at.isoformat() if self.last_error_at else None,
                "outages": self.outages,
            }
