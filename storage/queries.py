"""Query functions over the tables (keyword-only, one session each, no commits of their own)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, insert, union, update
from sqlalchemy import select as core_select
from sqlmodel import Session, col, select

from storage.handoff_models import Conversation, ConversationNote
from storage.models import ChannelIdentity, Customer, Message, Preference, Suppression
from storage.tables import CUSTOMER
from storage.types import Channel, DeliveryStatus, utcnow


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
        addresses.add((Channel.SMS, customer.phone))
        addresses.add((Channel.WHATSAPP, customer.phone))  # WhatsApp addresses are E.164 too
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
    customer.whatsapp_session_at = customer.whatsapp_opt_in_at = None
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


@dataclass(frozen=True, slots=True)
class SavedCustomer:
    """What :func:`save_customer` did: the customer's id and whether it is new, or why nothing
    was saved (``conflict``)."""

    id: int | None
    created: bool = False
    conflict: str | None = None


_WHO = (CUSTOMER.c.id, CUSTOMER.c.external_id, CUSTOMER.c.phone)
_BY_EXTERNAL_ID = core_select(*_WHO).where(CUSTOMER.c.external_id == bindparam("b_external_id"))
_BY_EXTERNAL_ID_OR_PHONE = union(  # two unique-index lookups (an OR may plan as a scan on an empty table)
    _BY_EXTERNAL_ID, core_select(*_WHO).where(CUSTOMER.c.phone == bindparam("b_phone"))
)
_INSERT_CUSTOMER = insert(CUSTOMER)
_UPDATE_CUSTOMER = update(CUSTOMER).where(CUSTOMER.c.id == bindparam("b_id"))


def save_customer(
    conn: Connection, *, values: Mapping[str, Any], now: datetime | None = None
) -> SavedCustomer:
    """Insert or update the customer with ``values["external_id"]``, setting the columns given.

    The one customer upsert (imports, the demo, tests). A customer known only by the phone in
    ``values`` (someone who texted before the book was imported: the channel vouched for the
    number) is the same person and is adopted; a phone that belongs to a customer with another
    external id is a conflict and nothing is written.
    """
    external_id, phone = values["external_id"], values.get("phone")
    customer_id: int | None = None
    owner: Any = None
    if phone is None:
        found = conn.execute(_BY_EXTERNAL_ID, {"b_external_id": external_id}).all()
    else:
        found = conn.execute(_BY_EXTERNAL_ID_OR_PHONE, {"b_external_id": external_id, "b_phone": phone}).all()
    for row in found:
        if row.external_id == external_id:
            customer_id = row.id
        if phone is not None and row.phone == phone:
            owner = row
    if owner is not None and owner.id != customer_id:
        if customer_id is None and owner.external_id is None:
            customer_id = owner.id
        else:
            other = owner.external_id or f"#{owner.id}, who has no external_id"
            return SavedCustomer(
                None, conflict=f"phone {phone} already belongs to another customer ({other})"
            )
    if customer_id is None:
        params = {"created_at": now or utcnow(), "marketing_consent": False, **values}
        key = conn.execute(_INSERT_CUSTOMER, params).inserted_primary_key
        assert key is not None
        return SavedCustomer(int(key[0]), created=True)
    conn.execute(_UPDATE_CUSTOMER, {"b_id": customer_id, **values})
    return SavedCustomer(customer_id)


def customer_ids(conn: Connection, *, external_ids: Sequence[str]) -> dict[str, int]:
    """The ids of the customers with these external ids (those that exist), by external id."""
    found: dict[str, int] = {}
    for start in range(0, len(external_ids), 500):
        chunk = list(external_ids[start : start + 500])
        query = core_select(CUSTOMER.c.external_id, CUSTOMER.c.id).where(CUSTOMER.c.external_id.in_(chunk))
        found.update((external_id, customer_id) for external_id, customer_id in conn.execute(query))
    return found


def upsert_customer(session: Session, *, external_id: str, **fields: object) -> tuple[Customer, bool]:
    """:func:`save_customer` for ORM code: the customer, and True when it was created.

    ValueError when the phone belongs to another customer.
    """
    session.flush()
    saved = save_customer(session.connection(), values={"external_id": external_id, **fields})
    if saved.conflict is not None:
        raise ValueError(saved.conflict)
    customer = session.get(Customer, saved.id, populate_existing=True)
    assert customer is not None
    return customer, saved.created


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
