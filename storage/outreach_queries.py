"""Queries of outreach (the proactive scan and nudges): who is due a nudge, what was sent since a
customer last wrote, the dialog state an offer or a nudge leaves, queued marketing messages and
outreach events. SQLAlchemy Core with bound parameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from storage import outbox_queries
from storage.tables import CUSTOMER, MESSAGE, OUTREACH_EVENT, PREFERENCE, STATE
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


def preference_values(conn: Connection, *, customer_id: int) -> dict[str, Any]:
    """The customer's preferences: key -> value."""
    query = select(PREFERENCE.c.key, PREFERENCE.c.value).where(PREFERENCE.c.customer_id == customer_id)
    return {row.key: row.value for row in conn.execute(query)}


def lock_dialog_state(conn: Connection, *, customer_id: int) -> dict[str, Any]:
    """The customer's dialog state, locked as a turn locks it (created when there is none)."""
    query = select(STATE).where(STATE.c.customer_id == customer_id).with_for_update()
    row = conn.execute(query).first()
    if row is None:
        conn.execute(insert(STATE).values(customer_id=customer_id, reask_count=0, deferred={}, version=0))
        row = conn.execute(query).one()
    return dict(row._mapping)


def await_plan_answers(conn: Connection, *, offered: Mapping[int, str], busy: Sequence[str]) -> None:
    """Make each customer's dialogue wait for the answer to the plan offered to them (customer
    id -> plan id): pending ``plan:<id>``, kind suggestion. A state pending one of ``busy`` is
    left as it is; a customer without a state gets one (version 1: not a first contact)."""
    ids = list(offered)
    have = set(conn.execute(select(STATE.c.customer_id).where(STATE.c.customer_id.in_(ids))).scalars())
    new = [c for c in ids if c not in have]
    if new:
        # A first message racing this gets its own fresh state; the offer waits for the next.
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        conn.execute(
            dialect_insert(STATE).on_conflict_do_nothing(index_elements=[STATE.c.customer_id]),
            [
                {
                    "customer_id": c,
                    "pending_kind": PendingKind.SUGGESTION,
                    "pending_key": f"plan:{offered[c]}",
                    "reask_count": 0,
                    "deferred": {},
                    "version": 1,  # not 0: the answer is not a first contact to greet
                }
                for c in new
            ],
        )
    if have:
        conn.execute(
            update(STATE)
            .where(
                STATE.c.customer_id == bindparam("b_customer"),
                or_(STATE.c.pending_kind.is_(None), and_(*(STATE.c.pending_kind != k for k in busy))),
            )
            .values(
                pending_kind=PendingKind.SUGGESTION,
                pending_key=bindparam("b_key"),
                reask_count=0,
                version=STATE.c.version + 1,
            ),
            [{"b_customer": c, "b_key": f"plan:{offered[c]}"} for c in ids if c in have],
        )


def queue_marketing_message(
    conn: Connection,
    *,
    customer_id: int,
    channel: str,
    address: str,
    text: str,
    intent: str,
    question_key: str | None,
    next_attempt_at: datetime | None,
    now: datetime,
) -> int:
    """Queue an outbound marketing message (to go at ``next_attempt_at``, None: now); its id."""
    return outbox_queries.queue_outbound(
        conn,
        customer_id=customer_id,
        channel=channel,
        address=address,
        text=text,
        intent=intent,
        now=now,
        marketing=True,
        question_key=question_key,
        next_attempt_at=next_attempt_at,
    )


def add_outreach_event(
    conn: Connection,
    *,
    customer_id: int,
    kind: str,
    reason: str | None,
    plan_id: str | None,
    message_id: int | None,
    at: datetime,
) -> None:
    """Record what outreach did for a customer (queued, deferred, skipped and why)."""
    conn.execute(
        insert(OUTREACH_EVENT).values(
            customer_id=customer_id, kind=kind, reason=reason, plan_id=plan_id, message_id=message_id, at=at
        )
    )
