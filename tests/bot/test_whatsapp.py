"""WhatsApp end to end: the app under uvicorn, Twilio's Messages and Content APIs played by the
local stand-in, webhooks signed with twilio's RequestValidator, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import Engine, insert, select, update

from bot.channels.whatsapp import WhatsAppService
from bot.settings import Settings
from bot.whatsapp_templates import TemplateError, load_templates
from dialogs import texts
from dialogs.engine import DialogEngine, ReplyOption
from schedulers.audience import contact_of, pick_channel
from schedulers.delivery import Outgoing
from schedulers.nudges import NudgeConfig, nudge
from schedulers.policy import PolicyConfig, Skip, decide, whatsapp_refusal
from storage.models import DeliveryStatus, Direction, utcnow
from storage.outreach_models import DELIVERY_ATTEMPT, OUTREACH_EVENT, WHATSAPP_CONTENT
from storage.tables import CUSTOMER, IDENTITY, MESSAGE
from tests.twilio_standin import CUSTOMER_PHONE, WHATSAPP_FROM, Sent, SmsApp, serve_sms_app
from tests.utils import Texter

WA = f"whatsapp:{CUSTOMER_PHONE}"
SUGGESTION_SID = "HX" + "a" * 32


def _templates(tmp_path: Path) -> Path:
    path = tmp_path / "whatsapp_templates.toml"
    path.write_text(
        f'[suggestion]\ncontent_sid = "{SUGGESTION_SID}"\nvariables = {{ 1 = "{{name}}", 2 = "{{text}}" }}\n',
        encoding="utf-8",
    )
    return path


def _out(app: SmsApp) -> list[object]:
    return app.rows(MESSAGE.c.direction == Direction.OUT, MESSAGE.c.channel == "whatsapp")


def _replies(app: SmsApp) -> list[Sent]:
    """Every WhatsApp message to the customer, once all the replies queued so far went out."""
    return app.standin.wait_for_whatsapp(CUSTOMER_PHONE, len(_out(app)))


def _customer(app: SmsApp) -> object:
    with app.runtime.db.connect() as conn:
        return conn.execute(select(CUSTOMER).where(CUSTOMER.c.phone == CUSTOMER_PHONE)).one()


def _queue(app: SmsApp, text: str, *, marketing: bool, intent: str = "suggestion") -> int:
    customer = _customer(app)
    with app.runtime.db.begin() as conn:
        if marketing:  # consented to marketing (else the outbox refuses it at the last moment)
            conn.execute(
                update(CUSTOMER).where(CUSTOMER.c.phone == CUSTOMER_PHONE).values(marketing_consent=True)
            )
        return int(
            conn.execute(
                insert(MESSAGE)
                .values(
                    customer_id=customer.id,  # type: ignore[attr-defined]
                    channel="whatsapp",
                    direction=Direction.OUT,
                    address=CUSTOMER_PHONE,
                    text=text,
                    intent=intent,
                    status=DeliveryStatus.QUEUED,
                    marketing=marketing,
                    created_at=utcnow(),
                    needs_review=False,
                )
                .returning(MESSAGE.c.id)
            ).scalar_one()
        )


def _queue_for(app: SmsApp, text: str, *, intent: str) -> int:
    """Queue marketing on WhatsApp for the customer whose WhatsApp address is ours (any phone)."""
    with app.runtime.db.begin() as conn:
        customer_id = conn.execute(
            select(IDENTITY.c.customer_id).where(
                IDENTITY.c.channel == "whatsapp", IDENTITY.c.address == CUSTOMER_PHONE
            )
        ).scalar_one()
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == customer_id).values(marketing_consent=True))
        return int(
            conn.execute(
                insert(MESSAGE)
                .values(
                    customer_id=customer_id,
                    channel="whatsapp",
                    direction=Direction.OUT,
                    address=CUSTOMER_PHONE,
                    text=text,
                    intent=intent,
                    status=DeliveryStatus.QUEUED,
                    marketing=True,
                    created_at=utcnow(),
                    needs_review=False,
                )
                .returning(MESSAGE.c.id)
            ).scalar_one()
        )


def _age_session(app: SmsApp, hours: float) -> None:
    """The customer last wrote ``hours`` ago, as Rapport and the stand-in both know it."""
    then = utcnow() - timedelta(hours=hours)
    with app.runtime.db.begin() as conn:
        conn.execute(
            update(CUSTOMER).where(CUSTOMER.c.phone == CUSTOMER_PHONE).values(whatsapp_session_at=then)
        )
    app.standin.open_session(CUSTOMER_PHONE, at=then.timestamp())


def _choose_whatsapp(app: SmsApp) -> None:
    """A conversation on WhatsApp in which the customer picks WhatsApp (their opt-in)."""
    app.whatsapp("hi", sid="SMw1")
    _replies(app)
    app.whatsapp("4", sid="SMw2")
    _replies(app)


def test_a_whatsapp_conversation_with_buttons_joins_the_customer_by_phone(db_url: str) -> None:
    with serve_sms_app(db_url, whatsapp=True) as app:
        app.sms("hi", sid="SMsms1")  # known by SMS first
        app.standin.wait_for(CUSTOMER_PHONE, 2)
        app.whatsapp("hello again", sid="SMw1", path="/sms/inbound")  # the same webhook works too
        question = _replies(app)[-1]
        # Four options: numbered text, free-form in the window, from the WhatsApp sender.
        assert question.body.endswith("3 for email, 4 for WhatsApp.")
        assert question.content_sid is None and question.sender == f"whatsapp:{WHATSAPP_FROM}"
        with app.runtime.db.connect() as conn:
            owners = conn.execute(select(IDENTITY.c.channel, IDENTITY.c.customer_id)).all()
        assert {channel for channel, _ in owners} == {"sms", "whatsapp"}
        assert len({customer for _, customer in owners}) == 1  # one customer, joined by E.164
        app.whatsapp("4", sid="SMw2")
        assert "Got it: WhatsApp." in _replies(app)[-1].body
        customer = _customer(app)
        assert customer.whatsapp_opt_in_at is not None  # type: ignore[attr-defined]
        assert customer.whatsapp_session_at is not None  # type: ignore[attr-defined]
        count = len(app.standin.whatsapp(CUSTOMER_PHONE))
        for i, answer in enumerate(["evenings", "$40", "price"]):
            app.whatsapp(answer, sid=f"SMw{3 + i}")
            count = len(_out(app))
            app.standin.wait_for_whatsapp(CUSTOMER_PHONE, count)
        contract = app.standin.whatsapp(CUSTOMER_PHONE)[-1]
        # Three options: quick-reply buttons made through the Content API.
        assert contract.content_sid in app.standin.contents
        assert [b for _, b in contract.buttons] == ["contract", "month_to_month", "no_preference"]
        app.whatsapp(
            "Month to month", sid="SMw9", ButtonPayload="month_to_month", ButtonText="Month to month"
        )
        app.wait_until(lambda: len(app.standin.whatsapp(CUSTOMER_PHONE)) > count)
        (pressed,) = app.rows(MESSAGE.c.provider_message_id == "SMw9")
        assert (pressed.question_key, pressed.parsed_value) == ("contract", "month_to_month")
        app.wait_until(lambda: all(r.status == "delivered" for r in _out(app)))  # type: ignore[attr-defined]


def test_stop_start_and_help_on_whatsapp(db_url: str) -> None:
    with serve_sms_app(db_url, whatsapp=True) as app:
        app.whatsapp("hi", sid="SMs1")
        app.standin.wait_for_whatsapp(CUSTOMER_PHONE, 2)
        app.whatsapp("STOP", sid="SMs2")
        assert app.standin.wait_for_whatsapp(CUSTOMER_PHONE, 3)[2].body.startswith("You're unsubscribed")
        assert _customer(app).opted_out_at is not None  # type: ignore[attr-defined]
        app.whatsapp("what plan fits me?", sid="SMs3")  # answered by nothing while opted out
        app.whatsapp("HELP", sid="SMs4")
        assert "opted out" in app.standin.wait_for_whatsapp(CUSTOMER_PHONE, 4)[3].body
        app.whatsapp("START", sid="SMs5")
        assert app.standin.wait_for_whatsapp(CUSTOMER_PHONE, 5)[4].body.startswith("Welcome back")
        assert _customer(app).opted_out_at is None  # type: ignore[attr-defined]


def test_a_location_or_picture_is_answered_as_on_other_channels(db_url: str) -> None:
    with serve_sms_app(db_url, whatsapp=True) as app:
        app.whatsapp("hi", sid="SMl1")
        question = _replies(app)[-1].body
        app.whatsapp("", sid="SMl2", Latitude="37.78", Longitude="-122.41", MessageType="location")
        bodies = [s.body for s in app.standin.wait_for_whatsapp(CUSTOMER_PHONE, 4)]
        assert bodies[2:] == [texts.TEXT_ONLY, question]
        app.whatsapp(
            "",
            sid="SMl3",
            NumMedia="1",
            MediaUrl0="https://api.twilio.com/m/ME1",
            MediaContentType0="image/jpeg",
        )
        assert [s.body for s in app.standin.wait_for_whatsapp(CUSTOMER_PHONE, 6)][4:] == [
            texts.TEXT_ONLY,
            question,
        ]
        assert {r.intent for r in app.rows(MESSAGE.c.provider_message_id.in_(["SMl2", "SMl3"]))} == {"media"}


def test_outside_the_window_marketing_goes_as_the_configured_template(db_url: str, tmp_path: Path) -> None:
    with serve_sms_app(db_url, whatsapp=True, whatsapp_templates=_templates(tmp_path)) as app:
        _choose_whatsapp(app)
        _age_session(app, 25)
        sent_before = len(app.standin.whatsapp(CUSTOMER_PHONE))
        message_id = _queue(app, "Plan S saves you $12 a month. Switch? YES or NO", marketing=True)
        template = app.standin.wait_for_whatsapp(CUSTOMER_PHONE, sent_before + 1)[-1]
        assert template.content_sid == SUGGESTION_SID
        assert template.content_variables == {
            "1": "Alex",
            "2": "Plan S saves you $12 a month. Switch? YES or NO",
        }
        app.wait_until(lambda: app.rows(MESSAGE.c.id == message_id)[0].status == "delivered")
        # A nudge has no template: not sent on WhatsApp, nothing free-form reaches Twilio; the
        # contact policy moves it to SMS, the reason recorded.
        sms_before = len(app.standin.to(CUSTOMER_PHONE))
        nudge_id = _queue(app, "Still there? When is a good time?", marketing=True, intent="nudge")
        assert app.standin.wait_for(CUSTOMER_PHONE, sms_before + 1)[-1] == "Still there? When is a good time?"
        app.wait_until(lambda: app.rows(MESSAGE.c.id == nudge_id)[0].status == "delivered")
        (nudge_row,) = app.rows(MESSAGE.c.id == nudge_id)
        assert (nudge_row.channel, nudge_row.address) == ("sms", CUSTOMER_PHONE)
        assert _attempts(app, nudge_id)[0][0] == "rerouted"
        assert "whatsapp_window_closed_no_template" in _attempts(app, nudge_id)[0][1]
        assert "rerouted by the contact policy to sms" in _attempts(app, nudge_id)[0][1]
        assert [a[0] for a in _attempts(app, nudge_id)] == ["rerouted", "sent"]
        assert len(app.standin.whatsapp(CUSTOMER_PHONE)) == sent_before + 1


def test_the_policy_sends_by_sms_when_whatsapp_cannot_take_the_message(db_url: str, tmp_path: Path) -> None:
    with serve_sms_app(db_url, whatsapp=True, whatsapp_templates=_templates(tmp_path)) as app:
        _choose_whatsapp(app)
        config = app.runtime.policy
        assert "whatsapp" in config.channels and config.whatsapp_templates == frozenset({"suggestion"})
        customer_id = _customer(app).id  # type: ignore[attr-defined]
        with app.runtime.db.begin() as conn:
            conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == customer_id).values(marketing_consent=True))
        now = utcnow()

        def contact(intent: str, hours_later: float) -> object:
            with app.runtime.db.connect() as conn:
                return contact_of(
                    conn, customer_id, config, intent=intent, now=now + timedelta(hours=hours_later)
                )

        inside = contact("nudge", 1)
        assert (inside.channel, inside.address, inside.rerouted) == ("whatsapp", CUSTOMER_PHONE, None)  # type: ignore[attr-defined]
        templated = contact("suggestion", 30)
        assert (templated.channel, templated.rerouted) == ("whatsapp", None)  # type: ignore[attr-defined]
        moved = contact("nudge", 30)
        assert (moved.channel, moved.address) == ("sms", CUSTOMER_PHONE)  # type: ignore[attr-defined]
        assert moved.rerouted == Skip.WHATSAPP_NO_TEMPLATE  # type: ignore[attr-defined]
        # Without SMS to fall back on, the message is excluded with the reason.
        only_whatsapp = PolicyConfig(channels=frozenset({"whatsapp"}), default_timezone="UTC")
        with app.runtime.db.connect() as conn:
            alone = contact_of(
                conn, customer_id, only_whatsapp, intent="nudge", now=now + timedelta(hours=30)
            )
        decision = decide(alone, now + timedelta(hours=30), only_whatsapp)
        assert decision.excluded and decision.reason == Skip.WHATSAPP_NO_TEMPLATE


def test_no_opt_in_no_business_initiated_whatsapp(db_url: str) -> None:
    with serve_sms_app(db_url, whatsapp=True) as app:
        app.whatsapp("hi", sid="SMo1")  # wrote, but never agreed to hear from us there
        _replies(app)
        customer = _customer(app)
        assert customer.whatsapp_opt_in_at is None  # type: ignore[attr-defined]
        with app.runtime.db.connect() as conn:
            contact = contact_of(conn, customer.id, app.runtime.policy, intent="suggestion")  # type: ignore[attr-defined]
        assert (contact.channel, contact.rerouted) == ("sms", Skip.WHATSAPP_NO_OPT_IN)
        # Queued on WhatsApp all the same (say, before the rule): SMS takes it at send time.
        message_id = _queue(app, "A better plan!", marketing=True)
        app.wait_until(lambda: app.rows(MESSAGE.c.id == message_id)[0].status == "delivered")
        assert app.rows(MESSAGE.c.id == message_id)[0].channel == "sms"
        assert "A better plan!" in app.standin.to(CUSTOMER_PHONE)
        ((outcome, reason), _) = _attempts(app, message_id)
        assert outcome == "rerouted" and "no WhatsApp opt-in" in reason
        assert app.standin.whatsapp(CUSTOMER_PHONE)[-1].body != "A better plan!"


@pytest.mark.parametrize("how", ["api", "callback"])
def test_63016_fails_the_message_closes_the_window_and_is_never_retried(db_url: str, how: str) -> None:
    with serve_sms_app(db_url, whatsapp=True) as app:
        app.standin.window_error = how
        _choose_whatsapp(app)
        app.wait_until(lambda: all(r.status == "delivered" for r in _out(app)))  # type: ignore[attr-defined]
        # Twilio's view: the customer last wrote a day ago (ours still says the window is open).
        app.standin.open_session(CUSTOMER_PHONE, at=utcnow().timestamp() - 25 * 3600)
        requests = app.standin.requests
        message_id = _queue(app, "An operator's late answer", marketing=False, intent="operator")
        app.wait_until(lambda: app.rows(MESSAGE.c.id == message_id)[0].status == "failed")
        (row,) = app.rows(MESSAGE.c.id == message_id)
        assert "63016" in row.error and row.attempts == 1
        app.wait_until(lambda: _customer(app).whatsapp_session_at is None)  # type: ignore[attr-defined]
        assert app.standin.requests == requests + 1  # never tried again free-form
        # The customer writes again: the window is open, answers flow.
        app.whatsapp("evenings", sid="SMx1")
        app.wait_until(lambda: _customer(app).whatsapp_session_at is not None)  # type: ignore[attr-defined]
        app.wait_until(lambda: app.rows(MESSAGE.c.direction == "out")[-1].status == "delivered")


def test_the_templates_file_is_checked_at_start_up(tmp_path: Path) -> None:
    assert load_templates(_templates(tmp_path)).get("suggestion") is not None
    bad = tmp_path / "bad.toml"
    bad.write_text('[nudge]\ncontent_sid = "HX123"\n', encoding="utf-8")
    with pytest.raises(TemplateError, match=r"bad.toml: \[nudge\]: content_sid must be a Content SID"):
        load_templates(bad)
    bad.write_text(
        f'[nudge]\ncontent_sid = "{SUGGESTION_SID}"\nvariables = {{ 1 = "{{plan}}" }}\n', encoding="utf-8"
    )
    with pytest.raises(TemplateError, match=r"variable 1 uses plan; only \{company\}, \{name\}, \{text\}"):
        load_templates(bad)
    bad.write_text("[nudge\n", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"bad\.toml: not valid TOML"):
        load_templates(bad)
    with pytest.raises(ValidationError, match=r"missing\.toml: no such file"):
        Settings(_env_file=None, whatsapp_templates=tmp_path / "missing.toml")
    rendered = load_templates(_templates(tmp_path)).get("suggestion")
    assert rendered is not None
    assert rendered.render(name=None, text="Hi", company="Co") == {"1": "there", "2": "Hi"}
    assert json.loads(json.dumps(rendered.variables)) == {"1": "{name}", "2": "{text}"}


LAST_WORD = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # 10:00 in New York
CHANNELS = frozenset({"sms", "whatsapp"})


def _whatsapp_half_done(dialog: DialogEngine) -> Texter:
    """A customer who chose WhatsApp on WhatsApp (their opt-in) at LAST_WORD, then went quiet."""
    texter = Texter(dialog, CUSTOMER_PHONE, channel="whatsapp", phone=CUSTOMER_PHONE, now=LAST_WORD)
    texter.send("hi", after=timedelta(minutes=-2))
    texter.send("WhatsApp")
    with dialog.db.begin() as conn:
        conn.execute(update(CUSTOMER).values(marketing_consent=True, timezone="America/New_York"))
    return texter


def _events(db: Engine) -> list[tuple[str, str | None]]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(select(OUTREACH_EVENT.c.kind, OUTREACH_EVENT.c.reason))]


def test_a_nudge_outside_the_window_without_a_template_goes_by_sms_with_the_reason(
    db: Engine, dialog: DialogEngine
) -> None:
    _whatsapp_half_done(dialog)
    with db.connect() as conn:
        session = conn.execute(select(CUSTOMER.c.whatsapp_session_at, CUSTOMER.c.whatsapp_opt_in_at)).one()
    assert session[0] is not None and session[1] is not None
    report = nudge(
        db,
        dialog.bank,
        NudgeConfig(),
        PolicyConfig(cap=10, channels=CHANNELS),
        LAST_WORD + timedelta(hours=49),
    )
    assert report.queued == 1
    with db.connect() as conn:
        (channel, address) = conn.execute(
            select(MESSAGE.c.channel, MESSAGE.c.address).where(MESSAGE.c.intent == "nudge")
        ).one()
    assert (channel, address) == ("sms", CUSTOMER_PHONE)
    assert ("nudge_queued", Skip.WHATSAPP_NO_TEMPLATE) in _events(db)


def test_a_nudge_with_a_template_stays_on_whatsapp(db: Engine, dialog: DialogEngine) -> None:
    _whatsapp_half_done(dialog)
    config = PolicyConfig(cap=10, channels=CHANNELS, whatsapp_templates=frozenset({"nudge"}))
    assert nudge(db, dialog.bank, NudgeConfig(), config, LAST_WORD + timedelta(hours=49)).queued == 1
    with db.connect() as conn:
        channel = conn.execute(select(MESSAGE.c.channel).where(MESSAGE.c.intent == "nudge")).scalar_one()
    assert channel == "whatsapp"
    assert ("nudge_queued", None) in _events(db)


def test_whatsapp_refusal_rules() -> None:
    config = PolicyConfig(whatsapp_templates=frozenset({"suggestion"}))
    now = LAST_WORD

    def refusal(opted_in: bool, hours_ago: float | None, intent: str) -> str | None:
        session = None if hours_ago is None else now - timedelta(hours=hours_ago)
        return whatsapp_refusal(opted_in=opted_in, session_at=session, intent=intent, now=now, config=config)

    assert refusal(False, 1, "nudge") == Skip.WHATSAPP_NO_OPT_IN
    assert refusal(True, 23.9, "nudge") is None
    assert refusal(True, 24, "nudge") == Skip.WHATSAPP_NO_TEMPLATE
    assert refusal(True, None, "nudge") == Skip.WHATSAPP_NO_TEMPLATE
    assert refusal(True, 48, "suggestion") is None
    assert pick_channel("whatsapp", None, None, email=None, phone=CUSTOMER_PHONE) == (
        "whatsapp",
        CUSTOMER_PHONE,
    )


def _attempts(app: SmsApp, message_id: int) -> list[tuple[str, str]]:
    """(outcome, error) of each delivery attempt of the message, in order."""
    with app.runtime.db.connect() as conn:
        rows = conn.execute(
            select(DELIVERY_ATTEMPT.c.outcome, DELIVERY_ATTEMPT.c.error)
            .where(DELIVERY_ATTEMPT.c.message_id == message_id)
            .order_by(DELIVERY_ATTEMPT.c.id)
        ).all()
    return [(outcome, error or "") for outcome, error in rows]


@pytest.mark.parametrize("how", ["api", "callback"])
def test_marketing_refused_with_63016_goes_again_as_its_template_exactly_once(
    db_url: str, tmp_path: Path, how: str
) -> None:
    with serve_sms_app(db_url, whatsapp=True, whatsapp_templates=_templates(tmp_path)) as app:
        app.standin.window_error = how
        _choose_whatsapp(app)
        app.wait_until(lambda: all(r.status == "delivered" for r in _out(app)))  # type: ignore[attr-defined]
        # Twilio's view: the customer last wrote a day ago (ours still says the window is open).
        app.standin.open_session(CUSTOMER_PHONE, at=utcnow().timestamp() - 25 * 3600)
        before = len(app.standin.whatsapp(CUSTOMER_PHONE))
        message_id = _queue(app, "Plan S saves you $12 a month.", marketing=True)
        app.wait_until(lambda: app.rows(MESSAGE.c.id == message_id)[0].status == "delivered")
        (row,) = app.rows(MESSAGE.c.id == message_id)
        assert row.attempts == 2 and row.channel == "whatsapp"
        sent = app.standin.whatsapp(CUSTOMER_PHONE)[before:]
        # "api": Twilio refused the free-form send; "callback": it took it, then reported 63016.
        refused = [None] if how == "callback" else []
        assert [s.content_sid for s in sent] == [*refused, SUGGESTION_SID]
        assert row.provider_message_id == sent[-1].sid
        attempts = _attempts(app, message_id)
        assert [a[0] for a in attempts] == ([*(["sent"] if how == "callback" else []), "rerouted", "sent"])
        assert "63016" in attempts[-2][1] and "as the 'suggestion' template" in attempts[-2][1]
        assert _customer(app).whatsapp_session_at is None  # type: ignore[attr-defined]
        if how == "callback":  # Twilio posts the failure again: nothing more goes
            again = {"MessageSid": sent[0].sid, "MessageStatus": "failed", "ErrorCode": "63016", "To": WA}
            requests = app.standin.requests
            assert app.post("/whatsapp/status", again).status_code == 204
            app.wait_until(lambda: app.rows(MESSAGE.c.id == message_id)[0].status == "delivered")
            assert app.standin.requests == requests
            assert [a[0] for a in _attempts(app, message_id)].count("rerouted") == 1


def test_marketing_refused_with_63016_by_callback_without_a_template_goes_by_sms(db_url: str) -> None:
    with serve_sms_app(db_url, whatsapp=True) as app:
        app.standin.window_error = "callback"
        _choose_whatsapp(app)
        app.wait_until(lambda: all(r.status == "delivered" for r in _out(app)))  # type: ignore[attr-defined]
        app.standin.open_session(CUSTOMER_PHONE, at=utcnow().timestamp() - 25 * 3600)
        sms_before = len(app.standin.to(CUSTOMER_PHONE))
        message_id = _queue(app, "Still there?", marketing=True, intent="nudge")
        assert app.standin.wait_for(CUSTOMER_PHONE, sms_before + 1)[-1] == "Still there?"
        app.wait_until(lambda: app.rows(MESSAGE.c.id == message_id)[0].status == "delivered")
        (row,) = app.rows(MESSAGE.c.id == message_id)
        assert row.channel == "sms"
        outcomes = _attempts(app, message_id)
        assert [a[0] for a in outcomes] == ["sent", "rerouted", "sent"]
        assert "63016" in outcomes[1][1] and "rerouted by the contact policy to sms" in outcomes[1][1]


def test_window_closed_no_template_and_no_other_channel_fails_with_the_reason(db_url: str) -> None:
    with serve_sms_app(db_url, whatsapp=True) as app:
        _choose_whatsapp(app)
        _age_session(app, 25)
        with app.runtime.db.begin() as conn:  # no phone on file: SMS cannot take it
            conn.execute(update(CUSTOMER).where(CUSTOMER.c.phone == CUSTOMER_PHONE).values(phone=None))
        sms_before, wa_before = len(app.standin.to(CUSTOMER_PHONE)), len(app.standin.whatsapp(CUSTOMER_PHONE))
        message_id = _queue_for(app, "Still there?", intent="nudge")
        app.wait_until(lambda: app.rows(MESSAGE.c.id == message_id)[0].status == "failed")
        (row,) = app.rows(MESSAGE.c.id == message_id)
        assert row.channel == "whatsapp"
        assert "whatsapp_window_closed_no_template" in row.error and "no other channel" in row.error
        assert len(app.standin.to(CUSTOMER_PHONE)) == sms_before
        assert len(app.standin.whatsapp(CUSTOMER_PHONE)) == wa_before


def test_bad_whatsapp_webhooks_get_a_clear_4xx_and_nothing_is_stored(db_url: str) -> None:
    with serve_sms_app(db_url, whatsapp=True) as app:
        form = {"MessageSid": "SMbad1", "From": WA, "To": f"whatsapp:{WHATSAPP_FROM}", "Body": "hi"}
        assert app.post("/whatsapp/inbound", form, signature="forged").status_code == 403
        assert app.post("/whatsapp/inbound", {**form, "From": "whatsapp:not-a-number"}).status_code == 400
        assert app.post("/whatsapp/inbound", {**form, "ButtonPayload": "x\x00"}).status_code == 400
        assert app.rows() == []
        # Twilio's statuses for WhatsApp ("read" included) come to the one record_status.
        app.whatsapp("hi", sid="SMok1")
        first = _replies(app)[0]
        app.wait_until(lambda: _out(app)[0].status == "delivered")  # type: ignore[attr-defined]
        read = {"MessageSid": first.sid, "MessageStatus": "read", "To": WA}
        assert app.post("/whatsapp/status", read).status_code == 204
        assert app.post("/whatsapp/status", {**read, "MessageStatus": "r\x00"}).status_code == 400
        assert _out(app)[0].status == "delivered"  # type: ignore[attr-defined]


def test_whatsapp_webhook_log_lines_say_whatsapp(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with serve_sms_app(db_url, whatsapp=True) as app:
        form = {"MessageSid": "SMlog1", "From": WA, "To": f"whatsapp:{WHATSAPP_FROM}", "Body": "hi"}
        with caplog.at_level("WARNING", logger="bot.channels.sms"):
            assert app.post("/whatsapp/inbound", form, signature="forged").status_code == 403
            assert app.post("/whatsapp/inbound", {**form, "From": "whatsapp:nope"}).status_code == 400
            assert app.post("/sms/inbound", {**form, "From": "whatsapp:nope"}).status_code == 400
            assert app.post("/whatsapp/status", {"MessageSid": "SMx", "To": WA}).status_code == 400
            assert app.post("/sms/inbound", {**form, "From": "nope", "To": "+15005550006"}).status_code == 400
        lines = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
        assert len(lines) == 5, lines
        assert all(line.startswith("WhatsApp webhook ") for line in lines[:4]), lines
        assert lines[4].startswith("SMS webhook /sms/inbound rejected with 400"), lines


def test_quick_reply_content_is_made_once_and_kept_across_a_restart(db_url: str) -> None:
    with serve_sms_app(db_url, whatsapp=True) as app:
        app.whatsapp("hi", sid="SMq1")
        _replies(app)
        message_id = _queue(app, "Contract or not?", marketing=False, intent="operator")
        app.wait_until(lambda: app.rows(MESSAGE.c.id == message_id)[0].status == "delivered")
        options = (ReplyOption("contract", "Contract"), ReplyOption("month_to_month", "Monthly"))
        first = WhatsAppService(app.runtime)  # one process, then another after a restart
        outgoing = Outgoing(message_id, "whatsapp", CUSTOMER_PHONE, "Contract or not?", options, 1)
        before = len(app.standin.contents)
        asyncio.run(first.sender.send(outgoing))
        assert len(app.standin.contents) == before + 1
        with app.runtime.db.connect() as conn:
            (kept,) = conn.execute(select(WHATSAPP_CONTENT.c.content_sid)).scalars().all()
        restarted = WhatsAppService(app.runtime)
        asyncio.run(restarted.sender.send(outgoing))
        assert len(app.standin.contents) == before + 1  # not made again
        sent = app.standin.whatsapp(CUSTOMER_PHONE)[-2:]
        assert [s.content_sid for s in sent] == [kept, kept]
        assert [b for _, b in sent[-1].buttons] == ["contract", "month_to_month"]
        for service in (first, restarted):
            asyncio.run(service.stop())
