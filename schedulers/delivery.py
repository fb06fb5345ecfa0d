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
import logging
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Connection, Engine, exists, func, insert, or_, select, true, update

from dialogs.engine import ReplyOption
from schedulers.audience import last_moment_refusals
from schedulers.leader import AlwaysLeader, LeaderLock
from storage.models import DeliveryStatus, Direction, utcnow
from storage.outreach_models import DELIVERY_ATTEMPT, OUTREACH_EVENT
from storage.tables import CUSTOMER, IDENTITY, MESSAGE

log = logging.getLogger(__name__)

# CTIA: an opted-out number still gets the opt-out confirmation, the opt-in one, and HELP answers.
ALLOWED_WHILE_OPTED_OUT = frozenset({"opt_out", "opt_in", "help"})
OPTED_OUT_REASON = "recipient opted out"

# Providers' final message states -> ours (every channel's status callbacks). A provider's
# "queued"/"accepted"/"sending"/"sent" mean it has the message: for us that is already "sent".
DELIVERY_STATES: Mapping[str, DeliveryStatus] = {
    "delivered": DeliveryStatus.DELIVERED,
    "read": DeliveryStatus.DELIVERED,
    "undelivered": DeliveryStatus.UNDELIVERED,
    "failed": DeliveryStatus.FAILED,
    "canceled": DeliveryStatus.FAILED,
}
_BEFORE_FINAL = (DeliveryStatus.SENDING, DeliveryStatus.SENT, DeliveryStatus.UNKNOWN)


class SendError(Exception):
    """A channel could not send a message. ``retryable``: trying again later may work
    (rate limits, timeouts, 5xx); ``retry_after``: how long the provider asked us to wait;
    ``ambiguous``: the request may have reached the provider (a timeout waiting for its answer,
    a 5xx), so marketing is not tried again (at most once) but reported ``unknown``;
    ``opted_out``: the provider says the recipient unsubscribed (the outbox records the opt-out)."""

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        ambiguous: bool = False,
        opted_out: bool = False,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.ambiguous = ambiguous
        self.opted_out = opted_out


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
    """The sending side of a channel. ``max_in_flight``: how many sends a worker keeps going at
    once on this channel (about a second's worth at its rate: claimed rows wait little)."""

    channel: str
    max_in_flight: int

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

_CLAIMED = (
    MESSAGE.c.id,
    MESSAGE.c.customer_id,
    MESSAGE.c.marketing,
    MESSAGE.c.channel,
    MESSAGE.c.address,
    MESSAGE.c.text,
    MESSAGE.c.intent,
    MESSAGE.c.question_key,
    MESSAGE.c.attempts,
)


class Outbox:
    """Sends queued messages through the senders of the configured channels.

    Rows are claimed (``queued -> sending``) before they are handed to a channel. On PostgreSQL
    any number of workers claim side by side (``FOR UPDATE SKIP LOCKED``); on SQLite writes are
    serialised anyway and ``lock`` keeps the delivery loop to one process. A conversational
    reply is claimed only when no earlier reply to the same chat or number is still waiting, so
    a reply held back for a retry is not overtaken by the next one.
    """

    def __init__(
        self,
        db: Engine,
        senders: Mapping[str, Sender],
        options_for: OptionsFor,
        *,
        policy: RetryPolicy | None = None,
        clock: Callable[[], datetime] = utcnow,
        lock: LeaderLock | None = None,
    ) -> None:
        self.db = db
        self.senders = dict(senders)
        self.options_for = options_for
        self.policy = policy or RetryPolicy()
        self.clock = clock
        self.lock = lock or AlwaysLeader()
        self._skip_locked = db.dialect.name == "postgresql"

    async def deliver(self, message_ids: Sequence[int]) -> None:
        """Send these messages now, one after another in id order, if they are queued and due."""
        for message_id in sorted(message_ids):
            claimed = await asyncio.to_thread(self._claim, MESSAGE.c.id == message_id, 1)
            for outgoing in claimed:
                await self._send(outgoing)

    async def deliver_due(self, *, channels: Sequence[str] | None = None, limit: int | None = None) -> int:
        """Claim the queued messages whose time has come (up to each channel's ``max_in_flight``,
        or ``limit``) and send them side by side; how many were claimed."""
        batches = [
            await asyncio.to_thread(self._claim_due, channel, limit or self._room(channel))
            for channel in channels or list(self.senders)
        ]
        claimed = [outgoing for batch in batches for outgoing in batch]
        await asyncio.gather(*(self._send(outgoing) for outgoing in claimed))
        return len(claimed)

    async def run(self, *, interval: float = 1.0, stop: asyncio.Event | None = None) -> None:
        """Keep sending due messages until ``stop`` is set: claim whenever a channel has room,
        look again after ``interval`` seconds when there was nothing to do. Sends in flight are
        finished before it returns."""
        stop = stop or asyncio.Event()
        inflight: dict[str, set[asyncio.Task[None]]] = {channel: set() for channel in self.senders}
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                try:
                    leading = await asyncio.to_thread(self.lock.try_acquire)
                except Exception:  # say the lock file cannot be opened: try again, say why
                    log.exception("cannot take the delivery lock; trying again in %.0f s", interval)
                    leading = False
                if leading:
                    await self._top_up(inflight)
                running = set().union(*inflight.values())
                await asyncio.wait({stopping, *running}, timeout=interval, return_when=FIRST_COMPLETED)
        finally:
            stopping.cancel()
            running = set().union(*inflight.values())
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            await asyncio.to_thread(self.lock.release)

    async def _top_up(self, inflight: dict[str, set[asyncio.Task[None]]]) -> None:
        for channel, tasks in inflight.items():
            room = self._room(channel) - len(tasks)
            if room <= 0:
                continue
            try:
                batch = await asyncio.to_thread(self._claim_due, channel, room)
            except Exception:  # a bad moment for the database must not end the loop
                log.exception("claiming due %s messages failed; trying again shortly", channel)
                continue
            for outgoing in batch:
                task = asyncio.create_task(self._send(outgoing), name=f"send-{outgoing.message_id}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(_log_failure)

    def _room(self, channel: str) -> int:
        sender = self.senders.get(channel)
        return max(1, sender.max_in_flight) if sender is not None else 1

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
            if outgoing.marketing and exc.ambiguous:
                await asyncio.to_thread(self._unknown, outgoing, exc.reason)
            else:
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

    def _claim_due(self, channel: str, limit: int) -> list[Outgoing]:
        return self._claim(MESSAGE.c.channel == channel, limit)

    def _claim(self, which: ColumnElement[bool], limit: int) -> list[Outgoing]:
        """Mark up to ``limit`` due rows matching ``which`` as sending (oldest first); refuse the
        marketing ones whose customer may no longer be contacted."""
        now = self.clock()
        earlier = MESSAGE.alias("earlier")
        waiting_before = exists().where(
            earlier.c.customer_id == MESSAGE.c.customer_id,  # (customer_id, id) is indexed
            earlier.c.channel == MESSAGE.c.channel,
            earlier.c.address == MESSAGE.c.address,
            earlier.c.direction == Direction.OUT,
            earlier.c.marketing.is_(False),
            earlier.c.status.in_((DeliveryStatus.QUEUED, DeliveryStatus.SENDING)),
            earlier.c.id < MESSAGE.c.id,
        )
        due = (
            select(MESSAGE.c.id)
            .where(
                which,
                MESSAGE.c.direction == Direction.OUT,
                MESSAGE.c.status == DeliveryStatus.QUEUED,
                or_(MESSAGE.c.next_attempt_at.is_(None), MESSAGE.c.next_attempt_at <= now),
                or_(MESSAGE.c.marketing.is_(True), ~waiting_before),
            )
            .order_by(MESSAGE.c.id)
            .limit(limit)
        )
        if self._skip_locked:
            due = due.with_for_update(skip_locked=True)
        picked = due.cte("due")
        with self.db.begin() as conn:
            rows = conn.execute(
                update(MESSAGE)
                .where(MESSAGE.c.id.in_(select(picked.c.id)))
                .values(status=DeliveryStatus.SENDING, attempts=MESSAGE.c.attempts + 1, claimed_at=now)
                .returning(*_CLAIMED)
            ).all()
            marketing = {r.customer_id for r in rows if r.marketing}
            refusals = _refusals(conn, marketing) if marketing else {}
            refused = {r.id for r in rows if r.marketing and r.customer_id in refusals}
            opted_out = _opted_out_replies(conn, [r for r in rows if not r.marketing])
            if opted_out:
                _refuse_opted_out(conn, [r for r in rows if r.id in opted_out], now)
                refused |= opted_out
            for row in rows:
                if row.id in refused and row.id not in opted_out:
                    conn.execute(
                        update(MESSAGE)
                        .where(MESSAGE.c.id == row.id)
                        .values(
                            status=DeliveryStatus.FAILED, error=f"contact policy: {refusals[row.customer_id]}"
                        )
                    )
        return [
            Outgoing(
                r.id,
                r.channel,
                r.address,
                r.text,
                self.options_for(r.intent or "", r.question_key),
                r.attempts,
                bool(r.marketing),
            )
            for r in sorted(rows, key=lambda r: r.id)
            if r.id not in refused
        ]

    def _unknown(self, outgoing: Outgoing, reason: str) -> None:
        with self.db.begin() as conn:
            _mark_unknown(conn, [outgoing.message_id], reason[:500], self.clock(), attempt=outgoing.attempt)

    def _finish(self, outgoing: Outgoing, outcome: str | SendError | None) -> None:
        now = self.clock()
        provider_id = None
        if isinstance(outcome, SendError):
            last = not outcome.retryable or outgoing.attempt >= self.policy.max_attempts
            values: dict[str, object] = {"error": outcome.reason[:500]}
            if last:
                values["status"] = DeliveryStatus.FAILED
            else:
                wait = self.policy.delay(outgoing.attempt, outcome.retry_after)
                values.update(status=DeliveryStatus.QUEUED, next_attempt_at=now + timedelta(seconds=wait))
            result, error = ("failed" if last else "retry"), outcome.reason[:500]
        else:
            values = {"status": DeliveryStatus.SENT, "sent_at": now, "error": None, "next_attempt_at": None}
            if outcome is not None:
                values["provider_message_id"] = provider_id = outcome
            result, error = "sent", None
        with self.db.begin() as conn:
            claimed = conn.execute(
                update(MESSAGE)
                .where(
                    MESSAGE.c.id == outgoing.message_id,
                    MESSAGE.c.status == DeliveryStatus.SENDING,
                    MESSAGE.c.attempts == outgoing.attempt,  # this claim, not a later one
                )
                .values(**values)
                .returning(MESSAGE.c.claimed_at)
            ).first()
            if claimed is None and provider_id is not None:
                # A status callback may have settled it first (it was delivered before we
                # finished): the send happened all the same, so its attempt is recorded.
                claimed = conn.execute(
                    update(MESSAGE)
                    .where(
                        MESSAGE.c.id == outgoing.message_id,
                        MESSAGE.c.status.in_(tuple(set(DELIVERY_STATES.values()))),
                        MESSAGE.c.attempts == outgoing.attempt,
                        ~exists().where(
                            DELIVERY_ATTEMPT.c.message_id == outgoing.message_id,
                            DELIVERY_ATTEMPT.c.attempt == outgoing.attempt,
                        ),
                    )
                    .values(
                        provider_message_id=provider_id,
                        sent_at=func.coalesce(MESSAGE.c.sent_at, now),
                        next_attempt_at=None,
                    )
                    .returning(MESSAGE.c.claimed_at)
                ).first()
            if isinstance(outcome, SendError) and outcome.opted_out:
                _mark_opted_out(conn, outgoing.message_id, now)
            if claimed is not None:  # else recovery settled it (and recorded the attempt) meanwhile
                conn.execute(
                    insert(DELIVERY_ATTEMPT).values(
                        message_id=outgoing.message_id,
                        attempt=outgoing.attempt,
                        outcome=result,
                        error=error,
                        provider_message_id=provider_id,
                        claimed_at=claimed.claimed_at,
                        at=now,
                    )
                )


def record_status(
    db: Engine,
    *,
    channel: str,
    provider_id: str,
    state: str,
    error: str | None = None,
    opted_out: bool = False,
    now: datetime | None = None,
) -> bool:
    """Record what a provider reports about the message it took as ``provider_id`` on
    ``channel`` (every channel's status callbacks come here); False if no such message is known
    (yet: the send may not have finished recording it).

    ``state`` is the provider's word (see :data:`DELIVERY_STATES`; others change no status);
    ``error`` the provider's explanation; ``opted_out``: the recipient unsubscribed at the
    provider. Callbacks come in any order: a final state is never overwritten.
    """
    now = now or utcnow()
    with db.begin() as conn:
        row = conn.execute(
            select(MESSAGE.c.id).where(
                MESSAGE.c.channel == channel,
                MESSAGE.c.direction == Direction.OUT,
                MESSAGE.c.provider_message_id == provider_id,
            )
        ).first()
        if row is None:
            return False
        message_id = row.id
        if error:
            conn.execute(update(MESSAGE).where(MESSAGE.c.id == message_id).values(error=error[:500]))
        final = DELIVERY_STATES.get(state.lower())
        if final is not None:
            values: dict[str, Any] = {"status": final, "sent_at": func.coalesce(MESSAGE.c.sent_at, now)}
            if final == DeliveryStatus.DELIVERED:
                values["delivered_at"] = now
            conn.execute(
                update(MESSAGE)
                .where(MESSAGE.c.id == message_id, MESSAGE.c.status.in_(_BEFORE_FINAL))
                .values(**values)
            )
        if opted_out:
            _mark_opted_out(conn, message_id, now)
    return True


def _mark_opted_out(conn: Connection, message_id: int, now: datetime) -> None:
    """The provider says the recipient of ``message_id`` unsubscribed: record it on the customer
    (an earlier opt-out time is kept)."""
    customer = select(MESSAGE.c.customer_id).where(MESSAGE.c.id == message_id).scalar_subquery()
    conn.execute(
        update(CUSTOMER)
        .where(CUSTOMER.c.id == customer, CUSTOMER.c.opted_out_at.is_(None))
        .values(opted_out_at=now)
    )


def _opted_out_replies(conn: Connection, rows: Sequence[Any]) -> set[int]:
    """The conversational replies among ``rows`` that must not go: the customer, or whoever owns
    the address (a number several customers share), opted out, and the reply is not one the rules
    allow then (the opt-out and opt-in confirmations, HELP)."""
    rows = [r for r in rows if r.intent not in ALLOWED_WHILE_OPTED_OUT]
    if not rows:
        return set()
    customers = {r.customer_id for r in rows if r.customer_id is not None}
    addresses = {r.address for r in rows}
    owners = select(IDENTITY.c.customer_id).where(IDENTITY.c.address.in_(addresses))
    opted = conn.execute(
        select(CUSTOMER.c.id, CUSTOMER.c.phone).where(
            CUSTOMER.c.opted_out_at.is_not(None),
            or_(CUSTOMER.c.id.in_(customers), CUSTOMER.c.phone.in_(addresses), CUSTOMER.c.id.in_(owners)),
        )
    ).all()
    if not opted:
        return set()
    opted_ids = {o.id for o in opted}
    opted_phones = {o.phone for o in opted if o.phone}
    owned = {
        (i.channel, i.address)
        for i in conn.execute(
            select(IDENTITY.c.channel, IDENTITY.c.address).where(
                IDENTITY.c.customer_id.in_(opted_ids), IDENTITY.c.address.in_(addresses)
            )
        )
    }
    return {
        r.id
        for r in rows
        if r.customer_id in opted_ids or r.address in opted_phones or (r.channel, r.address) in owned
    }


def _refuse_opted_out(conn: Connection, rows: Sequence[Any], now: datetime) -> None:
    conn.execute(
        update(MESSAGE)
        .where(MESSAGE.c.id.in_([r.id for r in rows]))
        .values(status=DeliveryStatus.FAILED, error=OPTED_OUT_REASON, next_attempt_at=None)
    )
    claimed = conn.execute(
        select(MESSAGE.c.id, MESSAGE.c.attempts, MESSAGE.c.claimed_at).where(
            MESSAGE.c.id.in_([r.id for r in rows])
        )
    ).all()
    _record_attempts(conn, claimed, "failed", OPTED_OUT_REASON, now)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        # Recording the outcome failed (the database): the row stays "sending" until recovery.
        log.error("delivering %s failed: %s", task.get_name(), exc, exc_info=exc)


def _refusals(conn: Connection, customer_ids: set[int | None]) -> dict[int | None, str]:
    """Why queued marketing may no longer go to these customers (absent: it may go): the audience
    service's last-moment rule, the same standing rules every proactive send was decided by."""
    return last_moment_refusals(conn, customer_ids)


def _mark_unknown(
    conn: Connection, message_ids: Sequence[int], reason: str, now: datetime, *, attempt: int | None = None
) -> None:
    this_claim = MESSAGE.c.attempts == attempt if attempt is not None else true()
    rows = conn.execute(
        update(MESSAGE)
        .where(MESSAGE.c.id.in_(list(message_ids)), MESSAGE.c.status == DeliveryStatus.SENDING, this_claim)
        .values(status=DeliveryStatus.UNKNOWN, error=reason, next_attempt_at=None)
        .returning(MESSAGE.c.id, MESSAGE.c.customer_id, MESSAGE.c.attempts, MESSAGE.c.claimed_at)
    ).all()
    _record_attempts(conn, rows, "unknown", reason, now)
    if any(r.customer_id is not None for r in rows):
        conn.execute(
            insert(OUTREACH_EVENT),
            [
                {
                    "customer_id": r.customer_id,
                    "kind": "unknown",
                    "reason": reason[:64],
                    "message_id": r.id,
                    "at": now,
                }
                for r in rows
                if r.customer_id is not None
            ],
        )


def _record_attempts(conn: Connection, rows: Sequence[Any], outcome: str, error: str, now: datetime) -> None:
    """Attempts that ended without an answer from the channel (rows: id, attempts, claimed_at)."""
    if rows:
        conn.execute(
            insert(DELIVERY_ATTEMPT),
            [
                {
                    "message_id": r.id,
                    "attempt": r.attempts,
                    "outcome": outcome,
                    "error": error[:500],
                    "provider_message_id": None,
                    "claimed_at": r.claimed_at,
                    "at": now,
                }
                for r in rows
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
            cut_off = conn.execute(
                update(MESSAGE)
                .where(MESSAGE.c.id.in_(requeued), MESSAGE.c.status == DeliveryStatus.SENDING)
                .values(status=DeliveryStatus.QUEUED, next_attempt_at=None)
                .returning(MESSAGE.c.id, MESSAGE.c.attempts, MESSAGE.c.claimed_at)
            ).all()
            _record_attempts(conn, cut_off, "retry", "stuck in sending: the process died mid-send", now)
    return Recovery(tuple(unknown), tuple(requeued))
