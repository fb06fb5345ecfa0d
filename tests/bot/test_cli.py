"""The command line as a newcomer uses it: separate processes on a real database."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from storage.db import make_engine
from storage.tables import MESSAGE

ROOT = Path(__file__).resolve().parents[2]


def rapport(
    *args: str, db_url: str, cwd: Path, stdin: str = "", timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    # No channel from the caller's environment: a test configures the ones it wants.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("TELEGRAM_", "TWILIO_"))}
    env = {**inherited, "DATABASE_URL": db_url, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bot", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )


def test_chat_twice_picks_up_at_the_next_unanswered_question(db_url: str, tmp_path: Path) -> None:
    first = rapport("chat", "--phone", "+1 415 555 0142", db_url=db_url, cwd=tmp_path, stdin="hi\ntext me\n")
    assert first.returncode == 0, first.stderr
    assert "How would you like us to reach you" in first.stdout
    assert "Got it: text message." in first.stdout
    assert "When is a good time to contact you" in first.stdout
    second = rapport("chat", "--phone", "+14155550142", db_url=db_url, cwd=tmp_path, stdin="evnings\n")
    assert second.returncode == 0, second.stderr
    assert "I'm Rapport" not in second.stdout  # no second greeting: the same conversation
    assert "Got it: evenings." in second.stdout
    assert "how much would you like to spend" in second.stdout
    assert "reach you" not in second.stdout  # never asks again what it knows


def test_demo_then_chat_as_the_demo_customer(db_url: str, tmp_path: Path) -> None:
    demo = rapport("demo", db_url=db_url, cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "300 customers created" in demo.stdout
    assert "rapport chat --phone +14155550100" in demo.stdout
    again = rapport("demo", db_url=db_url, cwd=tmp_path)
    assert "0 customers created, 300 updated" in again.stdout
    chat = rapport("chat", "--phone", "+14155550100", db_url=db_url, cwd=tmp_path, stdin="hello\n")
    assert "Hi Alex!" in chat.stdout
    # A demo customer whose budget is on file is never asked for it.
    known = rapport(
        "chat", "--phone", "+14155550105", db_url=db_url, cwd=tmp_path, stdin="hi\nsms\nevenings\n"
    )
    assert "spend on your phone plan" not in known.stdout


def test_with_no_channel_configured_broadcast_dry_run_says_so_and_send_queues_nothing(
    db_url: str, tmp_path: Path
) -> None:
    assert rapport("demo", db_url=db_url, cwd=tmp_path).returncode == 0
    template = tmp_path / "offer.txt"
    template.write_text("Hi {{ name }}, {{ suggested_plan }} saves you {{ monthly_saving }} a month.")
    created = rapport(
        "broadcast", "create", "--name", "spring", "--segment", "consent", "--template", str(template),
        db_url=db_url, cwd=tmp_path,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    broadcast_id = re.search(r"Broadcast (\d+) created", created.stdout)
    assert broadcast_id, created.stdout
    outbox_before = _outbox_rows(db_url)

    dry = rapport("broadcast", "dry-run", broadcast_id.group(1), db_url=db_url, cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "no channel is configured" in dry.stdout
    found = re.search(r"(\d+) customers, (\d+) in the segment, (\d+) would get it", dry.stdout)
    assert found and int(found.group(2)) > 0 and int(found.group(3)) == 0, dry.stdout
    for when in ([], ["--at", "2099-01-01T09:00"]):
        sent = rapport("broadcast", "send", broadcast_id.group(1), *when, db_url=db_url, cwd=tmp_path)
        assert sent.returncode == 2, sent.stdout
        assert "no channel is configured" in sent.stderr
    assert _outbox_rows(db_url) == outbox_before  # 0 messages queued


def _outbox_rows(db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(MESSAGE)).scalar_one())
    finally:
        engine.dispose()


def test_chat_rejects_a_bad_phone_number_with_a_hint(tmp_path: Path) -> None:
    result = rapport("chat", "--phone", "12", db_url=f"sqlite:///{tmp_path}/r.db", cwd=tmp_path)
    assert result.returncode == 2
    assert "+14155550100" in result.stderr


def test_db_upgrade_and_status(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    up = rapport("db", "upgrade", db_url=url, cwd=tmp_path)
    assert up.returncode == 0, up.stderr
    assert re.search(r"Database at \w+ \(was empty\)", up.stdout)
    status = rapport("db", "status", db_url=url, cwd=tmp_path)
    assert "ok: True" in status.stdout and "backend: sqlite" in status.stdout


def test_bad_setting_is_reported_with_what_to_fix(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("TELEGRAM_BOT_TOKEN=changeme\n")
    result = rapport("demo", db_url=f"sqlite:///{tmp_path}/r.db", cwd=tmp_path)
    assert result.returncode == 2
    assert "TELEGRAM_BOT_TOKEN" in result.stderr and "placeholder" in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_run_serves_healthz_and_says_what_is_on(db_url: str, tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": db_url, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "run", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        response = None
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        assert response is not None, "rapport run did not answer within 30 s"
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["database"]["ok"] is True
        assert body["database"]["backend"] in ("sqlite", "postgresql")
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=20)
    assert re.search(r"telegram\s+.*off.*TELEGRAM_BOT_TOKEN", output)
    assert re.search(r"web app\s+.*on", output)


def test_chat_works_interactively_on_a_terminal(tmp_path: Path) -> None:
    import pty
    import select

    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path}/r.db",
        "PYTHONPATH": str(ROOT),
        "TERM": "dumb",
    }
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot", "chat", "--phone", "+14155550143"],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=tmp_path,
        env=env,
        close_fds=True,
    )
    os.close(terminal)
    seen = b""

    def read_until(marker: bytes, timeout: float = 30) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(controller, 4096)
                except OSError:
                    break
        assert marker in seen, seen.decode(errors="replace")[-500:]

    try:
        read_until(b"you>")
        os.write(controller, b"hello\r")
        read_until(b"How would you like us to reach you")
        os.write(controller, b"email\r")
        read_until(b"Got it: email.")
        os.write(controller, b"\x04")  # Ctrl-D leaves
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(controller)
