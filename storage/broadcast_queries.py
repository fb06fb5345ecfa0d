"""Queries of staff broadcasts: the customer facts read a batch of ids at a time, the broadcast
row and its state moves, recipients and their messages, and the counts of its status and results.
SQLAlchemy Core with bound parameters."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import ColumnElement, Connection, Table, exists, func, insert, select, update

from storage.audience_queries import CUSTOMER_COLUMNS
from storage.broadcast_models import BroadcastStatus, RecipientStatus
from storage.tables import (
    BROADCAST,
    BROADCAST_RECIPIENT,
    CUSTOMER,
    MESSAGE,
    PLAN_DECLINE,
    PREFERENCE,
    SWITCH_REQUEST,
)
from storage.types import DeliveryStatus, Direction

# -- facts of a batch of customers -------------------------------------------------------------


def customers_after(conn: Connection, *, after: int, limit: int) -> Sequence[Any]:
    """The contact columns (:data:`~storage.audience_queries.CUSTOMER_COLUMNS`) of the next
    ``limit`` customers (not erased) with ids above ``after``, by id."""
    query = (
        select(*CUSTOMER_COLUMNS)
        .where(CUSTOMER.c.id > after, CUSTOMER.c.erased_at.is_(None))
        .order_by(CUSTOMER.c.id)
        .limit(limit)
    )
    return conn.execute(query).all()


def preferences_between(conn: Connection, *, lo: int, hi: int) -> list[tuple[int, str, Any]]:
    """(customer id, key, value) of every preference of the customers with ids ``lo`` to ``hi``."""
    query = select(PREFERENCE.c.customer_id, PREFERENCE.c.key, PREFERENCE.c.value).where(
        PREFERENCE.c.customer_id.between(lo, hi)
    )
    return [(cid, key, value) for cid, key, value in conn.execute(query)]


def declines_between(conn: Connection, *, lo: int, hi: int, since: datetime) -> list[tuple[int, str, Any]]:
    """(customer id, plan id, usage then) of the declines after ``since`` of the customers with
    ids ``lo`` to ``hi``, latest first."""
    query = (
        select(PLAN_DECLINE.c.customer_id, PLAN_DECLINE.c.plan_id, PLAN_DECLINE.c.usage)
        .where(PLAN_DECLINE.c.customer_id.between(lo, hi), PLAN_DECLINE.c.declined_at > since)
        .order_by(PLAN_DECLINE.c.declined_at.desc())
    )
    return [(cid, plan_id, usage) for cid, plan_id, usage in conn.execute(query)]


# -- the broadcast and its states ----------------------------------------------------------------


def add_broadcast(
    conn: Connection, *, name: str, segment: str, template: str, created_by: str, now: datetime
) -> int:
    """Store a draft broadcast; its id."""
    query = (
        insert(BROADCAST)
        .values(
            name=name,
            segment=segment,
            template=template,
            created_by=created_by,
            created_at=now,
            status=BroadcastStatus.DRAFT,
        )
        .returning(BROADCAST.c.id)
    )
    return int(conn.execute(query).scalar_one())


def broadcast_row(conn: Connection, *, broadcast_id: int, lock: bool = False) -> dict[str, Any] | None:
    """The broadcast's row (locked for the transaction with ``lock``), or None."""
    query = select(BROADCAST).where(BROADCAST.c.id == broadcast_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    return None if row is None else dict(row._mapping)


def broadcasts(conn: Connection) -> list[dict[str, Any]]:
    """Every broadcast's row, newest first."""
    return [dict(r._mapping) for r in conn.execute(select(BROADCAST).order_by(BROADCAST.c.id.desc()))]


def broadcasts_in(conn: Connection, *, states: Iterable[str]) -> list[dict[str, Any]]:
    """{id, status} of the broadcasts stored in one of ``states``."""
    query = select(BROADCAST.c.id, BROADCAST.c.status).where(BROADCAST.c.status.in_(list(states)))
    return [dict(r._mapping) for r in conn.execute(query)]


def due_broadcasts(conn: Connection, *, states: Iterable[str], now: datetime) -> list[int]:
    """Ids of the broadcasts in one of ``states`` scheduled at or before ``now``, earliest first."""
    query = (
        select(BROADCAST.c.id)
        .where(BROADCAST.c.status.in_(list(states)), BROADCAST.c.scheduled_at <= now)
        .order_by(BROADCAST.c.scheduled_at, BROADCAST.c.id)
    )
    return list(conn.execute(query).scalars())


def move_broadcast(
    conn: Connection, *, broadcast_id: int, to: str, sources: Iterable[str], values: Mapping[str, Any]
) -> bool:
    """Set the broadcast's status to ``to`` (with ``values``) if it is in one of ``sources``: one
    conditional UPDATE, so a concurrent move is never overwritten. Whether it moved."""
    moved = conn.execute(
        update(BROADCAST)
        .where(BROADCAST.c.id == broadcast_id, BROADCAST.c.status.in_(list(sources)))
        .values(status=to, **values)
        .returning(BROADCAST.c.id)
    ).first()
    return moved is not None


def schedule_broadcast(
    conn: Connection, *, broadcast_id: int, scheduled_at: datetime, local_time: str | None
) -> None:
    """When the broadcast is to go (and at what local time in each customer's zone, if any)."""
    conn.execute(
        update(BROADCAST)
        .where(BROADCAST.c.id == broadcast_id)
        .values(scheduled_at=scheduled_at, local_time=local_time)
    )


# -- recipients and their messages ---------------------------------------------------------------


def message_counts(conn: Connection, *, broadcast_id: int) -> dict[str, int]:
    """The broadcast's messages by delivery status."""
    rec = BROADCAST_RECIPIENT
    query = (
        select(MESSAGE.c.status, func.count())
        .select_from(rec.join(MESSAGE, MESSAGE.c.id == rec.c.message_id))
        .where(rec.c.broadcast_id == broadcast_id)
        .group_by(MESSAGE.c.status)
    )
    return {str(s): int(n) for s, n in conn.execute(query)}


def recipients_between(conn: Connection, *, broadcast_id: int, lo: int, hi: int) -> set[int]:
    """Ids of the customers with ids ``lo`` to ``hi`` that have a recipient row already."""
    query = select(BROADCAST_RECIPIENT.c.customer_id).where(
        BROADCAST_RECIPIENT.c.broadcast_id == broadcast_id,
        BROADCAST_RECIPIENT.c.customer_id.between(lo, hi),
    )
    return set(conn.execute(query).scalars())


def add_recipients(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
    """Insert recipient rows (broadcast_id, customer_id, message_id, status, reason, created_at)."""
    if rows:
        conn.execute(insert(BROADCAST_RECIPIENT), list(rows))


def add_messages(conn: Connection, messages: list[dict[str, Any]]) -> dict[int, int]:
    """Insert a batch of outbound messages (one per customer); customer id -> message id."""
    if conn.dialect.name == "postgresql":
        # Ids drawn from the sequence first, then a plain executemany (pipelined by psycopg):
        # half the time of a multi-row INSERT ... RETURNING.
        sequence = func.pg_get_serial_sequence(MESSAGE.name, MESSAGE.c.id.name)
        drawn = conn.execute(
            select(func.nextval(sequence)).select_from(func.generate_series(1, len(messages)))
        )
        for message, message_id in zip(messages, drawn.scalars(), strict=True):
            message["id"] = message_id
        conn.execute(insert(MESSAGE), messages)
        return {m["customer_id"]: m["id"] for m in messages}
    # SQLite: one statement; ids matched by customer (asking SQLAlchemy for the rows' order
    # would make it insert row by row).
    return dict(iter(conn.execute(insert(MESSAGE).returning(MESSAGE.c.customer_id, MESSAGE.c.id), messages)))


def cancel_queued(conn: Connection, *, broadcast_id: int) -> int:
    """The broadcast's messages still queued become cancelled (and their recipients); how many."""
    mine = select(BROADCAST_RECIPIENT.c.message_id).where(
        BROADCAST_RECIPIENT.c.broadcast_id == broadcast_id, BROADCAST_RECIPIENT.c.message_id.is_not(None)
    )
    ids = list(
        conn.execute(
            update(MESSAGE)
            .where(MESSAGE.c.id.in_(mine), MESSAGE.c.status == DeliveryStatus.QUEUED)
            .values(status=DeliveryStatus.CANCELLED, next_attempt_at=None)
            .returning(MESSAGE.c.id)
        ).scalars()
    )
    if ids:
        conn.execute(
            update(BROADCAST_RECIPIENT)
            .where(
                BROADCAST_RECIPIENT.c.broadcast_id == broadcast_id,
                BROADCAST_RECIPIENT.c.message_id.in_(ids),
            )
            .values(status=RecipientStatus.CANCELLED)
        )
    return len(ids)


# -- status and results --------------------------------------------------------------------------


def excluded_by_reason(conn: Connection, *, broadcast_id: int) -> dict[str, int]:
    """The broadcast's excluded recipients by reason."""
    rec = BROADCAST_RECIPIENT
    query = (
        select(rec.c.reason, func.count())
        .where(rec.c.broadcast_id == broadcast_id, rec.c.status == RecipientStatus.EXCLUDED)
        .group_by(rec.c.reason)
    )
    return {str(r): int(n) for r, n in conn.execute(query)}


def recipient_count(conn: Connection, *, broadcast_id: int) -> int:
    """How many recipient rows the broadcast has (queued, excluded, cancelled)."""
    query = select(func.count()).where(BROADCAST_RECIPIENT.c.broadcast_id == broadcast_id)
    return int(conn.execute(query).scalar_one())


def answered_offers(
    conn: Connection, *, broadcast_id: int, offer_intent: str, answer: Literal["accepted", "declined"]
) -> int:
    """Recipients whose answer (``accepted``: a switch request; ``declined``: a decline) was to
    this broadcast's offer (a message of ``offer_intent``): given after the offer went out and
    before any later offer to them."""
    answers: Table
    at: ColumnElement[Any]
    if answer == "accepted":
        answers, at = SWITCH_REQUEST, SWITCH_REQUEST.c.created_at
    else:
        answers, at = PLAN_DECLINE, PLAN_DECLINE.c.declined_at
    rec, offer, later = BROADCAST_RECIPIENT, MESSAGE.alias("offer"), MESSAGE.alias("later")
    superseded = exists().where(
        later.c.customer_id == answers.c.customer_id,
        later.c.direction == Direction.OUT,
        later.c.intent == offer_intent,
        later.c.sent_at > offer.c.sent_at,
        later.c.sent_at <= at,
    )
    query = (
        select(func.count(func.distinct(answers.c.customer_id)))
        .select_from(rec)
        .join(offer, offer.c.id == rec.c.message_id)
        .join(answers, answers.c.customer_id == rec.c.customer_id)
        .where(
            rec.c.broadcast_id == broadcast_id,
            offer.c.intent == offer_intent,
            offer.c.sent_at.is_not(None),
            at >= offer.c.sent_at,
            ~superseded,
        )
    )
    return int(conn.execute(query).scalar_one())
