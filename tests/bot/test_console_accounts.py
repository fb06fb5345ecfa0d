"""Console accounts staff can trust (issue #15), on SQLite and PostgreSQL: admins unlock, reset,
change roles, disable and enable accounts (console and `rapport users`), audited; one login answer
for unknown, locked, disabled and wrong; failed logins throttled per address; plain e-mails only."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update
from sqlmodel import Session

from bot.console import add_user, auth
from bot.console.login_routes import LOGIN_REFUSED
from storage.console_queries import AUDIT, USER
from storage.types import utcnow
from tests.bot import test_console
from tests.bot.test_cli import rapport
from tests.bot.test_console import PASSWORD, Console, csrf_of, login, make_user

console = test_console.console


def user_id(db: Engine, email: str) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(USER.c.id).where(USER.c.email == email)).scalar_one())


def audited(db: Engine) -> list[tuple[str, str | None, str | None]]:
    with db.connect() as conn:
        rows = conn.execute(select(AUDIT).where(AUDIT.c.action.like("user_%")).order_by(AUDIT.c.id))
        return [(r.action, r.actor, r.target) for r in rows]


def act(c: Console, email: str, action: str, **form: str) -> str:
    response = c.client.post(
        f"/console/admin/users/{user_id(c.db, email)}/{action}",
        data={"csrf_token": c.csrf("/console/admin/users"), **form},
    )
    assert response.status_code == 200, response.text[:500]
    return response.text


def test_admins_unlock_reset_change_role_disable_and_enable_with_an_audit_trail(console: Console) -> None:
    for _ in range(5):
        login(console.client, "op@example.com", "wrong wrong wrong")
    assert login(console.client, "op@example.com")[0] == 401  # locked
    console.client.cookies.clear()
    assert login(console.client, "admin@example.com")[0] == 303
    page = console.client.get("/console/admin/users").text
    assert "locked until" in page and "/unlock" in page
    assert "Unlocked op@example.com" in act(console, "op@example.com", "unlock")

    reset = act(console, "op@example.com", "reset")
    found = re.search(r'<code id="reset-password">([^<]+)</code>', reset)
    assert found
    new_password = found.group(1)
    assert "staff" in act(console, "op@example.com", "role", role="staff")
    assert "Disabled op@example.com" in act(console, "op@example.com", "disable")

    other = TestClient(console.client.app)
    assert login(other, "op@example.com", new_password)[0] == 401  # disabled
    assert "Enabled op@example.com" in act(console, "op@example.com", "enable")
    assert login(other, "op@example.com", PASSWORD)[0] == 401  # the old password is gone
    assert login(other, "op@example.com", new_password)[0] == 303
    assert other.get("/console/broadcasts").status_code == 200  # staff now

    assert audited(console.db) == [
        ("user_unlocked", "admin@example.com", "op@example.com"),
        ("user_password_reset", "admin@example.com", "op@example.com"),
        ("user_role_changed", "admin@example.com", "op@example.com"),
        ("user_disabled", "admin@example.com", "op@example.com"),
        ("user_enabled", "admin@example.com", "op@example.com"),
    ]


def test_account_changes_refuse_nonsense_and_non_admins(console: Console) -> None:
    assert login(console.client, "admin@example.com")[0] == 303
    token = console.csrf("/console/admin/users")
    me = user_id(console.db, "admin@example.com")
    op = user_id(console.db, "op@example.com")
    for path, form, says in [
        (f"{me}/disable", {}, "your own account"),
        (f"{me}/role", {"role": "operator"}, "your own account"),
        (f"{op}/role", {"role": "overlord"}, "role must be one of"),
        (f"{op}/enable", {}, "is not disabled"),
    ]:
        response = console.client.post(f"/console/admin/users/{path}", data={"csrf_token": token, **form})
        assert response.status_code == 422 and says in response.text, path
    assert (
        console.client.post(f"/console/admin/users/{op}/explode", data={"csrf_token": token}).status_code
        == 404
    )
    assert (
        console.client.post("/console/admin/users/999999/unlock", data={"csrf_token": token}).status_code
        == 404
    )
    assert audited(console.db) == []

    console.client.cookies.clear()
    assert login(console.client, "op@example.com")[0] == 303
    token = console.csrf()
    for action in ("unlock", "reset", "role", "disable", "enable"):
        response = console.client.post(
            f"/console/admin/users/{me}/{action}", data={"csrf_token": token, "role": "operator"}
        )
        assert response.status_code == 403, action
    assert audited(console.db) == []


def test_login_answers_alike_for_unknown_locked_disabled_and_wrong(
    console: Console, monkeypatch: pytest.MonkeyPatch
) -> None:
    verified: list[str] = []
    real: Callable[[str, str], bool] = auth._verify

    def counting(password_hash: str, password: str) -> bool:
        verified.append(password_hash)
        return real(password_hash, password)

    monkeypatch.setattr(auth, "_verify", counting)
    make_user(console.db, "locked@example.com", "operator")
    make_user(console.db, "gone@example.com", "operator")
    with console.db.begin() as conn:
        conn.execute(
            update(USER)
            .where(USER.c.email == "locked@example.com")
            .values(locked_until=console.clock.now + timedelta(hours=1))
        )
        conn.execute(
            update(USER).where(USER.c.email == "gone@example.com").values(disabled_at=console.clock.now)
        )
    answers = []
    for email, password in [
        ("nobody@example.com", "whatever12345"),
        ("locked@example.com", PASSWORD),  # the right password of a locked account
        ("gone@example.com", PASSWORD),  # the right password of a disabled account
        ("op@example.com", "wrong password!"),
    ]:
        before = len(verified)
        status, body = login(console.client, email, password)
        assert len(verified) == before + 1, email  # one argon2 verification for every answer
        error = re.search(r'<p class="error"[^>]*>(.*?)</p>', body, re.S)
        answers.append((status, error.group(1).strip() if error else body[:200]))
    assert len(set(answers)) == 1, answers
    assert answers[0][0] == 401 and "Wrong e-mail or password" in answers[0][1]
    assert LOGIN_REFUSED.startswith("Wrong e-mail or password")


def test_failed_logins_are_throttled_per_address(console: Console) -> None:
    for _ in range(10):
        assert login(console.client, "op@example.com", "wrong wrong wrong")[0] == 401
    status, body = login(console.client, "op@example.com")  # even the right password: not checked
    assert status == 429 and "Too many failed logins from your address" in body
    assert login(console.client, "nobody@example.com", "whatever12345")[0] == 429
    console.clock.now += timedelta(seconds=61)
    with console.db.begin() as conn:  # the account lock (5 failures) is the admins' to lift
        conn.execute(update(USER).values(locked_until=None, failed_logins=0))
    assert login(console.client, "op@example.com")[0] == 303


@pytest.mark.parametrize(
    "email", ["<script>alert(1)</script>@x.y", "<script>@x.y", 'a"b@x.y', "a b@x.y", "a@b", "a@x.y\n"]
)
def test_an_email_with_markup_or_odd_characters_is_refused(console: Console, email: str) -> None:
    with Session(console.db) as session, pytest.raises(ValueError, match="is not an e-mail address"):
        add_user(session, email, "operator", None)
    assert login(console.client, "admin@example.com")[0] == 303
    page = console.client.get("/console/admin/users")
    response = console.client.post(
        "/console/admin/users", data={"csrf_token": csrf_of(page.text), "email": email, "role": "operator"}
    )
    assert response.status_code == 422 and "is not an e-mail address" in response.text
    assert "<script>alert" not in response.text


def test_rapport_users_list_unlock_reset_role_disable_enable(db_url: str, db: Engine, tmp_path: Path) -> None:
    make_user(db, "cli@example.com", "operator")
    with db.begin() as conn:
        conn.execute(update(USER).values(failed_logins=0, locked_until=utcnow() + timedelta(hours=1)))

    def run(*args: str) -> str:
        result = rapport("users", *args, db_url=db_url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr + result.stdout
        return result.stdout

    assert "locked until" in run("list")
    run("unlock", "cli@example.com", "--by", "ops")
    assert "active" in run("list")
    out = run("reset", "cli@example.com")
    password = out.split("shown once, keep it safe): ")[1].strip()
    run("role", "cli@example.com", "staff")
    run("disable", "cli@example.com")
    assert "disabled" in run("list")
    run("enable", "cli@example.com")
    listing = run("list")
    assert "staff" in listing and "active" in listing
    with db.begin() as conn:
        assert (
            auth.authenticate(
                conn, email="cli@example.com", password=password, config=auth.ConsoleConfig()
            ).outcome
            is auth.LoginOutcome.OK
        )
    assert [a for a, _, _ in audited(db)] == [
        "user_unlocked", "user_password_reset", "user_role_changed", "user_disabled", "user_enabled",
    ]  # fmt: skip
    assert audited(db)[0][1] == "cli:ops"
    bad = rapport("users", "role", "cli@example.com", "overlord", db_url=db_url, cwd=tmp_path)
    assert bad.returncode == 1 and "role must be one of" in bad.stderr + bad.stdout
    missing = rapport("users", "unlock", "nobody@example.com", db_url=db_url, cwd=tmp_path)
    assert missing.returncode == 1 and "no account" in missing.stderr + missing.stdout
