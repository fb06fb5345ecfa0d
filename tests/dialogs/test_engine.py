"""The dialog engine on both databases: one question at a time, memory, commands, resume."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine, func
from sqlmodel import select

from dialogs.bank import QuestionBank
from dialogs.engine import DialogEngine, EngineConfig
from storage.db import transaction
from storage.models import ChannelIdentity, Customer, Message, Preference, Source, Suppression
from storage.queries import is_suppressed, set_preference, upsert_customer
from tests.utils import START, Texter, question_of


def test_first_message_greets_and_asks_the_top_question_only(dialog: DialogEngine) -> None:
    replies = Texter(dialog).say("hi")
    assert replies[0].intent == "greeting"
    assert question_of(replies) == "contact_channel"
    assert [o.label for o in replies[-1].options] == ["text message", "Telegram", "email", "WhatsApp"]


def test_answer_is_stored_with_provenance_and_next_question_follows(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hello")
    result = alex.send("txt me pls")
    assert question_of(list(result.replies)) == "contact_time"
    pref = alex.prefs()["contact_channel"]
    assert pref.value == "sms"
    assert pref.source == Source.ASKED
    assert pref.message_id == result.inbound_id
    assert pref.channel == "terminal"
    assert pref.stated_at == alex.now
    inbound = next(m for m in alex.messages() if m.id == result.inbound_id)
    assert (inbound.question_key, inbound.parsed_value, inbound.intent) == (
        "contact_channel",
        "sms",
        "answer",
    )
    assert inbound.confidence is not None and inbound.confidence >= 0.75


def test_sloppy_answers_are_understood(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    alex.say("telegarm")
    alex.say("evnings")
    alex.say("about 40 bucks a month")
    prefs = alex.prefs()
    assert prefs["contact_channel"].value == "telegram"
    assert prefs["contact_time"].value["window"] == "evening"
    assert prefs["monthly_budget"].value == "40.00"


def test_never_asks_what_it_already_knows(db: Engine, dialog: DialogEngine) -> None:
    with transaction(db) as s:
        c, _ = upsert_customer(s, external_id="C1", name="Maria", phone="+14155550111")
        assert c.id is not None
        for key, value in [
            ("contact_channel", "sms"),
            ("contact_time", {"window": "morning", "start": "08:00", "end": "12:00"}),
        ]:
            set_preference(s, customer_id=c.id, key=key, value=value, source=Source.IMPORT, at=START)
    maria = Texter(dialog, "+14155550111", phone="+14155550111")
    replies = maria.say("hi")
    assert "Maria" in replies[0].text  # joined the imported customer by phone
    assert question_of(replies) == "monthly_budget"


def test_stale_answer_is_reconfirmed_not_reasked(dialog: DialogEngine) -> None:
    # Answer everything, then only the stale budget (stale after 180 days) is re-confirmed.
    alex = Texter(dialog, "+14155550999")
    alex.say("hi")
    for answer in [
        "sms",
        "evenings",
        "$40",
        "price",
        "no contract",
        "none",
        "no",
        "2",
        "5 gb",
        "email",
        "no",
        "browsing",
    ]:
        alex.say(answer)
    assert alex.last is not None and alex.last.replies[-1].intent == "done"
    replies = alex.say("hi", after=timedelta(days=181))
    assert question_of(replies) == "monthly_budget"
    assert replies[-1].intent == "reconfirm"
    assert "$40.00" in replies[-1].text
    replies = alex.say("yes")
    assert alex.prefs()["monthly_budget"].confirmed_at == alex.now
    # The data estimate (also stale after 180 days) is next; "no" asks it afresh.
    assert question_of(replies) == "data_estimate_gb" and replies[-1].intent == "reconfirm"
    replies = alex.say("no")
    assert question_of(replies) == "data_estimate_gb" and replies[-1].intent == "ask"
    alex.say("8 gigs")
    assert alex.prefs()["data_estimate_gb"].value == 8
    assert alex.last is not None and question_of(list(alex.last.replies)) is None


def test_out_of_turn_answer_is_recorded_and_the_pending_question_stays(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    replies = alex.say("actually my budget is $40")
    assert alex.prefs()["monthly_budget"].value == "40.00"
    assert question_of(replies) == "contact_channel"
    assert "budget" in replies[0].text
    # ...and the budget is never asked later.
    alex.say("sms")
    replies = alex.say("evenings")
    assert question_of(replies) == "priority"


def test_unclear_answer_is_reasked_then_a_person_offered_then_left_for_later(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    replies = alex.say("banana")
    assert replies[-1].intent == "reask"
    assert "text message, Telegram, email" in replies[-1].text
    replies = alex.say("purple")
    assert [r.intent for r in replies] == ["offer_person"]
    replies = alex.say("no")
    assert question_of(replies) == "contact_time"
    inbound = [m for m in alex.messages() if m.direction == "in"]
    assert [m.needs_review for m in inbound] == [False, True, True, False]
    # The question comes back once its time is up (a day later by default).
    for answer in [
        "evenings",
        "$40",
        "price",
        "contract",
        "hotspot",
        "no",
        "1",
        "3gb",
        "paper",
        "yes",
        "calls",
    ]:
        alex.say(answer)
    assert alex.last is not None and alex.last.replies[-1].intent == "done"
    replies = alex.say("hi", after=timedelta(hours=25))
    assert question_of(replies) == "contact_channel"


def test_skip_defers_the_question(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    replies = alex.say("skip")
    assert question_of(replies) == "contact_time"
    assert "later" in replies[0].text
    assert "contact_channel" not in alex.prefs()


def test_why_explains_and_repeats_the_question(dialog: DialogEngine, bank: QuestionBank) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    replies = alex.say("why do you ask?")
    assert replies[0].text == bank["contact_channel"].why
    assert question_of(replies) == "contact_channel"


def test_profile_lists_what_is_known_and_when(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    assert "don't know anything" in alex.said("what do you know about me")
    alex.say("email")
    text = alex.said("what do you know about me?")
    assert "contact channel: email (you told me, 2 Mar 2026)" in text


def test_change_my_x_to_y(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    alex.say("sms")
    assert "monthly budget is now $50.00" in alex.said("change my budget to $50")
    assert alex.prefs()["monthly_budget"].value == "50.00"
    assert "I don't keep anything called 'shoe size'" in alex.said("change my shoe size to 42")


def test_forget_me_erases_after_confirmation(db: Engine, dialog: DialogEngine) -> None:
    alex = Texter(dialog, "+14155550177", phone="+14155550177")
    alex.say("hi")
    alex.say("sms")
    cid = alex.customer_id
    assert "Reply YES" in alex.said("forget me")
    assert "kept everything" in alex.said("no")
    assert "contact_channel" in alex.prefs()
    alex.say("delete my data")
    assert "erased" in alex.said("yes")
    with transaction(db) as s:
        assert (
            s.exec(select(func.count()).select_from(Preference).where(Preference.customer_id == cid)).one()
            == 0
        )
        texts = s.exec(
            select(Message.text).where(Message.customer_id == cid, Message.direction == "in")
        ).all()
        assert texts == ["[erased]"]
        assert s.exec(select(ChannelIdentity).where(ChannelIdentity.customer_id == cid)).first() is None
        customer = s.get(Customer, cid)
        assert customer is not None and customer.erased_at is not None and customer.phone is None
        assert is_suppressed(s, channel="terminal", address="+14155550177")
        assert is_suppressed(s, channel="sms", address="+14155550177")
        assert is_suppressed(s, channel="whatsapp", address="+14155550177")  # the same number
        assert s.exec(select(func.count()).select_from(Suppression)).one() == 3
    # Writing again starts afresh, as a new customer.
    replies = alex.say("hi")
    assert replies[0].intent == "greeting"
    assert alex.customer_id != cid


def test_stop_and_start(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    replies = alex.say("STOP")
    assert [r.intent for r in replies] == ["opt_out"]
    assert alex.customer().opted_out_at == alex.now
    assert alex.say("sms") == []  # nothing is sent to an opted-out customer
    assert [r.intent for r in alex.say("help")] == ["help"]
    replies = alex.say("start")
    assert replies[0].intent == "opt_in"
    assert question_of(replies) == "contact_channel"
    assert alex.customer().opted_out_at is None


def test_stop_in_words_opts_out_at_once(dialog: DialogEngine) -> None:
    # A revocation of consent by any reasonable means is honoured at once (FCC, April 2025).
    alex = Texter(dialog)
    alex.say("hi")
    assert alex.say("please stop messaging me")[0].intent == "opt_out"
    assert alex.customer().opted_out_at is not None


def test_help_lists_commands_and_keeps_the_question(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    replies = alex.say("HELP")
    assert "forget me" in replies[0].text
    assert question_of(replies) == "contact_channel"


def test_resume_after_a_restart_and_welcome_back_after_a_long_silence(db: Engine, bank: QuestionBank) -> None:
    alex = Texter(DialogEngine(db, bank))
    alex.say("hi")
    alex.say("sms")
    # A new engine (a restarted process) a day and a half later.
    alex.dialog = DialogEngine(db, bank)
    replies = alex.say("hey", after=timedelta(hours=36))
    assert replies[0].intent == "welcome_back"
    assert "contact time" in replies[0].text
    assert question_of(replies) == "contact_time"
    # A quick reply is not welcomed back.
    assert alex.say("evenings", after=timedelta(minutes=5))[0].intent != "welcome_back"


def test_duplicate_provider_message_returns_the_same_replies_and_writes_nothing(
    db: Engine, dialog: DialogEngine
) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    first = alex.send("sms", provider_id="SM-1")
    with transaction(db) as s:
        before = s.exec(select(func.count()).select_from(Message)).one()
    again = alex.send("sms", provider_id="SM-1")
    assert again.duplicate and not first.duplicate
    assert again.replies == first.replies
    assert again.inbound_id == first.inbound_id
    with transaction(db) as s:
        assert s.exec(select(func.count()).select_from(Message)).one() == before


def test_button_press_answers_like_text(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    replies = alex.say("Telegram", choice="telegram")
    assert alex.prefs()["contact_channel"].value == "telegram"
    replies = alex.say("Evenings", choice="evening")
    assert alex.prefs()["contact_time"].value == {"window": "evening", "start": "17:00", "end": "21:00"}
    assert question_of(replies) == "monthly_budget"


def test_option_number_answers_a_choice(dialog: DialogEngine) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    alex.say("2")
    assert alex.prefs()["contact_channel"].value == "telegram"


def test_config_threshold_and_tries_are_honoured(db: Engine, bank: QuestionBank) -> None:
    strict = DialogEngine(db, bank, EngineConfig(max_failed_tries=3))
    alex = Texter(strict)
    alex.say("hi")
    assert alex.say("banana")[-1].intent == "reask"
    assert alex.say("banana")[-1].intent == "reask"
    assert alex.say("banana")[-1].intent == "offer_person"


def test_warm_up_trains_the_understanding_step_and_teaching_retrains_it(
    db: Engine, bank: QuestionBank
) -> None:
    taught: list[tuple[tuple[str, str], ...]] = [()]
    asked: list[bool] = []

    def provider(_conn: object) -> tuple[tuple[str, str], ...]:
        asked.append(True)
        return taught[0]

    dialog = DialogEngine(db, bank, EngineConfig(), intents_provider=provider)
    dialog.warm_up()
    assert asked  # trained at start-up, with what operators taught
    with db.connect() as conn:
        first = dialog.understander(conn)
        assert dialog.understander(conn) is first
        taught[0] = (("handoff", "zorblax wibble please"),)
        second = dialog.understander(conn)
        assert second is not first
        assert ("handoff", "zorblax wibble please") in second.taught
        assert dialog.understander(conn) is second
