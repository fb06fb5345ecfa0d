"""The outbox: outbound messages are rows; this sends the queued ones through their channel.

A message goes ``queued -> sending -> sent`` (a status callback may later make it ``delivered``,
``undelivered`` or ``failed``). A send that fails with a retryable error goes back to ``queued``
with ``next_attempt_at`` set by the retry policy; after ``max_attempts``, or on an error that
retrying cannot fix, it is ``failed`` with the reason in ``error``. Every attempt is counted.

Claims are leases: a claimed row carries ``claimed_by`` (the worker) and ``lease_expires_at``,
which the worker renews while its send is in progress (:meth:`Outbox.heartbeat`). A row whose
lease ran out (its worker died, or lost the database for longer than the lease) is taken over by
any other delivery loop within seconds (:func:`release_expired`).

At most once for every message a provider accepted: once the channel answered with an id, the
outcome is kept in memory and written again (with backoff) until the database takes it; it never
turns into a retry. A send cut off before the answer (a timeout, a reset connection, a dead worker)
is reconciled before any resend: through the channel's look-up where it has one (Twilio: the
messages to that number since the attempt started); where none exists (Telegram) a conversational
reply is sent again only after the decision is recorded (an attempt with outcome ``resend``), and
marketing never: it becomes ``unknown`` and is reported. A marketing message whose customer opted
out, was erased or withdrew consent while it waited is not sent (``failed``, reason in ``error``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from asyncio import FIRST_COMPLETED
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from dialogs.engine import ReplyOption
from schedulers.audience import last_moment_refusals
from schedulers.health import Part, describe
from schedulers.leader import AlwaysLeader, LeaderLock
from storage import outbox_queries
from storage.models import DeliveryStatus, utcnow
from storage.whatsapp import REROUTED

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
    ``opted_out``: the provider says the recipient unsubscribed (the outbox records the opt-out);
    ``reroute``: nothing went, and the message is to be queued again at once on this (channel,
    address) instead (WhatsApp: as its template, or where the contact policy moves it), the
    reason kept; at most once per message."""

    def __init__(
        self,
        reason: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        ambiguous: bool = False,
        opted_out: bool = False,
        reroute: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.ambiguous = ambiguous
        self.opted_out = opted_out
        self.reroute = reroute


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
    reconcile_since: datetime | None = None  # an earlier attempt was cut off: look it up first
    provider_id: str | None = None  # already recorded for this message (a late answer was written)
    intent: str | None = None  # what the message is for (WhatsApp picks a template by it)
    customer_id: int | None = None


class Sender(Protocol):
    """The sending side of a channel. ``max_in_flight``: how many sends a worker keeps going at
    once on this channel (about a second's worth at its rate: claimed rows wait little)."""

    channel: str
    max_in_flight: int

    async def send(self, message: Outgoing) -> str | None:
        """Send ``message``; the provider's id for it. Raises :class:`SendError`."""
        ...


@runtime_checkable
class Reconciler(Protocol):
    """A sender that can look up what the provider accepted (Twilio can; Telegram cannot)."""

    async def look_up(self, message: Outgoing, since: datetime) -> list[str]:
        """The provider's ids of messages with ``message``'s text to its address accepted at
        ``since`` or later, oldest first. Raises :class:`SendError` when the look-up fails."""
        ...


LEASE = timedelta(seconds=10)
# A later reply to a chat waits behind an earlier one still queued or sending, but never longer.
ORDER_HOLD = timedelta(seconds=60)
# Looked up from this long before the cut-off attempt was claimed (clocks differ a little).
LOOKUP_MARGIN = timedelta(seconds=30)
# How long a stopping worker keeps trying to write outcomes the database does not take.
FLUSH_ON_STOP = 30.0


def worker_name() -> str:
    """This worker's identity in ``claimed_by``: host, process id and a random part."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


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
    """Sends queued messages through the senders of the configured channels.

    Rows are claimed (``queued -> sending``, a lease of ``lease`` held by ``worker_id``) before
    they are handed to a channel. On PostgreSQL any number of workers claim side by side
    (``FOR UPDATE SKIP LOCKED``); on SQLite writes are serialised anyway and ``lock`` keeps the
    delivery loop to one process. A conversational reply is claimed only when no earlier reply to
    the same chat or number is still waiting (for at most :data:`ORDER_HOLD`), so a reply held back
    for a retry is not overtaken by the next one. ``health`` says how the loop is doing.
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
        lease: timedelta = LEASE,
        worker_id: str | None = None,
    ) -> None:
        self.db = db
        self.senders = dict(senders)
        self.options_for = options_for
        self.policy = policy or RetryPolicy()
        self.clock = clock
        self.lock = lock or AlwaysLeader()
        self.lease = lease
        self.worker_id = worker_id or worker_name()
        self.health = Part("delivery", logger=log, backoff_cap=max(0.5, lease.total_seconds() / 3))
        self._skip_locked = db.dialect.name == "postgresql"
        self._flush_until: float | None = None  # set when stopping: give up writing after this
        self._held: set[int] = set()  # rows with a send in progress (their leases are renewed)
        self._beating: asyncio.Task[None] | None = None

    async def deliver(self, message_ids: Sequence[int]) -> None:
        """Send these messages now, one after another in id order, if they are queued and due
        (if the database is unavailable, the loop sends them once it is back)."""
        for message_id in sorted(message_ids):
            try:
                claimed = await asyncio.to_thread(self._claim, 1, message_id=message_id)
            except SQLAlchemyError as exc:
                self.health.down(exc)
                return
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
        look again after ``interval`` seconds when there was nothing to do; take over expired
        leases once this loop has reached the database for a whole lease (so after an outage
        every live worker renews its own first). Any error backs off and carries on. Sends in
        flight are finished before it returns."""
        stop = stop or asyncio.Event()
        inflight: dict[str, set[asyncio.Task[None]]] = {channel: set() for channel in self.senders}
        stopping = asyncio.create_task(stop.wait())
        lease = self.lease.total_seconds()
        next_release = 0.0
        try:
            while not stop.is_set():
                wait = interval
                try:
                    leading = await asyncio.to_thread(self.lock.try_acquire)
                    reached = not leading  # a standby needs no database
                    if leading:
                        if time.monotonic() >= next_release and self.health.healthy_for() >= lease:
                            keep = frozenset(self._held)  # ours, in progress: late, not dead
                            await asyncio.to_thread(release_expired, self.db, now=self.clock(), keep=keep)
                            next_release = time.monotonic() + min(interval, lease / 2)
                            reached = True
                        reached = await self._top_up(inflight) or reached
                    if reached:  # only a round that reached the database says it is back
                        self.health.up("running" if leading else "standby")
                except Exception as exc:  # the database, the lock file: back off, carry on
                    wait = self.health.down(exc)
                running = set().union(*inflight.values())
                await asyncio.wait({stopping, *running}, timeout=wait, return_when=FIRST_COMPLETED)
        finally:
            stopping.cancel()
            self._flush_until = time.monotonic() + FLUSH_ON_STOP
            running = set().union(*inflight.values())
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            self.health.set("stopped")
            try:
                await asyncio.to_thread(self.lock.release)
            except Exception as exc:
                log.warning("releasing the delivery lock failed: %s", describe(exc))

    def heartbeat(self) -> int:
        """Renew the leases of the rows this worker is sending now; how many."""
        held = list(self._held)
        if not held:
            return 0
        with self.db.begin() as conn:
            return outbox_queries.renew_leases(
                conn, message_ids=held, worker_id=self.worker_id, until=self.clock() + self.lease
            )

    async def _top_up(self, inflight: dict[str, set[asyncio.Task[None]]]) -> bool:
        """Claim for every channel with room; whether it asked the database at all."""
        asked = False
        for channel, tasks in inflight.items():
            room = self._room(channel) - len(tasks)
            if room <= 0:
                continue
            batch = await asyncio.to_thread(self._claim_due, channel, room)
            asked = True
            for outgoing in batch:
                task = asyncio.create_task(self._send(outgoing), name=f"send-{outgoing.message_id}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(_log_failure)
        return asked

    def _room(self, channel: str) -> int:
        sender = self.senders.get(channel)
        return max(1, sender.max_in_flight) if sender is not None else 1

    # -- one message ------------------------------------------------------------------------

    async def _send(self, outgoing: Outgoing) -> None:
        """Send one claimed message and record how it went; its lease is renewed meanwhile."""
        self._held.add(outgoing.message_id)
        if self._beating is None or self._beating.done():
            self._beating = asyncio.create_task(self._beat(), name="lease-heartbeat")
        try:
            await self._send_claimed(outgoing)
        finally:
            self._held.discard(outgoing.message_id)

    async def _beat(self) -> None:
        """Renew this worker's leases every third of a lease while any send is in progress (a
        slow provider, an outcome waiting for the database): only a dead worker's expire."""
        while self._held:
            await asyncio.sleep(self.lease.total_seconds() / 3)
            if not self._held:
                return
            try:
                await asyncio.to_thread(self.heartbeat)
            except SQLAlchemyError as exc:
                self.health.down(exc)

    async def _send_claimed(self, outgoing: Outgoing) -> None:
        sender = self.senders.get(outgoing.channel)
        if sender is None:
            reason = f"channel {outgoing.channel!r} is not configured"
            await self._write(self._finish, outgoing, SendError(reason, retryable=False))
            return
        if outgoing.reconcile_since is not None and await self._reconcile(sender, outgoing):
            return
        outcome: str | SendError | None
        try:
            outcome = await sender.send(outgoing)
        except SendError as exc:
            log.warning(
                "sending message %d on %s failed: %s", outgoing.message_id, outgoing.channel, exc.reason
            )
            outcome = exc
        except SQLAlchemyError as exc:  # senders use the database only before handing a message over
            outcome = SendError(f"database unavailable before sending ({describe(exc)})", retryable=True)
        except Exception as exc:  # a bug or an unexpected provider answer: it may have gone
            log.exception("sending message %d on %s raised", outgoing.message_id, outgoing.channel)
            outcome = SendError(f"{type(exc).__name__}: {exc}", retryable=True, ambiguous=True)
        await self._write(self._finish, outgoing, outcome)

    async def _reconcile(self, sender: Sender, outgoing: Outgoing) -> bool:
        """An earlier attempt was cut off before the provider answered: find out whether it went.
        True when settled here (found, or marketing that may not be re-sent); False: send it."""
        since, channel = outgoing.reconcile_since, outgoing.channel
        assert since is not None
        if outgoing.provider_id is not None:  # the provider's answer was written after all
            note = f"already accepted by {channel} as {outgoing.provider_id}; not sent again"
            await self._write(self._finish, outgoing, outgoing.provider_id, note)
            return True
        if isinstance(sender, Reconciler):
            try:
                candidates = await sender.look_up(outgoing, since - LOOKUP_MARGIN)
            except SendError as exc:
                failed = SendError(
                    f"look-up before a resend failed: {exc.reason}",
                    retryable=True,
                    retry_after=exc.retry_after,
                    ambiguous=True,
                )
                await self._write(self._finish, outgoing, failed)
                return True
            found = await self._read(self._unrecorded, candidates, outgoing.message_id)
            if found is not None:
                note = f"found at {channel} by look-up: accepted before the cut-off; not sent again"
                log.info("message %d was already accepted as %s: not sent again", outgoing.message_id, found)
                await self._write(self._finish, outgoing, found, note)
                return True
            return False
        if outgoing.marketing:
            reason = (
                f"cut off before {channel} answered; {channel} has no look-up: not re-sent (at most once)"
            )
            await self._write(self._unknown, outgoing, reason)
            return True
        reason = (
            f"an earlier attempt was cut off before {channel} answered and {channel} has no look-up: "
            "a conversational reply is sent again"
        )
        await self._write(self._decide, outgoing, "resend", reason)
        return False

    async def _write(self, write: Callable[..., object], *args: Any) -> None:
        """Run the database write ``write(*args)`` until it goes through: an outcome is kept in
        memory and written again with backoff, never dropped nor turned into a retry (a stopping
        worker gives up after :data:`FLUSH_ON_STOP` seconds and logs what it could not write)."""
        while True:
            try:
                await asyncio.to_thread(write, *args)
                return
            except IntegrityError as exc:  # no use trying again: leave it to the lease's expiry
                log.error("could not record %s%r: %s", write.__name__, args, describe(exc))
                return
            except SQLAlchemyError as exc:
                wait = self.health.down(exc)
                if self._flush_until is not None and time.monotonic() > self._flush_until:
                    log.error("gave up writing %s%r: the database is still unavailable", write.__name__, args)
                    return
                await asyncio.sleep(wait)

    async def _read(self, read: Callable[..., Any], *args: Any) -> Any:
        """``read(*args)`` in a thread, tried again with backoff while the database is away."""
        while True:
            try:
                return await asyncio.to_thread(read, *args)
            except SQLAlchemyError as exc:
                await asyncio.sleep(self.health.down(exc))

    def _unrecorded(self, candidates: Sequence[str], message_id: int) -> str | None:
        """The first of the provider's ids that no other message of ours is recorded with."""
        if not candidates:
            return None
        with self.db.connect() as conn:
            taken = outbox_queries.taken_provider_ids(conn, candidates=candidates, other_than=message_id)
        return next((c for c in candidates if c not in taken), None)

    def _claim_due(self, channel: str, limit: int) -> list[Outgoing]:
        return self._claim(limit, channel=channel)

    def _claim(
        self, limit: int, *, channel: str | None = None, message_id: int | None = None
    ) -> list[Outgoing]:
        """Mark up to ``limit`` due rows (of ``channel``, or the one ``message_id``) as sending
        (oldest first) under this worker's lease; refuse the marketing ones whose customer may no
        longer be contacted."""
        now = self.clock()
        with self.db.begin() as conn:
            rows = outbox_queries.claim_due(
                conn,
                limit=limit,
                now=now,
                worker_id=self.worker_id,
                lease=self.lease,
                order_hold=ORDER_HOLD,
                skip_locked=self._skip_locked,
                channel=channel,
                message_id=message_id,
            )
            marketing = {r.customer_id for r in rows if r.marketing}
            refusals = _refusals(conn, marketing) if marketing else {}
            refused = {r.id for r in rows if r.marketing and r.customer_id in refusals}
            opted_out = _opted_out_replies(conn, [r for r in rows if not r.marketing])
            if opted_out:
                _refuse_opted_out(conn, [r for r in rows if r.id in opted_out], now)
                refused |= opted_out
            for row in rows:
                if row.id in refused and row.id not in opted_out:
                    error = f"contact policy: {refusals[row.customer_id]}"
                    outbox_queries.fail_message(conn, message_id=row.id, error=error)
        return [
            Outgoing(
                r.id,
                r.channel,
                r.address,
                r.text,
                self.options_for(r.intent or "", r.question_key),
                r.attempts,
                bool(r.marketing),
                r.reconcile_since,
                r.provider_message_id,
                r.intent,
                r.customer_id,
            )
            for r in sorted(rows, key=lambda r: r.id)
            if r.id not in refused
        ]

    def _unknown(self, outgoing: Outgoing, reason: str) -> None:
        with self.db.begin() as conn:
            _mark_unknown(conn, [outgoing.message_id], reason[:500], self.clock(), attempt=outgoing.attempt)

    def _decide(self, outgoing: Outgoing, outcome: str, reason: str) -> None:
        """Record a decision about this attempt before acting on it (e.g. ``resend``)."""
        with self.db.begin() as conn:
            outbox_queries.add_attempt(
                conn,
                message_id=outgoing.message_id,
                attempt=outgoing.attempt,
                outcome=outcome,
                error=reason[:500],
                provider_message_id=None,
                claimed_at=outgoing.reconcile_since,
                at=self.clock(),
            )

    def _finish(self, outgoing: Outgoing, outcome: str | SendError | None, note: str | None = None) -> None:
        """Record how this attempt ended (``note``: why, for an accepted send found again)."""
        now = self.clock()
        provider_id = None
        reconcile_from_claim = False
        lookup = isinstance(self.senders.get(outgoing.channel), Reconciler)
        values: dict[str, object]
        if isinstance(outcome, SendError) and outcome.reroute is not None:
            channel, address = outcome.reroute
            if channel in self.senders:
                values = {
                    "status": DeliveryStatus.QUEUED,
                    "channel": channel,
                    "address": address,
                    "next_attempt_at": None,
                    "reconcile_since": None,
                    "lease_expires_at": None,
                    "error": outcome.reason[:500],
                }
                result, error = REROUTED, outcome.reason
            else:
                reason = f"{outcome.reason}; but {channel} is not configured here"
                outcome = SendError(reason, retryable=False)
        if isinstance(outcome, SendError) and outcome.reroute is not None:
            pass  # decided above
        elif isinstance(outcome, SendError):
            if outcome.ambiguous and outgoing.marketing and not lookup:
                self._unknown(outgoing, outcome.reason)  # it may have gone: at most once
                return
            last = not outcome.retryable or outgoing.attempt >= self.policy.max_attempts
            error = outcome.reason
            values = {"lease_expires_at": None}
            if last:
                values["status"] = DeliveryStatus.FAILED
            else:
                wait = self.policy.delay(outgoing.attempt, outcome.retry_after)
                values.update(status=DeliveryStatus.QUEUED, next_attempt_at=now + timedelta(seconds=wait))
            if outcome.ambiguous and not last:
                if lookup:  # looked up before it is sent again
                    reconcile_from_claim = True
                    error += f"; looked up at {outgoing.channel} before any resend"
                else:
                    error += f"; {outgoing.channel} has no look-up: the reply is sent again (never marketing)"
            elif not outcome.ambiguous:
                values["reconcile_since"] = None  # nothing went: the look-up (if any) is done
            values["error"] = error[:500]
            result = "failed" if last else "retry"
        else:
            values = {
                "status": DeliveryStatus.SENT,
                "sent_at": now,
                "error": None,
                "next_attempt_at": None,
                "reconcile_since": None,
                "lease_expires_at": None,
            }
            if outcome is not None:
                values["provider_message_id"] = provider_id = outcome
            result, error = "sent", note or ""
        with self.db.begin() as conn:
            claimed = outbox_queries.settle_claim(
                conn,
                message_id=outgoing.message_id,
                attempt=outgoing.attempt,  # this claim, not a later one
                worker_id=self.worker_id,
                values=values,
                reconcile_from_claim=reconcile_from_claim,
            )
            if claimed is None and provider_id is not None:
                # A status callback may have settled it first (it was delivered before we
                # finished): the send happened all the same, so its attempt is recorded.
                claimed = outbox_queries.settle_accepted_late(
                    conn,
                    message_id=outgoing.message_id,
                    attempt=outgoing.attempt,
                    provider_id=provider_id,
                    final=set(DELIVERY_STATES.values()),
                    now=now,
                )
            if isinstance(outcome, SendError) and outcome.opted_out:
                _mark_opted_out(conn, outgoing.message_id, now)
            if claimed is not None:  # else its lease was taken over (and the attempt recorded)
                outbox_queries.add_attempt(
                    conn,
                    message_id=outgoing.message_id,
                    attempt=outgoing.attempt,
                    outcome=result,
                    error=error[:500] or None,
                    provider_message_id=provider_id,
                    claimed_at=claimed.claimed_at,
                    at=now,
                )
            elif provider_id is not None:
                # Accepted after another worker took the lease over: leave the id where that
                # worker's reconciliation finds it (never send it again).
                outbox_queries.leave_provider_id(
                    conn, message_id=outgoing.message_id, provider_id=provider_id
                )
                log.warning(
                    "message %d was accepted as %s after its lease was taken over; recorded for the "
                    "worker that has it now",
                    outgoing.message_id,
                    provider_id,
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
        message_id = outbox_queries.outbound_by_provider_id(conn, channel=channel, provider_id=provider_id)
        if message_id is None:
            return False
        if error:
            outbox_queries.set_error(conn, message_id=message_id, error=error[:500])
        final = DELIVERY_STATES.get(state.lower())
        if final is not None:
            outbox_queries.set_final_status(
                conn, message_id=message_id, status=final, before=_BEFORE_FINAL, now=now
            )
        if opted_out:
            _mark_opted_out(conn, message_id, now)
    return True


def _mark_opted_out(conn: Connection, message_id: int, now: datetime) -> None:
    """The provider says the recipient of ``message_id`` unsubscribed: record it on the customer
    (an earlier opt-out time is kept)."""
    outbox_queries.mark_opted_out(conn, message_id=message_id, now=now)


def _opted_out_replies(conn: Connection, rows: Sequence[Any]) -> set[int]:
    """The conversational replies among ``rows`` that must not go: the customer, or whoever owns
    the address (a number several customers share), opted out, and the reply is not one the rules
    allow then (the opt-out and opt-in confirmations, HELP)."""
    rows = [r for r in rows if r.intent not in ALLOWED_WHILE_OPTED_OUT]
    if not rows:
        return set()
    customers = {r.customer_id for r in rows if r.customer_id is not None}
    addresses = {r.address for r in rows}
    opted = outbox_queries.opted_out_among(conn, customer_ids=customers, addresses=addresses)
    if not opted:
        return set()
    opted_ids = {cid for cid, _ in opted}
    opted_phones = {phone for _, phone in opted if phone}
    owned = outbox_queries.owned_addresses(conn, customer_ids=opted_ids, addresses=addresses)
    return {
        r.id
        for r in rows
        if r.customer_id in opted_ids or r.address in opted_phones or (r.channel, r.address) in owned
    }


def _refuse_opted_out(conn: Connection, rows: Sequence[Any], now: datetime) -> None:
    outbox_queries.refuse(conn, message_ids=[r.id for r in rows], reason=OPTED_OUT_REASON, now=now)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        # A bug: the row stays "sending" under this worker's lease until the worker stops.
        log.error("delivering %s failed: %s", task.get_name(), exc, exc_info=exc)


def _refusals(conn: Connection, customer_ids: set[int | None]) -> dict[int | None, str]:
    """Why queued marketing may no longer go to these customers (absent: it may go): the audience
    service's last-moment rule, the same standing rules every proactive send was decided by."""
    return last_moment_refusals(conn, customer_ids)


def _mark_unknown(
    conn: Connection, message_ids: Sequence[int], reason: str, now: datetime, *, attempt: int | None = None
) -> None:
    outbox_queries.mark_unknown(conn, message_ids=message_ids, reason=reason, now=now, attempt=attempt)


def _record_attempts(conn: Connection, rows: Sequence[Any], outcome: str, error: str, now: datetime) -> None:
    """Attempts that ended without an answer from the channel (rows: id, attempts, claimed_at)."""
    outbox_queries.record_attempts(conn, rows=rows, outcome=outcome, error=error, now=now)


LEASE_EXPIRED = (
    "lease expired: its worker stopped renewing the claim (it died or lost the database); "
    "looked up before any resend"
)


def release_expired(
    db: Engine, *, now: datetime | None = None, keep: frozenset[int] = frozenset()
) -> tuple[int, ...]:
    """Take back the rows whose lease ran out (their worker died or lost the database): they are
    queued again, marked to be reconciled before any resend (see :meth:`Outbox._reconcile`), and
    the cut-off attempt is recorded. The ids, oldest first. Rows claimed before leases existed
    (no ``lease_expires_at``) count as expired; ``keep``: rows the caller itself is still sending
    (its own renewal may merely be late)."""
    now = now or utcnow()
    with db.begin() as conn:
        rows = outbox_queries.release_expired(conn, now=now, keep=keep)
        _record_attempts(conn, rows, "retry", LEASE_EXPIRED, now)
    if rows:
        log.warning("took over %d message(s) whose worker's lease expired", len(rows))
    return tuple(sorted(r.id for r in rows))
