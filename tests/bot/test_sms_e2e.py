"""SMS end to end: the app under uvicorn, Twilio's REST API played by a local stand-in."""

from __future__ import annotations

import asyncio
import logging

import pytest
from sqlalchemy import insert, select

from bot.channels.sms import TwilioSender, build_sms_service
from bot.runtime import build_runtime
from bot.settings import Settings
from dialogs import texts
from schedulers.delivery import Outgoing, SendError
from storage.models import DeliveryStatus, Direction, utcnow
from storage.outreach_models import DELIVERY_ATTEMPT
from storage.tables import MESSAGE
from tests.twilio_standin import CUSTOMER_PHONE, Failure, SmsApp, serve_sms_app
from tests.utils import Texter

OTHER = "+14155550199"


def _inbound(app: SmsApp, phone: str = CUSTOMER_PHONE) -> list[str]:
    return [r.text for r in app.rows(MESSAGE.c.direction == Direction.IN, MESSAGE.c.address == phone)]


def test_a_conversation_by_sms_with_numbered_options(db_url: str) -> None:
    with serve_sms_app(db_url) as app:
        app.sms("hi", sid="SMc1")
        greeting, question = app.standin.wait_for(CUSTOMER_PHONE, 2)
        assert "I'm Rapport" in greeting
        assert question.endswith("Reply 1 for text message, 2 for Telegram, 3 for email, 4 for WhatsApp.")
        app.sms("1", sid="SMc2")
        asked = app.standin.wait_for(CUSTOMER_PHONE, 3)[2]
        assert asked.startswith("Got it: text message. When is a good time")
        assert "Reply 1 for mornings, 2 for afternoons, 3 for evenings" in asked
        app.sms("2", sid="SMc3")
        assert app.standin.wait_for(CUSTOMER_PHONE, 4)[3].startswith("Got it: afternoons.")
        app.sms("$40", sid="SMc4")
        assert "Got it" in app.standin.wait_for(CUSTOMER_PHONE, 5)[4]
        understood = app.rows(MESSAGE.c.direction == Direction.IN)
        assert [(r.question_key, r.parsed_value) for r in understood[1:3]] == [
            ("contact_channel", "sms"),
            ("contact_time", {"window": "afternoon", "start": "12:00", "end": "17:00"}),
        ]
        # Every reply went out through the REST API with its delivery confirmed by callback.
        app.wait_until(
            lambda: all(r.status == "delivered" for r in app.rows(MESSAGE.c.direction == Direction.OUT))
        )
        out = app.rows(MESSAGE.c.direction == Direction.OUT)
        assert len(out) == 5 and all(r.delivered_at is not None for r in out)
        assert {r.provider_message_id for r in out} == {s.sid for s in app.standin.sent}


def test_stop_blocks_every_later_message_until_start(db_url: str) -> None:
    with serve_sms_app(db_url) as app:
        app.sms("hi", sid="SMs1")
        app.standin.wait_for(CUSTOMER_PHONE, 2)
        app.sms("  stop ", sid="SMs2")
        assert app.standin.wait_for(CUSTOMER_PHONE, 3)[2].startswith("You're unsubscribed")
        customer = app.customer()
        assert customer.opted_out_at is not None
        assert app.rows(MESSAGE.c.id == customer.opt_out_message_id)[0].text == "  stop "
        # A proactive message queued for them: the sender refuses it, nothing reaches Twilio.
        with app.runtime.db.begin() as conn:
            conn.execute(
                insert(MESSAGE).values(
                    customer_id=customer.id,
                    channel="sms",
                    direction=Direction.OUT,
                    address=CUSTOMER_PHONE,
                    text="A better plan for you!",
                    intent="ask",
                    question_key="monthly_budget",
                    status=DeliveryStatus.QUEUED,
                    created_at=utcnow(),
                    needs_review=False,
                )
            )
        app.wait_until(lambda: app.rows(MESSAGE.c.text == "A better plan for you!")[0].status == "failed")
        assert app.rows(MESSAGE.c.text == "A better plan for you!")[0].error == "recipient opted out"
        app.sms("what plan fits me?", sid="SMs3")  # answered by nothing while opted out
        app.sms("Start", sid="SMs4")
        bodies = app.standin.wait_for(CUSTOMER_PHONE, 4)
        assert bodies[3].startswith("Welcome back! You're subscribed")
        assert not any("better plan" in b or "fits" in b for b in bodies)
        assert app.customer().opted_out_at is None


@pytest.mark.parametrize("keyword", ["STOPALL", "unsubscribe", "Cancel", "END", "quit", "optout", "REVOKE"])
def test_every_carrier_opt_out_keyword_opts_out(keyword: str, dialog: object) -> None:
    texter = Texter(dialog, channel="sms", phone=CUSTOMER_PHONE)  # type: ignore[arg-type]
    texter.say("hi")
    assert [r.intent for r in texter.say(f" {keyword} ")] == ["opt_out"]
    assert texter.customer().opted_out_at is not None
    assert texter.say("anything") == []
    assert next(r.intent for r in texter.say("unstop")) == "opt_in"


def test_yes_opts_in_only_while_opted_out(dialog: object) -> None:
    texter = Texter(dialog, channel="sms", phone=CUSTOMER_PHONE)  # type: ignore[arg-type]
    texter.say("hi")
    replies = texter.say("YES")  # an answer (or nothing) while subscribed, never an opt-in
    assert "opt_in" not in [r.intent for r in replies]
    assert [r.intent for r in texter.say("stop please")] == ["opt_out"]  # at once, no confirmation
    assert next(r.intent for r in texter.say("Yes")) == "opt_in"  # now it is the carrier's opt-in
    assert texter.customer().opted_out_at is None


def test_help_and_a_stop_in_words_by_sms(db_url: str) -> None:
    with serve_sms_app(db_url) as app:
        app.sms("HELP", sid="SMh1")
        count = len(app.rows(MESSAGE.c.direction == Direction.OUT))  # greeting, help, a question
        bodies = app.standin.wait_for(CUSTOMER_PHONE, count)
        assert any("STOP (no more messages)" in b for b in bodies)
        app.sms("pls dont text me anymore", sid="SMh2")  # any reasonable wording opts out at once
        assert app.standin.wait_for(CUSTOMER_PHONE, count + 1)[count].startswith("You're unsubscribed")
        assert app.customer().opted_out_at is not None
        app.sms("info", sid="SMh4")  # HELP while opted out is still answered (CTIA)
        assert "opted out" in app.standin.wait_for(CUSTOMER_PHONE, count + 2)[count + 1]


def test_an_sms_picture_says_text_only_and_asks_the_pending_question_again(db_url: str) -> None:
    with serve_sms_app(db_url) as app:
        app.sms("hi", sid="SMm0")
        count = len(app.rows(MESSAGE.c.direction == Direction.OUT))
        question = app.standin.wait_for(CUSTOMER_PHONE, count)[-1]
        app.sms(
            "",
            sid="SMm1",
            media=1,
            MediaUrl0="https://api.twilio.com/media/ME1",
            MediaContentType0="image/jpeg",
        )
        bodies = app.standin.wait_for(CUSTOMER_PHONE, count + 2)
        assert bodies[count:] == [texts.TEXT_ONLY, question]
        (picture,) = app.rows(MESSAGE.c.provider_message_id == "SMm1")
        assert picture.intent == "media"
        app.sms("   ", sid="SMm2")
        assert app.standin.wait_for(CUSTOMER_PHONE, count + 4)[count + 2 :] == [texts.EMPTY, question]
        app.sms("", sid="SMm1", media=1, MediaUrl0="https://api.twilio.com/media/ME1")  # a retry
        assert len(app.rows(MESSAGE.c.provider_message_id == "SMm1")) == 1
        app.sms("STOP", sid="SMm4", media=1)  # a keyword with a picture is still the keyword
        assert app.standin.wait_for(CUSTOMER_PHONE, count + 5)[count + 4].startswith("You're unsubscribed")
        app.sms("", sid="SMm5", media=1)  # opted out: not even "text only"
        app.sms("START", sid="SMm6")
        bodies = app.standin.wait_for(CUSTOMER_PHONE, count + 6)
        assert bodies[count + 5].startswith("Welcome back")
        assert bodies.count(texts.TEXT_ONLY) == 1


def test_a_rate_limited_send_is_retried_and_arrives_once(db_url: str) -> None:
    with serve_sms_app(db_url) as app:
        app.standin.fail_next(Failure(429, 20429, "Too Many Requests", retry_after="0"), times=2)
        app.sms("hi", sid="SMr1")
        bodies = app.standin.wait_for(CUSTOMER_PHONE, 2)
        assert sum("I'm Rapport" in b for b in bodies) == 1
        app.wait_until(lambda: all(r.status == "delivered" for r in app.rows(MESSAGE.c.direction == "out")))
        assert app.standin.requests == 4
        assert sum(r.attempts for r in app.rows(MESSAGE.c.direction == "out")) == 4


def test_21610_opts_the_customer_out(db_url: str) -> None:
    with serve_sms_app(db_url) as app:
        app.standin.fail_next(Failure(400, 21610, "Attempt to send to unsubscribed recipient"))
        app.sms("hi", sid="SMu1")
        app.wait_until(lambda: all(r.status == "failed" for r in app.rows(MESSAGE.c.direction == "out")))
        first, second = app.rows(MESSAGE.c.direction == "out")
        assert "21610" in first.error and "Attempt to send to unsubscribed recipient" in first.error
        assert second.error == "recipient opted out"
        assert app.customer().opted_out_at is not None
        assert app.standin.to(CUSTOMER_PHONE) == []


def test_delivery_failures_reported_by_callback_are_recorded(db_url: str) -> None:
    with serve_sms_app(db_url) as app:
        app.standin.outcomes[OTHER] = ("undelivered", "30003")
        app.standin.outcomes[CUSTOMER_PHONE] = ("failed", "21610")
        app.sms("hi", sid="SMd1", sender=OTHER)
        app.wait_until(
            lambda: all(
                r.status == "undelivered"
                for r in app.rows(MESSAGE.c.address == OTHER, MESSAGE.c.direction == "out")
            )
        )
        assert all(
            "30003" in r.error for r in app.rows(MESSAGE.c.address == OTHER, MESSAGE.c.direction == "out")
        )
        assert app.customer(OTHER).opted_out_at is None
        app.sms("hi", sid="SMd2")
        app.wait_until(lambda: app.customer().opted_out_at is not None)
        # Twilio's "queued" never puts a sent message back in our outbox.
        assert all(s in ("queued", "sent", "undelivered", "failed") for _, s, _ in app.standin.callbacks)
        assert all(answer == 204 for _, _, answer in app.standin.callbacks)


def test_a_status_for_an_unknown_message_is_acknowledged(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="bot.intake")
    with serve_sms_app(db_url) as app:
        answer = app.post("/sms/status", {"MessageSid": "SMunknown", "MessageStatus": "delivered"})
        assert answer.status_code == 204
    assert "unknown message SMunknown" in caplog.text


def test_twilio_errors_map_to_retry_or_fail(db_url: str) -> None:
    with serve_sms_app(db_url) as app:
        sender = app.service.sender
        assert isinstance(sender, TwilioSender)
        with app.runtime.db.begin() as conn:  # "sending": the outbox loop leaves it alone
            message_id = conn.execute(
                insert(MESSAGE)
                .values(
                    channel="sms",
                    direction="out",
                    address=OTHER,
                    text="Hello",
                    status="sending",
                    created_at=utcnow(),
                    needs_review=False,
                    intent="ask",
                )
                .returning(MESSAGE.c.id)
            ).scalar_one()
        outgoing = Outgoing(message_id, "sms", OTHER, "Hello", (), 1)

        def attempt(failure: Failure) -> SendError:
            app.standin.fail_next(failure)
            with pytest.raises(SendError) as caught:
                asyncio.run(sender.send(outgoing))
            return caught.value

        limited = attempt(Failure(429, 20429, "Too Many Requests", retry_after="7"))
        assert limited.retryable and limited.retry_after == 7
        assert attempt(Failure(503, 20500, "Service Unavailable")).retryable
        invalid = attempt(Failure(400, 21211, "The 'To' number is not a valid phone number."))
        assert not invalid.retryable
        assert "21211" in invalid.reason and "not a valid phone number" in invalid.reason
        assert asyncio.run(sender.send(outgoing)).startswith("SM")
        assert app.standin.to(OTHER) == ["Hello"]


def test_sms_stays_off_without_twilio_settings(db_url: str) -> None:
    def service(**values: str) -> object:
        runtime = build_runtime(Settings(database_url=db_url, _env_file=None, **values))  # type: ignore[arg-type]
        try:
            return build_sms_service(runtime)
        finally:
            runtime.db.dispose()

    assert service() is None
    assert service(twilio_account_sid="AC1") is None
    with pytest.raises(ValueError, match="PUBLIC_BASE_URL"):
        service(twilio_account_sid="AC1", twilio_auth_token="tok-123", twilio_from_number="+15005550006")


def test_every_send_records_its_attempt_whatever_the_order_of_callbacks(db_url: str) -> None:
    # The stand-in reports "sent" then "delivered" the moment it has accepted a message, often
    # before the outbox has recorded the send.
    with serve_sms_app(db_url) as app:
        for i in range(6):
            app.sms(["hi", "text", "evenings", "skip", "why", "help"][i], sid=f"SMcb{i}")
        app.wait_until(
            lambda: all(r.status == "delivered" for r in app.rows(MESSAGE.c.direction == "out")), timeout=30
        )
        out = app.rows(MESSAGE.c.direction == "out")
        with app.runtime.db.connect() as conn:
            rows = conn.execute(
                select(
                    DELIVERY_ATTEMPT.c.message_id,
                    DELIVERY_ATTEMPT.c.outcome,
                    DELIVERY_ATTEMPT.c.provider_message_id,
                )
            ).all()
        assert sorted(r.message_id for r in rows) == sorted(r.id for r in out)
        assert {r.outcome for r in rows} == {"sent"}
        assert {r.provider_message_id for r in rows} == {r.provider_message_id for r in out}
        assert len(app.standin.to(CUSTOMER_PHONE)) == len(out)
