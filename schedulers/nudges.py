"""Nudges: a customer who left the profile half done is reminded of the question they did not answer.

A customer is *half done* when they wrote to the bot at least once, the dialog is not finished and
the question policy (:func:`dialogs.policy.next_step`) still has a question to ask. After
``after`` of silence (no inbound message) they get a nudge that asks that question again, then
further nudges ``spacing`` apart, at most ``max_nudges`` per silence: a message from the customer
starts a new silence. Nudges are counted from the messages table (intent ``nudge``).

Nudges are marketing: they ask the audience service (:mod:`schedulers.audience`: contact facts,
then :func:`schedulers.policy.decide`) and count
towards its frequency cap. A nudge is queued only when the policy allows it *now*; when it says
"later" (quiet hours, the cap) nothing is queued and the next run (the job runs every hour)
tries again, so a nudge never waits in the outbox while the customer may answer meanwhile.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine

from dialogs.bank import QuestionBank
from dialogs.policy import next_step
from schedulers.audience import contact_of
from schedulers.policy import PolicyConfig, decide
from schedulers.proactive import lock_state, queue_message, record_event
from storage import outreach_queries
from storage.models import PendingKind
from storage.turns import TurnState, load_facts

NUDGE_INTENT = "nudge"
NUDGE_PREFIX = "Still there? "


class NudgeSkip:
    """Reasons a half-done customer gets no nudge now (the policy's are in :class:`policy.Skip`)."""

    NOTHING_TO_ASK = "nothing_to_ask"
    DIALOG_BUSY = "dialog_busy"
    NOT_SILENT = "not_silent_long_enough"
    SPACING = "nudged_recently"
    MAX_REACHED = "max_nudges_reached"


@dataclass(frozen=True, slots=True)
class NudgeConfig:
    """Settings ``NUDGE_MAX``, ``NUDGE_SPACING_DAYS``, ``NUDGE_AFTER_HOURS``."""

    max_nudges: int = 2
    spacing: timedelta = timedelta(days=3)
    after: timedelta = timedelta(hours=48)

    def __post_init__(self) -> None:
        if self.max_nudges < 0:
            raise ValueError("NUDGE_MAX cannot be negative")
        if self.spacing <= timedelta(0) or self.after <= timedelta(0):
            raise ValueError("NUDGE_SPACING_DAYS and NUDGE_AFTER_HOURS must be positive")


@dataclass(slots=True)
class NudgeReport:
    """What one run did: half-done customers silent long enough, nudges queued, skips by reason."""

    considered: int = 0
    queued: int = 0
    skipped_by_reason: Counter[str] = field(default_factory=Counter)
    message_ids: list[int] = field(default_factory=list)


def nudge(
    db: Engine, bank: QuestionBank, config: NudgeConfig, policy: PolicyConfig, now: datetime
) -> NudgeReport:
    """Queue a nudge for every half-done customer who has been silent long enough and may be
    contacted now. Each customer is decided in a transaction holding their dialog lock."""
    report = NudgeReport()
    if config.max_nudges == 0:
        return report
    with db.connect() as conn:
        candidates = outreach_queries.nudge_candidates(conn, silent_since=now - config.after)
    for customer_id in candidates:
        report.considered += 1
        with db.begin() as conn:
            reason = _one(conn, bank, config, policy, now, customer_id, report)
        if reason is not None:
            report.skipped_by_reason[reason] += 1
    return report


def _one(
    conn: Connection,
    bank: QuestionBank,
    config: NudgeConfig,
    policy: PolicyConfig,
    now: datetime,
    customer_id: int,
    report: NudgeReport,
) -> str | None:
    """Nudge one customer (under their lock); the reason when not."""
    row = lock_state(conn, customer_id)
    if row["finished_at"] is not None or row["pending_kind"] not in (None, PendingKind.ASK):
        return NudgeSkip.DIALOG_BUSY  # the customer wrote meanwhile, or a yes/no is pending
    last_in = outreach_queries.last_inbound_at(conn, customer_id=customer_id)
    if last_in is None or last_in > now - config.after:
        return NudgeSkip.NOT_SILENT
    count, last_nudge = outreach_queries.outbound_since(
        conn, customer_id=customer_id, intent=NUDGE_INTENT, since=last_in
    )
    if count >= config.max_nudges:
        return NudgeSkip.MAX_REACHED
    if last_nudge is not None and now - last_nudge < config.spacing:
        return NudgeSkip.SPACING
    customer = outreach_queries.customer_row(conn, customer_id=customer_id)
    facts = load_facts(conn, customer_id=customer_id)
    state = TurnState(
        customer_id=customer_id,
        name=customer["name"],
        opted_out_at=customer["opted_out_at"],
        pending_key=row["pending_key"],
        pending_kind=row["pending_kind"],
        reask_count=row["reask_count"],
        deferred=dict(row["deferred"] or {}),
        finished_at=row["finished_at"],
        last_activity=row["last_activity"],
        version=row["version"],
        current_plan_id=customer["current_plan_id"],
        has_usage=False,
    )
    step = next_step(bank, state, facts, now)
    if step.question is None or step.kind != PendingKind.ASK:
        return NudgeSkip.NOTHING_TO_ASK
    prefs = {key: fact.value for key, fact in facts.items()}
    contact = contact_of(conn, customer_id, policy, prefs=prefs, intent=NUDGE_INTENT, now=now, offer=True)
    channel, address = contact.channel, contact.address
    decision = decide(contact, now, policy)
    if not decision.allowed:
        assert decision.reason is not None
        if decision.excluded and not _skip_recorded(conn, customer_id, last_in):
            # A hard rule: recorded once per silence (the job runs hourly), like the scan's skips.
            record_event(conn, customer_id, "nudge_skipped", decision.reason, None, None, now)
        return decision.reason
    assert channel is not None and address is not None
    question = step.question
    message_id = queue_message(
        conn,
        customer_id,
        channel,
        address,
        NUDGE_PREFIX + question.text,
        decision,
        now,
        intent=NUDGE_INTENT,
        question_key=question.key,
    )
    outreach_queries.set_pending_question(conn, customer_id=customer_id, key=question.key)
    record_event(conn, customer_id, "nudge_queued", decision.reason, None, message_id, now)
    report.queued += 1
    report.message_ids.append(message_id)
    return None


def _skip_recorded(conn: Connection, customer_id: int, since: datetime) -> bool:
    return outreach_queries.has_event_since(conn, customer_id=customer_id, kind="nudge_skipped", since=since)
