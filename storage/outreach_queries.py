"""Queries of outreach (the proactive scan and nudges): who is due a nudge, what was sent since a
customer last wrote, the dialog state an offer or a nudge leaves, queued marketing messages and
outreach events. SQLAlchemy Core with bound parameters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, or_, select, update

from storage.tables import CUSTOMER, MESSAGE, OUTREACH_EVENT, STATE
from storage.types import Direction, PendingKind


def customer_row(conn: Connection, *, customer_id: int) -> dict[str, Any]:
    """Every column of the customer (NoResultFound when there is no such customer)."""
    return dict(conn.execute(select(CUSTOMER).where(CUSTOMER.c.id == customer_id)).one()._mapping)


def nudge_candidates(conn: Connection, *, silent_since: datetime) -> list[int]:
    """Customers, by id, whose dialog is unfinished with nothing or a question pending and whose
    last inbound message is at or before ``silent_since``."""
    last_in = (
        select(MESSAGE.c.customer_id, func.max(MESSAGE.c.created_at).label("at"))
        .where(MESSAGE.c.direction == Direction.IN, MESSAGE.c.customer_id.is_not(None))
        .group_by(MESSAGE.c.customer_id)
        .subquery()
    )
    query = (
        select(STATE.c.customer_id)
        .join(last_in, last_in.c.customer_id == STATE.c.customer_id)
        .where(
            STATE.c.finished_at.is_(None),
            or_(STATE.c.pending_kind.is_(None), STATE.c.pending_kind == PendingKind.ASK),
            last_in.c.at <= silent_since,
        )
        .order_by(STATE.c.customer_id)
    )
    return list(conn.execute(query).scalars())


def last_inbound_at(conn: Connection, *, customer_id: int) -> datetime | None:
    """When the customer last wrote (None: never)."""
    query = select(func.max(MESSAGE.c.created_at)).where(
        MESSAGE.c.customer_id == customer_id, MESSAGE.c.direction == Direction.IN
    )
    at: datetime | None = conn.execute(query).scalar()
    return at


def outbound_since(
    conn: Connection, *, customer_id: int, intent: str, since: datetime
) -> tuple[int, datetime | None]:
    """(how many, the latest created_at) of the customer's outbound messages of ``intent`` made
    after ``since``."""
    query = select(func.count(), func.max(MESSAGE.c.created_at)).where(
        MESSAGE.c.customer_id == customer_id,
        MESSAGE.c.direction == Direction.OUT,
        MESSAGE.c.intent == intent,
        MESSAGE.c.created_at > since,
    )
    count, latest = conn.execute(query).one()
    return int(count), latest


def set_pending_question(conn: Connection, *, customer_id: int, key: str) -> None:
    """The customer's dialogue now waits for the answer to question ``key`` (a new version)."""
    conn.execute(
        update(STATE)
        .where(STATE.c.customer_id == customer_id)
        .values(pending_key=key, pending_kind=PendingKind.ASK, version=STATE.c.version + 1)
    )


def has_event_since(conn: Connection, *, customer_id: int, kind: str, since: datetime) -> bool:
    """Whether an outreach event of ``kind`` was recorded for the customer after ``since``."""
    query = select(OUTREACH_EVENT.c.id).where(
        OUTREACH_EVENT.c.customer_id == customer_id,
        OUTREACH_EVENT.c.kind == kind,
        OUTREACH_EVENT.c.at > since,
    )
    return conn.execute(query.limit(1)).first() is not None
