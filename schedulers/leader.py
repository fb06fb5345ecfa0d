"""Leader election: of several Rapport processes on one database, exactly one runs the scheduler.

PostgreSQL: the leader holds a session-level advisory lock (``pg_try_advisory_lock``) on a
connection of its own, kept out of the pool. The others try again every few seconds; when the
leader dies its connection closes, the server releases the lock and the next try wins.

SQLite (one machine by nature): an exclusive ``flock`` on ``<database>.scheduler.lock`` next to
the database file; the operating system releases it when the process dies. An in-memory database
has a single process by definition: it always leads. The same file lock, on
``<database>.delivery.lock``, keeps SQLite's delivery loop to one process (see :func:`delivery_lock`).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import IO, Protocol

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from storage.locks import advisory_unlock, ping_connection, try_advisory_lock

log = logging.getLogger(__name__)

# Any constant will do, as long as every Rapport process uses it (the migrations use 0x52415050).
SCHEDULER_LOCK_KEY = 0x5241_5053  # "RAPS"


class LeaderLock(Protocol):
    """A lock only one process holds at a time."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free (never waits); True when this process holds it now.
        May raise when the database (or the lock file) cannot be reached: callers back off."""
        ...

    def held(self) -> bool:
        """Whether this process still holds the lock (False once its connection is gone)."""
        ...

    def release(self) -> None:
        """Give the lock up (idempotent)."""
        ...


class PostgresLeaderLock:
    """A PostgreSQL session advisory lock on a dedicated connection."""

    def __init__(self, db: Engine, key: int = SCHEDULER_LOCK_KEY) -> None:
        self.db = db
        self.key = key
        self._conn: Connection | None = None

    def try_acquire(self) -> bool:
        """Take the lock if free. Raises :class:`~sqlalchemy.exc.SQLAlchemyError` when the
        database cannot be reached (the caller backs off and tries again)."""
        if self.held():
            return True
        self.release()
        conn: Connection | None = None
        try:
            conn = self.db.connect().execution_options(isolation_level="AUTOCOMMIT")
            got = try_advisory_lock(conn, key=self.key)
        except SQLAlchemyError:
            if conn is not None:
                _discard(conn)
            raise
        if not got:
            _discard(conn)
            return False
        self._conn = conn
        return True

    def held(self) -> bool:
        if self._conn is None:
            return False
        try:
            ping_connection(self._conn)
        except SQLAlchemyError as exc:
            log.warning("lost the lock's connection (%s): giving leadership up", type(exc).__name__)
            self.release()
            return False
        return True

    def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(SQLAlchemyError):
            advisory_unlock(conn, key=self.key)
        _discard(conn)


def _discard(conn: Connection) -> None:
    """Close the connection for good (not back to the pool, which would keep a session lock)."""
    with contextlib.suppress(SQLAlchemyError):
        conn.invalidate()
    conn.close()


class FileLeaderLock:
    """An exclusive, non-blocking ``flock`` on a file (released by the OS when the process dies)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def try_acquire(self) -> bool:
        if self._file is not None:
            return True
        import fcntl

        handle = self.path.open("ab")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._file = handle
        return True

    def held(self) -> bool:
        return self._file is not None

    def release(self) -> None:
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()  # closing the file drops the lock


class AlwaysLeader:
    """The only process there can be (an in-memory SQLite database, or no ``fcntl``)."""

    def try_acquire(self) -> bool:
        return True

    def held(self) -> bool:
        return True

    def release(self) -> None:
        pass


def leader_lock(db: Engine) -> LeaderLock:
    """The scheduler's lock for the database behind ``db``."""
    if db.dialect.name == "postgresql":
        return PostgresLeaderLock(db)
    return _file_lock(db, "scheduler")


def delivery_lock(db: Engine) -> LeaderLock:
    """The delivery loop's lock: on SQLite one process delivers at a time (``<db>.delivery.lock``);
    on PostgreSQL any number do, claiming rows with ``FOR UPDATE SKIP LOCKED``."""
    if db.dialect.name == "postgresql":
        return AlwaysLeader()
    return _file_lock(db, "delivery")


def _file_lock(db: Engine, purpose: str) -> LeaderLock:
    database = db.url.database
    if db.dialect.name != "sqlite" or not database or database == ":memory:" or database.startswith("file:"):
        return AlwaysLeader()
    try:
        import fcntl  # noqa: F401  (POSIX only)
    except ImportError:  # pragma: no cover - Windows
        log.warning("no fcntl: every process on %s runs the %s; run only one", database, purpose)
        return AlwaysLeader()
    return FileLeaderLock(Path(database).expanduser().with_name(f"{Path(database).name}.{purpose}.lock"))
