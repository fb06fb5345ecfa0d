"""Fixtures: every storage and engine test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``RAPPORT_TEST_POSTGRES_URL`` (default: the local server on 127.0.0.1:5432,
database ``test``). Each test run creates its own database there and drops it at the end.
``RAPPORT_TEST_BACKENDS=sqlite`` runs the SQLite half only.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import SQLModel

from dialogs.bank import QuestionBank
from dialogs.engine import DialogEngine, EngineConfig
from storage.db import make_engine, normalize_url, upgrade

PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = [
    b.strip() for b in os.environ.get("RAPPORT_TEST_BACKENDS", "sqlite,postgresql").split(",") if b.strip()
]


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, copied for each test (faster than migrating every time)."""
    path = tmp_path_factory.mktemp("template") / "rapport.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()  # closing the last connection checkpoints the WAL into the file
    assert not path.with_name("rapport.db-wal").exists()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this test run."""
    server = normalize_url(os.environ.get("RAPPORT_TEST_POSTGRES_URL", PG_DEFAULT))
    name = f"rapport_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {make_url(server).render_as_string(hide_password=True)} is not reachable "
            f"({exc.orig}). "
            "Start it (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start), point "
            "RAPPORT_TEST_POSTGRES_URL at another server, or set RAPPORT_TEST_BACKENDS=sqlite.",
            pytrace=False,
        )
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with the current schema and no rows, on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "rapport.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    return _emptied(request.getfixturevalue("postgres_url"))


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """The PostgreSQL test database with no rows, for what only PostgreSQL does (several
    delivery workers side by side); fails like ``db_url`` when PostgreSQL is not reachable."""
    if "postgresql" not in BACKENDS:
        pytest.skip("RAPPORT_TEST_BACKENDS leaves PostgreSQL out")
    return _emptied(request.getfixturevalue("postgres_url"))


def _emptied(url: str) -> str:
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


@pytest.fixture
def db(db_url: str) -> Iterator[Engine]:
    """An engine on the test database."""
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def bank() -> QuestionBank:
    """The default question bank."""
    return QuestionBank.load()


@pytest.fixture
def dialog(db: Engine, bank: QuestionBank) -> DialogEngine:
    """A dialog engine on the test database."""
    return DialogEngine(db, bank, EngineConfig())
