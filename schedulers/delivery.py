"""The outbox: outbound messages are rows; this sends the queued ones through their channel.

A message goes ``queued -> sending -> sent`` (a status callback may later make it ``delivered``,
``undelivered`` or ``failed``). A send that fails with a retryable error goes back to ``queued``
with ``next_attempt_at`` set by the retry policy; after ``max_attempts``, or on an error that
retrying cannot fix, it is ``failed`` with the reason in ``error``. Every attempt is counted.

Marketing (proactive) messages go at most once: when it is unclear whether the provider took one
(an unexpected error while sending, or a process that died in ``sending``, see
:func:`recover_stuck`) it becomes ``unknown`` and is reported, never re-sent. Conversational
replies in the same situation are retried. A marketing message whose customer opted out, was
erased or withdrew consent while it waited is not sent (``failed``, reason in ``error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Connection, Engine, insert, or_, select, update

from dialogs.engine import ReplyOption
from storage.models import DeliveryStatus, Direction, utcnow
from storage.outreach_models import OUTREACH_EVENT
from storage.tables import CUSTOMER, MESSAGE

log = logging.getLogger(__name__)


class SendError(Exception):
    """A channel could not send a message. ``retryable``: trying again later may work
    (rate limits, timeouts, 5xx); ``retry_after``: how long the provider asked us to wait."""

    def __init__(self, reason: str, *, retryable: bool, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to send, as a channel's sender gets it."""

    message_id: int
    channel: str
    address: str
    text: str
    options: tuple[ReplyOption, ...]
    attempt: int
    marketing: bool = False


class Sender(Protocol):
    """The sending side of a channel."""

    channel: str

    async def send(self, message: Outgoing) -> str | None:
        """Send ``message``; the provider's id for it. Raises :class:`SendError`."""
        ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: ``base x 2^(attempt-1)`` seconds, at most ``cap``, at least what
    the provider asked for."""

    max_attempts: int = 5
    base: float = 2.0
    cap: float = 300.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait after failed attempt number ``attempt``."""
        backoff: float = min(self.base * 2.0 ** (attempt - 1), self.cap)
        return max(backoff, retry_after or 0.0)


OptionsFor = Callable[[str, str | None], tuple[ReplyOption, ...]]


class Outbox:
    """Sends queued messages through the senders of the configured channels."""

    def __init__(
        self,
        db: Engine,
        senders: Mapping[str, Sender],
        options_for: OptionsFor,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.senders = dict(senders)
        self.options_for = options_for
        self.policy = policy or RetryPolicy()
        self.clock = clock

    async def deliver(self, message_ids: Sequence[int]) -> None:
        """Send these messages now (in id order), if they are still queued and due."""
        for message_id in sorted(message_ids):
            outgoing = await asyncio.to_thread(self._claim, message_id)
            if outgoing is not None:
                await self._send(outgoing)

    async def deliver_due(self, *, channels: Sequence[str] | None = None, limit: int = 200) -> int:
        """Send queued messages whose time has come (retries, and replies a crash left behind)."""
        ids = await asyncio.to_thread(self._due, channels or list(self.senders), limit)
        await self.deliver(ids)
        return len(ids)

    async def run(self, *, interval: float = 1.0, stop: asyncio.Event | None = None) -> None:
        """Deliver due messages every ``interval`` seconds until ``stop`` is set."""
        stop = stop or asyncio.Event()
        while not stop.is_set():
            try:
                await self.deliver_due()
            except Exception:  # a bad moment for the database must not end the loop
                log.exception("delivering due messages failed; trying again in %.0f s", interval)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)

    # -- one message ------------------------------------------------------------------------

    async def _send(self, outgoing: Outgoing) -> None:
        sender = self.senders.get(outgoing.channel)
        if sender is None:
            await asyncio.to_thread(
                self._finish,
                outgoing,
                SendError(f"channel {outgoing.channel!r} is not configured", retryable=False),
            )
            return
        try:
            provider_id = await sender.send(outgoing)
        except SendError as exc:
            log.warning(
                "sending message %d on %s failed: %s", outgoing.message_id, outgoing.channel, exc.reason
            )
            await asyncio.to_thread(self._finish, outgoing, exc)
        except Exception as exc:  # a bug or an unexpected provider answer: keep it, say so
            log.exception("sending message %d on %s raised", outgoing.message_id, outgoing.channel)
            reason = f"{type(exc).__name__}: {exc}"
            if outgoing.marketing:  # it may have gone: at most once means not trying again
                await asyncio.to_thread(self._unknown, outgoing, reason)
            else:
                await asyncio.to_thread(self._finish, outgoing, SendError(reason, retryable=True))
        else:
            await asyncio.to_thread(self._finish, outgoing, provider_id)

    def _claim(self, message_id: int) -> Outgoing | None:
        now = self.clock()
        with self.db.begin() as conn:
            claimed = conn.execute(
                update(MESSAGE)
                .where(
                    MESSAGE.c.id == message_id,
                    MESSAGE.c.direction == Direction.OUT,
                    MESSAGE.c.status == DeliveryStatus.QUEUED,
                    or_(MESSAGE.c.next_attempt_at.is_(None), MESSAGE.c.next_attempt_at <= now),
                )
                .values(status=DeliveryStatus.SENDING, attempts=MESSAGE.c.attempts + 1, claimed_at=now)
                .returning(
                    MESSAGE.c.customer_id,
                    MESSAGE.c.marketing,
                    MESSAGE.c.channel,
                    MESSAGE.c.address,
                    MESSAGE.c.text,
                    MESSAGE.c.intent,
                    MESSAGE.c.question_key,
                    MESSAGE.c.attempts,
                )
            ).first()
            if claimed is None:
                return None
            customer_id, marketing, channel, address, text, intent, question_key, attempts = claimed
            if marketing and (refusal := _refusal(conn, customer_id)) is not None:
                conn.execute(
                    update(MESSAGE)
                    .where(MESSAGE.c.id == message_id)
                    .values(status=DeliveryStatus.FAILED, error=f"contact policy: {refusal}")
                )
                return None
        options = self.options_for(intent or "", question_key)
        return Outgoing(message_id, channel, address, text, options, attempts, bool(marketing))

    def _unknown(self, outgoing: Outgoing, reason: str) -> None:
        with self.db.begin() as conn:
            _mark_unknown(conn, [outgoing.message_id], reason[:500], self.clock())

    def _finish(self, outgoing: Outgoing, outcome: str | SendError | None) -> None:
        now = self.clock()
        if isinstance(outcome, SendError):
            last = not outcome.retryable or outgoing.attempt >= self.policy.max_attempts
            values: dict[str, object] = {"error": outcome.reason[:500]}
            if last:
                values["status"] = DeliveryStatus.FAILED
            else:
                wait = self.policy.delay(outgoing.attempt, outcome.retry_after)
                values.update(status=DeliveryStatus.QUEUED, next_attempt_at=now + timedelta(seconds=wait))
        else:
            values = {"status": DeliveryStatus.SENT, "sent_at": now, "error": None, "next_attempt_at": None}
            if outcome is not None:
                values["provider_message_id"] = outcome
        with self.db.begin() as conn:
            conn.execute(
                update(MESSAGE)
                .where(MESSAGE.c.id == outgoing.message_id, MESSAGE.c.status == DeliveryStatus.SENDING)
                .values(**values)
            )

    def _due(self, channels: Sequence[str], limit: int) -> list[int]:
        now = self.clock()
        with self.db.connect() as conn:
            rows = conn.execute(
                select(MESSAGE.c.id)
                .where(
                    MESSAGE.c.status == DeliveryStatus.QUEUED,
                    MESSAGE.c.direction == Direction.OUT,
                    MESSAGE.c.channel.in_(list(channels)),
                    or_(MESSAGE.c.next_attempt_at.is_(None), MESSAGE.c.next_attempt_at <= now),
                )
                .order_by(MESSAGE.c.id)
                .limit(limit)
            ).scalars()
            return list(rows)


def _refusal(conn: Connection, customer_id: int | None) -> str | None:
    """Why a queued marketing message may no longer go to its customer, or None."""
    if customer_id is None:
        return "no customer"
    row = conn.execute(
        select(CUSTOMER.c.marketing_consent, CUSTOMER.c.opted_out_at, CUSTOMER.c.erased_at).where(
            CUSTOMER.c.id == customer_id
        )
    ).first()
    if row is None or row.erased_at is not None:
        return "erased"
    if row.opted_out_at is not None:
        return "opted out"
    return None if row.marketing_consent else "no consent"


def _mark_unknown(conn: Connection, message_ids: Sequence[int], reason: str, now: datetime) -> None:
    conn.execute(
        update(MESSAGE)
        .where(MESSAGE.c.id.in_(list(message_ids)), MESSAGE.c.status == DeliveryStatus.SENDING)
        .values(status=DeliveryStatus.UNKNOWN, error=reason, next_attempt_at=None)
    )
    rows = conn.execute(
        select(MESSAGE.c.id, MESSAGE.c.customer_id).where(
            MESSAGE.c.id.in_(list(message_ids)), MESSAGE.c.customer_id.is_not(None)
        )
    ).all()
    if rows:
        conn.execute(
            insert(OUTREACH_EVENT),
            [
                {"customer_id": c, "kind": "unknown", "reason": reason[:64], "message_id": m, "at": now}
                for m, c in rows
            ],
        )


@dataclass(frozen=True, slots=True)
class Recovery:
    """What :func:`recover_stuck` found: marketing now ``unknown`` (for review), replies requeued."""

    unknown: tuple[int, ...]
    requeued: tuple[int, ...]


STUCK_REASON = "stuck in sending: the process died mid-send; not re-sent (at most once)"


def recover_stuck(db: Engine, *, older_than: timedelta, now: datetime | None = None) -> Recovery:
    """Settle messages left in ``sending`` for longer than ``older_than`` by a process that died.

    Run it at start-up and now and then; ``older_than`` must exceed the longest send a live worker
    may still be in (the provider's timeout), so a slow send is not mistaken for a dead one.
    """
    now = now or utcnow()
    with db.begin() as conn:
        rows = conn.execute(
            select(MESSAGE.c.id, MESSAGE.c.marketing)
            .where(
                MESSAGE.c.status == DeliveryStatus.SENDING,
                MESSAGE.c.direction == Direction.OUT,
                or_(MESSAGE.c.claimed_at.is_(None), MESSAGE.c.claimed_at <= now - older_than),
            )
            .order_by(MESSAGE.c.id)
            .with_for_update()
        ).all()
        unknown = [m for m, marketing in rows if marketing]
        requeued = [m for m, marketing in rows if not marketing]
        if unknown:
            _mark_unknown(conn, unknown, STUCK_REASON, now)
            log.warning("%d marketing message(s) left in sending are now unknown: %s", len(unknown), unknown)
        if requeued:
            conn.execute(
                update(MESSAGE)
                .where(MESSAGE.c.id.in_(requeued), MESSAGE.c.status == DeliveryStatus.SENDING)
                .values(status=DeliveryStatus.QUEUED, next_attempt_at=None)
            )
    return Recovery(tuple(unknown), tuple(requeued))
