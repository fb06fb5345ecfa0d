"""PostgreSQL session advisory locks, for leader election: the statements, with bound keys.
The caller owns the connection (a dedicated one, kept out of the pool while a lock is held)."""

from __future__ import annotations

from sqlalchemy import Connection, text

_TRY_LOCK = text("SELECT pg_try_advisory_lock(:k)")
_UNLOCK = text("SELECT pg_advisory_unlock(:k)")
_PING = text("SELECT 1")


def try_advisory_lock(conn: Connection, *, key: int) -> bool:
    """Take the session advisory lock ``key`` on ``conn`` if it is free (never waits)."""
    return bool(conn.execute(_TRY_LOCK, {"k": key}).scalar())


def advisory_unlock(conn: Connection, *, key: int) -> None:
    """Give up the session advisory lock ``key`` held on ``conn``."""
    conn.execute(_UNLOCK, {"k": key})


def ping_connection(conn: Connection) -> None:
    """Ask trivially on ``conn``; raises (SQLAlchemy's errors) when its session is gone."""
    conn.execute(_PING)
