"""The link-code table: one-time codes that join a new chat to a customer known elsewhere."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer
from sqlmodel import Column, Field, SQLModel

from storage.types import UTCDateTime, utcnow


class LinkCode(SQLModel, table=True):
    """A single-use, expiring code (a Telegram deep link ``/start CODE``) for one customer.

    Only the SHA-256 of the code is stored: a code is a bearer secret, and a copy of the
    database must not let anyone take over a customer's conversation. The codes are random
    (96 bits), so a fast hash is enough.
    """

    __tablename__ = "link_code"

    id: int | None = Field(default=None, primary_key=True)
    code_hash: str = Field(max_length=64, unique=True)
    customer_id: int = Field(
        sa_column=Column(Integer, ForeignKey("customer.id", ondelete="CASCADE"), nullable=False, index=True)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    used_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime(), nullable=True))
    # "channel:address" that redeemed it, so a redelivered /start CODE is recognised as the same use.
    used_by: str | None = Field(default=None, max_length=96)
