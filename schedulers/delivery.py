"""The outbox: outbound messages are rows; this sends the queued ones through their channel.

A message goes ``queued -> sending -> sent`` (a status callback may later make it ``delivered``,
``undelivered`` or ``failed``). A send that fails with a retryable error goes back to ``queued``
with ``next_attempt_at`` set by the retry policy; after ``max_attempts``, or on an error that
retrying cannot fix, it is ``failed`` with the reason in ``error``. Every attempt is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine, or_, select, update

from dialogs.engine import ReplyOption
from storage.models import DeliveryStatus, Direction, utcnow
from storage.tables import MESSAGE

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
            await asyncio.to_thread(
                self._finish, outgoing, SendError(f"{type(exc).__name__}: {exc}", retryable=True)
            )
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
                .values(status=DeliveryStatus.SENDING, attempts=MESSAGE.c.attempts + 1)
                .returning(
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
        channel, address, text, intent, question_key, attempts = claimed
        options = self.options_for(intent or "", question_key)
        return Outgoing(message_id, channel, address, text, options, attempts)

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
