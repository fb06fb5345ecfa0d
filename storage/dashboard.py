"""Queries of the console's dashboard: the daily roll-up (:func:`rollup_day`, :func:`rollup_cohorts`)
from the raw tables into ``dashboard_day``, and the reads of it (:func:`read`). SQLAlchemy Core
with bound parameters throughout.

Flows (messages, offers, switches, handoffs, broadcasts) are counted on the day they happened;
snapshots (``snap.*``: preferences known, stale facts, drop-offs, customer value) describe the
book as it stood when the day was rolled up; cohorts (``cohort``) count customers by the day of
their first offer decision (offered or held out) with what they did since, recomputed whole at
each roll-up.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Date,
    and_,
    case,
    cast,
    delete,
    distinct,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
)

from storage.holdout import bucket_sql
from storage.tables import (
    BILLING_DELIVERY,
    BROADCAST,
    BROADCAST_RECIPIENT,
    CONVERSATION,
    CUSTOMER,
    DASHBOARD_DAY,
    MESSAGE,
    OUTREACH_EVENT,
    PLAN,
    PLAN_DECLINE,
    PREFERENCE,
    STATE,
    SWITCH_REQUEST,
)
from storage.types import DeliveryStatus, Direction, Intent, PendingKind

D = DASHBOARD_DAY
Row = tuple[str, str, str, int, Decimal]  # metric, dim1, dim2, count, amount

NOT_UNDERSTOOD = (Intent.UNPARSED,)
ASKED = (Intent.ASK, Intent.REASK)
QUESTION_KINDS: Mapping[tuple[str, str], str] = {
    (Direction.OUT, Intent.ASK): "asked",
    (Direction.OUT, Intent.REASK): "asked",
    (Direction.IN, Intent.ANSWER): "answered",
    (Direction.IN, Intent.COMMAND_SKIP): "skipped",
    (Direction.IN, Intent.UNPARSED): "misunderstood",
    (Direction.IN, Intent.RECONFIRMED): "reconfirmed",
}
OFFER_KINDS = ("queued", "deferred")  # outreach events that put an offer in the outbox
HOLDOUT_REASON = "holdout"
BROADCAST_WINDOW = timedelta(days=7)  # a reply, switch, decline or opt-out this soon after counts
DROPOFF_AFTER = timedelta(hours=48)  # an unanswered question this old: the customer dropped off
TOP_PHRASES = 20  # not-understood phrasings kept per day
SPEND_BANDS = ((Decimal(10), "under 10"), (Decimal(25), "10-25"), (Decimal(50), "25-50"))
TOP_BAND = "50 and over"
NO_PLAN = "no plan"


def _bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(0), tzinfo=UTC)
    return start, start + timedelta(days=1)


def _in_day(column: Any, day: date) -> ColumnElement[bool]:
    start, end = _bounds(day)
    return and_(column >= start, column < end)


def _rows(metric: str, result: Iterable[Any], amount: bool = False) -> list[Row]:
    out: list[Row] = []
    for r in result:
        dim1 = "" if r[0] is None else str(r[0])[:200]
        dim2 = "" if r[1] is None else str(r[1])[:64]
        out.append((metric, dim1, dim2, int(r[2]), Decimal(r[3] or 0) if amount else Decimal(0)))
    return out


# -- the flows of one day -----------------------------------------------------------------------------


def _messages(conn: Connection, day: date) -> list[Row]:
    rows: list[Row] = []
    by = select(MESSAGE.c.direction, MESSAGE.c.intent, func.count()).where(_in_day(MESSAGE.c.created_at, day))
    for direction, intent, n in conn.execute(by.group_by(MESSAGE.c.direction, MESSAGE.c.intent)):
        rows.append(("turn" if direction == Direction.IN else "out", intent or "", "", int(n), Decimal(0)))
    per_question = (
        select(MESSAGE.c.direction, MESSAGE.c.intent, MESSAGE.c.question_key, func.count())
        .where(_in_day(MESSAGE.c.created_at, day), MESSAGE.c.question_key.is_not(None))
        .group_by(MESSAGE.c.direction, MESSAGE.c.intent, MESSAGE.c.question_key)
    )
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for direction, intent, key, n in conn.execute(per_question):
        kind = QUESTION_KINDS.get((direction, intent))
        if kind is not None:
            counts[(key, kind)] += int(n)
    rows += [("q", key, kind, n, Decimal(0)) for (key, kind), n in sorted(counts.items())]
    phrase = func.lower(func.trim(MESSAGE.c.text))
    phrases = (
        select(phrase, func.count().label("n"))
        .where(
            _in_day(MESSAGE.c.created_at, day),
            MESSAGE.c.direction == Direction.IN,
            MESSAGE.c.intent.in_(NOT_UNDERSTOOD),
        )
        .group_by(phrase)
        .order_by(func.count().desc(), phrase)
        .limit(TOP_PHRASES)
    )
    merged: dict[str, int] = defaultdict(int)
    for text, n in conn.execute(phrases):
        merged[str(text)[:200]] += int(n)
    rows += [("phrase", text, "", n, Decimal(0)) for text, n in merged.items()]
    return rows


def _conversations(conn: Connection, day: date) -> list[Row]:
    rows: list[Row] = []
    for metric, column in (
        ("conv.started", CONVERSATION.c.started_at),
        ("conv.handed", CONVERSATION.c.waiting_since),
        ("conv.resolved", CONVERSATION.c.resolved_at),
    ):
        n = conn.execute(select(func.count()).where(_in_day(column, day))).scalar_one()
        if n:
            rows.append((metric, "", "", int(n), Decimal(0)))
    # Contained: conversations started that day that never waited for a person.
    contained = conn.execute(
        select(func.count()).where(
            _in_day(CONVERSATION.c.started_at, day),
            CONVERSATION.c.waiting_since.is_(None),
            CONVERSATION.c.claimed_at.is_(None),
        )
    ).scalar_one()
    if contained:
        rows.append(("conv.contained", "", "", int(contained), Decimal(0)))
    return rows


def _suggestions(conn: Connection, day: date) -> list[Row]:
    rows: list[Row] = []
    current, offered = PLAN.alias("current_plan"), PLAN.alias("offered_plan")
    saving = func.coalesce(current.c.monthly_price - offered.c.monthly_price, 0)
    kind = case(
        (OUTREACH_EVENT.c.kind.in_(OFFER_KINDS), literal("offered")),
        (OUTREACH_EVENT.c.reason == HOLDOUT_REASON, literal("held")),
        else_=literal("skipped"),
    )
    events = (
        select(kind, func.count(), func.sum(saving))
        .select_from(
            OUTREACH_EVENT.join(CUSTOMER, CUSTOMER.c.id == OUTREACH_EVENT.c.customer_id)
            .outerjoin(current, current.c.id == CUSTOMER.c.current_plan_id)
            .outerjoin(offered, offered.c.id == OUTREACH_EVENT.c.plan_id)
        )
        .where(_in_day(OUTREACH_EVENT.c.at, day), OUTREACH_EVENT.c.plan_id.is_not(None))
        .group_by(kind)
    )
    for k, n, amount in conn.execute(events):
        rows.append((f"sugg.{k}", "", "", int(n), Decimal(amount or 0)))
    delivered = conn.execute(
        select(func.count()).where(
            _in_day(MESSAGE.c.created_at, day),
            MESSAGE.c.intent == Intent.SUGGESTION,
            MESSAGE.c.marketing.is_(True),
            MESSAGE.c.status == DeliveryStatus.DELIVERED,
        )
    ).scalar_one()
    if delivered:
        rows.append(("sugg.delivered", "", "", int(delivered), Decimal(0)))
    accepted = select(func.count(), func.sum(SWITCH_REQUEST.c.monthly_saving)).where(
        _in_day(SWITCH_REQUEST.c.created_at, day)
    )
    n, amount = conn.execute(accepted).one()
    if n:
        rows.append(("sugg.accepted", "", "", int(n), Decimal(amount or 0)))
    switched = select(func.count(), func.sum(SWITCH_REQUEST.c.monthly_saving)).where(
        _in_day(SWITCH_REQUEST.c.created_at, day),
        exists().where(
            BILLING_DELIVERY.c.switch_request_id == SWITCH_REQUEST.c.id,
            BILLING_DELIVERY.c.delivered_at.is_not(None),
        ),
    )
    n, amount = conn.execute(switched).one()
    if n:
        rows.append(("sugg.switched", "", "", int(n), Decimal(amount or 0)))
    declined = conn.execute(select(func.count()).where(_in_day(PLAN_DECLINE.c.declined_at, day))).scalar_one()
    if declined:
        rows.append(("sugg.declined", "", "", int(declined), Decimal(0)))
    return rows


def _broadcasts(conn: Connection, day: date) -> list[Row]:
    rows: list[Row] = []
    sent_ok = (DeliveryStatus.SENT, DeliveryStatus.DELIVERED)
    failed = (DeliveryStatus.FAILED, DeliveryStatus.UNDELIVERED)
    bid = BROADCAST_RECIPIENT.c.broadcast_id
    status = case(
        (MESSAGE.c.status == DeliveryStatus.DELIVERED, literal("delivered")),
        (MESSAGE.c.status.in_(sent_ok), literal("sent")),
        (MESSAGE.c.status.in_(failed), literal("failed")),
        else_=literal("pending"),
    )
    by_status = (
        select(bid, status, MESSAGE.c.channel, func.count())
        .select_from(BROADCAST_RECIPIENT.join(MESSAGE, MESSAGE.c.id == BROADCAST_RECIPIENT.c.message_id))
        .where(_in_day(MESSAGE.c.created_at, day))
        .group_by(bid, status, MESSAGE.c.channel)
    )
    for b, s, channel, n in conn.execute(by_status):
        rows.append(("bc.status", str(b), f"{s}:{channel}", int(n), Decimal(0)))
    # What recipients did within a week of their broadcast message (each broadcast of that week).
    start, end = _bounds(day)
    sent = MESSAGE.alias("broadcast_message")
    recipient = BROADCAST_RECIPIENT.join(sent, sent.c.id == BROADCAST_RECIPIENT.c.message_id)

    def after(at: Any, customer: Any) -> Any:
        return (
            select(bid, func.count(distinct(customer)))
            .select_from(recipient)
            .where(
                BROADCAST_RECIPIENT.c.customer_id == customer,
                sent.c.created_at >= start - BROADCAST_WINDOW,
                sent.c.created_at < end,
                sent.c.created_at <= at,
            )
            .group_by(bid)
        )

    reactions = {
        "replies": after(MESSAGE.c.created_at, MESSAGE.c.customer_id).where(
            _in_day(MESSAGE.c.created_at, day), MESSAGE.c.direction == Direction.IN
        ),
        "accepted": after(SWITCH_REQUEST.c.created_at, SWITCH_REQUEST.c.customer_id).where(
            _in_day(SWITCH_REQUEST.c.created_at, day)
        ),
        "declined": after(PLAN_DECLINE.c.declined_at, PLAN_DECLINE.c.customer_id).where(
            _in_day(PLAN_DECLINE.c.declined_at, day)
        ),
        "opt_outs": after(CUSTOMER.c.opted_out_at, CUSTOMER.c.id).where(
            _in_day(CUSTOMER.c.opted_out_at, day)
        ),
    }
    for name, query in reactions.items():
        for b, n in conn.execute(query):
            rows.append(("bc.react", str(b), name, int(n), Decimal(0)))
    return rows


def broadcast_sms_texts(conn: Connection, day: date) -> list[tuple[int, str, int]]:
    """(broadcast id, text, how many) of the broadcast SMS that left on ``day``, for their cost."""
    query = (
        select(BROADCAST_RECIPIENT.c.broadcast_id, MESSAGE.c.text, func.count())
        .select_from(BROADCAST_RECIPIENT.join(MESSAGE, MESSAGE.c.id == BROADCAST_RECIPIENT.c.message_id))
        .where(
            _in_day(MESSAGE.c.created_at, day),
            MESSAGE.c.channel == "sms",
            MESSAGE.c.status.in_((DeliveryStatus.SENT, DeliveryStatus.DELIVERED)),
        )
        .group_by(BROADCAST_RECIPIENT.c.broadcast_id, MESSAGE.c.text)
    )
    return [(int(b), str(t), int(n)) for b, t, n in conn.execute(query)]


# -- snapshots of the book ------------------------------------------------------------------------


def _band() -> ColumnElement[str]:
    price = PLAN.c.monthly_price
    whens = [(price < limit, literal(name)) for limit, name in SPEND_BANDS]
    return case((price.is_(None), literal(NO_PLAN)), *whens, else_=literal(TOP_BAND))


def _snapshots(conn: Connection, now: datetime, stale_after: Mapping[str, int]) -> list[Row]:
    live = CUSTOMER.c.erased_at.is_(None)
    rows: list[Row] = [
        (
            "snap.customers",
            "",
            "",
            int(conn.execute(select(func.count()).where(live)).scalar_one()),
            Decimal(0),
        )
    ]
    prefs = (
        select(PREFERENCE.c.key, PREFERENCE.c.source, func.count())
        .select_from(PREFERENCE.join(CUSTOMER, CUSTOMER.c.id == PREFERENCE.c.customer_id))
        .where(live)
        .group_by(PREFERENCE.c.key, PREFERENCE.c.source)
    )
    rows += _rows("snap.pref", conn.execute(prefs))
    for key, days in sorted(stale_after.items()):
        n = conn.execute(
            select(func.count())
            .select_from(PREFERENCE.join(CUSTOMER, CUSTOMER.c.id == PREFERENCE.c.customer_id))
            .where(live, PREFERENCE.c.key == key, PREFERENCE.c.confirmed_at < now - timedelta(days=days))
        ).scalar_one()
        if n:
            rows.append(("snap.stale", key, "", int(n), Decimal(0)))
    dropped = (
        select(STATE.c.pending_key, literal(""), func.count())
        .where(
            STATE.c.pending_kind == PendingKind.ASK,
            STATE.c.finished_at.is_(None),
            STATE.c.last_activity < now - DROPOFF_AFTER,
        )
        .group_by(STATE.c.pending_key)
    )
    rows += _rows("snap.dropoff", conn.execute(dropped))
    band = _band()
    value = (
        select(
            band, func.coalesce(CUSTOMER.c.current_plan_id, ""), func.count(), func.sum(PLAN.c.monthly_price)
        )
        .select_from(CUSTOMER.outerjoin(PLAN, PLAN.c.id == CUSTOMER.c.current_plan_id))
        .where(live)
        .group_by(band, CUSTOMER.c.current_plan_id)
    )
    rows += _rows("snap.value", conn.execute(value), amount=True)
    # Keep: offered a cheaper plan (save them money before they leave); grow: a dearer one that
    # fits better; leave alone: no offer (the plan fits), or they said no or do not want offers.
    offered = PLAN.alias("offered_plan")
    offers = (
        select(OUTREACH_EVENT.c.customer_id, func.max(offered.c.monthly_price).label("price"))
        .select_from(OUTREACH_EVENT.join(offered, offered.c.id == OUTREACH_EVENT.c.plan_id))
        .group_by(OUTREACH_EVENT.c.customer_id)
        .subquery()
    )
    declined = exists().where(PLAN_DECLINE.c.customer_id == CUSTOMER.c.id)
    label = case(
        (or_(CUSTOMER.c.opted_out_at.is_not(None), CUSTOMER.c.marketing_consent.is_(False)), "leave alone"),
        (declined, "leave alone"),
        (offers.c.price.is_(None), "leave alone"),
        (PLAN.c.monthly_price.is_(None), "grow"),
        (offers.c.price < PLAN.c.monthly_price, "keep"),
        else_="grow",
    )
    labels = (
        select(band, label, func.count(), func.sum(PLAN.c.monthly_price))
        .select_from(
            CUSTOMER.outerjoin(PLAN, PLAN.c.id == CUSTOMER.c.current_plan_id).outerjoin(
                offers, offers.c.customer_id == CUSTOMER.c.id
            )
        )
        .where(live)
        .group_by(band, label)
    )
    rows += _rows("snap.label", conn.execute(labels), amount=True)
    # Revenue moved by accepted switches, by the band they left: the monthly saving given up.
    moved = (
        select(band, literal(""), func.count(), func.sum(SWITCH_REQUEST.c.monthly_saving))
        .select_from(SWITCH_REQUEST.outerjoin(PLAN, PLAN.c.id == SWITCH_REQUEST.c.from_plan_id))
        .group_by(band)
    )
    rows += _rows("snap.moved", conn.execute(moved), amount=True)
    return rows


# -- writing the roll-up ----------------------------------------------------------------------------


def _write(conn: Connection, day: date, rows: Sequence[Row]) -> None:
    merged: dict[tuple[str, str, str], list[Any]] = {}
    for metric, dim1, dim2, n, amount in rows:
        found = merged.setdefault((metric, dim1, dim2), [0, Decimal(0)])
        found[0] += n
        found[1] += amount
    if merged:
        conn.execute(
            insert(D),
            [
                {"day": day, "metric": m, "dim1": d1, "dim2": d2, "count": n, "amount": a}
                for (m, d1, d2), (n, a) in merged.items()
            ],
        )


def rollup_day(
    conn: Connection,
    day: date,
    *,
    now: datetime,
    stale_after: Mapping[str, int],
    extra: Sequence[Row] = (),
    snapshot: bool = True,
) -> int:
    """Replace ``day``'s flow rows (and, with ``snapshot``, its snapshot of the book as of
    ``now``); ``stale_after`` maps a question key to the days after which its answer is stale;
    ``extra`` rows computed by the caller (the broadcasts' cost). Returns the rows written."""
    conn.execute(delete(D).where(D.c.day == day, D.c.metric != "cohort"))
    rows = _messages(conn, day) + _conversations(conn, day) + _suggestions(conn, day) + _broadcasts(conn, day)
    rows += list(extra)
    if snapshot:
        rows += _snapshots(conn, now, stale_after)
    _write(conn, day, rows)
    return len(rows)


def _day_of(conn: Connection, column: Any) -> ColumnElement[Any]:
    if conn.dialect.name == "sqlite":
        return func.date(column)
    return cast(func.timezone("UTC", column), Date)


def rollup_cohorts(conn: Connection) -> int:
    """Replace the holdout comparison: customers by the day of their first offer decision (an
    offer queued or deferred, or held out), and how many of them since switched plan, opted out
    or were erased. Returns the rows written."""
    held = func.max(case((OUTREACH_EVENT.c.reason == HOLDOUT_REASON, 1), else_=0))
    first = (
        select(
            OUTREACH_EVENT.c.customer_id.label("customer_id"),
            func.min(OUTREACH_EVENT.c.at).label("first_at"),
            held.label("held"),
        )
        .where(
            OUTREACH_EVENT.c.plan_id.is_not(None),
            or_(OUTREACH_EVENT.c.kind.in_(OFFER_KINDS), OUTREACH_EVENT.c.reason == HOLDOUT_REASON),
        )
        .group_by(OUTREACH_EVENT.c.customer_id)
        .subquery()
    )
    switched = exists().where(
        SWITCH_REQUEST.c.customer_id == first.c.customer_id, SWITCH_REQUEST.c.created_at >= first.c.first_at
    )
    day = _day_of(conn, first.c.first_at)
    group = case((first.c.held == 1, literal("holdout")), else_=literal("offered"))

    def flag(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))

    query = (
        select(
            day,
            group,
            func.count(),
            flag(switched),
            flag(CUSTOMER.c.opted_out_at >= first.c.first_at),
            flag(CUSTOMER.c.erased_at >= first.c.first_at),
        )
        .select_from(first.join(CUSTOMER, CUSTOMER.c.id == first.c.customer_id))
        .group_by(day, group)
    )
    conn.execute(delete(D).where(D.c.metric == "cohort"))
    values = []
    for d, g, n, sw, out, erased in conn.execute(query):
        the_day = d if isinstance(d, date) else date.fromisoformat(str(d))
        for outcome, count in (("customers", n), ("switched", sw), ("opted_out", out), ("erased", erased)):
            values.append(
                {"day": the_day, "metric": "cohort", "dim1": g, "dim2": outcome, "count": int(count or 0)}
            )
    if values:
        conn.execute(insert(D), [{**v, "amount": Decimal(0)} for v in values])
    return len(values)


def holdout_share(conn: Connection, percent: int) -> tuple[int, int]:
    """(customers in a ``percent`` holdout, all live customers): the SQL split, for the page."""
    query = select(func.sum(case((bucket_sql(CUSTOMER.c.id) < percent, 1), else_=0)), func.count()).where(
        CUSTOMER.c.erased_at.is_(None)
    )
    held, total = conn.execute(query).one()
    return int(held or 0), int(total)


# -- reading ------------------------------------------------------------------------------------------


@dataclass
class Figures:
    """The roll-up over a range: ``totals[metric][(dim1, dim2)] = (count, amount)`` summed over
    the days; ``daily[metric][day] = count`` for the per-day charts; ``snapshot_day`` the day the
    snapshot (``snap.*`` metrics, in ``totals``) was taken, None when none was."""

    start: date
    end: date
    totals: dict[str, dict[tuple[str, str], tuple[int, Decimal]]] = field(default_factory=dict)
    daily: dict[str, dict[date, int]] = field(default_factory=dict)
    snapshot_day: date | None = None

    def count(self, metric: str, dim1: str = "", dim2: str = "") -> int:
        return self.totals.get(metric, {}).get((dim1, dim2), (0, Decimal(0)))[0]

    def amount(self, metric: str, dim1: str = "", dim2: str = "") -> Decimal:
        return self.totals.get(metric, {}).get((dim1, dim2), (0, Decimal(0)))[1]

    def rows(self, metric: str) -> dict[tuple[str, str], tuple[int, Decimal]]:
        return self.totals.get(metric, {})


DAILY_METRICS = ("turn",)


def _as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def read(conn: Connection, start: date, end: date) -> Figures:
    """The figures from ``start`` to ``end`` (both included): flows and cohorts summed over the
    days, the latest snapshot taken on or before ``end``."""
    figures = Figures(start, end)
    in_range = and_(D.c.day >= start, D.c.day <= end)
    flows = (
        select(D.c.metric, D.c.dim1, D.c.dim2, func.sum(D.c.count), func.sum(D.c.amount))
        .where(in_range, ~D.c.metric.startswith("snap."))
        .group_by(D.c.metric, D.c.dim1, D.c.dim2)
    )
    for metric, d1, d2, n, amount in conn.execute(flows):
        figures.totals.setdefault(metric, {})[(d1, d2)] = (int(n), Decimal(amount or 0))
    snap_day = conn.execute(
        select(func.max(D.c.day)).where(D.c.metric == "snap.customers", D.c.day <= end)
    ).scalar_one()
    if snap_day is not None:
        figures.snapshot_day = _as_date(snap_day)
        snaps = select(D.c.metric, D.c.dim1, D.c.dim2, D.c.count, D.c.amount).where(
            D.c.day == snap_day, D.c.metric.startswith("snap.")
        )
        for metric, d1, d2, n, amount in conn.execute(snaps):
            figures.totals.setdefault(metric, {})[(d1, d2)] = (int(n), Decimal(amount or 0))
    understood = func.sum(case((D.c.dim1.in_(NOT_UNDERSTOOD), 0), else_=D.c.count))
    daily = (
        select(D.c.day, func.sum(D.c.count), understood)
        .where(in_range, D.c.metric == "turn")
        .group_by(D.c.day)
    )
    for day, n, ok in conn.execute(daily):
        figures.daily.setdefault("turn", {})[_as_date(day)] = int(n)
        figures.daily.setdefault("understood", {})[_as_date(day)] = int(ok or 0)
    return figures


def rolled_days(conn: Connection) -> tuple[date | None, date | None]:
    """The first and last day rolled up (None, None before any roll-up)."""
    lo, hi = conn.execute(
        select(func.min(D.c.day), func.max(D.c.day)).where(D.c.metric == "snap.customers")
    ).one()
    return (_as_date(lo) if lo else None, _as_date(hi) if hi else None)


def first_activity(conn: Connection) -> date | None:
    """The day of the first message, where a backfill starts."""
    first = conn.execute(select(func.min(MESSAGE.c.created_at))).scalar_one()
    return first.date() if isinstance(first, datetime) else None


def broadcast_names(conn: Connection, ids: Iterable[int]) -> dict[int, str]:
    """Broadcast id -> name, for the ids given."""
    wanted = sorted(set(ids))
    if not wanted:
        return {}
    rows = conn.execute(select(BROADCAST.c.id, BROADCAST.c.name).where(BROADCAST.c.id.in_(wanted)))
    return {int(i): str(n) for i, n in rows}
