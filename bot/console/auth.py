"""Console accounts: argon2 passwords, server-side sessions with an idle timeout, lockout."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Connection
from sqlmodel import Session

from storage import console_queries as q
from storage.console_models import Role, User
from storage.types import utcnow

if TYPE_CHECKING:
    from bot.settings import Settings

MIN_PASSWORD = 12
# An address as people type them: no markup, quotes, spaces or control characters anywhere.
_EMAIL = re.compile(r"^[a-z0-9.!#$%&'*+/=?^_`{|}~-]+@[a-z0-9-]+(?:\.[a-z0-9-]+)*\.[a-z]{2,}$")
_hasher = PasswordHasher()
# Verified against when the e-mail is unknown, so a miss costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True, slots=True)
class ConsoleConfig:
    """Console tunables (from settings; tests pass their own clock)."""

    idle_timeout: timedelta = timedelta(minutes=30)
    max_failures: int = 5
    lockout: timedelta = timedelta(minutes=15)
    clock: Callable[[], datetime] = field(default=utcnow)
    login_failures_per_minute: int = 10  # per client address, then 429 until the minute has passed

    @classmethod
    def from_settings(cls, settings: Settings) -> ConsoleConfig:
        """Read ``console_idle_minutes``, ``console_max_failures``, ``console_lockout_minutes`` and
        ``console_login_failures_per_minute``."""
        return cls(
            idle_timeout=timedelta(minutes=settings.console_idle_minutes),
            max_failures=settings.console_max_failures,
            lockout=timedelta(minutes=settings.console_lockout_minutes),
            login_failures_per_minute=settings.console_login_failures_per_minute,
        )


def hash_password(password: str) -> str:
    """The argon2id hash of ``password``."""
    return _hasher.hash(password)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def check_email(email: str) -> str:
    """The e-mail, trimmed and lower-case; ValueError unless it is a plain address."""
    email = email.strip().lower()
    if not _EMAIL.match(email) or len(email) > 320:
        raise ValueError(f"{email!r} is not an e-mail address")
    return email


def check_role(role: str) -> Role:
    """The role named ``role``; ValueError for any other name."""
    if role not in {r.value for r in Role}:
        raise ValueError(f"role must be one of {', '.join(r.value for r in Role)}")
    return Role(role)


def add_user(session: Session, email: str, role: str, password: str | None) -> tuple[User, str | None]:
    """Create a console account; without a password one is generated and returned (show it once).

    Raises ValueError for a malformed e-mail, an unknown role, a short password or a taken e-mail.
    """
    email = check_email(email)
    check_role(role)
    generated = None
    if password is None:
        password = generated = secrets.token_urlsafe(15)
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"the password needs at least {MIN_PASSWORD} characters")
    if q.user_exists(session.connection(), email=email):
        raise ValueError(f"{email} already has an account")
    user = User(email=email, role=role, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    return user, generated


class LoginOutcome(StrEnum):
    OK = "login"
    BAD = "login_failed"
    LOCKED = "login_locked"
    DISABLED = "login_disabled"


@dataclass(frozen=True, slots=True)
class LoginResult:
    outcome: LoginOutcome
    user_id: int | None = None
    email: str = ""


def authenticate(conn: Connection, *, email: str, password: str, config: ConsoleConfig) -> LoginResult:
    """Check a login; counts failures and locks the account after ``max_failures`` in a row."""
    email = email.strip().lower()
    now = config.clock()
    row = q.user_for_login(conn, email=email)
    if row is None:
        _verify(_DUMMY_HASH, password)  # as long as for a known account: no enumeration by timing
        return LoginResult(LoginOutcome.BAD, email=email)
    if row["locked_until"] is not None and row["locked_until"] > now:
        _verify(row["password_hash"], password)  # the same work as any other answer
        return LoginResult(LoginOutcome.LOCKED, row["id"], email)
    if not _verify(row["password_hash"], password):
        failures = row["failed_logins"] + 1
        values: dict[str, Any] = {"failed_logins": failures}
        outcome = LoginOutcome.BAD
        if failures >= config.max_failures:
            values = {"failed_logins": 0, "locked_until": now + config.lockout}
            outcome = LoginOutcome.LOCKED
        q.update_user(conn, user_id=row["id"], values=values)
        return LoginResult(outcome, row["id"], email)
    if row["disabled_at"] is not None:
        return LoginResult(LoginOutcome.DISABLED, row["id"], email)
    values = {"failed_logins": 0, "locked_until": None, "last_login_at": now}
    if _hasher.check_needs_rehash(row["password_hash"]):
        values["password_hash"] = hash_password(password)
    q.update_user(conn, user_id=row["id"], values=values)
    return LoginResult(LoginOutcome.OK, row["id"], email)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(conn: Connection, *, user_id: int, now: datetime) -> str:
    """A new session for the user; returns the cookie token (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    q.add_session(
        conn, token_hash=_digest(token), user_id=user_id, csrf_token=secrets.token_urlsafe(32), now=now
    )
    return token


@dataclass(frozen=True, slots=True)
class Principal:
    """The logged-in user behind a request."""

    user_id: int
    email: str
    role: Role
    csrf_token: str
    token_hash: str

    def can(self, role: Role) -> bool:
        return self.role.rank >= role.rank


def resume_session(
    conn: Connection, *, token: str, config: ConsoleConfig, touch: bool = True
) -> Principal | None:
    """The session's user, touching it (unless ``touch`` is False: a page's background poll is
    not activity); None (and the session ended) when idle too long."""
    now = config.clock()
    digest = _digest(token)
    row = q.session_user(conn, token_hash=digest)
    if row is None:
        return None
    if now - row["last_seen_at"] > config.idle_timeout:
        end_session(conn, token_hash=digest)
        return None
    if touch:
        q.touch_session(conn, token_hash=digest, now=now)
    return Principal(row["id"], row["email"], Role(row["role"]), row["csrf_token"], digest)


def end_session(conn: Connection, *, token_hash: str) -> None:
    """Log a session out."""
    q.end_session(conn, token_hash=token_hash)


def end_user_sessions(conn: Connection, *, user_id: int) -> None:
    """Log every session of a user out (on disabling the account)."""
    q.end_user_sessions(conn, user_id=user_id)


def purge_idle_sessions(conn: Connection, *, config: ConsoleConfig) -> int:
    """Delete sessions idle past the timeout; returns how many."""
    return q.purge_sessions(conn, idle_since=config.clock() - config.idle_timeout)


def count_users(conn: Connection) -> int:
    """How many console accounts exist."""
    return q.count_users(conn)


# -- account management (console and CLI) ------------------------------------------------------------


class AccountAction(StrEnum):
    """What an admin may do to an account; the audit log's action is ``user_<value>``."""

    UNLOCK = "unlocked"
    RESET = "password_reset"
    ROLE = "role_changed"
    DISABLE = "disabled"
    ENABLE = "enabled"


@dataclass(frozen=True, slots=True)
class AccountChange:
    """What :func:`manage` did: to whom, and a generated password to show once (reset only)."""

    email: str
    action: AccountAction
    detail: dict[str, Any]
    password: str | None = None


def manage(
    conn: Connection,
    *,
    email: str,
    action: AccountAction,
    actor: str,
    now: datetime,
    role: str | None = None,
    ip: str | None = None,
) -> AccountChange:
    """Unlock, reset the password of (a generated one, shown once), change the role of, disable or
    enable the account ``email``; audited. Disabling, a reset and a role change end the account's
    sessions. ValueError when there is no such account or the change makes no sense."""
    row = q.user_by_email(conn, email=email.strip().lower())
    if row is None:
        raise ValueError(f"no account {email!r}")
    values: dict[str, Any]
    detail: dict[str, Any] = {}
    password = None
    if action is AccountAction.UNLOCK:
        values = {"failed_logins": 0, "locked_until": None}
    elif action is AccountAction.RESET:
        password = secrets.token_urlsafe(15)
        values = {"password_hash": hash_password(password), "failed_logins": 0, "locked_until": None}
    elif action is AccountAction.ROLE:
        new = check_role(role or "")
        if row["email"] == actor and new is not Role.ADMIN:
            raise ValueError("you cannot take the admin role from your own account")
        values, detail = {"role": new.value}, {"from": row["role"], "to": new.value}
    elif action is AccountAction.DISABLE:
        if row["email"] == actor:
            raise ValueError("you cannot disable your own account")
        if row["disabled_at"] is not None:
            raise ValueError(f"{row['email']} is already disabled")
        values = {"disabled_at": now}
    else:
        if row["disabled_at"] is None:
            raise ValueError(f"{row['email']} is not disabled")
        values = {"disabled_at": None, "failed_logins": 0, "locked_until": None}
    q.update_user(conn, user_id=row["id"], values=values)
    if action in (AccountAction.RESET, AccountAction.ROLE, AccountAction.DISABLE):
        end_user_sessions(conn, user_id=row["id"])
    q.audit(
        conn, action=f"user_{action.value}", actor=actor, target=row["email"], detail=detail, ip=ip, now=now
    )
    return AccountChange(row["email"], action, detail, password)


def login_throttled(conn: Connection, *, ip: str | None, config: ConsoleConfig) -> bool:
    """Whether the address had ``login_failures_per_minute`` failed logins in the last minute
    (then it is refused before any password is checked)."""
    if ip is None:
        return False
    since = config.clock() - timedelta(minutes=1)
    failures = q.login_failures(conn, ip=ip, since=since, actions=(LoginOutcome.BAD, LoginOutcome.LOCKED))
    return failures >= config.login_failures_per_minute
