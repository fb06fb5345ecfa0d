"""The ``rapport`` command tree (bot/cli/): every command where it was, and one way to fail."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from sqlalchemy import Engine
from typer.testing import CliRunner

from bot.cli import app
from bot.settings import get_settings

COMMANDS = {
    "chat": None,
    "run": None,
    "worker": None,
    "demo": None,
    "db": {"upgrade", "status"},
    "plans": {"load", "fit"},
    "import": {"customers", "usage"},
    "broadcast": {"create", "list", "preview", "dry-run", "send", "status", "cancel"},
    "telegram": {"link-code"},
    "outreach": {"scan"},
    "switches": {"export", "deliver"},
    "users": {"add", "list", "unlock", "reset", "role", "disable", "enable"},
    "teach": {"queue", "list", "add", "undo"},
    "dashboard": {"rollup"},
}


def _subcommands(command: object) -> set[str] | None:
    found = getattr(command, "commands", None)  # a group (typer's own click)
    return None if found is None else set(found)


def test_every_command_keeps_its_name() -> None:
    root = typer.main.get_command(app)
    assert _subcommands(root) == set(COMMANDS)
    for name, subcommands in COMMANDS.items():
        assert _subcommands(root.commands[name]) == subcommands, name  # type: ignore[attr-defined]


@pytest.fixture
def configured(db: Engine, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()
    gc.collect()  # a command leaves its engine to the end of the process: close it within this test


# A command's engine is closed by the garbage collector here, not by the command (a process exits).
unclosed_engine = pytest.mark.filterwarnings(
    "ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning"
)


@unclosed_engine
def test_a_failing_command_says_why_on_stderr_and_exits_2(configured: None) -> None:
    result = CliRunner().invoke(app, ["broadcast", "status", "999"])
    assert result.exit_code == 2
    assert "no broadcast 999" in result.stderr


@unclosed_engine
def test_users_add_refuses_a_bad_address_with_exit_1(configured: None) -> None:
    result = CliRunner().invoke(app, ["users", "add", "not-an-address"])
    assert result.exit_code == 1
    assert "is not an e-mail address" in result.stderr
