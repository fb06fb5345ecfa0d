"""The dialog engine's hot path: load a customer's turn state under a lock, write the turn's rows.

A turn reads once and writes a handful of small rows on a connection already in a transaction.
The statements are SQLAlchemy Core, without ORM objects (a benchmark showed the ORM cost more than
the SQL), and they skip Core's execution machinery as well: for rows this small SQLite spends less
on a statement than SQLAlchemy spends around it (execution context, parameters, result object,
events). So :class:`_Prepared` compiles each statement once per engine and runs it on the
driver's cursor of the connection whose transaction the turn holds: the same SQL, the values
through the columns' own type processing, the same transaction, and driver errors raised as
SQLAlchemy's (``IntegrityError`` and the rest, which :meth:`dialogs.engine.DialogEngine.handle`
retries on). What that leaves out: engine events and ``echo`` do not see these statements.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Table, bindparam, exists, insert, select, update
from sqlalchemy.engine.interfaces import DBAPICursor
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import ColumnDefault
from sqlalchemy.sql import Insert, Select, Update
from sqlalchemy.types import TypeEngine
from sqlmodel import Session

from storage import queries, whatsapp
from storage.handoff_models import Conversation
from storage.models import Customer
from storage.tables import CUSTOMER, IDENTITY, MESSAGE, PREFERENCE, STATE, USAGE
from storage.types import DeliveryStatus, Direction, Intent, UTCDateTime

_Processor = Callable[[Any], Any]
_Keys = tuple[str, ...]


@dataclass(slots=True)
class _Plan:
    """A statement compiled for one engine's dialect: its SQL, and how values become parameters."""

    sql: str
    names: tuple[str, ...]  # of the binds, in the SQL's order
    processors: tuple[tuple[int, _Processor], ...]  # (position, bind processor) where there is one
    positional: bool
    constants: dict[str, Any]  # values bound in the statement itself
    dbapi_error: type[Exception]  # the driver's base error
    result_types: tuple[Any, ...]
    results: tuple[_Processor | None, ...] | None = None  # from the first result's description

    def run(self, conn: Connection, values: Mapping[str, Any]) -> DBAPICursor:
        if self.constants:
            values = {**self.constants, **values}
        args = [values[name] for name in self.names]
        for i, proc in self.processors:
            args[i] = proc(args[i])
        params = args if self.positional else dict(zip(self.names, args, strict=True))
        cursor = conn.connection.cursor()
        try:
            cursor.execute(self.sql, params)
        except self.dbapi_error as exc:
            raise DBAPIError.instance(
                self.sql,
                params,
                exc,
                self.dbapi_error,
                hide_parameters=conn.engine.hide_parameters,
                dialect=conn.dialect,
            ) from exc
        return cursor

    def rows(self, conn: Connection, cursor: DBAPICursor) -> _Rows:
        fetched = cursor.fetchall()
        if self.results is None:
            self.results = tuple(
                _processor(t, conn.engine, ("result", d[1]))
                for t, d in zip(self.result_types, cursor.description or (), strict=True)
            )
        return _Rows(fetched, self.results)


@dataclass(slots=True)
class _Rows:
    """Fetched rows; a row's values go through their columns' result processing when asked for."""

    raw: Sequence[Sequence[Any]]
    processors: tuple[_Processor | None, ...]

    def __len__(self) -> int:
        return len(self.raw)

    def row(self, i: int, start: int = 0, stop: int | None = None) -> tuple[Any, ...]:
        """Row ``i``, or the columns ``start:stop`` of it."""
        values = self.raw[i][start:stop]
        procs = self.processors[start:stop]
        return tuple([v if p is None else p(v) for v, p in zip(values, procs, strict=True)])


# One processor per engine (and direction) for every UTCDateTime column, as the type has no
# settings; it remembers the last value it turned, since a turn writes one time into several
# columns and reads back preferences mostly confirmed when they were stated.
_TIME_PROCESSORS: weakref.WeakKeyDictionary[Engine, dict[tuple[Any, ...], _Processor | None]] = (
    weakref.WeakKeyDictionary()
)


def _processor(type_: TypeEngine[Any], engine: Engine, use: tuple[Any, ...]) -> _Processor | None:
    """The column type's bind processor (``use`` ``("bind",)``) or result processor (``("result",
    type code)``) on ``engine``'s dialect, as SQLAlchemy would use it."""
    dialect = engine.dialect

    def make() -> _Processor | None:
        impl = type_.dialect_impl(dialect)
        return impl.bind_processor(dialect) if use[0] == "bind" else impl.result_processor(dialect, use[1])

    if type(type_) is not UTCDateTime:
        return make()
    shared = _TIME_PROCESSORS.setdefault(engine, {})
    if use not in shared:
        made = make()
        shared[use] = None if made is None else _remembering(made)
    return shared[use]


def _remembering(process: _Processor) -> _Processor:
    """``process`` for immutable values, turning a value equal to the last one only once."""
    last: tuple[Any, Any] = (object(), None)  # one tuple, so threads never see half of it

    def remembering(value: Any) -> Any:
        nonlocal last
        seen, out = last
        if value == seen:
            return out
        out = process(value)
        last = (value, out)
        return out

    return remembering


class _Prepared:
    """A Core statement compiled once per engine (and per set of value keys), run on the driver.

    ``build(keys, rows)`` makes the statement for values with those keys (``rows`` of them for a
    multi-row insert).
    """

    def __init__(self, build: Callable[[_Keys, int], Select[Any] | Insert | Update]) -> None:
        self._build = build
        # Per engine (weakly: tests make many), per keys and rows.
        self._plans: weakref.WeakKeyDictionary[Engine, dict[tuple[_Keys, int], _Plan]]
        self._plans = weakref.WeakKeyDictionary()

    def plan(self, conn: Connection, keys: _Keys, rows: int = 1) -> _Plan:
        plans = self._plans.get(conn.engine)
        if plans is None:
            plans = self._plans[conn.engine] = {}
        plan = plans.get((keys, rows))
        if plan is None:
            plan = plans[(keys, rows)] = self._compile(conn.engine, keys, rows)
        return plan

    def _compile(self, engine: Engine, keys: _Keys, rows: int) -> _Plan:
        dialect = engine.dialect
        statement = self._build(keys, rows)
        compiled = statement.compile(dialect=dialect, column_keys=list(keys))
        if compiled.insert_prefetch or compiled.update_prefetch or compiled.post_compile_params:
            # Core would work these out per execution: give such columns a value instead.
            raise ValueError(f"{statement} needs values computed per execution; given {keys}")
        unused = [k for k in keys if (k if rows == 1 else f"{k}_0") not in compiled.binds]
        if unused:  # as Core refuses them: a misspelt column must not be dropped quietly
            raise ValueError(f"unconsumed column names {unused} for {statement}")
        names = tuple(compiled.positiontup or ()) if compiled.positional else tuple(compiled.binds)
        binds = [compiled.binds[name] for name in names]
        processors = [(i, _processor(b.type, engine, ("bind",))) for i, b in enumerate(binds)]
        constants = {
            name: b.effective_value for name, b in zip(names, binds, strict=True) if name not in keys
        }
        types = tuple(c.type for c in statement.selected_columns) if isinstance(statement, Select) else ()
        return _Plan(
            compiled.string,
            names,
            tuple((i, proc) for i, proc in processors if proc is not None),
            compiled.positional,
            constants,
            dialect.loaded_dbapi.Error,
            types,
        )

    def rows(self, conn: Connection, values: Mapping[str, Any]) -> _Rows:
        plan = self.plan(conn, tuple(values))
        return plan.rows(conn, plan.run(conn, values))

    def all(self, conn: Connection, values: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        rows = self.rows(conn, values)
        return [rows.row(i) for i in range(len(rows))]

    def first(self, conn: Connection, values: Mapping[str, Any]) -> tuple[Any, ...] | None:
        rows = self.rows(conn, values)
        return rows.row(0) if rows else None

    def rowcount(self, conn: Connection, values: Mapping[str, Any]) -> int:
        return int(self.plan(conn, tuple(values)).run(conn, values).rowcount)


def _fixed(statement: Select[Any] | Update) -> _Prepared:
    """A statement whose shape does not depend on the values (binds named in it)."""
    return _Prepared(lambda _keys, _rows: statement)


class _Inserts:
    """Inserts into ``table`` of the columns given: a row, a row and its id, rows and their ids.

    Columns left out get their scalar Python default, as Core gives them.
    """

    def __init__(self, table: Table) -> None:
        self.table = table
        self.defaults = {
            c.key: c.default.arg
            for c in table.columns
            if isinstance(c.default, ColumnDefault) and c.default.is_scalar and not c.primary_key
        }
        self._plain = _Prepared(lambda keys, rows: self._statement(keys, rows))
        self._returning = _Prepared(lambda keys, rows: self._statement(keys, rows).returning(table.c.id))

    def _statement(self, keys: _Keys, rows: int) -> Insert:
        if rows == 1:
            return insert(self.table)
        types = {k: self.table.c[k].type for k in keys}
        return insert(self.table).values(
            [{k: bindparam(f"{k}_{i}", type_=types[k]) for k in keys} for i in range(rows)]
        )

    def row(self, conn: Connection, values: Mapping[str, Any]) -> DBAPICursor:
        full = {**self.defaults, **values}
        return self._plain.plan(conn, tuple(full)).run(conn, full)

    def id(self, conn: Connection, values: Mapping[str, Any]) -> int:
        """Insert a row; its id (the driver's ``lastrowid`` where it has one, else ``RETURNING``)."""
        if getattr(conn.dialect, "postfetch_lastrowid", False):  # SQLite
            return int(self.row(conn, values).lastrowid)
        return self.ids(conn, [values])[0]

    def ids(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert rows in one statement; their ids in the order of ``rows`` (both databases insert
        a VALUES list in its order and count ids up, in whatever order RETURNING lists them)."""
        if not rows:
            return []
        full = [{**self.defaults, **r} for r in rows]
        keys = tuple(full[0])
        values = full[0] if len(full) == 1 else {f"{k}_{i}": r[k] for i, r in enumerate(full) for k in keys}
        cursor = self._returning.plan(conn, keys, len(full)).run(conn, values)
        return sorted(int(row[0]) for row in cursor.fetchall())


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
    # The customer's open conversation, read with the state by :func:`lock_turn`:
    # ``conversation_read`` is True and ``conversation`` its row (the columns of
    # :data:`CONVERSATION_COLUMNS`), or None when none is open.
    conversation_read: bool = False
    conversation: tuple[Any, ...] | None = None


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


# Statements are built (and compiled) once: building them costs more than running them on SQLite.
_FACT_COLUMNS = (
    PREFERENCE.c.key,
    PREFERENCE.c.value,
    PREFERENCE.c.source,
    PREFERENCE.c.stated_at,
    PREFERENCE.c.confirmed_at,
    PREFERENCE.c.message_id,
    PREFERENCE.c.channel,
)
CONVERSATION = Conversation.__table__  # type: ignore[attr-defined]
# A conversation row, in the order of :class:`storage.handoff.Conv`'s fields.
CONVERSATION_COLUMNS = (
    CONVERSATION.c.id,
    CONVERSATION.c.customer_id,
    CONVERSATION.c.state,
    CONVERSATION.c.reason,
    CONVERSATION.c.operator,
    CONVERSATION.c.started_at,
    CONVERSATION.c.waiting_since,
    CONVERSATION.c.claimed_at,
    CONVERSATION.c.first_human_reply_at,
    CONVERSATION.c.timeout_notified_at,
    CONVERSATION.c.resolved_at,
)
_TURN_FROM = (
    IDENTITY.join(CUSTOMER, CUSTOMER.c.id == IDENTITY.c.customer_id)
    .join(STATE, STATE.c.customer_id == CUSTOMER.c.id)
    .outerjoin(PREFERENCE, PREFERENCE.c.customer_id == CUSTOMER.c.id)
)
_BY_ADDRESS = (IDENTITY.c.channel == bindparam("b_channel"), IDENTITY.c.address == bindparam("b_address"))
# The state row locked (PostgreSQL: ``FOR UPDATE``; SQLite's transactions hold the database).
_LOCK_STATE = _fixed(
    select(STATE.c.customer_id)
    .select_from(IDENTITY.join(STATE, STATE.c.customer_id == IDENTITY.c.customer_id))
    .where(*_BY_ADDRESS)
    .with_for_update(of=STATE)
)
# One round trip: the state with the customer's open conversation (at most one: open_for is
# unique) and preferences, one row per preference.
_READ_TURN = _fixed(
    select(*_STATE_COLUMNS, *CONVERSATION_COLUMNS, *_FACT_COLUMNS)
    .select_from(_TURN_FROM.outerjoin(CONVERSATION, CONVERSATION.c.open_for == CUSTOMER.c.id))
    .where(*_BY_ADDRESS)
)
_FIND_INBOUND = _fixed(
    select(MESSAGE.c.id, MESSAGE.c.customer_id).where(
        MESSAGE.c.channel == bindparam("b_channel"),
        MESSAGE.c.direction == Direction.IN.value,
        MESSAGE.c.provider_message_id == bindparam("b_provider_id"),
    )
)
_REPLIES_TO = _fixed(
    select(MESSAGE.c.id, MESSAGE.c.text, MESSAGE.c.intent, MESSAGE.c.question_key)
    .where(MESSAGE.c.reply_to_id == bindparam("b_message_id"))
    .order_by(MESSAGE.c.id)
)
_FIND_IDENTITY = _fixed(
    select(IDENTITY.c.customer_id).where(
        IDENTITY.c.channel == bindparam("b_channel"), IDENTITY.c.address == bindparam("b_address")
    )
)
_FIND_BY_PHONE = _fixed(select(CUSTOMER.c.id).where(CUSTOMER.c.phone == bindparam("b_phone")))
_HAS_STATE = _fixed(select(STATE.c.customer_id).where(STATE.c.customer_id == bindparam("b_customer_id")))
_CUSTOMERS = _Inserts(CUSTOMER)
_IDENTITIES = _Inserts(IDENTITY)
_STATES = _Inserts(STATE)
_MESSAGES = _Inserts(MESSAGE)
_FACTS = _Inserts(PREFERENCE)
_UPDATE_FACT = _fixed(
    update(PREFERENCE).where(
        PREFERENCE.c.customer_id == bindparam("b_customer_id"), PREFERENCE.c.key == bindparam("b_key")
    )
)
_UPDATE_STATE = _fixed(
    update(STATE).where(
        STATE.c.customer_id == bindparam("b_customer_id"), STATE.c.version == bindparam("b_version")
    )
)


def lock_turn(conn: Connection, *, channel: str, address: str) -> TurnState | None:
    """The state of the customer at ``address``, locked until the transaction ends, or None.

    On PostgreSQL the dialog state row is locked first (``FOR UPDATE OF dialog_state``), then
    everything is read: a read that waited for the lock in the same statement would get the state
    as the turn before left it but the preferences and conversation as they were when it started
    waiting. On SQLite every transaction already holds the database's write lock (``BEGIN
    IMMEDIATE``), so one statement does.
    """
    values = {"b_channel": channel, "b_address": address}
    if conn.dialect.name != "sqlite" and _LOCK_STATE.first(conn, values) is None:
        return None
    rows = _READ_TURN.rows(conn, values)
    if not rows:
        return None
    n = len(_STATE_COLUMNS)  # the state's and conversation's columns repeat in each preference's row
    m = n + len(CONVERSATION_COLUMNS)
    state = TurnState(*rows.row(0, 0, n))
    state.conversation_read = True
    state.conversation = rows.row(0, n, m) if rows.raw[0][n] is not None else None
    facts = (Fact(*rows.row(i, m)) for i in range(len(rows)) if rows.raw[i][m] is not None)
    state.facts = {fact.key: fact for fact in facts}
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
        _whatsapp_session(conn, channel, state.customer_id, now)
        return state
    found = _FIND_IDENTITY.first(conn, {"b_channel": channel, "b_address": address})
    known = found[0] if found else None
    if known is None and phone:
        found = _FIND_BY_PHONE.first(conn, {"b_phone": phone})
        known = found[0] if found else None
        if known is not None:
            _IDENTITIES.row(conn, _identity(channel, address, known, verified=True, now=now))
    created = known is None
    if known is None:
        row = {"name": name, "phone": phone, "marketing_consent": False, "created_at": now}
        known = _CUSTOMERS.id(conn, row)
        _IDENTITIES.row(conn, _identity(channel, address, known, verified=phone is not None, now=now))
    if created or _HAS_STATE.first(conn, {"b_customer_id": known}) is None:
        _STATES.row(conn, {"customer_id": known, "reask_count": 0, "deferred": {}, "version": 0})
    state = lock_turn(conn, channel=channel, address=address)
    assert state is not None
    state.created = created
    _whatsapp_session(conn, channel, known, now)
    return state


def _whatsapp_session(conn: Connection, channel: str, customer_id: int, now: datetime) -> None:
    """A message on WhatsApp (re)opens the customer's 24-hour session window."""
    if channel == whatsapp.CHANNEL:
        whatsapp.touch_session(conn, customer_id=customer_id, at=now)


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
    row = _FIND_INBOUND.first(conn, {"b_channel": channel, "b_provider_id": provider_id})
    return (row[0], row[1]) if row is not None else None


def replies_to(conn: Connection, *, message_id: int) -> Sequence[Any]:
    """(id, text, intent, question_key) of the replies to an inbound message, in order."""
    return _REPLIES_TO.all(conn, {"b_message_id": message_id})


def load_facts(conn: Connection, *, customer_id: int) -> dict[str, Fact]:
    """The customer's stored preferences by key."""
    rows = conn.execute(select(*_FACT_COLUMNS).where(PREFERENCE.c.customer_id == customer_id)).all()
    return {row[0]: Fact(*row) for row in rows}


def insert_message(conn: Connection, values: Mapping[str, Any]) -> int:
    """Insert one message row; its id."""
    return _MESSAGES.id(conn, values)


def insert_messages(conn: Connection, rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Insert message rows (with the same keys) in one statement; their ids in the same order."""
    if len(rows) == 1:
        return [_MESSAGES.id(conn, rows[0])]
    return _MESSAGES.ids(conn, rows)


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
        if fact.key == whatsapp.OPT_IN_KEY and fact.value == whatsapp.CHANNEL:
            whatsapp.record_opt_in(conn, customer_id=customer_id, at=fact.stated_at)
        if fact.key in existing:
            _UPDATE_FACT.rowcount(conn, {"b_customer_id": customer_id, "b_key": fact.key, **values})
        else:
            _FACTS.row(conn, {"customer_id": customer_id, "key": fact.key, **values})


def save_state(conn: Connection, state: TurnState, *, expected_version: int) -> None:
    """Write the dialog state back (its version already advanced by the caller)."""
    written = _UPDATE_STATE.rowcount(
        conn,
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
    if written != 1:
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
                MESSAGE.c.intent == Intent.SUGGESTION,
                MESSAGE.c.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.SENDING)),
            )
            .limit(1)
        ).first()
        is not None
    )


_UNSEEN = (
    DeliveryStatus.QUEUED,
    DeliveryStatus.SENDING,
    DeliveryStatus.CANCELLED,
    DeliveryStatus.FAILED,
    DeliveryStatus.UNDELIVERED,
)


def unseen_suggestion(conn: Connection, *, customer_id: int) -> bool:
    """Whether the latest plan suggestion to this customer is a proactive one that has not
    reached them: still waiting to go out, or cancelled, refused or failed on the way (so a
    YES now is not an answer to it)."""
    latest = conn.execute(
        select(MESSAGE.c.marketing, MESSAGE.c.status)
        .where(
            MESSAGE.c.customer_id == customer_id,
            MESSAGE.c.direction == Direction.OUT,
            MESSAGE.c.intent == Intent.SUGGESTION,
        )
        .order_by(MESSAGE.c.id.desc())
        .limit(1)
    ).first()
    return latest is not None and bool(latest.marketing) and latest.status in _UNSEEN


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
