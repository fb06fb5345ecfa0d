"""The outbox on both databases: queued replies are sent once, in order, with retries and reasons."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

from sqlalchemy import Engine, select

from dialogs.engine import DialogEngine, Inbound
from schedulers.delivery import Outbox, Outgoing, RetryPolicy, SendError
from storage.tables import MESSAGE
from tests.utils import START


class RecordingSender:
    """A channel stand-in that records what it was asked to send and fails on cue."""

    def __init__(self, channel: str = "sms", failures: list[SendError] | None = None) -> None:
        self.channel = channel
        self.sent: list[Outgoing] = []
        self.failures = list(failures or [])

    async def send(self, message: Outgoing) -> str | None:
        if self.failures:
            raise self.failures.pop(0)
        self.sent.append(message)
        return f"SM{message.message_id:06d}"


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def _replies(dialog: DialogEngine, text: str = "hi", pid: str = "in-1") -> list[int]:
    result = dialog.handle(
        Inbound(channel="sms", address="+14155550180", text=text, provider_id=pid, received_at=START)
    )
    return [r.message_id for r in result.replies]


def _row(db: Engine, message_id: int) -> dict[str, object]:
    with db.connect() as conn:
        return dict(conn.execute(select(MESSAGE).where(MESSAGE.c.id == message_id)).one()._mapping)


def test_queued_replies_are_sent_in_order_with_their_buttons(db: Engine, dialog: DialogEngine) -> None:
    ids = _replies(dialog)
    sender = RecordingSender()
    outbox = Outbox(db, {"sms": sender}, dialog.reply_options, clock=Clock())
    asyncio.run(outbox.deliver(list(reversed(ids))))
    assert [m.message_id for m in sender.sent] == ids
    assert [o.label for o in sender.sent[-1].options] == ["text message", "Telegram", "email"]
    row = _row(db, ids[0])
    assert (row["status"], row["attempts"], row["provider_message_id"]) == ("sent", 1, f"SM{ids[0]:06d}")
    assert row["sent_at"] == START
    # Delivering again sends nothing: only queued messages are claimed.
    asyncio.run(outbox.deliver(ids))
    assert len(sender.sent) == len(ids)


def test_a_retryable_failure_waits_for_its_backoff_then_goes(db: Engine, dialog: DialogEngine) -> None:
    ids = _replies(dialog)
    first = ids[0]
    clock = Clock()
    sender = RecordingSender(failures=[SendError("429 too many requests", retryable=True, retry_after=30)])
    outbox = Outbox(db, {"sms": sender}, dialog.reply_options, clock=clock, policy=RetryPolicy(base=2))
    asyncio.run(outbox.deliver(ids))
    row = _row(db, first)
    assert (row["status"], row["attempts"], row["error"]) == ("queued", 1, "429 too many requests")
    assert row["next_attempt_at"] == START + timedelta(seconds=30)  # the provider's retry_after wins
    clock.now = START + timedelta(seconds=29)
    assert asyncio.run(outbox.deliver_due()) == 0
    clock.now = START + timedelta(seconds=30)
    assert asyncio.run(outbox.deliver_due()) == 1
    row = _row(db, first)
    assert (row["status"], row["attempts"], row["error"]) == ("sent", 2, None)


def test_permanent_failures_and_exhausted_retries_fail_with_the_reason(
    db: Engine, dialog: DialogEngine
) -> None:
    first, second, *_ = _replies(dialog)
    clock = Clock()
    sender = RecordingSender(
        failures=[
            SendError("21211 invalid 'To' number", retryable=False),
            SendError("timeout", retryable=True),
            SendError("timeout", retryable=True),
        ]
    )
    outbox = Outbox(
        db, {"sms": sender}, dialog.reply_options, clock=clock, policy=RetryPolicy(max_attempts=2, base=1)
    )
    asyncio.run(outbox.deliver([first]))
    assert (_row(db, first)["status"], _row(db, first)["error"]) == ("failed", "21211 invalid 'To' number")
    asyncio.run(outbox.deliver([second]))
    clock.now += timedelta(seconds=5)
    asyncio.run(outbox.deliver([second]))
    row = _row(db, second)
    assert (row["status"], row["attempts"], row["error"]) == ("failed", 2, "timeout")


def test_a_channel_without_a_sender_fails_the_message_and_says_why(db: Engine, dialog: DialogEngine) -> None:
    [first, *_] = _replies(dialog)
    asyncio.run(Outbox(db, {}, dialog.reply_options, clock=Clock()).deliver([first]))
    assert _row(db, first)["error"] == "channel 'sms' is not configured"


def test_two_deliverers_never_send_one_message_twice(db: Engine, dialog: DialogEngine) -> None:
    ids = _replies(dialog)
    sender = RecordingSender()
    outboxes = [Outbox(db, {"sms": sender}, dialog.reply_options, clock=Clock()) for _ in range(3)]

    async def race() -> None:
        await asyncio.gather(*(o.deliver(ids) for o in outboxes))

    asyncio.run(race())
    assert sorted(m.message_id for m in sender.sent) == ids
