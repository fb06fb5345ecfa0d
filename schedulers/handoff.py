"""Handoff housekeeping: a customer waiting for a person longer than ``HANDOFF_TIMEOUT_MINUTES``
with no reply from one is told so, once, and offered to carry on with the bot; conversations with
the bot silent for ``RESUME_AFTER_HOURS`` are closed (contained), so the inbox and the figures
count them without waiting for the customer's next message."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Engine

from dialogs.handoff import TIMED_OUT
from schedulers.proactive import lock_state
from storage import handoff as conversations

TIMEOUT_INTENT = "handoff_timeout"


def close_idle_conversations(db: Engine, *, idle: timedelta, now: datetime) -> int:
    """Close the conversations with the bot silent for ``idle`` (contained); how many."""
    closed = 0
    while True:
        with db.begin() as conn:
            done = conversations.close_idle(conn, silent_since=now - idle)
        closed += done
        if done < 500:
            return closed


def notify_timeouts(db: Engine, *, timeout: timedelta, now: datetime) -> list[int]:
    """Tell every customer who waited ``timeout`` for a person in vain; the queued message ids."""
    with db.connect() as conn:
        due = conversations.timed_out(conn, waited_since=now - timeout)
    queued = []
    for conv in due:
        with db.begin() as conn:
            lock_state(conn, conv.customer_id)  # one at a time with the customer's turns
            fresh = conversations.get(conn, conversation_id=conv.id)
            if fresh is None or fresh.timeout_notified_at is not None or fresh.first_human_reply_at:
                continue
            if not fresh.with_person:
                continue
            conversations.mark_timeout_notified(conn, conversation_id=conv.id, now=now)
            where = conversations.reply_address(conn, customer_id=conv.customer_id)
            if conversations.opted_out(conn, customer_id=conv.customer_id) or where is None:
                continue
            queued.append(
                conversations.queue_reply(
                    conn,
                    customer_id=conv.customer_id,
                    channel=where[0],
                    address=where[1],
                    text=TIMED_OUT,
                    now=now,
                    intent=TIMEOUT_INTENT,
                )
            )
    return queued
