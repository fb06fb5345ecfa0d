"""The web app's health endpoint reports the database state."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from bot.runtime import build_runtime
from bot.settings import Settings
from bot.web import create_app
from storage.db import make_engine


def test_healthz_reports_the_database(db_url: str) -> None:
    runtime = build_runtime(Settings(database_url=db_url, _env_file=None))
    with TestClient(create_app(runtime)) as client:
        response = client.get("/healthz")
    runtime.db.dispose()
    assert response.status_code == 200
    db = response.json()["database"]
    assert db["ok"] is True and db["revision"] == db["head"]


def test_healthz_is_503_when_the_schema_is_missing(tmp_path: Path) -> None:
    runtime = build_runtime(Settings(database_url=f"sqlite:///{tmp_path}/r.db", _env_file=None))
    # Point the app at an empty database (as if it were wiped after start-up).
    empty = runtime.__class__(
        runtime.settings,
        make_engine(f"sqlite:///{tmp_path}/empty.db"),
        runtime.bank,
        runtime.dialog,
        runtime.policy,
    )
    with TestClient(create_app(empty)) as client:
        response = client.get("/healthz")
    runtime.db.dispose()
    empty.db.dispose()
    assert response.status_code == 503
    assert response.json()["database"]["revision"] is None
