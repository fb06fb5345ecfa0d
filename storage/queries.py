"""Query functions over the tables (keyword-only, one session each, no commits of their own)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import Connection, delete, update
from sqlmodel import Session, col, select

from storage.handoff_models import Conversation, ConversationNote
from storage.models import (
    ChannelIdentity,
    Customer,
    DeliveryStatus,
    Message,
    Preference,
    Suppression,
    utcnow,
)


def address_hash(channel: str, address: str) -> str:
    """A stable, non-reversible key for an address kept after erasure."""
    return hashlib.sha256(f"{channel}:{address}".encode()).hexdigest()


def find_identity(session: Session, *, channel: str, address: str) -> ChannelIdentity | None:
    """The customer identity for an address on a channel."""
    return session.exec(
        select(ChannelIdentity).where(ChannelIdentity.channel == channel, ChannelIdentity.address == address)
    ).first()


def preferences(session: Session, *, customer_id: int) -> dict[str, Preference]:
    """The customer's current preferences by key."""
    rows = session.exec(select(Preference).where(Preference.customer_id == customer_id)).all()
    return {p.key: p for p in rows}


def mark_sent(session: Session, *, message_ids: Iterable[int], at: datetime | None = None) -> None:
    """Record that outbound messages were handed to their channel."""
    ids = list(message_ids)
    if ids:
        session.execute(
            update(Message)
            .where(col(Message.id).in_(ids))
            .values(status=DeliveryStatus.SENT, sent_at=at or utcnow())
        )


def erase_customer(session: Session, *, customer: Customer, keep_message_id: int, now: datetime) -> None:
    """Erase what Rapport knows about a customer: preferences, messages, identities, personal data.

    Kept: an anonymous customer row (for the audit trail), the message that asked for the erasure
    with its text scrubbed (so a redelivery of it stays a duplicate), and a suppression record
    per address so that nobody messages an erased number unprompted.
    """
    assert customer.id is not None
    identities = session.exec(select(ChannelIdentity).where(ChannelIdentity.customer_id == customer.id)).all()
    addresses = {(i.channel, i.address) for i in identities}
    if customer.phone:
        addresses.add(("sms", customer.phone))
    for channel, address in addresses:
        digest = address_hash(channel, address)
        exists = session.exec(
            select(Suppression).where(Suppression.channel == channel, Suppression.address_hash == digest)
        ).first()
        if exists is None:
            session.add(Suppression(channel=channel, address_hash=digest, reason="erased", created_at=now))
    session.execute(delete(Preference).where(col(Preference.customer_id) == customer.id))
    # Operators' notes may hold what the customer told them; the conversations stay, anonymous.
    theirs = select(Conversation.id).where(Conversation.customer_id == customer.id)
    session.execute(delete(ConversationNote).where(col(ConversationNote.conversation_id).in_(theirs)))
    session.execute(
        delete(Message).where(col(Message.customer_id) == customer.id, col(Message.id) != keep_message_id)
    )
    session.execute(
        update(Message)
        .where(col(Message.id) == keep_message_id)
        .values(text="[erased]", parsed_value=None, question_key=None, confidence=None)
    )
    session.execute(delete(ChannelIdentity).where(col(ChannelIdentity.customer_id) == customer.id))
    customer.name = customer.phone = customer.email = customer.external_id = customer.timezone = None
    customer.marketing_consent = False
    customer.erased_at = now
    session.add(customer)


def is_suppressed(db: Session | Connection, *, channel: str, address: str) -> bool:
    """Whether ``address`` belongs to an erased customer and must not be messaged unprompted."""
    conn = db.connection() if isinstance(db, Session) else db
    digest = address_hash(channel, address)
    query = select(Suppression.id).where(Suppression.channel == channel, Suppression.address_hash == digest)
    return conn.execute(query.limit(1)).first() is not None


def transcript(session: Session, *, customer_id: int) -> Sequence[Message]:
    """Every message of a customer's conversation, oldest first."""
    return session.exec(
        select(Message).where(Message.customer_id == customer_id).order_by(col(Message.id))
    ).all()


def upsert_customer(session: Session, *, external_id: str, **fields: object) -> tuple[Customer, bool]:
    """Create or update the customer with ``external_id``; True when it was created."""
    customer = session.exec(select(Customer).where(Customer.external_id == external_id)).first()
    created = customer is None
    if customer is None:
        customer = Customer(external_id=external_id)
    for name, value in fields.items():
        setattr(customer, name, value)
    session.add(customer)
    session.flush()
    return customer, created


def set_preference(
    session: Session,
    *,
    customer_id: int,
    key: str,
    value: object,
    source: str,
    at: datetime,
    message_id: int | None = None,
    channel: str | None = None,
) -> Preference:
    """Store (or replace) one preference with its provenance."""
    pref = session.exec(
        select(Preference).where(Preference.customer_id == customer_id, Preference.key == key)
    ).first()
    if pref is None:
        pref = Preference(customer_id=customer_id, key=key, value=value, source=source)
    pref.value, pref.source, pref.message_id, pref.channel = value, source, message_id, channel
    pref.stated_at = pref.confirmed_at = at
    session.add(pref)
    return pref
