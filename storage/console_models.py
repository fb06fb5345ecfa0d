"""Console tables: operator accounts, their server-side sessions, the audit log, reviews and
synonyms taught by operators. Also indexes on ``message`` that the console's search needs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, Table
from sqlmodel import Column, Field, SQLModel

from storage import models  # noqa: F401  (the message table, indexed below)
from storage.types import UTCDateTime, utcnow


class Role(StrEnum):
    """What a console user may do; each role includes the ones before it."""

    OPERATOR = "operator"
    STAFF = "staff"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return list(Role).index(self)


class User(SQLModel, table=True):
    """A console account (an operator, staff member or admin)."""

    __tablename__ = "console_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    role: str = Field(max_length=16)
    password_hash: str = Field(max_length=200)
    failed_logins: int = 0
    locked_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    disabled_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    last_login_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class ConsoleSession(SQLModel, table=True):
    """A logged-in browser. Only the SHA-256 of the cookie's token is stored."""

    __tablename__ = "console_session"

    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("console_user.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    csrf_token: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    last_seen_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class AuditEvent(SQLModel, table=True):
    """Something a console user did (or tried): logins, exports, user changes, teaching."""

    __tablename__ = "audit_event"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True))
    actor: str | None = Field(default=None, max_length=320)  # the e-mail given, even when unknown
    action: str = Field(max_length=32, index=True)
    target: str | None = Field(default=None, max_length=320)
    detail: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    ip: str | None = Field(default=None, max_length=64)


class MessageReview(SQLModel, table=True):
    """An operator looked at a message flagged for review (and maybe taught the bot from it)."""

    __tablename__ = "message_review"

    message_id: int = Field(
        sa_column=Column(Integer, ForeignKey("message.id", ondelete="CASCADE"), primary_key=True)
    )
    reviewed_by: str = Field(max_length=320)
    reviewed_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    action: str = Field(max_length=16)  # "reviewed" or "taught"


class TaughtSynonym(SQLModel, table=True):
    """A phrase an operator taught the bot as meaning one option of one question."""

    __tablename__ = "taught_synonym"

    id: int | None = Field(default=None, primary_key=True)
    question_key: str = Field(max_length=64, index=True)
    option_value: Any = Field(sa_column=Column(JSON, nullable=False))
    phrase: str = Field(max_length=200)
    message_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="SET NULL"), nullable=True)
    )
    taught_by: str = Field(max_length=320)
    taught_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


# Keyset pages (newest first) of one channel, or of the review queue, walk these indexes.
_MESSAGE: Table = SQLModel.metadata.tables["message"]
Index("ix_message_channel_id", _MESSAGE.c.channel, _MESSAGE.c.id)
Index("ix_message_review_id", _MESSAGE.c.needs_review, _MESSAGE.c.id)

# Full-text search objects created by migrations (0005, reshaped by 0009) outside the models. They
# index conversations only, the messages that are not marketing: on SQLite an FTS5 table (and its
# shadow tables) whose external content is the view message_fts_source, kept in step by triggers;
# on PostgreSQL a partial GIN expression index, WHERE NOT marketing, with statistics on its
# expression (message_text_fts_stats: the planner does not use a partial index's own).
FTS_TABLE = "message_fts"  # also the prefix of its shadow tables and of the view
PG_FTS_INDEX = "ix_message_text_fts"


SCHEDULER_TABLE_PREFIX = "apscheduler_"  # APScheduler's own job store (created by it, not a migration)


def include_in_autogenerate(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic ``include_name`` hook: leave the full-text search objects and APScheduler's job
    store out of comparisons."""
    if type_ == "table" and name is not None and name.startswith((FTS_TABLE, SCHEDULER_TABLE_PREFIX)):
        return False
    if type_ == "index" and name is not None and "apscheduler" in name:
        return False
    return not (type_ == "index" and name == PG_FTS_INDEX)
