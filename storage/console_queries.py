"""Queries behind the operator console: message search, transcripts, review queue, taught synonyms,
accounts and the audit log. SQLAlchemy Core with bound parameters throughout."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    RowMapping,
    Select,
    and_,
    column,
    delete,
    exists,
    false,
    func,
    insert,
    literal_column,
    or_,
    select,
    table,
    update,
)

from storage.console_models import FTS_TABLE
from storage.tables import (
    AUDIT_EVENT,
    CONSOLE_SESSION,
    CONSOLE_USER,
    CUSTOMER,
    DELIVERY_ATTEMPT,
    IDENTITY,
    MESSAGE,
    MESSAGE_REVIEW,
    PLAN,
    PLAN_DECLINE,
    PREFERENCE,
    SWITCH_REQUEST,
    TAUGHT_SYNONYM,
    USAGE,
)
from storage.types import Direction, Intent, utcnow

USER, AUDIT, REVIEW, TAUGHT = CONSOLE_USER, AUDIT_EVENT, MESSAGE_REVIEW, TAUGHT_SYNONYM

PAGE_SIZE = 50
ERASURE_INTENT = Intent.COMMAND_FORGET


# -- search -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """What the conversation list is narrowed to; empty fields do not narrow it."""

    text: str = ""
    who: str = ""  # part of a customer's name, or digits of their phone number / address
    channel: str = ""
    since: date | None = None
    until: date | None = None  # inclusive
    needs_review: bool = False
    customer_id: int | None = None
    delivery: str = ""  # an outbound message's status, e.g. "unknown" (cut off mid-send: review)

    def as_params(self) -> dict[str, str]:
        """The filter as query-string parameters (for links to the next page and exports)."""
        params = {
            "q": self.text,
            "who": self.who,
            "channel": self.channel,
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
            "review": "1" if self.needs_review else "",
            "delivery": self.delivery,
        }
        return {k: v for k, v in params.items() if v}


_FTS_TOKEN = re.compile(r"\S+")


def fts5_query(user_text: str) -> str:
    """A customer's search text as a safe FTS5 query: every word a quoted string, all required,
    each a prefix ("evening" finds "evenings").

    Quoting makes ``"``, ``*``, ``NEAR``, ``AND``, ``-`` and ``:`` plain text rather than syntax.
    """
    words = _FTS_TOKEN.findall(user_text)[:16]
    return " ".join('"' + w.replace('"', '""') + '"*' for w in words)


_TS_WORD = re.compile(r"[^\W_]+")


def tsquery_prefix(user_text: str) -> str:
    """A search text as a PostgreSQL ``to_tsquery`` of prefixes (``evening:* & pleas:*``): only
    word characters reach it, so nothing in the text is tsquery syntax."""
    return " & ".join(f"{w}:*" for w in _TS_WORD.findall(user_text.lower())[:16])


_FTS = table(FTS_TABLE, column("rowid"), column(FTS_TABLE))


# What text search looks in (migration 0009): conversations, i.e. what customers wrote and the
# bot's replies, not outbound marketing (broadcasts, plan suggestions, nudges: bot-written offers,
# a broadcast the same template for every recipient). Those are found by customer, channel and
# date instead. Written without a bound parameter (``NOT message.marketing`` on PostgreSQL) so
# that the planner, even with a generic plan, sees it implies the partial GIN index's predicate.
SEARCHABLE: ColumnElement[bool] = ~MESSAGE.c.marketing


def _text_condition(conn: Connection, query: str) -> ColumnElement[bool] | None:
    if not query.strip():
        return None
    if conn.dialect.name == "postgresql":
        # Matches the expression of the GIN index ix_message_text_fts exactly.
        vector = func.to_tsvector(literal_column("'simple'"), MESSAGE.c.text)
        prefixes = tsquery_prefix(query)
        if not prefixes:
            return None
        return and_(SEARCHABLE, vector.op("@@")(func.to_tsquery(literal_column("'simple'"), prefixes)))
    if conn.dialect.name == "sqlite":
        match = fts5_query(query)
        if not match.replace('"', "").strip():
            return None
        fts = select(_FTS.c.rowid).where(_FTS.c[FTS_TABLE].op("MATCH")(match))
        return and_(SEARCHABLE, MESSAGE.c.id.in_(fts))
    return and_(SEARCHABLE, MESSAGE.c.text.contains(query, autoescape=True))


_WHO_IDS_MAX = 1000


def _who_condition(conn: Connection, who: str) -> ColumnElement[bool] | None:
    who = who.strip()
    if not who:
        return None
    conditions: list[ColumnElement[bool]] = [
        func.lower(CUSTOMER.c.name).contains(who.lower(), autoescape=True)
    ]
    digits = re.sub(r"\D", "", who)
    if len(digits) >= 3:
        conditions.append(CUSTOMER.c.phone.contains(digits, autoescape=True))
        conditions.append(
            CUSTOMER.c.id.in_(
                select(IDENTITY.c.customer_id).where(IDENTITY.c.address.contains(digits, autoescape=True))
            )
        )
    matching = select(CUSTOMER.c.id).where(or_(*conditions))
    # Resolve the customers first: given the subquery, PostgreSQL misjudges how few match and
    # walks every message backwards; a short list of ids lets it use the customer index.
    ids = conn.execute(matching.limit(_WHO_IDS_MAX + 1)).scalars().all()
    if len(ids) > _WHO_IDS_MAX:
        return MESSAGE.c.customer_id.in_(matching)  # a broad match: let the database join
    return MESSAGE.c.customer_id.in_(ids) if ids else false()


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


_ROW_COLUMNS = (
    MESSAGE.c.id,
    MESSAGE.c.customer_id,
    MESSAGE.c.channel,
    MESSAGE.c.direction,
    MESSAGE.c.address,
    MESSAGE.c.text,
    MESSAGE.c.question_key,
    MESSAGE.c.parsed_value,
    MESSAGE.c.confidence,
    MESSAGE.c.intent,
    MESSAGE.c.needs_review,
    MESSAGE.c.reply_to_id,
    MESSAGE.c.status,
    MESSAGE.c.attempts,
    MESSAGE.c.error,
    MESSAGE.c.created_at,
    MESSAGE.c.sent_at,
    MESSAGE.c.delivered_at,
    CUSTOMER.c.name.label("customer_name"),
    CUSTOMER.c.phone.label("customer_phone"),
)


def _search_select(conn: Connection, f: SearchFilter) -> Select[Any]:
    conditions: list[ColumnElement[bool]] = []
    for condition in (_text_condition(conn, f.text), _who_condition(conn, f.who)):
        if condition is not None:
            conditions.append(condition)
    if f.channel:
        conditions.append(MESSAGE.c.channel == f.channel)
    if f.since:
        conditions.append(MESSAGE.c.created_at >= _day_start(f.since))
    if f.until:
        conditions.append(MESSAGE.c.created_at < _day_start(f.until + timedelta(days=1)))
    if f.needs_review:
        conditions.append(MESSAGE.c.needs_review.is_(True))
    if f.delivery:
        conditions += [MESSAGE.c.direction == Direction.OUT, MESSAGE.c.status == f.delivery]
    if f.customer_id is not None:
        conditions.append(MESSAGE.c.customer_id == f.customer_id)
    return (
        select(*_ROW_COLUMNS)
        .select_from(MESSAGE.outerjoin(CUSTOMER, CUSTOMER.c.id == MESSAGE.c.customer_id))
        .where(and_(True, *conditions))
    )


def search_messages(
    conn: Connection, f: SearchFilter, *, before: int | None = None, limit: int = PAGE_SIZE
) -> list[RowMapping]:
    """One page of matching messages, newest first; the next page starts ``before`` the last id."""
    query = _search_select(conn, f)
    if before is not None:
        query = query.where(MESSAGE.c.id < before)
    rows = conn.execute(query.order_by(MESSAGE.c.id.desc()).limit(limit)).mappings().all()
    return list(rows)


def search_conversations(
    conn: Connection, f: SearchFilter, *, before: int | None = None, limit: int = PAGE_SIZE
) -> list[dict[str, Any]]:
    """One page of conversations (a customer's messages) with a matching message, the one with the
    newest such message first: each the last matching message's row with ``count``, how many of
    theirs match. The next page starts ``before`` the last row's id."""
    last = func.max(MESSAGE.c.id)
    grouped = (
        _search_select(conn, f)
        .with_only_columns(MESSAGE.c.customer_id, func.count().label("n"), last.label("last_id"))
        .group_by(MESSAGE.c.customer_id)
    )
    if before is not None:
        grouped = grouped.having(last < before)
    found = conn.execute(grouped.order_by(last.desc()).limit(limit)).all()
    counts = {int(r.last_id): int(r.n) for r in found}
    if not counts:
        return []
    rows = conn.execute(
        select(*_ROW_COLUMNS)
        .select_from(MESSAGE.outerjoin(CUSTOMER, CUSTOMER.c.id == MESSAGE.c.customer_id))
        .where(MESSAGE.c.id.in_(list(counts)))
        .order_by(MESSAGE.c.id.desc())
    ).mappings()
    return [{**row, "count": counts[row["id"]]} for row in rows]


def iter_search(conn: Connection, f: SearchFilter, *, chunk: int = 1000) -> Iterator[RowMapping]:
    """Every matching message, newest first, fetched a chunk at a time (for exports)."""
    before: int | None = None
    while True:
        rows = search_messages(conn, f, before=before, limit=chunk)
        yield from rows
        if len(rows) < chunk:
            return
        before = rows[-1]["id"]


# -- one customer -----------------------------------------------------------------------------------


def transcript(conn: Connection, customer_id: int) -> list[RowMapping]:
    """Every stored message of a customer, oldest first."""
    query = _search_select(conn, SearchFilter(customer_id=customer_id)).order_by(MESSAGE.c.id)
    return list(conn.execute(query).mappings().all())


def iter_transcript(conn: Connection, customer_id: int, *, chunk: int = 1000) -> Iterator[RowMapping]:
    """A customer's messages, oldest first, a chunk at a time."""
    after = 0
    while True:
        query = (
            _search_select(conn, SearchFilter(customer_id=customer_id))
            .where(MESSAGE.c.id > after)
            .order_by(MESSAGE.c.id)
            .limit(chunk)
        )
        rows = conn.execute(query).mappings().all()
        yield from rows
        if len(rows) < chunk:
            return
        after = rows[-1]["id"]


def customer(conn: Connection, *, customer_id: int) -> RowMapping | None:
    """A customer's row."""
    return conn.execute(select(CUSTOMER).where(CUSTOMER.c.id == customer_id)).mappings().first()


def customer_preferences(conn: Connection, *, customer_id: int) -> list[RowMapping]:
    """A customer's stored preferences, by key."""
    query = select(PREFERENCE).where(PREFERENCE.c.customer_id == customer_id).order_by(PREFERENCE.c.key)
    return list(conn.execute(query).mappings().all())


def plan(conn: Connection, *, plan_id: str) -> RowMapping | None:
    """A plan of the catalog."""
    return conn.execute(select(PLAN).where(PLAN.c.id == plan_id)).mappings().first()


def customer_usage(conn: Connection, *, customer_id: int) -> list[RowMapping]:
    """A customer's usage rows, by month and metric."""
    query = select(USAGE).where(USAGE.c.customer_id == customer_id).order_by(USAGE.c.period, USAGE.c.metric)
    return list(conn.execute(query).mappings().all())


def switch_requests(conn: Connection, *, customer_id: int) -> list[RowMapping]:
    """The plan switches a customer asked for (YES to a suggestion), newest first."""
    query = (
        select(SWITCH_REQUEST)
        .where(SWITCH_REQUEST.c.customer_id == customer_id)
        .order_by(SWITCH_REQUEST.c.id.desc())
    )
    return list(conn.execute(query).mappings().all())


def plan_declines(conn: Connection, *, customer_id: int) -> list[RowMapping]:
    """The plans a customer declined (NO to a suggestion), newest first."""
    query = (
        select(PLAN_DECLINE)
        .where(PLAN_DECLINE.c.customer_id == customer_id)
        .order_by(PLAN_DECLINE.c.id.desc())
    )
    return list(conn.execute(query).mappings().all())


def suggestions(conn: Connection, *, customer_id: int, limit: int = 500) -> list[RowMapping]:
    """The plan suggestions sent to a customer (replies and proactive ones), newest first."""
    query = _search_select(conn, SearchFilter(customer_id=customer_id)).where(
        MESSAGE.c.intent == Intent.SUGGESTION
    )
    return list(conn.execute(query.order_by(MESSAGE.c.id.desc()).limit(limit)).mappings().all())


# -- review queue -----------------------------------------------------------------------------------


def review_queue(conn: Connection, *, before: int | None = None, limit: int = PAGE_SIZE) -> list[RowMapping]:
    """Customer messages flagged for review that nobody has reviewed yet, newest first."""
    query = (
        _search_select(conn, SearchFilter(needs_review=True))
        .where(MESSAGE.c.direction == Direction.IN)
        .where(~exists().where(REVIEW.c.message_id == MESSAGE.c.id))
    )
    if before is not None:
        query = query.where(MESSAGE.c.id < before)
    return list(conn.execute(query.order_by(MESSAGE.c.id.desc()).limit(limit)).mappings().all())


def message(conn: Connection, message_id: int) -> RowMapping | None:
    """One message with its customer's name and phone."""
    query = _search_select(conn, SearchFilter()).where(MESSAGE.c.id == message_id)
    return conn.execute(query).mappings().first()


def mark_reviewed(conn: Connection, *, message_id: int, by: str, action: str, now: datetime) -> bool:
    """Record that ``by`` reviewed the message; False when it already was."""
    if conn.execute(select(REVIEW.c.message_id).where(REVIEW.c.message_id == message_id)).first():
        return False
    conn.execute(insert(REVIEW).values(message_id=message_id, reviewed_by=by, reviewed_at=now, action=action))
    return True


def attempts_for(conn: Connection, message_ids: Sequence[int]) -> dict[int, list[RowMapping]]:
    """The recorded delivery attempts of the given messages, oldest first, by message id."""
    found: dict[int, list[RowMapping]] = {}
    if message_ids:
        rows = conn.execute(
            select(DELIVERY_ATTEMPT)
            .where(DELIVERY_ATTEMPT.c.message_id.in_(message_ids))
            .order_by(DELIVERY_ATTEMPT.c.id)
        ).mappings()
        for row in rows:
            found.setdefault(row["message_id"], []).append(row)
    return found


def reviews_for(conn: Connection, message_ids: Sequence[int]) -> dict[int, RowMapping]:
    """The reviews of the given messages, by message id."""
    if not message_ids:
        return {}
    rows = conn.execute(select(REVIEW).where(REVIEW.c.message_id.in_(message_ids))).mappings()
    return {row["message_id"]: row for row in rows}


# -- taught synonyms --------------------------------------------------------------------------------


def add_taught_synonym(
    conn: Connection, *, question_key: str, option_value: Any, phrase: str, message_id: int | None, by: str
) -> int:
    """Store a taught synonym; returns its id."""
    result = conn.execute(
        insert(TAUGHT).values(
            question_key=question_key,
            option_value=option_value,
            phrase=phrase,
            message_id=message_id,
            taught_by=by,
            taught_at=utcnow(),
        )
    )
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def taught_synonyms(conn: Connection) -> list[RowMapping]:
    """Every taught synonym, oldest first."""
    return list(conn.execute(select(TAUGHT).order_by(TAUGHT.c.id)).mappings().all())


def taught_with_phrase(conn: Connection, phrase: str) -> list[RowMapping]:
    """The taught rows (answers and intents) for one phrase."""
    return list(conn.execute(select(TAUGHT).where(TAUGHT.c.phrase == phrase)).mappings().all())


def delete_taught(conn: Connection, taught_id: int) -> RowMapping | None:
    """Remove one taught row (undo); the row as it was, or None if there is no such row."""
    row = conn.execute(select(TAUGHT).where(TAUGHT.c.id == taught_id)).mappings().first()
    if row is not None:
        conn.execute(delete(TAUGHT).where(TAUGHT.c.id == taught_id))
    return row


def taught_version(conn: Connection) -> tuple[int, int | None]:
    """Changes whenever a synonym is taught or removed (a cheap cache key)."""
    count, last = conn.execute(select(func.count(), func.max(TAUGHT.c.id))).one()
    return int(count), last


# -- accounts and audit -----------------------------------------------------------------------------


def audit(
    conn: Connection,
    *,
    action: str,
    actor: str | None,
    target: str | None = None,
    detail: Mapping[str, Any] | None = None,
    ip: str | None = None,
    now: datetime | None = None,
) -> None:
    """Append an event to the audit log."""
    conn.execute(
        insert(AUDIT).values(
            at=now or utcnow(),
            actor=actor,
            action=action,
            target=target,
            detail=dict(detail or {}),
            ip=ip,
        )
    )


def audit_events(conn: Connection, *, before: int | None = None, limit: int = PAGE_SIZE) -> list[RowMapping]:
    """The audit log, newest first."""
    query = select(AUDIT)
    if before is not None:
        query = query.where(AUDIT.c.id < before)
    return list(conn.execute(query.order_by(AUDIT.c.id.desc()).limit(limit)).mappings().all())


def erasures(conn: Connection, *, limit: int = PAGE_SIZE) -> list[RowMapping]:
    """Messages in which a customer had everything erased ("forget me"), newest first."""
    query = (
        select(
            MESSAGE.c.id, MESSAGE.c.customer_id, MESSAGE.c.channel, MESSAGE.c.created_at, CUSTOMER.c.erased_at
        )
        .select_from(MESSAGE.outerjoin(CUSTOMER, CUSTOMER.c.id == MESSAGE.c.customer_id))
        .where(MESSAGE.c.intent == ERASURE_INTENT)
        .order_by(MESSAGE.c.id.desc())
        .limit(limit)
    )
    return list(conn.execute(query).mappings().all())


def users(conn: Connection) -> list[RowMapping]:
    """Every console account, by e-mail."""
    return list(conn.execute(select(USER).order_by(USER.c.email)).mappings().all())


def disable_user(conn: Connection, *, user_id: int, now: datetime) -> bool:
    """Disable an account (its sessions end at their next request); False if there is none."""
    result = conn.execute(
        update(USER).where(USER.c.id == user_id, USER.c.disabled_at.is_(None)).values(disabled_at=now)
    )
    return result.rowcount > 0


def user_by_email(conn: Connection, *, email: str) -> RowMapping | None:
    """The account with this (lower-case) e-mail, or None."""
    return conn.execute(select(USER).where(USER.c.email == email)).mappings().first()


def login_failures(conn: Connection, *, ip: str, since: datetime, actions: Sequence[str]) -> int:
    """Failed logins (audit events of ``actions``) from ``ip`` since ``since``."""
    query = (
        select(func.count())
        .select_from(AUDIT)
        .where(AUDIT.c.at >= since, AUDIT.c.ip == ip, AUDIT.c.action.in_(list(actions)))
    )
    return int(conn.execute(query).scalar_one())


def user_exists(conn: Connection, *, email: str) -> bool:
    """Whether a console account has this (lower-case) e-mail."""
    return conn.execute(select(USER.c.id).where(USER.c.email == email)).first() is not None


def user_for_login(conn: Connection, *, email: str) -> RowMapping | None:
    """The account with this e-mail, locked until the transaction ends (failures are counted)."""
    return conn.execute(select(USER).where(USER.c.email == email).with_for_update()).mappings().first()


def update_user(conn: Connection, *, user_id: int, values: Mapping[str, Any]) -> None:
    """Set columns of a console account."""
    conn.execute(update(USER).where(USER.c.id == user_id).values(**values))


def count_users(conn: Connection) -> int:
    """How many console accounts exist."""
    return int(conn.execute(select(func.count()).select_from(USER)).scalar_one())


# -- console sessions -------------------------------------------------------------------------------


def add_session(conn: Connection, *, token_hash: str, user_id: int, csrf_token: str, now: datetime) -> None:
    """Store a new console session (by the hash of its cookie token)."""
    conn.execute(
        insert(CONSOLE_SESSION).values(
            token_hash=token_hash, user_id=user_id, csrf_token=csrf_token, created_at=now, last_seen_at=now
        )
    )


def session_user(conn: Connection, *, token_hash: str) -> RowMapping | None:
    """A session with its enabled account: last_seen_at, csrf_token, id, email, role."""
    s = CONSOLE_SESSION.c
    query = (
        select(s.last_seen_at, s.csrf_token, USER.c.id, USER.c.email, USER.c.role)
        .select_from(CONSOLE_SESSION.join(USER, USER.c.id == s.user_id))
        .where(s.token_hash == token_hash, USER.c.disabled_at.is_(None))
    )
    return conn.execute(query).mappings().first()


def touch_session(conn: Connection, *, token_hash: str, now: datetime) -> None:
    """Record that a session was used at ``now``."""
    conn.execute(
        update(CONSOLE_SESSION).where(CONSOLE_SESSION.c.token_hash == token_hash).values(last_seen_at=now)
    )


def end_session(conn: Connection, *, token_hash: str) -> None:
    """Delete a session."""
    conn.execute(delete(CONSOLE_SESSION).where(CONSOLE_SESSION.c.token_hash == token_hash))


def end_user_sessions(conn: Connection, *, user_id: int) -> None:
    """Delete every session of an account."""
    conn.execute(delete(CONSOLE_SESSION).where(CONSOLE_SESSION.c.user_id == user_id))


def purge_sessions(conn: Connection, *, idle_since: datetime) -> int:
    """Delete the sessions not used since ``idle_since``; how many."""
    return int(
        conn.execute(delete(CONSOLE_SESSION).where(CONSOLE_SESSION.c.last_seen_at < idle_since)).rowcount
    )
