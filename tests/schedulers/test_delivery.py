"""The outbox on both databases: queued replies are sent once, in order, with retries and reasons."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from sqlalchemy import Engine, select, update

from dialogs.engine import DialogEngine, Inbound
from schedulers.delivery import Outbox, Outgoing, RetryPolicy, SendError, record_status
from schedulers.leader import delivery_lock
from storage.db import make_engine
from storage.outreach_models import DELIVERY_ATTEMPT
from storage.tables import CUSTOMER, MESSAGE
from tests.utils import START


class RecordingSender:
    """A channel stand-in that records what it was asked to send and fails on cue."""

    def __init__(self, channel: str = "sms", failures: list[SendError] | None = None) -> None:
        self.channel = channel
        self.max_in_flight = 4
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


def _replies(
    dialog: DialogEngine, text: str = "hi", pid: str = "in-1", address: str = "+14155550180"
) -> list[int]:
    result = dialog.handle(
        Inbound(channel="sms", address=address, text=text, provider_id=pid, received_at=START)
    )
    return [r.message_id for r in result.replies]


def attempts(db: Engine, message_id: int) -> list[tuple[object, ...]]:
    """The recorded attempts of a message: (attempt, outcome, error, provider id, at)."""
    a = DELIVERY_ATTEMPT
    with db.connect() as conn:
        rows = conn.execute(
            select(a.c.attempt, a.c.outcome, a.c.error, a.c.provider_message_id, a.c.at)
            .where(a.c.message_id == message_id)
            .order_by(a.c.id)
        ).all()
    return [tuple(r) for r in rows]


def _row(db: Engine, message_id: int) -> dict[str, object]:
    with db.connect() as conn:
        return dict(conn.execute(select(MESSAGE).where(MESSAGE.c.id == message_id)).one()._mapping)


def test_queued_replies_are_sent_in_order_with_their_buttons(db: Engine, dialog: DialogEngine) -> None:
    ids = _replies(dialog)
    sender = RecordingSender()
    outbox = Outbox(db, {"sms": sender}, dialog.reply_options, clock=Clock())
    asyncio.run(outbox.deliver(list(reversed(ids))))
    assert [m.message_id for m in sender.sent] == ids
    assert [o.label for o in sender.sent[-1].options] == ["text message", "Telegram", "email", "WhatsApp"]
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
    assert attempts(db, first) == [
        (1, "retry", "429 too many requests", None, START),
        (2, "sent", None, f"SM{first:06d}", START + timedelta(seconds=30)),
    ]
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


def test_a_reply_waiting_for_a_retry_is_not_overtaken_by_the_next(db: Engine, dialog: DialogEngine) -> None:
    first, second, *_ = _replies(dialog)
    other = _replies(dialog, pid="in-2", address="+14155550199")
    clock = Clock()
    sender = RecordingSender(failures=[SendError("503 from the provider", retryable=True)])
    outbox = Outbox(db, {"sms": sender}, dialog.reply_options, clock=clock, policy=RetryPolicy(base=10))
    asyncio.run(outbox.deliver([first, second]))
    assert (_row(db, first)["status"], _row(db, second)["status"]) == ("queued", "queued")
    chat = {"customer_id": _row(db, first)["customer_id"], "address": "+14155550180"}
    with db.begin() as conn:
        conn.execute(
            update(CUSTOMER).where(CUSTOMER.c.id == chat["customer_id"]).values(marketing_consent=True)
        )
    offer = _outbound(db, marketing=True, status="queued", claimed_at=None, **chat)
    # The chat's next reply waits behind the first; another chat and a marketing message do not
    # (each chat's replies go one after another: one claim pass each).
    assert asyncio.run(outbox.deliver_due(limit=50)) == 2
    assert {m.message_id for m in sender.sent} == {other[0], offer}
    assert asyncio.run(outbox.deliver_due(limit=50)) == 1
    assert {m.message_id for m in sender.sent} == {*other, offer}
    clock.now += timedelta(seconds=10)
    asyncio.run(outbox.deliver_due())
    asyncio.run(outbox.deliver_due())
    assert [m.message_id for m in sender.sent if m.message_id in (first, second)] == [first, second]


def test_workers_claiming_due_messages_at_once_send_each_once(db_url: str, dialog: DialogEngine) -> None:
    ids = [i for n in range(12) for i in _replies(dialog, pid=f"in-{n}", address=f"+1415555{n:04d}")]
    sender = RecordingSender()
    engines = [make_engine(db_url) for _ in range(3)]

    def work(engine: Engine) -> None:
        outbox = Outbox(engine, {"sms": sender}, dialog.reply_options, clock=Clock())
        while asyncio.run(outbox.deliver_due()):
            pass

    with ThreadPoolExecutor(len(engines)) as pool:
        list(pool.map(work, engines))
    for engine in engines:
        engine.dispose()
    assert sorted(m.message_id for m in sender.sent) == sorted(ids)


# -- at most once for marketing -------------------------------------------------------------------


def _outbound(
    db: Engine, *, marketing: bool, status: str, claimed_at: datetime | None, **extra: object
) -> int:
    from sqlalchemy import insert

    from storage.tables import CUSTOMER

    with db.begin() as conn:
        cid = conn.execute(select(CUSTOMER.c.id).where(CUSTOMER.c.phone == "+14155550181")).scalar()
        if cid is None:
            cid = conn.execute(
                insert(CUSTOMER)
                .values(phone="+14155550181", marketing_consent=True, created_at=START)
                .returning(CUSTOMER.c.id)
            ).scalar_one()
        values = {
            "customer_id": cid,
            "channel": "sms",
            "direction": "out",
            "address": extra.pop("address", "+14155550181"),
            "text": "offer" if marketing else "reply",
            "intent": "suggestion" if marketing else "ask",
            "needs_review": False,
            "status": status,
            "attempts": 1 if status == "sending" else 0,
            "marketing": marketing,
            "claimed_at": claimed_at,
            "created_at": START,
            **extra,
        }
        return int(conn.execute(insert(MESSAGE).values(**values).returning(MESSAGE.c.id)).scalar_one())


def test_expired_leases_are_taken_over_and_without_a_look_up_only_replies_go_again(db: Engine) -> None:
    from schedulers.delivery import release_expired
    from storage.outreach_models import OUTREACH_EVENT

    old, gone = START - timedelta(minutes=10), START - timedelta(seconds=1)
    marketing = _outbound(db, marketing=True, status="sending", claimed_at=old, lease_expires_at=gone)
    reply = _outbound(db, marketing=False, status="sending", claimed_at=old, lease_expires_at=gone)
    live = _outbound(
        db, marketing=True, status="sending", claimed_at=old, lease_expires_at=START + timedelta(seconds=5)
    )
    done = _outbound(db, marketing=True, status="sent", claimed_at=old)
    assert release_expired(db, now=START) == (marketing, reply)
    assert [_row(db, m)["status"] for m in (marketing, reply, live, done)] == [
        "queued",
        "queued",
        "sending",
        "sent",
    ]
    assert _row(db, reply)["reconcile_since"] == old  # looked up from when the cut-off attempt began

    sender = RecordingSender()  # no look-up, like Telegram
    outbox = Outbox(db, {"sms": sender}, lambda *_: (), clock=Clock())
    assert asyncio.run(outbox.deliver_due()) == 2
    assert [m.message_id for m in sender.sent] == [reply]  # the reply goes again; the offer never does
    assert _row(db, marketing)["status"] == "unknown"
    with db.connect() as conn:
        assert conn.execute(select(OUTREACH_EVENT.c.kind, OUTREACH_EVENT.c.message_id)).all() == [
            ("unknown", marketing)
        ]
    assert [a[:2] for a in attempts(db, marketing)] == [(1, "retry"), (2, "unknown")]
    # The resend is a recorded decision, made before the reply went again.
    assert [a[:2] for a in attempts(db, reply)] == [(1, "retry"), (2, "resend"), (2, "sent")]
    assert "no look-up" in str(attempts(db, reply)[1][2])
    assert _row(db, reply)["reconcile_since"] is None
    assert release_expired(db, now=START) == ()


class LookingUp(RecordingSender):
    """A sender whose provider can be asked what it accepted (like Twilio)."""

    def __init__(self, accepted: dict[str, list[str]]) -> None:
        super().__init__()
        self.accepted = accepted  # address -> provider ids, as the provider's look-up finds them
        self.looked_up: list[tuple[int, datetime]] = []

    async def look_up(self, message: Outgoing, since: datetime) -> list[str]:
        self.looked_up.append((message.message_id, since))
        return self.accepted.get(message.address, [])


def test_with_a_look_up_a_cut_off_send_the_provider_took_is_never_sent_again(db: Engine) -> None:
    from schedulers.delivery import LOOKUP_MARGIN, release_expired

    old, gone = START - timedelta(minutes=10), START - timedelta(seconds=1)
    reply = _outbound(db, marketing=False, status="sending", claimed_at=old, lease_expires_at=gone)
    offer = _outbound(
        db, marketing=True, status="sending", claimed_at=old, lease_expires_at=gone, address="+14155550199"
    )
    release_expired(db, now=START)
    sender = LookingUp({"+14155550181": ["SMtaken"]})
    assert asyncio.run(Outbox(db, {"sms": sender}, lambda *_: (), clock=Clock()).deliver_due()) == 2
    assert [m.message_id for m in sender.sent] == [offer]  # not found at the provider: sent, once
    assert sorted(sender.looked_up) == [(reply, old - LOOKUP_MARGIN), (offer, old - LOOKUP_MARGIN)]
    row = _row(db, reply)
    assert (row["status"], row["provider_message_id"]) == ("sent", "SMtaken")
    assert [a[:2] for a in attempts(db, reply)] == [(1, "retry"), (2, "sent")]
    assert "not sent again" in str(attempts(db, reply)[1][2])
    assert (_row(db, offer)["status"], _row(db, offer)["provider_message_id"]) == ("sent", f"SM{offer:06d}")


def test_a_heartbeat_keeps_a_live_workers_claims(db: Engine) -> None:
    from schedulers.delivery import release_expired

    reply = _outbound(db, marketing=False, status="queued", claimed_at=None)
    clock = Clock()
    outbox = Outbox(db, {"sms": RecordingSender()}, lambda *_: (), clock=clock, lease=timedelta(seconds=10))
    [claimed] = outbox._claim(1, message_id=reply)
    assert _row(db, reply)["claimed_by"] == outbox.worker_id
    clock.now = START + timedelta(seconds=8)
    assert outbox.heartbeat() == 0  # renews only what it is sending now
    outbox._held.add(reply)  # as while its send is in progress
    assert outbox.heartbeat() == 1
    assert release_expired(db, now=START + timedelta(seconds=15)) == ()  # renewed: still alive
    late = START + timedelta(seconds=19)
    assert release_expired(db, now=late, keep=frozenset({reply})) == ()  # the caller's own: late only
    assert release_expired(db, now=late) == (reply,)  # no beat since: dead
    outbox._finish(claimed, "SMlate")  # its late answer: the id is kept where the taker looks
    assert (_row(db, reply)["status"], _row(db, reply)["provider_message_id"]) == ("queued", "SMlate")
    sender = RecordingSender()
    assert asyncio.run(Outbox(db, {"sms": sender}, lambda *_: (), clock=clock).deliver_due()) == 1
    assert sender.sent == [] and _row(db, reply)["status"] == "sent"  # accepted once: not sent again


class Exploding:
    channel = "sms"
    max_in_flight = 1

    async def send(self, message: Outgoing) -> str | None:
        raise ConnectionResetError("connection reset after the request was written")


def test_an_ambiguous_failure_makes_marketing_unknown_but_retries_a_reply(db: Engine) -> None:
    offer = _outbound(db, marketing=True, status="queued", claimed_at=None)
    reply = _outbound(db, marketing=False, status="queued", claimed_at=None)
    outbox = Outbox(db, {"sms": Exploding()}, lambda *_: (), clock=Clock())
    asyncio.run(outbox.deliver([offer, reply]))
    assert _row(db, offer)["status"] == "unknown"
    assert "ConnectionResetError" in str(_row(db, offer)["error"])
    assert (_row(db, reply)["status"], _row(db, reply)["attempts"]) == ("queued", 1)
    assert _row(db, offer)["claimed_at"] == START
    [(n, outcome, error, provider, at)] = attempts(db, offer)
    assert (n, outcome, provider, at) == (1, "unknown", None, START) and "ConnectionResetError" in str(error)
    assert [a[1] for a in attempts(db, reply)] == ["retry"]


def test_a_queued_offer_is_not_sent_after_the_customer_opted_out(db: Engine) -> None:
    from storage.tables import CUSTOMER

    offer = _outbound(db, marketing=True, status="queued", claimed_at=None)
    with db.begin() as conn:
        conn.execute(update(CUSTOMER).values(opted_out_at=START))
    sender = RecordingSender()
    asyncio.run(Outbox(db, {"sms": sender}, lambda *_: (), clock=Clock()).deliver([offer]))
    assert sender.sent == []
    assert (_row(db, offer)["status"], _row(db, offer)["error"]) == ("failed", "contact policy: opted out")


def test_on_sqlite_one_delivery_loop_runs_at_a_time_and_another_takes_over(
    db: Engine, dialog: DialogEngine
) -> None:
    ids = _replies(dialog)
    holder, standby = delivery_lock(db), delivery_lock(db)
    assert holder.try_acquire()
    sender = RecordingSender()
    outbox = Outbox(db, {"sms": sender}, dialog.reply_options, clock=Clock(), lock=standby)

    async def run_a_while() -> None:
        stop = asyncio.Event()
        loop = asyncio.create_task(outbox.run(interval=0.05, stop=stop))
        await asyncio.sleep(0.3)
        sent_while_held = len(sender.sent)
        holder.release()  # the delivering process goes away
        await asyncio.sleep(0.5)
        stop.set()
        await loop
        if db.dialect.name == "sqlite":
            assert sent_while_held == 0  # it waited: the lock file was held
        else:
            assert sent_while_held >= 1  # PostgreSQL: every worker delivers (SKIP LOCKED)

    asyncio.run(run_a_while())
    assert sorted(m.message_id for m in sender.sent) == ids


class TimesOut:
    """The provider took the request but its answer never came."""

    channel = "sms"
    max_in_flight = 1

    async def send(self, message: Outgoing) -> str | None:
        raise SendError("ReadTimeout waiting for Twilio", retryable=True, ambiguous=True)


def test_a_timeout_after_the_request_went_makes_marketing_unknown_and_retries_a_reply(db: Engine) -> None:
    offer = _outbound(db, marketing=True, status="queued", claimed_at=None)
    reply = _outbound(db, marketing=False, status="queued", claimed_at=None)
    asyncio.run(Outbox(db, {"sms": TimesOut()}, lambda *_: (), clock=Clock()).deliver([offer, reply]))
    assert (_row(db, offer)["status"], [a[1] for a in attempts(db, offer)]) == ("unknown", ["unknown"])
    assert (_row(db, reply)["status"], [a[1] for a in attempts(db, reply)]) == ("queued", ["retry"])


def test_a_late_answer_does_not_settle_a_later_claim_of_the_same_message(db: Engine) -> None:
    reply = _outbound(db, marketing=False, status="queued", claimed_at=None)
    outbox = Outbox(db, {"sms": RecordingSender()}, lambda *_: (), clock=Clock())
    [first] = outbox._claim(1, message_id=reply)
    with db.begin() as conn:  # recovery took it for dead and another worker claimed it again
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == reply).values(status="queued"))
    [second] = outbox._claim(1, message_id=reply)
    outbox._finish(first, SendError("503", retryable=True))  # the first worker's late answer
    assert (_row(db, reply)["status"], _row(db, reply)["attempts"]) == ("sending", 2)
    outbox._finish(second, "SM2")
    assert (_row(db, reply)["status"], _row(db, reply)["provider_message_id"]) == ("sent", "SM2")
    assert [a[:2] for a in attempts(db, reply)] == [(2, "sent")]


# -- status callbacks and the opt-out guard (every channel) ------------------------------------


def test_record_status_keeps_a_final_state_and_knows_only_sent_messages(
    db: Engine, dialog: DialogEngine
) -> None:
    ids = _replies(dialog)
    asyncio.run(Outbox(db, {"sms": RecordingSender()}, dialog.reply_options, clock=Clock()).deliver(ids))
    sid = f"SM{ids[0]:06d}"
    assert not record_status(db, channel="sms", provider_id="SMnothing", state="delivered")
    assert not record_status(db, channel="telegram", provider_id=sid, state="delivered")  # another channel
    assert record_status(db, channel="sms", provider_id=sid, state="delivered", now=START)
    assert record_status(db, channel="sms", provider_id=sid, state="sent")  # late and not final
    assert record_status(db, channel="sms", provider_id=sid, state="failed", error="Twilio error 30003")
    row = _row(db, ids[0])
    assert (row["status"], row["delivered_at"], row["error"]) == ("delivered", START, "Twilio error 30003")


def test_record_status_records_an_opt_out_the_provider_reports(db: Engine, dialog: DialogEngine) -> None:
    ids = _replies(dialog)
    asyncio.run(Outbox(db, {"sms": RecordingSender()}, dialog.reply_options, clock=Clock()).deliver(ids))
    assert record_status(db, channel="sms", provider_id=f"SM{ids[0]:06d}", state="failed", opted_out=True)
    with db.connect() as conn:
        assert conn.execute(select(CUSTOMER.c.opted_out_at)).scalar_one() is not None
    assert _row(db, ids[0])["status"] == "failed"


def test_replies_to_an_opted_out_customer_are_refused_on_every_channel(
    db: Engine, dialog: DialogEngine
) -> None:
    for channel, address in (("sms", "+14155550180"), ("telegram", "4242")):
        result = dialog.handle(
            Inbound(
                channel=channel, address=address, text="hi", provider_id=f"{channel}-1", received_at=START
            )
        )
        with db.begin() as conn:
            conn.execute(
                update(CUSTOMER).where(CUSTOMER.c.id == result.customer_id).values(opted_out_at=START)
            )
        sender = RecordingSender(channel)
        ids = [r.message_id for r in result.replies]
        asyncio.run(Outbox(db, {channel: sender}, dialog.reply_options, clock=Clock()).deliver(ids))
        assert sender.sent == []
        assert {(_row(db, i)["status"], _row(db, i)["error"]) for i in ids} == {
            ("failed", "recipient opted out")
        }
        assert [a[1] for a in attempts(db, ids[0])] == ["failed"]


def test_the_opt_out_confirmation_still_goes_to_an_opted_out_customer(
    db: Engine, dialog: DialogEngine
) -> None:
    earlier = _replies(dialog)
    stop = _replies(dialog, "STOP", pid="in-2")
    sender = RecordingSender()
    asyncio.run(Outbox(db, {"sms": sender}, dialog.reply_options, clock=Clock()).deliver(earlier + stop))
    assert [m.message_id for m in sender.sent] == stop  # the questions still waiting do not go
    assert _row(db, stop[0])["intent"] == "opt_out"


def test_a_provider_opt_out_on_send_opts_the_customer_out(db: Engine, dialog: DialogEngine) -> None:
    ids = _replies(dialog)
    sender = RecordingSender(failures=[SendError("carrier: unsubscribed", retryable=False, opted_out=True)])
    asyncio.run(Outbox(db, {"sms": sender}, dialog.reply_options, clock=Clock()).deliver(ids))
    with db.connect() as conn:
        assert conn.execute(select(CUSTOMER.c.opted_out_at)).scalar_one() == START
    assert sender.sent == []  # the next reply is refused by the guard, not sent
    assert [_row(db, i)["error"] for i in ids[1:]] == ["recipient opted out"] * (len(ids) - 1)


class CallbackFirstSender(RecordingSender):
    """A provider whose "delivered" callback is recorded before the send has returned."""

    def __init__(self, db: Engine) -> None:
        super().__init__()
        self.db = db

    async def send(self, message: Outgoing) -> str | None:
        sid = await super().send(message)
        assert sid is not None
        with self.db.begin() as conn:  # what an early provider-id write + callback would do
            conn.execute(
                update(MESSAGE).where(MESSAGE.c.id == message.message_id).values(provider_message_id=sid)
            )
        assert record_status(self.db, channel="sms", provider_id=sid, state="delivered", now=START)
        return sid


def test_a_delivered_callback_before_the_send_finished_keeps_the_attempt(
    db: Engine, dialog: DialogEngine
) -> None:
    ids = _replies(dialog)
    asyncio.run(
        Outbox(db, {"sms": CallbackFirstSender(db)}, dialog.reply_options, clock=Clock()).deliver(ids)
    )
    for message_id in ids:
        row = _row(db, message_id)
        assert (row["status"], row["sent_at"]) == ("delivered", START)
        assert [(a[0], a[1], a[3]) for a in attempts(db, message_id)] == [(1, "sent", f"SM{message_id:06d}")]


def test_a_stuck_reply_holds_later_replies_to_the_chat_back_for_a_minute_at_most(db: Engine) -> None:
    from schedulers.delivery import ORDER_HOLD

    stuck = _outbound(
        db, marketing=False, status="queued", claimed_at=None, next_attempt_at=START + timedelta(hours=1)
    )
    later = _outbound(db, marketing=False, status="queued", claimed_at=None)
    clock = Clock()
    sender = RecordingSender()
    outbox = Outbox(db, {"sms": sender}, lambda *_: (), clock=clock)
    assert asyncio.run(outbox.deliver_due()) == 0  # waits behind the earlier reply...
    clock.now = START + ORDER_HOLD
    assert asyncio.run(outbox.deliver_due()) == 1  # ...but not longer than the hold
    assert [m.message_id for m in sender.sent] == [later] and _row(db, stuck)["status"] == "queued"


def test_a_send_slower_than_the_lease_keeps_its_claim(db: Engine) -> None:
    from schedulers.delivery import release_expired

    reply = _outbound(db, marketing=False, status="queued", claimed_at=None)

    class Slow(RecordingSender):
        async def send(self, message: Outgoing) -> str | None:
            await asyncio.sleep(1.2)
            return await super().send(message)

    sender = Slow()
    outbox = Outbox(db, {"sms": sender}, lambda *_: (), lease=timedelta(seconds=0.3))

    async def scenario() -> tuple[int, ...]:
        sending = asyncio.create_task(outbox.deliver([reply]))
        await asyncio.sleep(0.9)  # three leases into the send
        released = await asyncio.to_thread(release_expired, db)
        await sending
        return released

    assert asyncio.run(scenario()) == ()  # renewed all along: nobody took it over
    assert len(sender.sent) == 1 and _row(db, reply)["status"] == "sent"
    assert [a[1] for a in attempts(db, reply)] == ["sent"]
