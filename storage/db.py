"""Engine set-up (SQLite WAL by default, PostgreSQL through psycopg) and schema migrations."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
# Any constant will do: it only has to be the same in every Rapport process.
_MIGRATION_LOCK_KEY = 0x5241_5050  # "RAPP"


def normalize_url(url: str) -> str:
    """Make ``postgresql://`` and ``postgres://`` URLs use psycopg 3."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, *, echo: bool = False) -> Engine:
    """Create an engine for ``url``.

    SQLite files get WAL, foreign keys, a busy timeout, and ``BEGIN IMMEDIATE`` for every
    transaction, so that writers queue up instead of failing halfway (SQLite cannot upgrade a
    read transaction to a write one safely). PostgreSQL gets pre-ping'ed pooled connections.
    """
    url = normalize_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            echo=echo,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    return create_engine(url, echo=echo, pool_pre_ping=True)


def _sqlite_on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's own transaction handling
    # would begin lazily, as a deferred transaction).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    # WAL is a property of the file, so only a new file needs the switch; but the switch wants
    # the file to itself and fails at once (no busy wait) while another connection is in a
    # transaction, e.g. a second process starting while the first migrates. Wait for it.
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while cursor.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # in-memory databases answer "memory"
            return
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_on_begin(conn: Connection) -> None:
    # Straight to the driver: this runs once per transaction, on the hot path.
    driver = conn.connection.driver_connection
    assert driver is not None
    driver.execute("BEGIN IMMEDIATE")


def is_postgres(engine: Engine) -> bool:
    """Whether ``engine`` talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this code."""
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at, or None for an empty database."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``; safe to run from several processes at once."""
    cfg = _alembic_config()
    with engine.begin() as conn:
        if is_postgres(engine):
            # Concurrent starters wait here; the later ones then find nothing left to do.
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def ensure_schema(engine: Engine) -> bool:
    """Upgrade the database to the newest schema if it is behind; True when it migrated."""
    if current_revision(engine) == head_revision():
        return False
    log.info("migrating the database to %s", head_revision())
    upgrade(engine)
    return True


def open_database(url: str, *, echo: bool = False) -> Engine:
    """An engine for ``url`` whose schema is up to date (migrated on first use)."""
    engine = make_engine(url, echo=echo)
    ensure_schema(engine)
    return engine


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def ping(engine: Engine) -> None:
    """Ask the database something trivial; raises (SQLAlchemy's errors) when it cannot answer."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def database_status(engine: Engine) -> dict[str, Any]:
    """What ``/healthz`` reports: backend, reachability and schema revision."""
    status: dict[str, Any] = {"backend": engine.dialect.name, "ok": False}
    try:
        revision = current_revision(engine)
    except SQLAlchemyError as exc:
        status["error"] = type(exc).__name__
        return status
    head = head_revision()
    status.update(ok=revision == head, revision=revision, head=head)
    return status
