"""The daily proactive-suggestion scan: every customer whose usage says another plan pays gets one
personal message with the numbers and YES/NO, if the contact policy lets it go.

A plain function of its inputs (the scheduler job calls it with the clock's time). Who may be
contacted, where and when is the audience service's (:mod:`schedulers.audience`). Each customer
is decided in a transaction of its own that holds the customer's dialog lock, so a re-run, or a
customer texting meanwhile, never yields a second suggestion.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine

from dialogs.advisor import Advisor, explain
from plans.fit import Fit, fit_book
from schedulers.audience import contact_of
from schedulers.policy import Decision, PolicyConfig, decide
from storage import outreach_queries
from storage.models import PendingKind
from storage.turns import unsent_suggestion

SUGGESTION_INTENT = "suggestion"
# The customer is answering something else: a suggestion now would hijack their YES/NO.
_BUSY = (PendingKind.RECONFIRM, PendingKind.CONFIRM_FORGET, PendingKind.CONFIRM_STOP)


class ScanSkip:
    """Reasons the scan itself skips a customer (the policy's are in :class:`policy.Skip`)."""

    NO_SUGGESTION = "no_suggestion"
    SUGGESTION_PENDING = "suggestion_pending"
    DIALOG_BUSY = "dialog_busy"


@dataclass(slots=True)
class ScanReport:
    """What one scan did: customers with a suggestion, messages queued to go now, deferred to a
    later allowed moment (also queued), and skips by reason."""

    considered: int = 0
    queued: int = 0
    deferred: int = 0
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    message_ids: list[int] = field(default_factory=list)


def scan(
    db: Engine, advisor: Advisor, config: PolicyConfig, now: datetime, *, batch_size: int = 20_000
) -> ScanReport:
    """Queue a suggestion for every customer whose fit suggests a plan and who may be contacted."""
    report = ScanReport()
    with db.connect() as conn:
        catalog = advisor.catalog(conn)
        candidates = [
            fit.customer_id
            for _, fit in fit_book(conn, catalog, advisor.roles, advisor.config.fit, batch_size=batch_size)
            if fit.suggest
        ]
    for customer_id in candidates:
        report.considered += 1
        with db.begin() as conn:
            _one(conn, advisor, config, now, customer_id, report)
    return report


def _one(
    conn: Connection,
    advisor: Advisor,
    config: PolicyConfig,
    now: datetime,
    customer_id: int,
    report: ScanReport,
) -> None:
    state = lock_state(conn, customer_id)
    customer = outreach_queries.customer_row(conn, customer_id=customer_id)
    prefs: dict[str, Any] = outreach_queries.preference_values(conn, customer_id=customer_id)

    def skip(reason: str, plan_id: str | None = None) -> None:
        report.skipped_by_reason[reason] += 1
        record_event(conn, customer_id, "skipped", reason, plan_id, None, now)

    if state["pending_kind"] == PendingKind.SUGGESTION or unsent_suggestion(conn, customer_id=customer_id):
        skip(ScanSkip.SUGGESTION_PENDING)
        return
    if state["pending_kind"] in _BUSY:
        skip(ScanSkip.DIALOG_BUSY)
        return
    advice = advisor.advise(
        conn,
        customer_id=customer_id,
        current_plan=customer["current_plan_id"],
        preferences=prefs,
        now=now,
    )
    fit: Fit = advice.fit
    if not fit.suggest or fit.best_plan is None:
        skip(ScanSkip.NO_SUGGESTION)
        return
    contact = contact_of(
        conn,
        customer_id,
        config,
        prefs=prefs,
        declined=not advice.offer,
        intent=SUGGESTION_INTENT,
        now=now,
        offer=True,
    )
    channel, address = contact.channel, contact.address
    decision = decide(contact, now, config)
    if decision.excluded:
        assert decision.reason is not None
        skip(decision.reason, fit.best_plan)
        return
    assert channel is not None and address is not None
    message_id = queue_message(conn, customer_id, channel, address, explain(advice), decision, now)
    await_answers(conn, {customer_id: fit.best_plan})
    kind = "queued" if decision.allowed else "deferred"
    record_event(conn, customer_id, kind, decision.reason, fit.best_plan, message_id, now)
    report.message_ids.append(message_id)
    if decision.allowed:
        report.queued += 1
    else:
        report.deferred += 1


def lock_state(conn: Connection, customer_id: int) -> Mapping[str, Any]:
    """The customer's dialog state, locked as a turn locks it (created when there is none)."""
    return outreach_queries.lock_dialog_state(conn, customer_id=customer_id)


def await_answers(conn: Connection, offered: Mapping[int, str]) -> None:
    """Make each customer's dialogue wait for the answer to the plan just offered to them
    (customer id -> plan id), so a YES or NO is taken for that offer; a customer in the middle
    of a confirmation (stop, forget me, a stale answer) is left to finish it."""
    outreach_queries.await_plan_answers(conn, offered=offered, busy=_BUSY)


def queue_message(
    conn: Connection,
    customer_id: int,
    channel: str,
    address: str,
    text: str,
    decision: Decision,
    now: datetime,
    *,
    intent: str = SUGGESTION_INTENT,
    question_key: str | None = None,
) -> int:
    """Queue a proactive (marketing) message; deferred to the policy's next allowed moment."""
    return outreach_queries.queue_marketing_message(
        conn,
        customer_id=customer_id,
        channel=channel,
        address=address,
        text=text,
        intent=intent,
        question_key=question_key,
        next_attempt_at=None if decision.allowed else decision.next_allowed_at,
        now=now,
    )


def record_event(
    conn: Connection,
    customer_id: int,
    kind: str,
    reason: str | None,
    plan_id: str | None,
    message_id: int | None,
    at: datetime,
) -> None:
    """Record what outreach did for a customer (queued, deferred, skipped and why)."""
    outreach_queries.add_outreach_event(
        conn, customer_id=customer_id, kind=kind, reason=reason, plan_id=plan_id, message_id=message_id, at=at
    )
