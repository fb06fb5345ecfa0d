"""Tables of staff broadcasts: the broadcast itself and one row per customer it reached (or did not)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, Table, Text, UniqueConstraint
from sqlmodel import Column, Field, SQLModel

from storage.types import UTCDateTime, utcnow


class BroadcastStatus(StrEnum):
    """The life of a broadcast."""

    DRAFT = "draft"
    WAITING = "waiting"  # to be prepared (segment, policy, messages) at ``scheduled_at``
    PREPARING = "preparing"  # messages being queued, a batch of customers at a time
    SCHEDULED = "scheduled"  # messages queued, none gone yet
    SENDING = "sending"  # some gone, some still queued
    DONE = "done"  # nothing left queued
    CANCELLED = "cancelled"
    FAILED = "failed"  # could not be prepared (say its template no longer fits the catalog)


class RecipientStatus(StrEnum):
    """What a broadcast did for one customer in its segment."""

    QUEUED = "queued"  # a message is in the outbox (``message_id``); maybe deferred (``reason``)
    EXCLUDED = "excluded"  # the contact policy said never (``reason``): no message
    CANCELLED = "cancelled"  # the broadcast was cancelled before the message went


class Broadcast(SQLModel, table=True):
    """A message staff send to a segment of customers, rendered per customer from a template."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    segment: str = Field(sa_type=Text)  # the filter expression (schedulers/segment_filter.py)
    template: str = Field(sa_type=Text)  # Jinja2 source, rendered in a sandbox
    created_by: str = Field(max_length=100)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    status: str = Field(default=BroadcastStatus.DRAFT, max_length=16)
    scheduled_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    local_time: str | None = Field(default=None, max_length=5)  # "HH:MM" in each recipient's zone
    cancelled_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))


class BroadcastRecipient(SQLModel, table=True):
    """One customer of a broadcast's segment: the queued message, or why there is none.

    Unique per (broadcast, customer): nobody gets the same broadcast twice, even if ``send`` runs
    again after a crash.
    """

    __tablename__ = "broadcast_recipient"
    __table_args__ = (
        UniqueConstraint("broadcast_id", "customer_id", name="uq_broadcast_recipient"),
        Index("ix_broadcast_recipient_message_id", "message_id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    broadcast_id: int = Field(
        sa_column=Column(Integer, ForeignKey("broadcast.id", ondelete="CASCADE"), nullable=False)
    )
    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customer.id", ondelete="CASCADE"), nullable=False)
    )
    message_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("message.id", ondelete="SET NULL"), nullable=True)
    )
    status: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


BROADCAST: Table = SQLModel.metadata.tables["broadcast"]
BROADCAST_RECIPIENT: Table = SQLModel.metadata.tables["broadcast_recipient"]
