"""Handoff tables: a customer's conversation and its state machine (with the bot, waiting for a
person, with a person, resolved), and operators' internal notes on it."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from storage.models import UTCDateTime, utcnow


class ConversationState(StrEnum):
    """Who has the conversation."""

    BOT = "bot"
    WAITING = "waiting"  # for a person
    HUMAN = "human"  # an operator claimed it
    RESOLVED = "resolved"


class Conversation(SQLModel, table=True):
    """One conversation of a customer: opened by their first message (or an operator taking it
    over), closed when resolved by an operator or, with the bot only, when idle.

    ``open_for`` is the customer id while the conversation is open and NULL once resolved: its
    unique index allows one open conversation per customer on SQLite and PostgreSQL alike.
    """

    __table_args__ = (
        UniqueConstraint("open_for", name="uq_conversation_open_for"),
        Index("ix_conversation_state_waiting", "state", "waiting_since"),
        Index("ix_conversation_resolved_at", "resolved_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customer.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    open_for: int | None = None
    state: str = Field(default=ConversationState.BOT, max_length=16)
    reason: str | None = Field(default=None, max_length=64)  # why a person was wanted
    operator: str | None = Field(default=None, max_length=320)  # who has it (console e-mail)
    started_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    waiting_since: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    claimed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    first_human_reply_at: datetime | None = Field(
        default=None, sa_column=Column(UTCDateTime(), nullable=True)
    )
    timeout_notified_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    resolved_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    resolved_by: str | None = Field(default=None, max_length=320)


class ConversationNote(SQLModel, table=True):
    """An operator's internal note on a conversation: never sent to the customer."""

    __tablename__ = "conversation_note"

    id: int | None = Field(default=None, primary_key=True)
    conversation_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("conversation.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    author: str = Field(max_length=320)
    text: str = Field(sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
