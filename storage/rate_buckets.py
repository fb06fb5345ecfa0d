"""Queries of the shared send pacing (``rate_bucket``): one row per bucket holding its theoretical
arrival time ``tat`` (epoch seconds). Upserts in the dialect of the connection, bound parameters."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from storage.tables import RATE_BUCKET


def _upsert_tat(conn: Connection, *, key: str, tat: float, bump: Any) -> Any:
    """INSERT (key, tat), or on a stored key SET tat = ``bump``."""
    postgres = conn.dialect.name == "postgresql"
    insert = pg_insert if postgres else sqlite_insert
    return (
        insert(RATE_BUCKET)
        .values(key=key, tat=tat)
        .on_conflict_do_update(index_elements=[RATE_BUCKET.c.key], set_={"tat": bump})
    )


def _greatest(conn: Connection, a: Any, b: Any) -> Any:
    return func.greatest(a, b) if conn.dialect.name == "postgresql" else func.max(a, b)


def take_slot(conn: Connection, *, key: str, now: float, gap: float) -> float:
    """Reserve the bucket's next slot in one atomic upsert (``tat = max(tat, now) + gap``, a new
    bucket starts at ``now + gap``); the bucket's ``tat`` after it."""
    bump = _greatest(conn, RATE_BUCKET.c.tat, now) + gap
    stmt = _upsert_tat(conn, key=key, tat=now + gap, bump=bump).returning(RATE_BUCKET.c.tat)
    return float(conn.execute(stmt).scalar_one())


def hold_bucket(conn: Connection, *, key: str, until: float) -> None:
    """Keep the bucket's next slot at ``until`` at the earliest."""
    conn.execute(_upsert_tat(conn, key=key, tat=until, bump=_greatest(conn, RATE_BUCKET.c.tat, until)))


def bucket_tat(conn: Connection, *, key: str) -> float | None:
    """The bucket's ``tat``, or None when there is no such bucket."""
    tat = conn.execute(select(RATE_BUCKET.c.tat).where(RATE_BUCKET.c.key == key)).scalar()
    return None if tat is None else float(tat)


def prune_buckets(conn: Connection, *, before: float) -> int:
    """Delete buckets whose ``tat`` is before ``before``; how many went."""
    gone = conn.execute(delete(RATE_BUCKET).where(RATE_BUCKET.c.tat < before))
    return int(gone.rowcount or 0)
