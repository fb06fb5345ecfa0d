"""Staff broadcasts: a template sent to a segment of customers, tailored per customer, through the
contact policy and the outbox.

Functions take their inputs explicitly (engine, advisor, policy config, clock); the CLI is thin.
Preparing a broadcast reads the customer book a batch of ids at a time (customers, preferences,
usage -> plan fit, channel and address, recent marketing, declines), evaluates the segment on
each customer's :class:`Facts`, asks :func:`schedulers.policy.decide` and, for ``send``, renders
the template and queues one marketing message per recipient with a ``broadcast_recipient`` row
(unique per broadcast and customer: a re-run never sends twice). Each batch is one transaction.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment
from sqlalchemy import ColumnElement, Connection, Engine, Table, exists, func, insert, select, update

from bot.channels.segments import Estimate, estimate
from dialogs.advisor import Advisor, decline_holds, describe, money
from plans.fit import Catalog, Fit, fit_batch, needs_from, read_usage, usage_batch, usage_query
from schedulers.audience import CUSTOMER_COLUMNS, NO_CHANNEL_CONFIGURED, NoChannelError, require_channel
from schedulers.audience import contacts as audience_contacts
from schedulers.policy import Contact, Decision, PolicyConfig, Window, decide, local_zone, next_in_window
from schedulers.proactive import SUGGESTION_INTENT, await_answers
from schedulers.segment_filter import Node, Term, check_metrics, evaluate, parse
from storage.broadcast_models import BROADCAST, BROADCAST_RECIPIENT, BroadcastStatus, RecipientStatus
from storage.models import DeliveryStatus, Direction
from storage.tables import CUSTOMER, MESSAGE, PLAN_DECLINE, PREFERENCE, SWITCH_REQUEST

log = logging.getLogger(__name__)

BROADCAST_INTENT = "broadcast"
CANCELLED = DeliveryStatus.CANCELLED  # a broadcast message cancelled before it went
SEGMENT = "segment"  # the exclusion reason of customers outside the segment


class BroadcastError(ValueError):
    """A broadcast that cannot be created or acted on (bad segment or template, wrong status)."""


# -- per-customer facts -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Facts:
    """What the segment, the policy and the template know of one customer: the plan facts here,
    the contact facts from the audience service (:func:`schedulers.audience.contacts`)."""

    customer_id: int
    name: str | None
    prefs: Mapping[str, Any]
    fit: Fit
    over: Mapping[str, int]  # metric -> months over the current plan's allowance
    contact: Contact

    @property
    def channel(self) -> str | None:
        return self.contact.channel

    @property
    def address(self) -> str | None:
        return self.contact.address

    def value(self, term: Term) -> Any:
        """The customer's value of a segment term."""
        fit, saving = self.fit, self.fit.saving if self.fit.suggest else None
        match term.name:
            case "plan":
                return fit.current_plan
            case "suggested":
                return fit.best_plan if fit.suggest else None
            case "suggest":
                return fit.suggest
            case "saving":
                return saving if saving is not None else Decimal(0)
            case "yearly_saving":
                return saving * 12 if saving is not None else Decimal(0)
            case "current_cost":
                return fit.current_cost
            case "months":
                return Decimal(fit.months)
            case "consent":
                return self.contact.marketing_consent
            case "channel":
                return self.contact.channel
            case "avg":
                return fit.usage.get(str(term.arg))
            case "over":
                return Decimal(self.over.get(str(term.arg), 0))
            case "pref":
                return self.prefs.get(str(term.arg))
        raise AssertionError(term)


def iter_facts(
    conn: Connection, advisor: Advisor, now: datetime, config: PolicyConfig, *, batch_size: int = 5_000
) -> Iterator[list[Facts]]:
    """The facts of every customer not erased, a batch of ids at a time, in id order."""
    last = 0
    while batch := facts_batch(conn, advisor, now, config, after=last, batch_size=batch_size):
        yield batch
        last = batch[-1].customer_id


def facts_batch(
    conn: Connection, advisor: Advisor, now: datetime, config: PolicyConfig, *, after: int, batch_size: int
) -> list[Facts]:
    """The facts of the next ``batch_size`` customers (not erased) with ids above ``after``."""
    catalog = advisor.catalog(conn)
    usage_of = usage_query(catalog.metrics)
    lookback = advisor.config.fit.lookback
    customers = conn.execute(
        select(*CUSTOMER_COLUMNS)
        .where(CUSTOMER.c.id > after, CUSTOMER.c.erased_at.is_(None))
        .order_by(CUSTOMER.c.id)
        .limit(batch_size)
    ).all()
    if not customers:
        return []
    lo, hi = customers[0].id, customers[-1].id
    ids = [c.id for c in customers]
    prefs: dict[int, dict[str, Any]] = defaultdict(dict)
    for cid, key, value in conn.execute(
        select(PREFERENCE.c.customer_id, PREFERENCE.c.key, PREFERENCE.c.value).where(
            PREFERENCE.c.customer_id.between(lo, hi)
        )
    ):
        prefs[cid][key] = value
    batch = usage_batch(ids, read_usage(conn, usage_of, lo, hi), catalog.metrics, lookback)
    current = [c.current_plan_id for c in customers]
    needs = [needs_from(prefs.get(cid, {}), advisor.roles) for cid in ids]
    fits = fit_batch(catalog, batch, current, needs, advisor.config.fit, with_usage=True)
    over = _months_over(catalog, batch.quantity, batch.months, current)
    declines = _declines(conn, lo, hi, now - advisor.config.decline_for)
    limit = advisor.config.decline_usage_change
    declined = {
        c.id: bool(
            fit.suggest
            and fit.best_plan
            and _declined(declines.get(c.id, ()), fit.best_plan, fit.usage, limit)
        )
        for c, fit in zip(customers, fits, strict=True)
    }
    contacts = audience_contacts(conn, customers, prefs, config, declined=declined)
    return [
        Facts(
            customer_id=c.id,
            name=c.name,
            prefs=prefs.get(c.id, {}),
            fit=fits[b],
            over=dict(zip(catalog.metrics, (int(x) for x in over[b]), strict=True)),
            contact=contacts[c.id],
        )
        for b, c in enumerate(customers)
    ]


def _months_over(catalog: Catalog, quantity: Any, months: Any, current: Sequence[str | None]) -> Any:
    """(B, K): months each customer went over their current plan's allowance, per metric."""
    size, k = len(current), len(catalog.metrics)
    if not catalog.plans or not size:
        return np.zeros((size, k), dtype=np.int64)
    cur = np.array([catalog.index.get(c, -1) if c else -1 for c in current], dtype=np.int64)
    allowance = catalog.allowance[np.maximum(cur, 0)]  # (B, K)
    lookback = quantity.shape[1]
    counted = np.arange(lookback)[None, :] < months[:, None]  # (B, L)
    over = (quantity > allowance[:, None, :]) & counted[:, :, None]
    return np.where((cur >= 0)[:, None], over.sum(axis=1), 0)


def _declines(conn: Connection, lo: int, hi: int, since: datetime) -> dict[int, list[tuple[str, Any]]]:
    rows = conn.execute(
        select(PLAN_DECLINE.c.customer_id, PLAN_DECLINE.c.plan_id, PLAN_DECLINE.c.usage)
        .where(PLAN_DECLINE.c.customer_id.between(lo, hi), PLAN_DECLINE.c.declined_at > since)
        .order_by(PLAN_DECLINE.c.declined_at.desc())
    )
    found: dict[int, list[tuple[str, Any]]] = defaultdict(list)
    for cid, plan_id, usage in rows:
        found[cid].append((plan_id, usage))
    return found


def _declined(
    declines: Sequence[tuple[str, Any]], plan_id: str, usage: Mapping[str, Decimal], limit: Decimal
) -> bool:
    """The advisor's rule: the latest recent decline of ``plan_id`` holds unless usage moved."""
    latest = next((then for declined_plan, then in declines if declined_plan == plan_id), None)
    return latest is not None and decline_holds(latest, usage, limit)


def judge(node: Node, facts: Facts, moment: datetime, config: PolicyConfig) -> Decision | None:
    """Whether the broadcast goes to this customer at ``moment``: None when they are outside the
    segment, else the audience's decision (now, deferred, or excluded by a named rule). Preview,
    dry run and send all ask this, so they cannot disagree."""
    if not evaluate(node, facts.value):
        return None
    return decide(facts.contact, moment, config)


# -- templates ----------------------------------------------------------------------------------

_ENV = SandboxedEnvironment(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=False)

TEMPLATE_FIELDS = (
    "name",
    "current_plan",
    "current_plan_id",
    "suggested_plan",
    "suggested_plan_id",
    "monthly_saving",
    "yearly_saving",
    "current_cost",
    "usage",
    "over",
)


def compile_template(source: str, catalog: Catalog | None = None) -> Template:
    """The sandboxed template; syntax errors, unknown fields and unsafe access raise BroadcastError
    now (it is rendered once with sample values), not at send time."""
    try:
        template = _ENV.from_string(source)
    except TemplateError as exc:
        raise BroadcastError(f"template: {exc}") from None
    metrics = catalog.metrics if catalog is not None else ("data_gb", "minutes", "sms", "roaming_data_gb")
    sample = {
        "name": "Dana",
        "current_plan": "Plus 20 GB",
        "current_plan_id": "plus-20",
        "suggested_plan": "Basic 5 GB",
        "suggested_plan_id": "basic-5",
        "monthly_saving": "$20.00",
        "yearly_saving": "$240.00",
        "current_cost": "$45.00",
        "usage": {m: describe(m, Decimal("2.1")) for m in metrics},
        "over": dict.fromkeys(metrics, 0),
    }
    render(template, sample)
    return template


OFFER_FIELDS = frozenset({"suggested_plan", "suggested_plan_id"})


def is_offer(source: str) -> bool:
    """Whether a template offers each recipient their suggested plan (it names one of
    :data:`OFFER_FIELDS`): then a YES or NO reply is taken as the answer to that offer."""
    try:
        return bool(meta.find_undeclared_variables(_ENV.parse(source)) & OFFER_FIELDS)
    except TemplateError:
        return False


def render(template: Template, context: Mapping[str, Any]) -> str:
    """The text for one customer; template errors become BroadcastError."""
    try:
        return template.render(context).strip()
    except TemplateError as exc:
        raise BroadcastError(f"template: {exc}") from None


def template_context(facts: Facts, catalog: Catalog) -> dict[str, Any]:
    """The per-customer template fields (see README: name, plans, savings as money, usage)."""
    fit = facts.fit
    current, best = catalog.get(fit.current_plan), catalog.get(fit.best_plan)
    known = current or best
    currency = known.currency if known is not None else "USD"
    saving = fit.saving if fit.suggest and fit.saving is not None else Decimal(0)
    return {
        "name": facts.name or "there",
        "current_plan": current.name if current else "",
        "current_plan_id": fit.current_plan or "",
        "suggested_plan": best.name if best and fit.suggest else "",
        "suggested_plan_id": fit.best_plan if fit.suggest and fit.best_plan else "",
        "monthly_saving": money(saving, currency),
        "yearly_saving": money(saving * 12, currency),
        "current_cost": money(fit.current_cost, currency) if fit.current_cost is not None else "",
        "usage": {m: describe(m, v) for m, v in fit.usage.items()},
        "over": dict(facts.over),
    }


# -- create -------------------------------------------------------------------------------------


def create(
    db: Engine, advisor: Advisor, *, name: str, segment: str, template: str, created_by: str, now: datetime
) -> int:
    """Store a draft broadcast after checking its segment and template; its id."""
    try:
        node = parse(segment)
    except ValueError as exc:
        raise BroadcastError(f"segment: {exc}") from None
    with db.begin() as conn:
        catalog = advisor.catalog(conn)
        try:
            check_metrics(node, catalog.metrics)
        except ValueError as exc:
            raise BroadcastError(f"segment: {exc}") from None
        compile_template(template, catalog)
        return int(
            conn.execute(
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
            ).scalar_one()
        )


def get(conn: Connection, broadcast_id: int, *, lock: bool = False) -> Mapping[str, Any]:
    """The broadcast row (locked for the transaction with ``lock``); BroadcastError when there
    is none."""
    query = select(BROADCAST).where(BROADCAST.c.id == broadcast_id)
    row = conn.execute(query.with_for_update() if lock else query).first()
    if row is None:
        raise BroadcastError(f"no broadcast {broadcast_id}")
    return dict(row._mapping)


# -- dry run and preview ------------------------------------------------------------------------


@dataclass(slots=True)
class DryRun:
    """Who a broadcast would reach now: customers considered, in the segment, messages that would be
    queued (``deferred`` of them to a later allowed moment, by reason), and exclusions by rule
    (``segment`` for customers outside it, else the policy's reason)."""

    considered: int = 0
    matched: int = 0
    would_queue: int = 0
    deferred: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)
    no_channel: bool = False  # no channel is configured: nobody would get it

    @property
    def no_channel_reason(self) -> str:
        """What to tell staff when :attr:`no_channel`."""
        return NO_CHANNEL_CONFIGURED


def dry_run(
    db: Engine,
    advisor: Advisor,
    config: PolicyConfig,
    broadcast_id: int,
    now: datetime,
    *,
    batch_size: int = 5_000,
) -> DryRun:
    """Count who would get the broadcast if it were sent at ``now``, and who is excluded by what
    (with no channel configured: nobody, and ``no_channel`` says so)."""
    report = DryRun(no_channel=not config.channels)
    with db.connect() as conn:
        node = parse(get(conn, broadcast_id)["segment"])
        for batch in iter_facts(conn, advisor, now, config, batch_size=batch_size):
            for facts in batch:
                report.considered += 1
                decision = judge(node, facts, now, config)
                if decision is None:
                    report.excluded[SEGMENT] += 1
                    continue
                report.matched += 1
                if decision.excluded:
                    report.excluded[str(decision.reason)] += 1
                    continue
                report.would_queue += 1
                if decision.deferred:
                    report.deferred[str(decision.reason)] += 1
    return report


@dataclass(frozen=True, slots=True)
class Preview:
    """One recipient's rendered text with its SMS cost."""

    customer_id: int
    name: str | None
    channel: str | None
    text: str
    estimate: Estimate


def preview(
    db: Engine,
    advisor: Advisor,
    config: PolicyConfig,
    broadcast_id: int,
    now: datetime,
    *,
    price_per_segment: Decimal,
    limit: int = 3,
) -> list[Preview]:
    """The text of the first ``limit`` customers of the segment the policy would let it reach."""
    found: list[Preview] = []
    with db.connect() as conn:
        row = get(conn, broadcast_id)
        node = parse(row["segment"])
        catalog = advisor.catalog(conn)
        template = compile_template(row["template"], catalog)
        for batch in iter_facts(conn, advisor, now, config, batch_size=500):
            for facts in batch:
                decision = judge(node, facts, now, config)
                if decision is None or decision.excluded:
                    continue
                text = render(template, template_context(facts, catalog))
                found.append(
                    Preview(
                        facts.customer_id, facts.name, facts.channel, text, estimate(text, price_per_segment)
                    )
                )
                if len(found) >= limit:
                    return found
    return found


# -- send ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class SendReport:
    """What one ``send`` did: messages queued (``deferred`` of them, by reason), policy exclusions
    by reason, and customers skipped because they already have a recipient row."""

    queued: int = 0
    deferred: Counter[str] = field(default_factory=Counter)
    excluded: Counter[str] = field(default_factory=Counter)
    already: int = 0
    outside_segment: int = 0
    waiting_until: datetime | None = None  # to be prepared then (nothing queued yet)


def parse_local_time(text: str) -> time:
    """``HH:MM`` as a time; ValueError otherwise."""
    try:
        moment = time.fromisoformat(text)
    except ValueError:
        raise ValueError(f"expected a local time as HH:MM, got {text!r}") from None
    return moment.replace(second=0, microsecond=0)


def local_moment(facts: Facts, at: datetime, local: time, config: PolicyConfig) -> datetime:
    """The first moment at or after ``at`` that is ``local`` o'clock in the customer's zone."""
    zone = local_zone(facts.contact, config)
    end = (datetime.combine(datetime(2000, 1, 1), local) + timedelta(minutes=1)).time()
    if end <= local:  # 23:59 -> the window ends at midnight
        end = time(23, 59, 59, 999999)
    return next_in_window(at, zone, Window(local, end))


def send(
    db: Engine,
    advisor: Advisor,
    config: PolicyConfig,
    broadcast_id: int,
    now: datetime,
    *,
    at: datetime | None = None,
    local_time: str | None = None,
    batch_size: int = 5_000,
) -> SendReport:
    """Schedule the broadcast for ``at`` (default now), or for ``local_time`` (HH:MM) in each
    customer's zone on or after it. Due now: prepared at once (:func:`prepare`). Later: it
    ``waits`` and the scheduler's job (:func:`prepare_due`) prepares it when its time comes, so
    the segment, the contact policy and the numbers in each text are those of that day."""
    start = at or now
    if start.tzinfo is None:
        raise ValueError("send() needs a timezone-aware time")
    try:
        require_channel(config)  # else every message would wait in the outbox for ever
    except NoChannelError as exc:
        raise BroadcastError(f"broadcast {broadcast_id} cannot be sent: {exc}") from None
    if local_time:
        parse_local_time(local_time)
    with db.begin() as conn:
        row = get(conn, broadcast_id)
        if row["status"] in (BroadcastStatus.CANCELLED, BroadcastStatus.DONE):
            raise BroadcastError(f"broadcast {broadcast_id} is {row['status']}")
        compile_template(row["template"], advisor.catalog(conn))
        waiting = start > now
        conn.execute(
            update(BROADCAST)
            .where(BROADCAST.c.id == broadcast_id)
            .values(
                status=BroadcastStatus.WAITING
                if waiting
                else BroadcastStatus.DRAFT
                if row["status"] == BroadcastStatus.FAILED  # sent again: say after fixing the catalog
                else row["status"],
                scheduled_at=start,
                local_time=local_time,
            )
        )
    if waiting:
        return SendReport(waiting_until=start)
    return prepare(db, advisor, config, broadcast_id, now, batch_size=batch_size)


def prepare_due(db: Engine, advisor: Advisor, config: PolicyConfig, now: datetime) -> dict[int, SendReport]:
    """Job: prepare every waiting broadcast whose time has come (and any a crash left half
    prepared); what each queued. One that cannot be prepared (its segment or template no longer
    fits the catalog) is marked ``failed`` and does not hold up the others."""
    with db.connect() as conn:
        due = conn.execute(
            select(BROADCAST.c.id)
            .where(
                BROADCAST.c.status.in_((BroadcastStatus.WAITING, BroadcastStatus.PREPARING)),
                BROADCAST.c.scheduled_at <= now,
            )
            .order_by(BROADCAST.c.scheduled_at, BROADCAST.c.id)
        ).scalars()
        ids = list(due)
    reports: dict[int, SendReport] = {}
    if ids and not config.channels:  # they wait until a channel is configured
        log.warning("%d broadcast(s) due, not prepared: %s", len(ids), NO_CHANNEL_CONFIGURED)
        return reports
    for broadcast_id in ids:
        try:
            reports[broadcast_id] = prepare(db, advisor, config, broadcast_id, now)
        except BroadcastError as exc:
            log.error("broadcast %d cannot be prepared: %s; marked failed", broadcast_id, exc)
            with db.begin() as conn:
                conn.execute(
                    update(BROADCAST)
                    .where(BROADCAST.c.id == broadcast_id, BROADCAST.c.status.in_(_UNPREPARED))
                    .values(status=BroadcastStatus.FAILED)
                )
        except Exception:  # the database, say: the next run tries again
            log.exception("preparing broadcast %d failed; trying again at the next run", broadcast_id)
    return reports


def prepare(
    db: Engine,
    advisor: Advisor,
    config: PolicyConfig,
    broadcast_id: int,
    now: datetime,
    *,
    batch_size: int = 5_000,
) -> SendReport:
    """Queue the broadcast: one marketing message per customer of the segment the policy allows,
    due at its ``scheduled_at`` (or its ``local_time`` in each customer's zone on or after it),
    deferred by the policy to the next allowed moment; policy exclusions get a recipient row
    with the reason. Idempotent: customers who already have a row are skipped, so a second run
    (say after a crash) only fills in the rest."""
    report = SendReport()
    with db.begin() as conn:
        row = get(conn, broadcast_id, lock=True)
        if row["status"] in (BroadcastStatus.CANCELLED, BroadcastStatus.DONE, BroadcastStatus.FAILED):
            raise BroadcastError(f"broadcast {broadcast_id} is {row['status']}")
        node = parse(row["segment"])
        catalog = advisor.catalog(conn)
        template = compile_template(row["template"], catalog)
        offer = is_offer(row["template"])
        start = row["scheduled_at"] or now
        local = parse_local_time(row["local_time"]) if row["local_time"] else None
        conn.execute(
            update(BROADCAST)
            .where(BROADCAST.c.id == broadcast_id, BROADCAST.c.status.in_(_UNPREPARED))
            .values(status=BroadcastStatus.PREPARING, scheduled_at=start)
        )
    last = 0
    while True:  # one transaction a batch: read the facts, queue the messages
        with db.begin() as conn:
            # Locked, as cancel() locks it: a cancel between batches stops the rest.
            if get(conn, broadcast_id, lock=True)["status"] == BroadcastStatus.CANCELLED:
                break
            batch = facts_batch(conn, advisor, now, config, after=last, batch_size=batch_size)
            if not batch:
                break
            _send_batch(
                conn, broadcast_id, node, template, offer, catalog, config, batch, now, start, local, report
            )
            last = batch[-1].customer_id
    with db.begin() as conn:  # queued: status() follows its progress from here
        conn.execute(
            update(BROADCAST)
            .where(BROADCAST.c.id == broadcast_id, BROADCAST.c.status == BroadcastStatus.PREPARING)
            .values(status=BroadcastStatus.SCHEDULED)
        )
    return report


_UNPREPARED = (BroadcastStatus.DRAFT, BroadcastStatus.WAITING, BroadcastStatus.PREPARING)


def _send_batch(
    conn: Connection,
    broadcast_id: int,
    node: Node,
    template: Template,
    offer: bool,
    catalog: Catalog,
    config: PolicyConfig,
    batch: Sequence[Facts],
    now: datetime,
    start: datetime,
    local: time | None,
    report: SendReport,
) -> None:
    lo, hi = batch[0].customer_id, batch[-1].customer_id
    done = set(
        conn.execute(
            select(BROADCAST_RECIPIENT.c.customer_id).where(
                BROADCAST_RECIPIENT.c.broadcast_id == broadcast_id,
                BROADCAST_RECIPIENT.c.customer_id.between(lo, hi),
            )
        ).scalars()
    )
    messages: list[dict[str, Any]] = []
    queued_for: list[tuple[int, str | None]] = []
    offered: dict[int, str] = {}  # customer -> the plan the message offers
    excluded: list[dict[str, Any]] = []
    for facts in batch:
        if facts.customer_id in done:
            if evaluate(node, facts.value):
                report.already += 1
            else:
                report.outside_segment += 1
            continue
        # Never a moment gone by: a job that ran late must not send at night.
        moment = max(local_moment(facts, start, local, config) if local else start, now)
        decision = judge(node, facts, moment, config)
        if decision is None:
            report.outside_segment += 1
            continue
        if decision.excluded:
            report.excluded[str(decision.reason)] += 1
            excluded.append(
                {
                    "broadcast_id": broadcast_id,
                    "customer_id": facts.customer_id,
                    "message_id": None,
                    "status": RecipientStatus.EXCLUDED,
                    "reason": decision.reason,
                    "created_at": now,
                }
            )
            continue
        due = moment if decision.allowed else decision.next_allowed_at
        if decision.deferred:
            report.deferred[str(decision.reason)] += 1
        report.queued += 1
        plan = facts.fit.best_plan if offer and facts.fit.suggest else None
        if plan is not None:
            offered[facts.customer_id] = plan
        messages.append(
            {
                "customer_id": facts.customer_id,
                "channel": facts.channel,
                "direction": Direction.OUT,
                "address": facts.address,
                "text": render(template, template_context(facts, catalog)),
                "intent": BROADCAST_INTENT if plan is None else SUGGESTION_INTENT,
                "needs_review": False,
                "status": DeliveryStatus.QUEUED,
                "attempts": 0,
                "marketing": True,
                "next_attempt_at": due if due is not None and due > now else None,
                "created_at": now,
            }
        )
        queued_for.append((facts.customer_id, None if decision.allowed else decision.reason))
    recipients = excluded
    if messages:
        ids = _insert_messages(conn, messages)
        recipients += [
            {
                "broadcast_id": broadcast_id,
                "customer_id": cid,
                "message_id": ids[cid],
                "status": RecipientStatus.QUEUED,
                "reason": reason,
                "created_at": now,
            }
            for cid, reason in queued_for
        ]
    if recipients:
        conn.execute(insert(BROADCAST_RECIPIENT), recipients)
    if offered:
        await_answers(conn, offered)


def _insert_messages(conn: Connection, messages: list[dict[str, Any]]) -> dict[int, int]:
    """Insert a batch of messages (one per customer); customer id -> message id."""
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


# -- status and cancel --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    """A broadcast's progress: message counts by delivery status (``cancelled`` included),
    ``excluded`` recipients by reason, and results: recipients who answered its plan offer with
    YES (``accepted``: a switch request) or NO (``declined``)."""

    broadcast_id: int
    name: str
    status: str
    recipients: int
    messages: Mapping[str, int]
    excluded: Mapping[str, int]
    accepted: int
    declined: int

    @property
    def total(self) -> int:
        return sum(self.messages.values())

    @property
    def finished(self) -> int:
        """Messages that will not change any more (all but queued and sending)."""
        return (
            self.total
            - self.messages.get(DeliveryStatus.QUEUED, 0)
            - self.messages.get(DeliveryStatus.SENDING, 0)
        )


def status(db: Engine, broadcast_id: int) -> Status:
    """Progress and results; moves the broadcast to ``sending`` / ``done`` as its messages go."""
    with db.begin() as conn:
        row = get(conn, broadcast_id)
        rec = BROADCAST_RECIPIENT
        messages = {
            str(s): int(n)
            for s, n in conn.execute(
                select(MESSAGE.c.status, func.count())
                .select_from(rec.join(MESSAGE, MESSAGE.c.id == rec.c.message_id))
                .where(rec.c.broadcast_id == broadcast_id)
                .group_by(MESSAGE.c.status)
            )
        }
        excluded = {
            str(r): int(n)
            for r, n in conn.execute(
                select(rec.c.reason, func.count())
                .where(rec.c.broadcast_id == broadcast_id, rec.c.status == RecipientStatus.EXCLUDED)
                .group_by(rec.c.reason)
            )
        }
        recipients = int(
            conn.execute(select(func.count()).where(rec.c.broadcast_id == broadcast_id)).scalar_one()
        )
        accepted = _answered(conn, broadcast_id, SWITCH_REQUEST, SWITCH_REQUEST.c.created_at)
        declined = _answered(conn, broadcast_id, PLAN_DECLINE, PLAN_DECLINE.c.declined_at)
        state = row["status"]
        if state in (BroadcastStatus.SCHEDULED, BroadcastStatus.SENDING):
            pending = messages.get(DeliveryStatus.QUEUED, 0) + messages.get(DeliveryStatus.SENDING, 0)
            gone = sum(messages.values()) - pending - messages.get(CANCELLED, 0)
            new = BroadcastStatus.DONE if pending == 0 else BroadcastStatus.SENDING if gone else state
            if new != state:
                conn.execute(update(BROADCAST).where(BROADCAST.c.id == broadcast_id).values(status=new))
                state = new
    return Status(
        broadcast_id, row["name"], str(state), recipients, messages, excluded, int(accepted), int(declined)
    )


def _answered(conn: Connection, broadcast_id: int, answers: Table, at: ColumnElement[Any]) -> int:
    """Recipients whose answer (a switch request or a decline) was to this broadcast's offer:
    given after the offer went out and before any later plan suggestion to them."""
    rec, offer, later = BROADCAST_RECIPIENT, MESSAGE.alias("offer"), MESSAGE.alias("later")
    superseded = exists().where(
        later.c.customer_id == answers.c.customer_id,
        later.c.direction == Direction.OUT,
        later.c.intent == SUGGESTION_INTENT,
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
            offer.c.intent == SUGGESTION_INTENT,
            offer.c.sent_at.is_not(None),
            at >= offer.c.sent_at,
            ~superseded,
        )
    )
    return int(conn.execute(query).scalar_one())


def cancel(db: Engine, broadcast_id: int, now: datetime) -> int:
    """Stop what has not gone: queued messages become ``cancelled`` (the outbox sends only queued
    rows, and claims them by status, so a message is either claimed or cancelled, never both).
    Returns how many were cancelled."""
    with db.begin() as conn:
        row = get(conn, broadcast_id, lock=True)  # waits for a batch being queued, stops the next
        if row["status"] == BroadcastStatus.DONE:
            raise BroadcastError(f"broadcast {broadcast_id} is done; nothing left to cancel")
        mine = select(BROADCAST_RECIPIENT.c.message_id).where(
            BROADCAST_RECIPIENT.c.broadcast_id == broadcast_id, BROADCAST_RECIPIENT.c.message_id.is_not(None)
        )
        ids = list(
            conn.execute(
                update(MESSAGE)
                .where(MESSAGE.c.id.in_(mine), MESSAGE.c.status == DeliveryStatus.QUEUED)
                .values(status=CANCELLED, next_attempt_at=None)
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
        conn.execute(
            update(BROADCAST)
            .where(BROADCAST.c.id == broadcast_id)
            .values(status=BroadcastStatus.CANCELLED, cancelled_at=now)
        )
        return len(ids)


def list_broadcasts(db: Engine) -> list[Mapping[str, Any]]:
    """Every broadcast, newest first."""
    with db.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(select(BROADCAST).order_by(BROADCAST.c.id.desc()))]
