"""SQLModel tables: customers, their channel identities, messages, preferences and dialog state."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import Column, Field, SQLModel


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp that is always timezone-aware UTC in Python, on SQLite as on PostgreSQL."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Rapport stores timezone-aware UTC times only")
        value = value.astimezone(UTC)
        # SQLite has no time zones: store UTC wall time, re-attach UTC on the way out.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Channel(StrEnum):
    """Where a message travels."""

    TERMINAL = "terminal"
    TELEGRAM = "telegram"
    SMS = "sms"


class Direction(StrEnum):
    IN = "in"
    OUT = "out"


class Source(StrEnum):
    """Where a preference came from."""

    ASKED = "asked"
    USAGE = "usage"
    OPERATOR = "operator"
    IMPORT = "import"


class DeliveryStatus(StrEnum):
    """The life of an outbound message (the outbox)."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    UNKNOWN = "unknown"
    CANCELLED = "cancelled"


class PendingKind(StrEnum):
    """What the bot is waiting for."""

    ASK = "ask"  # an answer to the pending question
    RECONFIRM = "reconfirm"  # yes/no: is the stale stored answer still right?
    CONFIRM_FORGET = "confirm_forget"  # yes/no: erase everything?
    CONFIRM_STOP = "confirm_stop"  # yes/no: opt out of all messages?
    SUGGESTION = "suggestion"  # yes/no: switch to the suggested plan (pending_key "plan:<id>")?
    OFFER_PERSON = "offer_person"  # yes/no: get a person? (pending_key: the question not understood)


class Customer(SQLModel, table=True):
    """A person the business serves; channels and preferences hang off it."""

    id: int | None = Field(default=None, primary_key=True)
    external_id: str | None = Field(default=None, max_length=64, unique=True)
    name: str | None = Field(default=None, max_length=200)
    phone: str | None = Field(default=None, max_length=20, unique=True)  # E.164
    email: str | None = Field(default=None, max_length=320)
    telegram_username: str | None = Field(default=None, max_length=64)
    timezone: str | None = Field(default=None, max_length=64)
    marketing_consent: bool = False
    current_plan_id: str | None = Field(
        default=None,
        sa_column=Column(String(64), ForeignKey("plan.id", name="fk_customer_current_plan_id_plan")),
    )
    opted_out_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    opt_out_message_id: int | None = None  # not a foreign key: the message may be erased later
    erased_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class ChannelIdentity(SQLModel, table=True):
    """An address on one channel (a phone number, a Telegram chat id) that belongs to a customer."""

    __tablename__ = "channel_identity"
    __table_args__ = (UniqueConstraint("channel", "address", name="uq_channel_identity_address"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    address: str = Field(max_length=64)
    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customer.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    verified: bool = False
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class Message(SQLModel, table=True):
    """One message in or out, with what the bot understood of an inbound one.

    Outbound rows are the outbox: ``status`` tracks delivery. ``reply_to_id`` ties replies to the
    inbound message they answer, so a duplicate inbound returns the same replies.
    """

    __table_args__ = (
        UniqueConstraint("channel", "direction", "provider_message_id", name="uq_message_provider_id"),
        Index("ix_message_customer_id_id", "customer_id", "id"),
        Index("ix_message_outbox", "status", "next_attempt_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("customer.id", ondelete="CASCADE"), nullable=True)
    )
    channel: str = Field(max_length=16)
    direction: str = Field(max_length=3)
    address: str = Field(max_length=64)
    provider_message_id: str | None = Field(default=None, max_length=128)
    text: str = Field(sa_type=Text)
    question_key: str | None = Field(default=None, max_length=64)
    parsed_value: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    confidence: float | None = None
    intent: str | None = Field(default=None, max_length=32)
    needs_review: bool = Field(default=False, index=True)
    state_version: int | None = None
    reply_to_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="CASCADE"), nullable=True)
    )
    status: str | None = Field(default=None, max_length=16)
    attempts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    error: str | None = Field(default=None, max_length=500)
    next_attempt_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    created_at: datetime = Field(
        default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False, index=True)
    )
    sent_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    delivered_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    marketing: bool = Field(default=False, sa_column_kwargs={"server_default": "0"})
    claimed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class Preference(SQLModel, table=True):
    """What a customer wants, with provenance: where, when and from which message we learned it."""

    __table_args__ = (UniqueConstraint("customer_id", "key", name="uq_preference_customer_key"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customer.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    key: str = Field(max_length=64)
    value: Any = Field(sa_type=JSON)
    source: str = Field(max_length=16)
    message_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="SET NULL"), nullable=True)
    )
    channel: str | None = Field(default=None, max_length=16)
    stated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    confirmed_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class DialogState(SQLModel, table=True):
    """Where a customer's conversation stands; its row is the customer's lock."""

    __tablename__ = "dialog_state"

    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customer.id", ondelete="CASCADE"), primary_key=True)
    )
    pending_key: str | None = Field(default=None, max_length=64)
    pending_kind: str | None = Field(default=None, max_length=16)
    reask_count: int = 0
    # question key -> ISO time before which a skipped question is not asked again
    deferred: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    finished_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    last_activity: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    version: int = 0


class Suppression(SQLModel, table=True):
    """An address that must never be messaged unprompted (an erased customer's), kept as a hash."""

    __table_args__ = (UniqueConstraint("channel", "address_hash", name="uq_suppression_address"),)

    id: int | None = Field(default=None, primary_key=True)
    channel: str = Field(max_length=16)
    address_hash: str = Field(max_length=64)
    reason: str = Field(max_length=32)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class Plan(SQLModel, table=True):
    """A plan in the catalog. Allowances and overage prices are per metric, by name.

    ``allowance`` maps a metric to a monthly number or "unlimited"; ``overage`` maps a metric to
    the price (a decimal string) per unit above the allowance. A metric with an allowance and no
    overage price cannot go over on this plan.
    """

    id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=200)
    currency: str = Field(max_length=3)
    monthly_price: Decimal = Field(sa_column=Column(Numeric(12, 2), nullable=False))
    contract_months: int = 0
    available: bool = True
    perks: list[str] = Field(default_factory=list, sa_type=JSON)
    allowance: dict[str, Any] = Field(default_factory=dict, sa_type=JSON)
    overage: dict[str, str] = Field(default_factory=dict, sa_type=JSON)
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class Usage(SQLModel, table=True):
    """What a customer used of one metric in one month.

    ``period`` is the month as an integer yyyymm (202603 for 2026-03); ``quantity_milli`` is the
    quantity in thousandths of the metric's unit, so sums and comparisons are exact integers.
    """

    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customer.id", ondelete="CASCADE"), primary_key=True)
    )
    period: int = Field(primary_key=True)
    metric: str = Field(primary_key=True, max_length=32)
    quantity_milli: int = Field(sa_column=Column(BigInteger, nullable=False))


class SwitchRequest(SQLModel, table=True):
    """A customer said YES to a plan suggestion."""

    __tablename__ = "switch_request"

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customer.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    from_plan_id: str | None = Field(default=None, max_length=64)
    to_plan_id: str = Field(max_length=64)
    monthly_saving: Decimal = Field(sa_column=Column(Numeric(12, 2), nullable=False))
    message_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="SET NULL"), nullable=True)
    )
    status: str = Field(default="requested", max_length=16)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class PlanDecline(SQLModel, table=True):
    """A customer said NO to a plan; with the usage it was offered on, to notice when that changes."""

    __tablename__ = "plan_decline"
    __table_args__ = (Index("ix_plan_decline_customer_plan", "customer_id", "plan_id"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customer.id", ondelete="CASCADE"), nullable=False)
    )
    plan_id: str = Field(max_length=64)
    usage: dict[str, float] = Field(default_factory=dict, sa_type=JSON)  # metric -> monthly mean
    message_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="SET NULL"), nullable=True)
    )
    declined_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


import storage.broadcast_models  # noqa: E402  (broadcast, broadcast_recipient)
import storage.handoff_models  # noqa: E402  (conversation, conversation_note)
import storage.link_models  # noqa: E402  (registers the link_code table)
import storage.outreach_models  # noqa: E402, F401  (outreach_event, billing_delivery)
from storage.console_models import AuditEvent, ConsoleSession, MessageReview, TaughtSynonym, User  # noqa: E402, F401
