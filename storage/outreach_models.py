"""Tables of the proactive path: what the contact policy decided per customer, and the delivery
of switch requests to the billing system."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, Table
from sqlmodel import Column, Field, SQLModel

from storage.types import UTCDateTime, utcnow


class OutreachEvent(SQLModel, table=True):
    """One decision about a proactive message: queued, deferred, skipped (with the rule that
    stopped it) or ``unknown`` (a crash hid whether it went)."""

    __tablename__ = "outreach_event"
    __table_args__ = (Index("ix_outreach_event_customer_at", "customer_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customer.id", ondelete="CASCADE"), nullable=False)
    )
    kind: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=64)
    plan_id: str | None = Field(default=None, max_length=64)
    message_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="SET NULL"), nullable=True)
    )
    at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class BillingDelivery(SQLModel, table=True):
    """How handing one switch request to the billing system went."""

    __tablename__ = "billing_delivery"

    switch_request_id: int = Field(
        sa_column=Column(Integer, ForeignKey("switch_request.id", ondelete="CASCADE"), primary_key=True)
    )
    attempts: int = 0
    last_error: str | None = Field(default=None, max_length=500)
    next_attempt_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    delivered_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class DeliveryAttempt(SQLModel, table=True):
    """One try at handing an outbound message to its channel, and how it ended: ``sent``,
    ``retry`` (a retryable error; tried again later), ``failed``, or ``unknown`` (cut off; at most
    once means it is not tried again)."""

    __tablename__ = "delivery_attempt"
    __table_args__ = (Index("ix_delivery_attempt_message_id", "message_id"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(
        sa_column=Column(Integer, ForeignKey("message.id", ondelete="CASCADE"), nullable=False)
    )
    attempt: int
    outcome: str = Field(max_length=16)
    error: str | None = Field(default=None, max_length=500)
    provider_message_id: str | None = Field(default=None, max_length=128)
    claimed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class RateBucket(SQLModel, table=True):
    """One shared send-rate bucket (a channel, a sending number, a chat): the theoretical
    arrival time of the next send, in epoch seconds, shared by every delivery worker."""

    __tablename__ = "rate_bucket"

    key: str = Field(primary_key=True, max_length=200)
    tat: float


class WhatsAppContent(SQLModel, table=True):
    """A Content API item Rapport made (a quick reply with its buttons), by a digest of what it
    holds: made once, kept across restarts and shared by every worker."""

    __tablename__ = "whatsapp_content"

    key: str = Field(primary_key=True, max_length=64)
    content_sid: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


OUTREACH_EVENT: Table = SQLModel.metadata.tables["outreach_event"]
BILLING_DELIVERY: Table = SQLModel.metadata.tables["billing_delivery"]
RATE_BUCKET: Table = SQLModel.metadata.tables["rate_bucket"]
DELIVERY_ATTEMPT: Table = SQLModel.metadata.tables["delivery_attempt"]
WHATSAPP_CONTENT: Table = SQLModel.metadata.tables["whatsapp_content"]
