"""The dialog engine's hot path: load a customer's turn state under a lock, write the turn's rows.

SQLAlchemy Core on a connection already in a transaction: a turn reads three times and writes a
handful of rows, without building ORM objects (a benchmark showed the ORM cost more than the SQL).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, exists, insert, select, update
from sqlmodel import Session

from storage import queries
from storage.models import Customer, DeliveryStatus, Direction
from storage.tables import CUSTOMER, IDENTITY, MESSAGE, PREFERENCE, STATE, USAGE


class StaleStateError(RuntimeError):
    """The dialog state changed under a turn that held its lock (a bug, never expected)."""


@dataclass(slots=True)
class Fact:
    """One stored preference, as the engine sees it."""

    key: str
    value: Any
    source: str
    stated_at: datetime
    confirmed_at: datetime
    message_id: int | None = None
    channel: str | None = None


@dataclass(slots=True)
class TurnState:
    """What a turn needs: the dialog state, a few customer fields, the stored preferences."""

    customer_id: int
    name: str | None
    opted_out_at: datetime | None
    pending_key: str | None
    pending_kind: str | None
    reask_count: int
    deferred: dict[str, str]
    finished_at: datetime | None
    last_activity: datetime | None
    version: int
    current_plan_id: str | None
    has_usage: bool
    created: bool = False
    facts: dict[str, Fact] = field(default_factory=dict)


_STATE_COLUMNS = (
    CUSTOMER.c.id,
    CUSTOMER.c.name,
    CUSTOMER.c.opted_out_at,
    STATE.c.pending_key,
    STATE.c.pending_kind,
    STATE.c.reask_count,
    STATE.c.deferred,
    STATE.c.finished_at,
    STATE.c.last_activity,
    STATE.c.version,
    CUSTOMER.c.current_plan_id,
    exists().where(USAGE.c.customer_id == CUSTOMER.c.id).label("has_usage"),
)


# Statements are built once: building them costs more than running them on SQLite.
_FACT_COLUMNS = (
    PREFERENCE.c.key,
    PREFERENCE.c.value,
    PREFERENCE.c.source,
    PREFERENCE.c.stated_at,
    PREFERENCE.c.confirmed_at,
    PREFERENCE.c.message_id,
    PREFERENCE.c.channel,
)
# One round trip: the state row (locked) with the customer's preferences, one row per preference.
_LOCK_TURN = (
    select(*_STATE_COLUMNS, *_FACT_COLUMNS)
    .select_from(
        IDENTITY.join(CUSTOMER, CUSTOMER.c.id == IDENTITY.c.customer_id)
        .join(STATE, STATE.c.customer_id == CUSTOMER.c.id)
        .outerjoin(PREFERENCE, PREFERENCE.c.customer_id == CUSTOMER.c.id)
    )
    .where(IDENTITY.c.channel == bindparam("b_channel"), IDENTITY.c.address == bindparam("b_address"))
    .with_for_update(of=STATE)
)
_FIND_INBOUND = select(MESSAGE.c.id, MESSAGE.c.customer_id).where(
    MESSAGE.c.channel == bindparam("b_channel"),
    MESSAGE.c.direction == Direction.IN.value,
    MESSAGE.c.provider_message_id == bindparam("b_provider_id"),
)
_REPLIES_TO = (
    select(MESSAGE.c.id, MESSAGE.c.text, MESSAGE.c.intent, MESSAGE.c.question_key)
    .where(MESSAGE.c.reply_to_id == bindparam("b_message_id"))
    .order_by(MESSAGE.c.id)
)
_FIND_IDENTITY = select(IDENTITY.c.customer_id).where(
    IDENTITY.c.channel == bindparam("b_channel"), IDENTITY.c.address == bindparam("b_address")
)
_FIND_BY_PHONE = select(CUSTOMER.c.id).where(CUSTOMER.c.phone == bindparam("b_phone"))
_HAS_STATE = select(STATE.c.customer_id).where(STATE.c.customer_id == bindparam("b_customer_id"))
_INSERT_CUSTOMER = insert(CUSTOMER).returning(CUSTOMER.c.id)
_INSERT_IDENTITY = insert(IDENTITY)
_INSERT_STATE = insert(STATE)
_INSERT_MESSAGE = insert(MESSAGE)
_INSERT_MESSAGES = insert(MESSAGE).returning(MESSAGE.c.id, sort_by_parameter_order=True)
_INSERT_FACT = insert(PREFERENCE)
_UPDATE_FACT = update(PREFERENCE).where(
    PREFERENCE.c.customer_id == bindparam("b_customer_id"), PREFERENCE.c.key == bindparam("b_key")
)
_UPDATE_STATE = update(STATE).where(
    STATE.c.customer_id == bindparam("b_customer_id"), STATE.c.version == bindparam("b_version")
)


def lock_turn(conn: Connection, *, channel: str, address: str) -> TurnState | None:
    """The state of the customer at ``address``, locked until the transaction ends, or None.

    On PostgreSQL the dialog state row is locked (``FOR UPDATE OF dialog_state``); on SQLite every
    transaction already holds the database's write lock (``BEGIN IMMEDIATE``).
    """
    rows = conn.execute(_LOCK_TURN, {"b_channel": channel, "b_address": address}).all()
    if not rows:
        return None
    n = len(_STATE_COLUMNS)
    state = TurnState(*rows[0][:n])
    state.facts = {row[n]: Fact(*row[n:]) for row in rows if row[n] is not None}
    return state


def lock_or_create_turn(
    conn: Connection,
    *,
    channel: str,
    address: str,
    phone: str | None,
    name: str | None,
    now: datetime,
) -> TurnState:
    """The locked state of the customer at ``address``, joining or creating the customer first.

    A sender whose ``phone`` (vouched for by the channel) is a known customer's joins that
    customer; anyone else becomes a new customer. Two first messages from one new address at
    once both try to create it: the unique address index fails the later one, which retries.
    """
    state = lock_turn(conn, channel=channel, address=address)
    if state is not None:
        return state
    known = conn.execute(_FIND_IDENTITY, {"b_channel": channel, "b_address": address}).scalar()
    if known is None and phone:
        known = conn.execute(_FIND_BY_PHONE, {"b_phone": phone}).scalar()
        if known is not None:
            conn.execute(_INSERT_IDENTITY, _identity(channel, address, known, verified=True, now=now))
    created = known is None
    if known is None:
        row = {"name": name, "phone": phone, "marketing_consent": False, "created_at": now}
        known = int(conn.execute(_INSERT_CUSTOMER, row).scalar_one())
        conn.execute(
            _INSERT_IDENTITY, _identity(channel, address, known, verified=phone is not None, now=now)
        )
    if created or conn.execute(_HAS_STATE, {"b_customer_id": known}).first() is None:
        conn.execute(_INSERT_STATE, {"customer_id": known, "reask_count": 0, "deferred": {}, "version": 0})
    state = lock_turn(conn, channel=channel, address=address)
    assert state is not None
    state.created = created
    return state


def _identity(
    channel: str, address: str, customer_id: int, *, verified: bool, now: datetime
) -> dict[str, Any]:
    return {
        "channel": channel,
        "address": address,
        "customer_id": customer_id,
        "verified": verified,
        "created_at": now,
    }


def find_inbound(conn: Connection, *, channel: str, provider_id: str) -> tuple[int, int] | None:
    """(message id, customer id) of the inbound message with this provider id, if recorded."""
    row = conn.execute(_FIND_INBOUND, {"b_channel": channel, "b_provider_id": provider_id}).first()
    return (row[0], row[1]) if row is not None else None


def replies_to(conn: Connection, *, message_id: int) -> Sequence[Any]:
    """(id, text, intent, question_key) of the replies to an inbound message, in order."""
    return conn.execute(_REPLIES_TO, {"b_message_id": message_id}).all()


def load_facts(conn: Connection, *, customer_id: int) -> dict[str, Fact]:
    """The customer's stored preferences by key."""
    rows = conn.execute(select(*_FACT_COLUMNS).where(PREFERENCE.c.customer_id == customer_id)).all()
    return {row[0]: Fact(*row) for row in rows}


def insert_message(conn: Connection, values: Mapping[str, Any]) -> int:
    """Insert one message row; its id."""
    key = conn.execute(_INSERT_MESSAGE, dict(values)).inserted_primary_key
    assert key is not None
    return int(key[0])


def insert_messages(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert message rows in one statement; their ids in the same order."""
    if not rows:
        return []
    return [int(i) for i in conn.execute(_INSERT_MESSAGES, [dict(r) for r in rows]).scalars()]


def save_facts(conn: Connection, *, customer_id: int, facts: Iterable[Fact], existing: set[str]) -> None:
    """Insert new and update known preferences of a customer."""
    for fact in facts:
        values = {
            "value": fact.value,
            "source": fact.source,
            "stated_at": fact.stated_at,
            "confirmed_at": fact.confirmed_at,
            "message_id": fact.message_id,
            "channel": fact.channel,
        }
        if fact.key in existing:
            conn.execute(_UPDATE_FACT, {"b_customer_id": customer_id, "b_key": fact.key, **values})
        else:
            conn.execute(_INSERT_FACT, {"customer_id": customer_id, "key": fact.key, **values})


def save_state(conn: Connection, state: TurnState, *, expected_version: int) -> None:
    """Write the dialog state back (its version already advanced by the caller)."""
    result = conn.execute(
        _UPDATE_STATE,
        {
            "b_customer_id": state.customer_id,
            "b_version": expected_version,
            "pending_key": state.pending_key,
            "pending_kind": state.pending_kind,
            "reask_count": state.reask_count,
            "deferred": state.deferred,
            "finished_at": state.finished_at,
            "last_activity": state.last_activity,
            "version": state.version,
        },
    )
    if result.rowcount != 1:
        raise StaleStateError(f"dialog state of customer {state.customer_id} changed during a locked turn")


def unsent_suggestion(conn: Connection, *, customer_id: int) -> bool:
    """Whether a proactive plan suggestion to this customer is still waiting to go out."""
    return (
        conn.execute(
            select(MESSAGE.c.id)
            .where(
                MESSAGE.c.customer_id == customer_id,
                MESSAGE.c.direction == Direction.OUT,
                MESSAGE.c.marketing.is_(True),
                MESSAGE.c.intent == "suggestion",
                MESSAGE.c.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.SENDING)),
            )
            .limit(1)
        ).first()
        is not None
    )


def set_opt_out(conn: Connection, *, customer_id: int, at: datetime | None, message_id: int | None) -> None:
    """Record an opt-out (``at`` set) or an opt-in (``at`` None)."""
    conn.execute(
        update(CUSTOMER)
        .where(CUSTOMER.c.id == customer_id)
        .values(opted_out_at=at, opt_out_message_id=message_id)
    )


def erase(conn: Connection, *, customer_id: int, keep_message_id: int, now: datetime) -> None:
    """Erase the customer (see :func:`storage.queries.erase_customer`)."""
    with Session(bind=conn) as session:
        customer = session.get(Customer, customer_id)
        assert customer is not None
        queries.erase_customer(session, customer=customer, keep_message_id=keep_message_id, now=now)
        session.flush()
