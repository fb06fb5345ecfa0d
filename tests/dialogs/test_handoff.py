"""Handoff on both databases: the conversation's state machine, the engine handing a customer to
a person (asked, offered, by rule) and staying quiet meanwhile, business hours, the timeout job,
resolving back to the pending question, proactive messages held back, and the figures per day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, select, update

from dialogs.bank import QuestionBank
from dialogs.engine import DialogEngine, EngineConfig
from dialogs.handoff import OFFER, TIMED_OUT, HandoffConfig, Hours, asks_for_person, waiting_text
from schedulers.handoff import TIMEOUT_INTENT, notify_timeouts
from schedulers.nudges import NudgeConfig, nudge
from schedulers.policy import Contact, PolicyConfig, Skip, decide
from storage import handoff as conversations
from storage.handoff import TransitionError
from storage.handoff_models import ConversationState as S
from storage.tables import CUSTOMER, MESSAGE, STATE
from tests.schedulers import test_broadcasts
from tests.utils import START, Texter

book = test_broadcasts.book  # customers for broadcasts (fixture)

NY = Hours.parse("Mon-Fri 09:00-17:00", "America/New_York")
SATURDAY = datetime(2026, 3, 7, 15, 0, tzinfo=UTC)  # 10:00 in New York, a Saturday


def conv(db: Engine, texter: Texter) -> conversations.Conv:
    customer_id = texter.customer_id
    with db.connect() as conn:
        found = conversations.latest(conn, customer_id=customer_id)
    assert found is not None
    return found


def claim(db: Engine, customer_id: int, *, at: datetime, who: str = "op@example.com") -> None:
    with db.begin() as conn:
        conversations.take_over(conn, customer_id=customer_id, operator=who, now=at)


def resolve(db: Engine, texter: Texter, *, at: datetime) -> None:
    conversation_id = conv(db, texter).id
    with db.begin() as conn:
        conversations.resolve(conn, conversation_id=conversation_id, operator="op@example.com", now=at)


# -- hours and phrases --------------------------------------------------------------------------------


def test_hours_parse_open_and_next_opening_in_the_team_time_zone() -> None:
    assert NY.days == frozenset(range(5))
    assert NY.is_open(datetime(2026, 3, 2, 14, 0, tzinfo=UTC))  # Monday 09:00 New York
    assert not NY.is_open(datetime(2026, 3, 2, 13, 59, tzinfo=UTC))
    assert not NY.is_open(SATURDAY)
    assert NY.next_open(SATURDAY) == datetime(2026, 3, 9, 9, 0, tzinfo=NY.next_open(SATURDAY).tzinfo)
    weekend = Hours.parse("Sat-Sun 10:00-14:00")
    assert weekend.days == frozenset({5, 6})
    assert Hours.parse("Fri-Mon 08:00-12:00").days == frozenset({4, 5, 6, 0})
    for bad in ("weekdays 9-5", "Mon-Fri 17:00-09:00", "Mon-Xyz 09:00-17:00", ""):
        with pytest.raises(ValueError):
            Hours.parse(bad)


def test_the_waiting_message_says_shortly_in_hours_and_when_outside_them() -> None:
    assert "someone from our team will reply here shortly" in waiting_text(
        NY, datetime(2026, 3, 2, 15, tzinfo=UTC)
    )
    text = waiting_text(NY, SATURDAY)
    assert "Mon-Fri 09:00-17:00 (America/New_York)" in text and "on Monday at 09:00" in text
    assert "tomorrow at 09:00" in waiting_text(NY, datetime(2026, 3, 3, 1, tzinfo=UTC))  # Mon 20:00 NY
    assert "today at 09:00" in waiting_text(NY, datetime(2026, 3, 3, 12, tzinfo=UTC))  # Tue 07:00 NY


@pytest.mark.parametrize("text", ["agent", "I want a HUMAN", "can I talk to someone", "a real person please"])
def test_phrases_that_ask_for_a_person(text: str) -> None:
    assert asks_for_person(text)


@pytest.mark.parametrize("text", ["evenings", "just one person", "agents of shield", "$40"])
def test_phrases_that_do_not(text: str) -> None:
    assert not asks_for_person(text)


# -- the engine -------------------------------------------------------------------------------------


def test_asking_for_a_person_waits_for_one_and_the_bot_then_stays_quiet(
    db: Engine, dialog: DialogEngine
) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    question = _state(db, alex.customer_id).pending_key
    replies = alex.say("can I talk to someone?")
    assert [r.intent for r in replies] == ["handoff"]
    assert "someone from our team will reply here shortly" in replies[0].text
    waiting = conv(db, alex)
    assert waiting.state == S.WAITING and waiting.reason == "asked"
    assert waiting.waiting_since == alex.now
    # Meanwhile the bot asks nothing and answers nothing; the message is stored for the operator.
    assert alex.say("my bill is too high") == []
    assert alex.say("what plan fits me?") == []
    last_in = [m for m in alex.messages() if m.direction == "in"][-1]
    assert (last_in.text, last_in.intent) == ("what plan fits me?", "to_person")
    assert _state(db, alex.customer_id).pending_key == question  # the dialogue stands where it was
    # Keywords still work.
    assert [r.intent for r in alex.say("HELP")] == ["help"]
    assert [r.intent for r in alex.say("STOP")] == ["opt_out"]
    assert alex.customer().opted_out_at is not None


def test_out_of_hours_the_customer_is_told_when_a_person_will_answer(db: Engine, bank: QuestionBank) -> None:
    engine = DialogEngine(db, bank, EngineConfig(handoff=HandoffConfig(hours=NY)))
    sam = Texter(engine, now=SATURDAY)
    sam.say("hi")
    [reply] = sam.say("agent")
    assert reply.intent == "handoff"
    assert "reply here on Monday at 09:00" in reply.text and "America/New_York" in reply.text


def test_two_misunderstandings_offer_a_person_and_yes_hands_over(db: Engine, dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    question = _state(db, alex.customer_id).pending_key
    alex.say("banana")
    [offer] = alex.say("purple")
    assert offer.text == OFFER and [o.value for o in offer.options] == ["yes", "no"]
    [reply] = alex.say("yes")
    assert reply.intent == "handoff"
    assert conv(db, alex).reason == "offered"
    assert (
        _state(db, alex.customer_id).pending_key == question
        and _state(db, alex.customer_id).pending_kind == "ask"
    )


def test_an_answer_instead_of_yes_to_the_offer_is_taken_as_the_answer(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    alex.say("banana")
    alex.say("purple")
    replies = alex.say("text message")
    assert alex.prefs()["contact_channel"].value == "sms"
    assert replies[-1].question_key == "contact_time"


def test_the_configured_rule_hands_an_intent_to_a_person(db: Engine, bank: QuestionBank) -> None:
    config = EngineConfig(handoff=HandoffConfig(on_intents=frozenset({"unparsed"})))
    alex = Texter(DialogEngine(db, bank, config))
    alex.say("hi")
    replies = alex.say("banana")
    assert [r.intent for r in replies] == ["handoff"]  # not the re-ask
    assert conv(db, alex).reason == "intent:unparsed"
    assert [m.intent for m in alex.messages() if m.direction == "in"][-1] == "unparsed"


def test_resolve_resumes_at_the_pending_question_on_the_next_message(
    db: Engine, dialog: DialogEngine
) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    alex.say("sms")  # now asked for the contact time
    assert _state(db, alex.customer_id).pending_key == "contact_time"
    alex.say("human please")
    customer_id = alex.customer_id
    claim(db, customer_id, at=alex.now + timedelta(minutes=2))
    assert alex.say("are you there?") == []
    resolve(db, alex, at=alex.now + timedelta(minutes=5))
    assert conv(db, alex).state == S.RESOLVED
    replies = alex.say("thanks!", after=timedelta(minutes=6))
    assert replies[-1].question_key == "contact_time"
    assert conv(db, alex).state == S.BOT  # a new conversation with the bot


def test_resolve_never_asks_for_what_the_operator_recorded(db: Engine, dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    alex.say("sms")
    alex.say("agent")
    customer_id = alex.customer_id
    claim(db, customer_id, at=alex.now)
    with db.begin() as conn:
        conversations.record_fact(
            conn,
            customer_id=customer_id,
            key="contact_time",
            value={"window": "evening", "start": "17:00", "end": "21:00"},
            channel="terminal",
            now=alex.now,
        )
    resolve(db, alex, at=alex.now + timedelta(minutes=1))
    replies = alex.say("ok", after=timedelta(minutes=2))
    assert all(r.question_key != "contact_time" for r in replies)
    assert replies[-1].question_key == "monthly_budget"
    fact = alex.prefs()["contact_time"]
    assert (fact.source, fact.message_id) == ("operator", None)


def test_an_idle_bot_conversation_is_closed_as_contained_and_a_new_one_opened(
    db: Engine, dialog: DialogEngine
) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    first = conv(db, alex)
    alex.say("sms", after=timedelta(hours=25))
    second = conv(db, alex)
    assert second.id != first.id and second.state == S.BOT
    with db.connect() as conn:
        closed = conversations.get(conn, conversation_id=first.id)
    assert closed is not None and closed.state == S.RESOLVED and closed.waiting_since is None


# -- the state machine -------------------------------------------------------------------------------


def test_the_state_machine_refuses_moves_it_does_not_allow(db: Engine, dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    current = conv(db, alex)
    with db.begin() as conn, pytest.raises(TransitionError, match="bot cannot move to bot"):
        conversations.move(conn, conversation_id=current.id, to=S.BOT, now=alex.now)
    alex.say("agent")
    claim(db, current.customer_id, at=alex.now)
    resolve(db, alex, at=alex.now)
    with db.begin() as conn, pytest.raises(TransitionError, match="resolved cannot move to human"):
        conversations.move(conn, conversation_id=current.id, to=S.HUMAN, now=alex.now, operator="x")
    done = conv(db, alex)
    assert done.claimed_at is not None and done.resolved_at is not None


def test_an_operator_can_take_over_from_the_bot(db: Engine, dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    claim(db, alex.customer_id, at=alex.now)
    taken = conv(db, alex)
    assert taken.state == S.HUMAN and taken.reason == "operator" and taken.waiting_since == alex.now
    assert alex.say("hello?") == []


# -- timeout -----------------------------------------------------------------------------------------


def test_nobody_answering_in_time_tells_the_customer_once_and_bot_resumes_on_request(
    db: Engine, dialog: DialogEngine
) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    question = _state(db, alex.customer_id).pending_key
    alex.say("agent")
    asked_at = alex.now
    timeout = timedelta(minutes=15)
    assert notify_timeouts(db, timeout=timeout, now=asked_at + timedelta(minutes=14)) == []
    [message_id] = notify_timeouts(db, timeout=timeout, now=asked_at + timedelta(minutes=16))
    assert notify_timeouts(db, timeout=timeout, now=asked_at + timedelta(minutes=30)) == []  # once
    with db.connect() as conn:
        told = conn.execute(select(MESSAGE).where(MESSAGE.c.id == message_id)).one()
    assert (told.text, told.intent, told.status, told.marketing) == (
        TIMED_OUT,
        TIMEOUT_INTENT,
        "queued",
        False,
    )
    replies = alex.say("BOT", after=timedelta(minutes=20))
    assert replies[-1].question_key == question
    assert conv(db, alex).state == S.BOT


def test_a_reply_from_a_person_stops_the_timeout(db: Engine, dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    alex.say("agent")
    current = conv(db, alex)
    claim(db, current.customer_id, at=alex.now)
    with db.begin() as conn:
        conversations.mark_human_reply(conn, conversation_id=current.id, now=alex.now + timedelta(minutes=1))
    assert notify_timeouts(db, timeout=timedelta(minutes=15), now=alex.now + timedelta(hours=1)) == []
    assert alex.say("BOT") == []  # with a person: "BOT" goes to the person


# -- proactive messages ----------------------------------------------------------------------------


def test_the_contact_policy_holds_back_proactive_messages_while_a_person_has_it() -> None:
    contact = Contact(marketing_consent=True, channel="sms", address="+14155550100", with_person=True)
    decision = decide(contact, datetime(2026, 3, 2, 15, tzinfo=UTC), PolicyConfig())
    assert (decision.allowed, decision.reason, decision.next_allowed_at) == (False, Skip.WITH_PERSON, None)


def test_no_nudge_while_waiting_for_a_person_and_nudges_resume_after_resolve(
    db: Engine, dialog: DialogEngine
) -> None:
    phone = "+14155550188"
    alex = Texter(dialog, phone, channel="sms", phone=phone)
    alex.say("hi")
    alex.say("agent")
    with db.begin() as conn:
        conn.execute(update(CUSTOMER).values(marketing_consent=True, timezone="America/New_York"))
    later = alex.now + timedelta(hours=49)
    while not NY.is_open(later):
        later += timedelta(hours=1)
    report = nudge(db, dialog.bank, NudgeConfig(), PolicyConfig(cap=10), later)
    assert report.queued == 0 and report.skipped_by_reason[Skip.WITH_PERSON] == 1
    resolve(db, alex, at=later)
    assert nudge(db, dialog.bank, NudgeConfig(), PolicyConfig(cap=10), later).queued == 1


# -- figures -----------------------------------------------------------------------------------------


def test_daily_figures_handoff_rate_containment_and_first_reply(db: Engine, dialog: DialogEngine) -> None:
    texters = [Texter(dialog, f"+1415555020{i}") for i in range(4)]
    for t in texters:
        t.say("hi")
    texters[0].say("agent")
    current = conv(db, texters[0])
    claim(db, current.customer_id, at=texters[0].now + timedelta(minutes=3))
    with db.begin() as conn:
        conversations.mark_human_reply(
            conn, conversation_id=current.id, now=texters[0].now + timedelta(minutes=4)
        )
    resolve(db, texters[0], at=texters[0].now + timedelta(minutes=10))
    texters[1].say("sms", after=timedelta(hours=30))  # closes its first conversation as contained
    texters[2].say("sms", after=timedelta(hours=30))
    with db.connect() as conn:
        days = conversations.daily_figures(conn, since=START, until=START + timedelta(days=3))
    first = days[-1]
    assert first.day == START.date()
    assert (first.conversations, first.handed, first.closed, first.contained) == (4, 1, 3, 2)
    assert first.handoff_rate == 0.25 and first.containment == pytest.approx(2 / 3)
    assert first.median_first_reply == 240.0
    assert days[0].conversations == 2 and days[0].handed == 0


def _state(db: Engine, customer_id: int) -> Any:
    with db.connect() as conn:
        return conn.execute(select(STATE).where(STATE.c.customer_id == customer_id)).one()


def test_a_broadcast_leaves_out_a_customer_with_a_person(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    from schedulers import broadcasts as bc
    from tests.schedulers.test_broadcasts import CONFIG, MORNING_NY, create

    bid = create(db, dialog.advisor)
    before = bc.dry_run(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    claim(db, book["dana"], at=MORNING_NY)
    after = bc.dry_run(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    assert after.would_queue == before.would_queue - 1
    assert after.excluded[Skip.WITH_PERSON] == 1


def test_the_outbox_refuses_queued_marketing_while_a_person_has_the_conversation(
    db: Engine, dialog: DialogEngine
) -> None:
    import asyncio

    from schedulers.delivery import Outbox
    from tests.schedulers.test_delivery import Clock, RecordingSender

    alex = Texter(dialog, "+14155550180", channel="sms", phone="+14155550180")
    alex.say("hi")
    alex.say("agent")
    customer_id = alex.customer_id
    with db.begin() as conn:
        offer = conversations.queue_reply(
            conn,
            customer_id=customer_id,
            channel="sms",
            address="+14155550180",
            text="A better plan!",
            now=alex.now,
        )
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == offer).values(marketing=True))
        conn.execute(update(CUSTOMER).values(marketing_consent=True))
    sender = RecordingSender()
    asyncio.run(Outbox(db, {"sms": sender}, lambda *_: (), clock=Clock()).deliver([offer]))
    assert sender.sent == []
    with db.connect() as conn:
        row = conn.execute(select(MESSAGE.c.status, MESSAGE.c.error).where(MESSAGE.c.id == offer)).one()
    assert tuple(row) == ("failed", "contact policy: with person")


def test_the_job_closes_silent_conversations_with_the_bot_but_not_those_for_a_person(
    db: Engine, dialog: DialogEngine
) -> None:
    from schedulers.handoff import close_idle_conversations

    quiet, waiting = Texter(dialog, "+14155550301"), Texter(dialog, "+14155550302")
    quiet.say("hi")
    waiting.say("hi")
    waiting.say("agent")
    day = timedelta(hours=24)
    assert close_idle_conversations(db, idle=day, now=quiet.now + timedelta(hours=23)) == 0
    assert close_idle_conversations(db, idle=day, now=waiting.now + timedelta(hours=25)) == 1
    closed = conv(db, quiet)
    assert (closed.state, closed.resolved_at, closed.claimed_at) == (S.RESOLVED, quiet.now, None)
    assert conv(db, waiting).state == S.WAITING
    assert quiet.say("sms", after=timedelta(hours=26))[-1].question_key == "contact_time"
    assert conv(db, quiet).state == S.BOT and conv(db, quiet).id != closed.id


def test_forget_me_erases_the_operators_notes_too(db: Engine, dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    current = conv(db, alex)
    with db.begin() as conn:
        conversations.add_note(
            conn, conversation_id=current.id, author="op", text="lives at 1 Elm St", now=alex.now
        )
    alex.say("forget me")
    alex.say("yes")
    with db.connect() as conn:
        assert conversations.notes(conn, customer_id=current.customer_id) == []


def test_a_pending_erase_confirmation_does_not_survive_the_handoff(db: Engine, dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    assert [r.intent for r in alex.say("forget me")] == ["confirm"]
    alex.say("agent")
    resolve(db, alex, at=alex.now)
    alex.say("yes")  # not the erase confirmation any more
    assert alex.customer().erased_at is None
