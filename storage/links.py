"""Linking a channel address to a customer known elsewhere: link codes, and merging customers.

A link code is random, single-use and expires (:data:`DEFAULT_TTL`); only its hash is stored.
Two customers are merged only on proof that they are one person (a code the business issued, or
a phone number the channel vouches for): never on a name or any other weak match.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import and_, delete, select, tuple_, update
from sqlmodel import Session

from storage.tables import (
    CUSTOMER,
    IDENTITY,
    LINK_CODE,
    MESSAGE,
    PLAN_DECLINE,
    PREFERENCE,
    STATE,
    SWITCH_REQUEST,
    USAGE,
)
from storage.types import utcnow

DEFAULT_TTL = timedelta(hours=24)
# Customer fields the merged customer takes from the merged-away one when it has none of its own.
_FILL_FIELDS = ("name", "email", "telegram_username", "timezone", "current_plan_id", "phone", "external_id")


class LinkOutcome(StrEnum):
    """What linking an address did."""

    LINKED = "linked"  # the address was new: it now belongs to the customer
    ALREADY = "already"  # it already belonged to the customer
    MERGED = "merged"  # it belonged to another customer, now merged into this one


def hash_code(code: str) -> str:
    """The stored form of a link code."""
    return hashlib.sha256(code.strip().encode()).hexdigest()


def create_link_code(
    session: Session, *, customer_id: int, now: datetime | None = None, ttl: timedelta = DEFAULT_TTL
) -> str:
    """A new single-use code for ``customer_id`` (URL-safe, fits a Telegram ``start`` parameter)."""
    now = now or utcnow()
    code = secrets.token_urlsafe(12)  # 96 bits, 16 characters of A-Z a-z 0-9 _ -
    session.execute(
        LINK_CODE.insert().values(
            code_hash=hash_code(code), customer_id=customer_id, created_at=now, expires_at=now + ttl
        )
    )
    return code


def customer_by_phone(session: Session, *, phone: str) -> int | None:
    """The id of the (not erased) customer with this E.164 phone number."""
    return session.execute(
        select(CUSTOMER.c.id).where(CUSTOMER.c.phone == phone, CUSTOMER.c.erased_at.is_(None))
    ).scalar()


def link_code_for_phone(
    session: Session, *, phone: str, now: datetime | None = None, ttl: timedelta = DEFAULT_TTL
) -> str:
    """A link code for the customer with ``phone``; LookupError if there is none."""
    customer_id = customer_by_phone(session, phone=phone)
    if customer_id is None:
        raise LookupError(f"no customer has the phone number {phone}")
    return create_link_code(session, customer_id=customer_id, now=now, ttl=ttl)


def redeem_link_code(session: Session, *, code: str, used_by: str, now: datetime | None = None) -> int | None:
    """The customer a valid code is for, marking it used; None if unknown, expired or used.

    Redeeming again by the same ``used_by`` (a redelivered message) returns the customer again.
    """
    now = now or utcnow()
    digest = hash_code(code)
    row = session.execute(
        select(LINK_CODE.c.id, LINK_CODE.c.customer_id, LINK_CODE.c.expires_at, LINK_CODE.c.used_by)
        .where(LINK_CODE.c.code_hash == digest)
        .with_for_update()
    ).first()
    if row is None:
        return None
    code_id, customer_id, expires_at, by = row
    if by is not None:
        return int(customer_id) if by == used_by else None
    if expires_at <= now:
        return None
    session.execute(update(LINK_CODE).where(LINK_CODE.c.id == code_id).values(used_at=now, used_by=used_by))
    return int(customer_id)


def customer_of(session: Session, *, channel: str, address: str) -> int | None:
    """The customer an address belongs to, if any."""
    return session.execute(
        select(IDENTITY.c.customer_id).where(IDENTITY.c.channel == channel, IDENTITY.c.address == address)
    ).scalar()


def set_phone_if_missing(session: Session, *, customer_id: int, phone: str) -> None:
    """Give the customer this (channel-verified) phone number if it has none."""
    session.execute(
        update(CUSTOMER).where(CUSTOMER.c.id == customer_id, CUSTOMER.c.phone.is_(None)).values(phone=phone)
    )


def link_address(
    session: Session, *, channel: str, address: str, customer_id: int, now: datetime | None = None
) -> LinkOutcome:
    """Make ``address`` belong to ``customer_id``: add the identity, or merge its customer into it."""
    now = now or utcnow()
    current = customer_of(session, channel=channel, address=address)
    if current == customer_id:
        return LinkOutcome.ALREADY
    if current is None:
        session.execute(
            IDENTITY.insert().values(
                channel=channel, address=address, customer_id=customer_id, verified=True, created_at=now
            )
        )
        has_state = select(STATE.c.customer_id).where(STATE.c.customer_id == customer_id)
        if session.execute(has_state).first() is None:
            session.execute(
                STATE.insert().values(customer_id=customer_id, reask_count=0, deferred={}, version=0)
            )
        return LinkOutcome.LINKED
    merge_customers(session, source_id=current, target_id=customer_id)
    session.execute(
        update(IDENTITY)
        .where(IDENTITY.c.channel == channel, IDENTITY.c.address == address)
        .values(verified=True)
    )
    return LinkOutcome.MERGED


def merge_customers(session: Session, *, source_id: int, target_id: int) -> None:
    """Merge customer ``source_id`` into ``target_id`` and delete the source.

    The target keeps its own preferences, usage, dialog state and personal fields; it gains the
    source's identities, messages, switch requests and declines, the preferences and usage
    months it lacks, and the personal fields it has no value for. The source's dialog state is
    kept only when the target has none (a customer imported but never talked to).
    """
    if source_id == target_id:
        raise ValueError("cannot merge a customer into itself")
    # Lock both conversations, in id order so that two merges cannot deadlock.
    session.execute(
        select(STATE.c.customer_id)
        .where(STATE.c.customer_id.in_(sorted((source_id, target_id))))
        .order_by(STATE.c.customer_id)
        .with_for_update()
    ).all()
    for table in (IDENTITY, MESSAGE, SWITCH_REQUEST, PLAN_DECLINE):
        session.execute(update(table).where(table.c.customer_id == source_id).values(customer_id=target_id))

    target_keys = select(PREFERENCE.c.key).where(PREFERENCE.c.customer_id == target_id).scalar_subquery()
    session.execute(
        delete(PREFERENCE).where(PREFERENCE.c.customer_id == source_id, PREFERENCE.c.key.in_(target_keys))
    )
    session.execute(
        update(PREFERENCE).where(PREFERENCE.c.customer_id == source_id).values(customer_id=target_id)
    )

    target_months = select(USAGE.c.period, USAGE.c.metric).where(USAGE.c.customer_id == target_id)
    session.execute(
        delete(USAGE).where(
            and_(USAGE.c.customer_id == source_id, tuple_(USAGE.c.period, USAGE.c.metric).in_(target_months))
        )
    )
    session.execute(update(USAGE).where(USAGE.c.customer_id == source_id).values(customer_id=target_id))

    has_state = session.execute(select(STATE.c.customer_id).where(STATE.c.customer_id == target_id)).first()
    if has_state is None:
        session.execute(update(STATE).where(STATE.c.customer_id == source_id).values(customer_id=target_id))
    session.execute(delete(LINK_CODE).where(LINK_CODE.c.customer_id == source_id))

    columns = [CUSTOMER.c[name] for name in _FILL_FIELDS]
    source = session.execute(select(*columns).where(CUSTOMER.c.id == source_id)).one()
    target = session.execute(select(*columns).where(CUSTOMER.c.id == target_id)).one()
    fill = {
        name: value
        for name, value, own in zip(_FILL_FIELDS, source, target, strict=True)
        if own is None and value is not None
    }
    # Deleting the source first frees its unique phone / external id for the target.
    session.execute(delete(CUSTOMER).where(CUSTOMER.c.id == source_id))
    if fill:
        session.execute(update(CUSTOMER).where(CUSTOMER.c.id == target_id).values(**fill))
