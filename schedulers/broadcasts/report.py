"""What a broadcast would do and what it did: dry run, preview, status and results. Reads only:
nothing here writes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine

from dialogs.advisor import Advisor
from dialogs.sms_segments import Estimate, estimate, fit
from schedulers.audience import NO_CHANNEL_CONFIGURED
from schedulers.broadcasts.facts import SEGMENT, iter_facts, judge
from schedulers.broadcasts.lifecycle import get, message_counts, progress, state_of
from schedulers.broadcasts.templates import compile_template, render, template_context
from schedulers.policy import PolicyConfig
from schedulers.proactive import SUGGESTION_INTENT
from schedulers.segment_filter import parse
from storage import broadcast_queries
from storage.models import DeliveryStatus


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


@dataclass(slots=True)
class Confirmation:
    """What scheduling a broadcast now would send, to confirm before anything is queued:
    recipients by channel, SMS segments per message (``segments``: segments -> messages), the
    total of segments and its cost, and how many SMS are over the segment budget."""

    recipients: int = 0
    channels: Counter[str] = field(default_factory=Counter)
    segments: Counter[int] = field(default_factory=Counter)
    total_segments: int = 0
    total_cost: Decimal = Decimal(0)
    over_budget: int = 0
    no_channel: bool = False

    @property
    def no_channel_reason(self) -> str:
        return NO_CHANNEL_CONFIGURED


def sent_text(text: str, channel: str | None) -> str:
    """The text exactly as the channel sends it (SMS: look-alikes replaced, spaces squeezed, cut
    at 1,600 characters)."""
    return fit(text) if channel == "sms" else text


def confirmation(
    db: Engine,
    advisor: Advisor,
    config: PolicyConfig,
    broadcast_id: int,
    now: datetime,
    *,
    price_per_segment: Decimal,
    max_segments: int,
    batch_size: int = 2_000,
) -> Confirmation:
    """Render the broadcast for everyone the segment and the policy let it reach at ``now`` and
    add up what it costs (reads only; with no channel configured, ``no_channel`` and nobody)."""
    report = Confirmation(no_channel=not config.channels)
    with db.connect() as conn:
        row = get(conn, broadcast_id)
        node = parse(row["segment"])
        catalog = advisor.catalog(conn)
        template = compile_template(row["template"], catalog)
        for batch in iter_facts(conn, advisor, now, config, batch_size=batch_size):
            for facts in batch:
                decision = judge(node, facts, now, config)
                if decision is None or decision.excluded:
                    continue
                report.recipients += 1
                channel = facts.channel or "none"
                report.channels[channel] += 1
                if channel != "sms":
                    continue
                text = sent_text(render(template, template_context(facts, catalog)), channel)
                cost = estimate(text, price_per_segment)
                report.segments[cost.segments] += 1
                report.total_segments += cost.segments
                report.total_cost += cost.cost
                report.over_budget += cost.segments > max_segments
    return report


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
    """Progress and results. Only reads: the state is derived from the messages
    (:func:`~schedulers.broadcasts.lifecycle.progress`), never written here."""
    with db.connect() as conn:
        row = get(conn, broadcast_id)
        messages = message_counts(conn, broadcast_id)
        excluded = broadcast_queries.excluded_by_reason(conn, broadcast_id=broadcast_id)
        recipients = broadcast_queries.recipient_count(conn, broadcast_id=broadcast_id)
        accepted = broadcast_queries.answered_offers(
            conn, broadcast_id=broadcast_id, offer_intent=SUGGESTION_INTENT, answer="accepted"
        )
        declined = broadcast_queries.answered_offers(
            conn, broadcast_id=broadcast_id, offer_intent=SUGGESTION_INTENT, answer="declined"
        )
    state = progress(row["status"], messages)
    return Status(broadcast_id, row["name"], state, recipients, messages, excluded, accepted, declined)


def list_broadcasts(db: Engine) -> list[dict[str, Any]]:
    """Every broadcast, newest first, each with its state now (:func:`state_of`)."""
    with db.connect() as conn:
        rows: list[dict[str, Any]] = broadcast_queries.broadcasts(conn)
        for row in rows:
            row["status"] = state_of(conn, row)
    return rows
