"""SQLModel tables: customers, their channel identities, messages, preferences and dialog state,
plans and usage. The other table modules (console, outreach, broadcasts, link codes) import this
one, never the reverse; :mod:`storage.tables` imports them all."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlmodel import Column, Field, SQLModel

# Re-exported: these lived here before storage.types, and much code imports them from here.
from storage.types import (
    Channel,
    DeliveryStatus,
    Direction,
    Intent,
    PendingKind,
    Source,
    UTCDateTime,
    utcnow,
)

__all__ = [
    "Channel",
    "ChannelIdentity",
    "Customer",
    "DeliveryStatus",
    "DialogState",
    "Direction",
    "Intent",
    "Message",
    "PendingKind",
    "Plan",
    "PlanDecline",
    "Preference",
    "Source",
    "Suppression",
    "SwitchRequest",
    "UTCDateTime",
    "Usage",
    "utcnow",
]


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
    # WhatsApp: the last message the customer sent there (free-form replies only within 24 hours
    # of it) and when they opted in to business-initiated messages there.
    whatsapp_session_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    whatsapp_opt_in_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


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
    # The claim is a lease: the worker renews it while alive; an expired one is taken over.
    claimed_by: str | None = Field(default=None, max_length=64)
    lease_expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    # A send cut off before the provider answered, at this time or later: look it up before a resend.
    reconcile_since: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


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
