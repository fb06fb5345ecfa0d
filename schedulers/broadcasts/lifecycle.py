"""A broadcast's life: created (draft), sent now or scheduled (waiting), prepared (its messages
queued a batch of customers at a time), then sending and done as its messages go, or cancelled,
or failed. Every change of state is one of :data:`TRANSITIONS`, made by :func:`_move`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any

from jinja2 import Template
from sqlalchemy import Connection, Engine

from dialogs.advisor import Advisor
from plans.fit import Catalog
from schedulers.audience import NO_CHANNEL_CONFIGURED, NoChannelError, require_channel
from schedulers.broadcasts.errors import BroadcastError
from schedulers.broadcasts.facts import Facts, facts_batch, judge
from schedulers.broadcasts.templates import compile_template, is_offer, render, template_context
from schedulers.policy import PolicyConfig, Window, local_zone, next_in_window
from schedulers.proactive import SUGGESTION_INTENT, await_answers
from schedulers.segment_filter import Node, check_metrics, evaluate, parse
from storage import broadcast_queries
from storage.broadcast_models import BroadcastStatus, RecipientStatus
from storage.models import DeliveryStatus, Direction

log = logging.getLogger(__name__)

BROADCAST_INTENT = "broadcast"
CANCELLED = DeliveryStatus.CANCELLED  # a broadcast message cancelled before it went

S = BroadcastStatus
# The one table of a broadcast's states: from each state, the states it may move to. ``send``
# for later makes it wait (again, for another time); the scheduler's job prepares it; once its
# messages are queued, they move it on to sending and done (derived on read by
# :func:`progress`, recorded by the job's :func:`settle`).
TRANSITIONS: Mapping[BroadcastStatus, frozenset[BroadcastStatus]] = {
    S.DRAFT: frozenset({S.WAITING, S.PREPARING, S.CANCELLED}),
    S.WAITING: frozenset({S.WAITING, S.PREPARING, S.CANCELLED, S.FAILED}),
    S.PREPARING: frozenset({S.WAITING, S.SCHEDULED, S.CANCELLED, S.FAILED}),
    S.SCHEDULED: frozenset({S.WAITING, S.SENDING, S.DONE, S.CANCELLED}),
    S.SENDING: frozenset({S.WAITING, S.DONE, S.CANCELLED}),
    S.FAILED: frozenset({S.DRAFT, S.WAITING, S.CANCELLED}),  # sent again after fixing the catalog
    S.DONE: frozenset(),
    S.CANCELLED: frozenset(),
}
_PREPARED = (S.SCHEDULED, S.SENDING)  # states its messages move on


def _move(conn: Connection, broadcast_id: int, to: BroadcastStatus, **values: Any) -> bool:
    """Move the broadcast to ``to`` (with ``values``) if :data:`TRANSITIONS` allows it from its
    current state: one conditional UPDATE, so a concurrent move is never overwritten. Whether
    it moved."""
    sources = [state for state, targets in TRANSITIONS.items() if to in targets]
    return broadcast_queries.move_broadcast(
        conn, broadcast_id=broadcast_id, to=to, sources=sources, values=values
    )


def message_counts(conn: Connection, broadcast_id: int) -> dict[str, int]:
    """The broadcast's messages by delivery status."""
    return broadcast_queries.message_counts(conn, broadcast_id=broadcast_id)


def progress(stored: str, messages: Mapping[str, int]) -> str:
    """The state its messages have brought a prepared broadcast to: ``scheduled`` while none has
    gone, ``sending`` once some have, ``done`` when none is left queued or sending. Any other
    stored state is the state."""
    if stored not in _PREPARED:
        return stored
    pending = messages.get(DeliveryStatus.QUEUED, 0) + messages.get(DeliveryStatus.SENDING, 0)
    gone = sum(messages.values()) - pending - messages.get(CANCELLED, 0)
    return S.DONE if pending == 0 else S.SENDING if gone else stored


def state_of(conn: Connection, row: Mapping[str, Any]) -> str:
    """The broadcast's state now (a broadcast row): as stored, or as its messages say."""
    if row["status"] not in _PREPARED:
        return str(row["status"])
    return progress(row["status"], message_counts(conn, row["id"]))


def settle(db: Engine) -> dict[int, str]:
    """Job: record the state each prepared broadcast's messages have brought it to (sending,
    done); reads derive it anyway (:func:`state_of`), so this only keeps the stored state
    current. The broadcasts that moved, with their new state."""
    moved: dict[int, str] = {}
    with db.begin() as conn:
        for row in broadcast_queries.broadcasts_in(conn, states=_PREPARED):
            new = state_of(conn, row)
            if new != row["status"] and _move(conn, row["id"], S(new)):
                moved[row["id"]] = new
    return moved


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
        return broadcast_queries.add_broadcast(
            conn, name=name, segment=segment, template=template, created_by=created_by, now=now
        )


def get(conn: Connection, broadcast_id: int, *, lock: bool = False) -> Mapping[str, Any]:
    """The broadcast row (locked for the transaction with ``lock``); BroadcastError when there
    is none."""
    row = broadcast_queries.broadcast_row(conn, broadcast_id=broadcast_id, lock=lock)
    if row is None:
        raise BroadcastError(f"no broadcast {broadcast_id}")
    return row


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
        row = get(conn, broadcast_id, lock=True)
        state = state_of(conn, row)
        if state in (S.CANCELLED, S.DONE):
            raise BroadcastError(f"broadcast {broadcast_id} is {state}")
        compile_template(row["template"], advisor.catalog(conn))
        waiting = start > now
        broadcast_queries.schedule_broadcast(
            conn, broadcast_id=broadcast_id, scheduled_at=start, local_time=local_time
        )
        if waiting:
            _move(conn, broadcast_id, S.WAITING)
        elif state == S.FAILED:  # sent again, say after fixing the catalog: prepared afresh
            _move(conn, broadcast_id, S.DRAFT)
    if waiting:
        return SendReport(waiting_until=start)
    return prepare(db, advisor, config, broadcast_id, now, batch_size=batch_size)


def prepare_due(db: Engine, advisor: Advisor, config: PolicyConfig, now: datetime) -> dict[int, SendReport]:
    """Job: prepare every waiting broadcast whose time has come (and any a crash left half
    prepared); what each queued. One that cannot be prepared (its segment or template no longer
    fits the catalog) is marked ``failed`` and does not hold up the others."""
    with db.connect() as conn:
        ids = broadcast_queries.due_broadcasts(
            conn, states=(BroadcastStatus.WAITING, BroadcastStatus.PREPARING), now=now
        )
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
                _move(conn, broadcast_id, S.FAILED)
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
        state = state_of(conn, row)
        if state in (S.CANCELLED, S.DONE, S.FAILED):
            raise BroadcastError(f"broadcast {broadcast_id} is {state}")
        node = parse(row["segment"])
        catalog = advisor.catalog(conn)
        template = compile_template(row["template"], catalog)
        offer = is_offer(row["template"])
        start = row["scheduled_at"] or now
        local = parse_local_time(row["local_time"]) if row["local_time"] else None
        _move(conn, broadcast_id, S.PREPARING, scheduled_at=start)  # from draft or waiting
    last = 0
    while True:  # one transaction a batch: read the facts, queue the messages
        with db.begin() as conn:
            # Locked, as cancel() locks it: a cancel between batches stops the rest.
            if get(conn, broadcast_id, lock=True)["status"] == S.CANCELLED:
                break
            batch = facts_batch(conn, advisor, now, config, after=last, batch_size=batch_size)
            if not batch:
                break
            _send_batch(
                conn, broadcast_id, node, template, offer, catalog, config, batch, now, start, local, report
            )
            last = batch[-1].customer_id
    with db.begin() as conn:  # queued: its messages move it on from here (progress())
        _move(conn, broadcast_id, S.SCHEDULED)
    return report


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
    done = broadcast_queries.recipients_between(conn, broadcast_id=broadcast_id, lo=lo, hi=hi)
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
        ids = broadcast_queries.add_messages(conn, messages)
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
    broadcast_queries.add_recipients(conn, recipients)
    if offered:
        await_answers(conn, offered)


def cancel(db: Engine, broadcast_id: int, now: datetime) -> int:
    """Stop what has not gone: queued messages become ``cancelled`` (the outbox sends only queued
    rows, and claims them by status, so a message is either claimed or cancelled, never both).
    Returns how many were cancelled."""
    with db.begin() as conn:
        row = get(conn, broadcast_id, lock=True)  # waits for a batch being queued, stops the next
        if state_of(conn, row) == S.DONE:
            raise BroadcastError(f"broadcast {broadcast_id} is done; nothing left to cancel")
        cancelled = broadcast_queries.cancel_queued(conn, broadcast_id=broadcast_id)
        _move(conn, broadcast_id, S.CANCELLED, cancelled_at=now)  # cancelled already: stays so
        return cancelled
