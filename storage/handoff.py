"""Queries of the handoff: a customer's open conversation, its moves between states (only those in
:data:`ALLOWED`), the operator inbox, internal notes, facts told to an operator, and the figures
per day. Every function takes keyword arguments after the connection."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, RowMapping, and_, bindparam, func, insert, or_, select, update

from storage import outbox_queries
from storage.handoff_models import Conversation, ConversationNote, ConversationState
from storage.models import Direction, Source
from storage.tables import CUSTOMER, MESSAGE, PLAN, PREFERENCE, STATE
from storage.turns import CONVERSATION_COLUMNS, TurnState, _fixed, _Inserts

CONVERSATION = Conversation.__table__  # type: ignore[attr-defined]
NOTE = ConversationNote.__table__  # type: ignore[attr-defined]

S = ConversationState
OPEN = (S.BOT, S.WAITING, S.HUMAN)
WITH_PERSON = (S.WAITING, S.HUMAN)  # the bot is quiet for the customer
OPERATOR_INTENT = "operator"  # the intent of an operator's message in the outbox

# The state machine: (from, to) -> what the move is called. Anything else is refused.
ALLOWED: Mapping[tuple[str, str], str] = {
    (S.BOT, S.WAITING): "want_person",  # the customer asked, accepted the offer, or a rule fired
    (S.BOT, S.HUMAN): "take_over",  # an operator took the conversation from the bot
    (S.WAITING, S.HUMAN): "claim",
    (S.HUMAN, S.HUMAN): "claim",  # another operator takes it
    (S.WAITING, S.BOT): "back_to_bot",  # nobody came; the customer carries on with the bot
    (S.WAITING, S.RESOLVED): "resolve",
    (S.HUMAN, S.RESOLVED): "resolve",
    (S.BOT, S.RESOLVED): "close",  # with the bot only: contained
}


class TransitionError(ValueError):
    """A move the state machine does not allow (or a conversation that is not there)."""


@dataclass(frozen=True, slots=True)
class Conv:
    """A conversation row."""

    id: int
    customer_id: int
    state: str
    reason: str | None
    operator: str | None
    started_at: datetime
    waiting_since: datetime | None
    claimed_at: datetime | None
    first_human_reply_at: datetime | None
    timeout_notified_at: datetime | None
    resolved_at: datetime | None

    @property
    def with_person(self) -> bool:
        return self.state in WITH_PERSON


_FIELDS = CONVERSATION_COLUMNS


def _conv(row: Any) -> Conv:
    return Conv(*row)


# On every turn: compiled once and run on the driver, as the turn's own statements are.
_OPEN = _fixed(select(*_FIELDS).where(CONVERSATION.c.open_for == bindparam("b_customer_id")))
_INSERT = _Inserts(CONVERSATION)


def open_conversation(conn: Connection, *, customer_id: int) -> Conv | None:
    """The customer's open conversation, if any."""
    row = _OPEN.first(conn, {"b_customer_id": customer_id})
    return _conv(row) if row is not None else None


def get(conn: Connection, *, conversation_id: int) -> Conv | None:
    """A conversation by id."""
    row = conn.execute(select(*_FIELDS).where(CONVERSATION.c.id == conversation_id)).first()
    return _conv(row) if row is not None else None


def start(conn: Connection, *, customer_id: int, now: datetime) -> Conv:
    """Open a conversation with the bot for the customer (who must have none open)."""
    values = {"customer_id": customer_id, "open_for": customer_id, "state": S.BOT, "started_at": now}
    new_id = _INSERT.id(conn, values)
    return Conv(new_id, customer_id, S.BOT, None, None, now, None, None, None, None, None)


def current(conn: Connection, *, turn: TurnState, now: datetime, idle: timedelta) -> Conv:
    """The conversation a customer's message belongs to (``turn`` the customer's locked state):
    the open one, unless it is with the bot and the customer was idle ``idle`` or longer since
    the last activity (then it is closed as contained, at that time, and a new one opened)."""
    customer_id, last_activity = turn.customer_id, turn.last_activity
    if turn.conversation_read:  # read with the locked state
        conv = _conv(turn.conversation) if turn.conversation is not None else None
    else:
        conv = open_conversation(conn, customer_id=customer_id)
    if conv is not None and conv.state == S.BOT and last_activity is not None and now - last_activity >= idle:
        move(conn, conversation_id=conv.id, to=S.RESOLVED, now=last_activity)
        conv = None
    return conv if conv is not None else start(conn, customer_id=customer_id, now=now)


def move(
    conn: Connection,
    *,
    conversation_id: int,
    to: str,
    now: datetime,
    operator: str | None = None,
    reason: str | None = None,
) -> Conv:
    """Move a conversation to state ``to``, stamping the time of the move; TransitionError when
    the state machine does not allow it."""
    conv = get(conn, conversation_id=conversation_id)
    if conv is None:
        raise TransitionError(f"no conversation {conversation_id}")
    if (conv.state, to) not in ALLOWED:
        raise TransitionError(f"a conversation {conv.state} cannot move to {to}")
    values: dict[str, Any] = {"state": to}
    if to == S.WAITING:
        values |= {"waiting_since": now, "reason": reason, "timeout_notified_at": None}
    elif to == S.HUMAN:
        values |= {"claimed_at": now, "operator": operator}
        if conv.waiting_since is None:
            values |= {"waiting_since": now, "reason": reason or "operator"}
    elif to == S.BOT:
        values |= {"operator": None}
    elif to == S.RESOLVED:
        values |= {"resolved_at": now, "resolved_by": operator, "open_for": None}
    # Compare-and-set on the state: two operators claiming at once, one wins.
    done = conn.execute(
        update(CONVERSATION)
        .where(CONVERSATION.c.id == conversation_id, CONVERSATION.c.state == conv.state)
        .values(**values)
    ).rowcount
    if done != 1:
        raise TransitionError(f"conversation {conversation_id} changed meanwhile: reload")
    moved = get(conn, conversation_id=conversation_id)
    assert moved is not None
    return moved


def lock_customer(conn: Connection, *, customer_id: int) -> None:
    """Take the customer's dialog lock (their turns wait), as a turn does, before a change made
    outside a turn: a turn never sees its conversation change under it."""
    conn.execute(select(STATE.c.customer_id).where(STATE.c.customer_id == customer_id).with_for_update())


def take_over(conn: Connection, *, customer_id: int, operator: str, now: datetime) -> Conv:
    """An operator claims the customer's conversation (opening one if none is open)."""
    lock_customer(conn, customer_id=customer_id)
    conv = open_conversation(conn, customer_id=customer_id) or start(conn, customer_id=customer_id, now=now)
    return move(conn, conversation_id=conv.id, to=S.HUMAN, now=now, operator=operator)


def resolve(conn: Connection, *, conversation_id: int, operator: str, now: datetime) -> Conv:
    """Hand the conversation back to the bot. The bot's pending question stays as it was, unless
    the fact it asks for is now known (an operator recorded it): then it is not asked again."""
    found = get(conn, conversation_id=conversation_id)
    if found is not None:
        lock_customer(conn, customer_id=found.customer_id)
    conv = move(conn, conversation_id=conversation_id, to=S.RESOLVED, now=now, operator=operator)
    pending = conn.execute(
        select(STATE.c.pending_key).where(STATE.c.customer_id == conv.customer_id)
    ).scalar()
    values: dict[str, Any] = {"reask_count": 0, "version": STATE.c.version + 1}
    if pending is not None:
        known = conn.execute(
            select(PREFERENCE.c.id).where(
                PREFERENCE.c.customer_id == conv.customer_id, PREFERENCE.c.key == pending
            )
        ).first()
        if known is not None:
            values |= {"pending_key": None, "pending_kind": None}
    conn.execute(update(STATE).where(STATE.c.customer_id == conv.customer_id).values(**values))
    return conv


def close_idle(conn: Connection, *, silent_since: datetime, limit: int = 500) -> int:
    """Close (as contained) up to ``limit`` conversations with the bot whose customer has said
    nothing since before ``silent_since``, at the time of their last message; how many."""
    rows = conn.execute(
        select(CONVERSATION.c.id, STATE.c.last_activity)
        .join(STATE, STATE.c.customer_id == CONVERSATION.c.customer_id)
        .where(CONVERSATION.c.state == S.BOT, STATE.c.last_activity < silent_since)
        .limit(limit)
        .with_for_update(of=STATE)  # one at a time with the customers' turns
    ).all()
    for conversation_id, last in rows:
        conn.execute(
            update(CONVERSATION)
            .where(CONVERSATION.c.id == conversation_id, CONVERSATION.c.state == S.BOT)
            .values(state=S.RESOLVED, resolved_at=last, open_for=None)
        )
    return len(rows)


def mark_human_reply(conn: Connection, *, conversation_id: int, now: datetime) -> None:
    """Stamp the first reply a person sent in the conversation (later ones change nothing)."""
    conn.execute(
        update(CONVERSATION)
        .where(CONVERSATION.c.id == conversation_id, CONVERSATION.c.first_human_reply_at.is_(None))
        .values(first_human_reply_at=now)
    )


def timed_out(conn: Connection, *, waited_since: datetime) -> list[Conv]:
    """Conversations waiting since before ``waited_since`` that no person answered and whose
    customer was not told yet, oldest first."""
    query = (
        select(*_FIELDS)
        .where(
            CONVERSATION.c.state.in_(WITH_PERSON),
            CONVERSATION.c.waiting_since < waited_since,
            CONVERSATION.c.first_human_reply_at.is_(None),
            CONVERSATION.c.timeout_notified_at.is_(None),
        )
        .order_by(CONVERSATION.c.waiting_since)
    )
    return [_conv(r) for r in conn.execute(query)]


def mark_timeout_notified(conn: Connection, *, conversation_id: int, now: datetime) -> None:
    """Remember that the customer was told nobody answered yet."""
    conn.execute(
        update(CONVERSATION).where(CONVERSATION.c.id == conversation_id).values(timeout_notified_at=now)
    )


def with_person(conn: Connection, *, customer_ids: Iterable[int] | None = None) -> set[int]:
    """Of ``customer_ids`` (None: everyone), those a person has or is awaited for."""
    query = select(CONVERSATION.c.customer_id).where(CONVERSATION.c.state.in_(WITH_PERSON))
    if customer_ids is not None:
        ids = list(customer_ids)
        if not ids:
            return set()
        query = query.where(CONVERSATION.c.customer_id.in_(ids))
    return set(conn.execute(query).scalars())


# -- the inbox ------------------------------------------------------------------------------------


def counts(conn: Connection, *, resolved_since: datetime) -> dict[str, int]:
    """How many conversations are in each open state, and how many were resolved since then."""
    found = {s.value: 0 for s in S}
    query = select(CONVERSATION.c.state, func.count()).where(
        or_(CONVERSATION.c.open_for.is_not(None), CONVERSATION.c.resolved_at >= resolved_since)
    )
    for state, n in conn.execute(query.group_by(CONVERSATION.c.state)):
        found[state] = int(n)
    return found


_ORDER: Mapping[str, tuple[Any, ...]] = {
    S.WAITING: (CONVERSATION.c.waiting_since, CONVERSATION.c.id),  # the longest waiting first
    S.HUMAN: (CONVERSATION.c.claimed_at.desc(), CONVERSATION.c.id.desc()),
    S.BOT: (CONVERSATION.c.id.desc(),),
    S.RESOLVED: (CONVERSATION.c.resolved_at.desc(), CONVERSATION.c.id.desc()),
}


def inbox(
    conn: Connection, *, state: str, resolved_since: datetime | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Conversations in ``state`` (resolved ones: since ``resolved_since``) with their customer and
    last message: waiting ones oldest first, the others newest first."""
    query = (
        select(*_FIELDS, CONVERSATION.c.resolved_by, CUSTOMER.c.name, CUSTOMER.c.phone)
        .join(CUSTOMER, CUSTOMER.c.id == CONVERSATION.c.customer_id)
        .where(CONVERSATION.c.state == state)
    )
    if state == S.RESOLVED and resolved_since is not None:
        query = query.where(CONVERSATION.c.resolved_at >= resolved_since)
    rows = [dict(r) for r in conn.execute(query.order_by(*_ORDER[state]).limit(limit)).mappings()]
    ids = {r["customer_id"] for r in rows}
    last: dict[int, Any] = {}
    if ids:
        newest = (
            select(func.max(MESSAGE.c.id).label("id"))
            .where(MESSAGE.c.customer_id.in_(ids))
            .group_by(MESSAGE.c.customer_id)
            .subquery()
        )
        found = conn.execute(
            select(
                MESSAGE.c.customer_id,
                MESSAGE.c.text,
                MESSAGE.c.direction,
                MESSAGE.c.channel,
                MESSAGE.c.created_at,
            ).join(newest, newest.c.id == MESSAGE.c.id)
        )
        last = {r[0]: r for r in found}
    for row in rows:
        m = last.get(row["customer_id"])
        row |= {
            "last_text": m[1] if m else None,
            "last_direction": m[2] if m else None,
            "channel": m[3] if m else None,
            "last_at": m[4] if m else None,
        }
    return rows


def latest(conn: Connection, *, customer_id: int) -> Conv | None:
    """The customer's open conversation, else their last one."""
    row = conn.execute(
        select(*_FIELDS)
        .where(CONVERSATION.c.customer_id == customer_id)
        .order_by(CONVERSATION.c.open_for.is_(None), CONVERSATION.c.id.desc())
        .limit(1)
    ).first()
    return _conv(row) if row is not None else None


def opted_out(conn: Connection, *, customer_id: int) -> bool:
    """Whether the customer has opted out of messages."""
    return (
        conn.execute(select(CUSTOMER.c.opted_out_at).where(CUSTOMER.c.id == customer_id)).scalar() is not None
    )


def reply_address(conn: Connection, *, customer_id: int) -> tuple[str, str] | None:
    """(channel, address) of the customer's last message to us: where an operator's reply goes."""
    row = conn.execute(
        select(MESSAGE.c.channel, MESSAGE.c.address)
        .where(MESSAGE.c.customer_id == customer_id, MESSAGE.c.direction == Direction.IN)
        .order_by(MESSAGE.c.id.desc())
        .limit(1)
    ).first()
    return (row[0], row[1]) if row is not None else None


def queue_reply(
    conn: Connection,
    *,
    customer_id: int,
    channel: str,
    address: str,
    text: str,
    now: datetime,
    intent: str = OPERATOR_INTENT,
) -> int:
    """Put a conversational message to the customer (an operator's by default) in the outbox."""
    return outbox_queries.queue_outbound(
        conn, customer_id=customer_id, channel=channel, address=address, text=text, intent=intent, now=now
    )


def add_note(conn: Connection, *, conversation_id: int, author: str, text: str, now: datetime) -> int:
    """Store an internal note (never sent); its id."""
    return int(
        conn.execute(
            insert(NOTE)
            .values(conversation_id=conversation_id, author=author, text=text, created_at=now)
            .returning(NOTE.c.id)
        ).scalar_one()
    )


def notes(conn: Connection, *, customer_id: int) -> list[RowMapping]:
    """Every internal note on the customer's conversations, oldest first."""
    query = (
        select(NOTE)
        .join(CONVERSATION, CONVERSATION.c.id == NOTE.c.conversation_id)
        .where(CONVERSATION.c.customer_id == customer_id)
        .order_by(NOTE.c.id)
    )
    return list(conn.execute(query).mappings())


def record_fact(
    conn: Connection, *, customer_id: int, key: str, value: Any, channel: str | None, now: datetime
) -> None:
    """Store a fact the customer told an operator (source ``operator``), replacing the old value."""
    values = {"value": value, "source": Source.OPERATOR, "stated_at": now, "confirmed_at": now}
    values |= {"message_id": None, "channel": channel}
    done = conn.execute(
        update(PREFERENCE)
        .where(PREFERENCE.c.customer_id == customer_id, PREFERENCE.c.key == key)
        .values(**values)
    ).rowcount
    if not done:
        conn.execute(insert(PREFERENCE).values(customer_id=customer_id, key=key, **values))


# -- figures --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DayFigures:
    """One day's conversations (by the day they started, UTC)."""

    day: date
    conversations: int
    handed: int  # a person was wanted or took over
    closed: int  # resolved
    contained: int  # resolved without a person
    first_reply_seconds: tuple[float, ...]  # waiting -> first human reply, per handed conversation

    @property
    def handoff_rate(self) -> float | None:
        return self.handed / self.conversations if self.conversations else None

    @property
    def containment(self) -> float | None:
        return self.contained / self.closed if self.closed else None

    @property
    def median_first_reply(self) -> float | None:
        times = sorted(self.first_reply_seconds)
        if not times:
            return None
        mid = len(times) // 2
        return times[mid] if len(times) % 2 else (times[mid - 1] + times[mid]) / 2


def daily_figures(conn: Connection, *, since: datetime, until: datetime) -> list[DayFigures]:
    """Handoff rate, containment and time to the first human reply, per day the conversations
    started in [since, until), newest day first."""
    query = select(
        CONVERSATION.c.started_at,
        CONVERSATION.c.waiting_since,
        CONVERSATION.c.first_human_reply_at,
        CONVERSATION.c.resolved_at,
    ).where(and_(CONVERSATION.c.started_at >= since, CONVERSATION.c.started_at < until))
    days: dict[date, list[Any]] = defaultdict(list)
    for row in conn.execute(query):
        days[row[0].date()].append(row)
    figures = []
    for day in sorted(days, reverse=True):
        rows = days[day]
        handed = [r for r in rows if r[1] is not None]
        closed = [r for r in rows if r[3] is not None]
        figures.append(
            DayFigures(
                day=day,
                conversations=len(rows),
                handed=len(handed),
                closed=len(closed),
                contained=sum(1 for r in closed if r[1] is None),
                first_reply_seconds=tuple((r[2] - r[1]).total_seconds() for r in handed if r[2] is not None),
            )
        )
    return figures


# -- what the conversation page shows -------------------------------------------------------------


def customer(conn: Connection, *, customer_id: int) -> RowMapping | None:
    """The customer's row."""
    return conn.execute(select(CUSTOMER).where(CUSTOMER.c.id == customer_id)).mappings().first()


def profile(conn: Connection, *, customer_id: int) -> list[RowMapping]:
    """The customer's preferences with their provenance, by key."""
    query = select(PREFERENCE).where(PREFERENCE.c.customer_id == customer_id).order_by(PREFERENCE.c.key)
    return list(conn.execute(query).mappings())


def plan(conn: Connection, *, plan_id: str | None) -> RowMapping | None:
    """A plan of the catalog, if ``plan_id`` names one."""
    if plan_id is None:
        return None
    return conn.execute(select(PLAN).where(PLAN.c.id == plan_id)).mappings().first()
