"""Queries of the audience service (:mod:`schedulers.audience`): the customer columns its contact
facts read, and the facts of a batch of customers (addresses on each channel, the channel each
last wrote on, their recent marketing, suppressed addresses) and the standing facts asked again
at the last moment. SQLAlchemy Core with bound parameters."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select

from storage.tables import CUSTOMER, IDENTITY, MESSAGE, SUPPRESSION
from storage.types import DeliveryStatus, Direction

# The customer columns the contact facts read (callers select them, a batch at a time).
CUSTOMER_COLUMNS = (
    CUSTOMER.c.id,
    CUSTOMER.c.name,
    CUSTOMER.c.phone,
    CUSTOMER.c.email,
    CUSTOMER.c.timezone,
    CUSTOMER.c.marketing_consent,
    CUSTOMER.c.opted_out_at,
    CUSTOMER.c.erased_at,
    CUSTOMER.c.current_plan_id,
    CUSTOMER.c.whatsapp_session_at,
    CUSTOMER.c.whatsapp_opt_in_at,
)


def contact_customer(conn: Connection, *, customer_id: int) -> Any:
    """The customer's :data:`CUSTOMER_COLUMNS` (NoResultFound when there is no such customer)."""
    return conn.execute(select(*CUSTOMER_COLUMNS).where(CUSTOMER.c.id == customer_id)).one()


def standing_facts(conn: Connection, *, customer_ids: Iterable[int]) -> dict[int, Any]:
    """id, marketing_consent, opted_out_at and erased_at of these customers (absent: no such
    customer), by id."""
    query = select(
        CUSTOMER.c.id, CUSTOMER.c.marketing_consent, CUSTOMER.c.opted_out_at, CUSTOMER.c.erased_at
    ).where(CUSTOMER.c.id.in_(list(customer_ids)))
    return {row.id: row for row in conn.execute(query)}


def identities_between(conn: Connection, *, lo: int, hi: int) -> list[tuple[int, str, str]]:
    """(customer id, channel, address) of every channel identity of the customers with ids ``lo``
    to ``hi``, oldest first (so the latest address on a channel comes last)."""
    query = (
        select(IDENTITY.c.customer_id, IDENTITY.c.channel, IDENTITY.c.address)
        .where(IDENTITY.c.customer_id.between(lo, hi))
        .order_by(IDENTITY.c.id)
    )
    return [(cid, channel, address) for cid, channel, address in conn.execute(query)]


def last_inbound_between(
    conn: Connection, *, lo: int, hi: int, channels: Collection[str]
) -> dict[int, tuple[str, str]]:
    """customer id -> (channel, address) of the latest message each of the customers with ids
    ``lo`` to ``hi`` wrote on one of ``channels`` (absent: none)."""
    latest = (
        select(func.max(MESSAGE.c.id))
        .where(
            MESSAGE.c.customer_id.between(lo, hi),
            MESSAGE.c.direction == Direction.IN,
            MESSAGE.c.channel.in_(sorted(channels)),
        )
        .group_by(MESSAGE.c.customer_id)
    )
    query = select(MESSAGE.c.customer_id, MESSAGE.c.channel, MESSAGE.c.address).where(
        MESSAGE.c.id.in_(latest)
    )
    return {cid: (channel, address) for cid, channel, address in conn.execute(query)}


def marketing_times_between(
    conn: Connection, *, lo: int, hi: int, statuses: Sequence[DeliveryStatus]
) -> list[tuple[int, datetime | None, datetime | None, datetime]]:
    """(customer id, sent_at, next_attempt_at, created_at) of every outbound marketing message in
    one of ``statuses`` to the customers with ids ``lo`` to ``hi``."""
    query = select(
        MESSAGE.c.customer_id, MESSAGE.c.sent_at, MESSAGE.c.next_attempt_at, MESSAGE.c.created_at
    ).where(
        MESSAGE.c.customer_id.between(lo, hi),
        MESSAGE.c.direction == Direction.OUT,
        MESSAGE.c.marketing.is_(True),
        MESSAGE.c.status.in_(statuses),
    )
    return [(cid, sent, due, created) for cid, sent, due, created in conn.execute(query)]


def any_suppression(conn: Connection) -> bool:
    """Whether any address is suppressed (anybody was erased)."""
    return conn.execute(select(SUPPRESSION.c.id).limit(1)).first() is not None


def suppressed_hashes(conn: Connection, *, hashes: Iterable[str]) -> list[tuple[str, str]]:
    """(channel, address hash) of the suppressions among ``hashes``."""
    query = select(SUPPRESSION.c.channel, SUPPRESSION.c.address_hash).where(
        SUPPRESSION.c.address_hash.in_(list(hashes))
    )
    return [(channel, h) for channel, h in conn.execute(query)]
