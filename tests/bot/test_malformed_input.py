"""A corpus of signed but malformed webhooks, on both databases: every one gets a 4xx (or a 200
and a log line where the provider must not deliver it again) and none a 5xx; nothing malformed
reaches the database, and the app still answers normal messages afterwards."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bot.channels.telegram import MAX_BODY_BYTES, build_telegram_service
from bot.runtime import build_runtime
from bot.settings import Settings
from bot.web import create_app
from storage.tables import MESSAGE
from tests.telegram_standin import TOKEN, BotApiStandin, message_update, user
from tests.twilio_standin import ACCOUNT, CUSTOMER_PHONE, FROM, serve_sms_app

SID = "SM" + "0" * 32


def _inbound(**changes: str) -> dict[str, str]:
    form = {"MessageSid": SID, "AccountSid": ACCOUNT, "From": CUSTOMER_PHONE, "To": FROM, "Body": "hi"}
    form.update(changes)
    return {k: v for k, v in form.items() if v != "<absent>"}


INBOUND_CORPUS: list[tuple[str, dict[str, str]]] = [
    ("sid over 128", _inbound(MessageSid="SM" + "a" * 200)),
    ("sid with NUL", _inbound(MessageSid="SM\x00abc")),
    ("sid missing", _inbound(MessageSid="<absent>")),
    ("sid with spaces", _inbound(MessageSid="SM 1")),
    ("from with NUL", _inbound(From="+1415555\x000180")),
    ("from not a number", _inbound(From="hello")),
    ("from very long", _inbound(From="+1" + "5" * 500)),
    ("from missing", _inbound(From="<absent>")),
    ("media count negative", _inbound(NumMedia="-1")),
    ("media count huge", _inbound(NumMedia="9" * 40)),
    ("media count not a number", _inbound(NumMedia="many")),
    ("media type with NUL", _inbound(NumMedia="1", MediaContentType0="image/\x00png")),
    ("unknown field with NUL", _inbound(Extra="\x00")),
    ("field name with NUL", _inbound(**{"Ex\x00tra": "1"})),
]
STATUS_CORPUS: list[tuple[str, dict[str, str]]] = [
    ("status sid over 128", {"MessageSid": "SM" + "a" * 200, "MessageStatus": "delivered"}),
    ("status sid with NUL", {"MessageSid": "SM\x00", "MessageStatus": "delivered"}),
    ("status word with NUL", {"MessageSid": SID, "MessageStatus": "deli\x00vered"}),
    ("status word too long", {"MessageSid": SID, "MessageStatus": "d" * 300}),
    ("status missing", {"MessageSid": SID}),
    ("error code over 480", {"MessageSid": SID, "MessageStatus": "failed", "ErrorCode": "3" * 481}),
    ("error code not a number", {"MessageSid": SID, "MessageStatus": "failed", "ErrorCode": "oops"}),
    ("error code with NUL", {"MessageSid": SID, "MessageStatus": "failed", "ErrorCode": "30\x0003"}),
]


def test_malformed_twilio_webhooks_get_4xx_and_never_5xx(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    with serve_sms_app(db_url) as app:
        answers = {name: app.post("/sms/inbound", form).status_code for name, form in INBOUND_CORPUS}
        answers |= {name: app.post("/sms/status", form).status_code for name, form in STATUS_CORPUS}
        big = app.http.post(
            app.url + "/sms/inbound",
            content=b"Body=" + b"a" * 100_000,
            headers={"content-type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"},
        )
        answers["form over 64 KB"] = big.status_code
        raw = app.http.post(
            app.url + "/sms/inbound",
            content=b"Body=\xff\xfe",
            headers={"content-type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"},
        )
        answers["not UTF-8"] = raw.status_code
        assert {name: code for name, code in answers.items() if not 400 <= code < 500} == {}
        assert answers["form over 64 KB"] == 413
        # NUL in the text itself is kept as a visible symbol; the message is answered.
        app.sms("hello\x00there", sid="SMnul1")
        with app.runtime.db.connect() as conn:
            stored = conn.execute(select(MESSAGE.c.text).where(MESSAGE.c.provider_message_id == "SMnul1"))
            assert stored.scalar_one() == "hello\u2400there"
            assert conn.execute(select(func.count()).select_from(MESSAGE)).scalar_one() >= 2
    rejected = [
        r for r in caplog.records if r.name == "bot.channels.sms" and "rejected with 4" in r.getMessage()
    ]
    assert len(rejected) == len(answers)


SECRET = "a-long-webhook-secret-1234"


def _message(**fields: Any) -> dict[str, Any]:
    update = message_update(91, "hi", update_id=fields.pop("update_id", 1000))
    update["message"].update(fields)
    return {k: v for k, v in update.items() if v != "<absent>"}


TELEGRAM_CORPUS: list[tuple[str, Any]] = [
    ("no chat", {"update_id": 1001, "message": {"message_id": 1, "date": 0, "text": "hi"}}),
    ("text not a string", _message(update_id=1002, text=123)),
    ("text a list", _message(update_id=1003, text=["a"])),
    ("chat id a string", _message(update_id=1004, chat={"id": "abc", "type": "private"})),
    ("chat id huge", _message(update_id=1005, chat={"id": 10**40, "type": "private"})),
    ("message id huge", _message(update_id=1006, message_id=10**40)),
    ("message a string", {"update_id": 1007, "message": "hello"}),
    ("name with NUL and very long", _message(update_id=1008, **{"from": user(91, "A\x00" + "b" * 5000)})),
    ("text with NUL", _message(update_id=1009, text="hi\x00there")),
    ("text with a lone surrogate", _message(update_id=1010, text="hi \ud800")),
    ("deep link with NUL", _message(update_id=1011, text="/start ab\x00cd")),
    ("deep link very long", _message(update_id=1012, text="/start " + "x" * 10_000)),
    (
        "button without message",
        {"update_id": 1013, "callback_query": {"id": "q", "from": user(91), "data": "x"}},
    ),
    (
        "button with a huge id",
        {
            "update_id": 1014,
            "callback_query": {"id": "q" * 500, "from": user(91), "chat_instance": "c", "data": "x"},
        },
    ),
    (
        "contact with NUL",
        _message(update_id=1015, contact={"phone_number": "+1\x00", "first_name": "A", "user_id": 91}),
    ),
    ("edit without chat", {"update_id": 1016, "edited_message": {"message_id": 1, "date": 0}}),
    ("only an update id", {"update_id": 1017}),
    ("update id huge", {"update_id": 10**40}),
]


def test_malformed_telegram_updates_never_get_5xx(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    headers = {"X-Telegram-Bot-Api-Secret-Token": SECRET, "content-type": "application/json"}
    with BotApiStandin() as api:
        runtime = build_runtime(
            Settings(
                _env_file=None,
                database_url=db_url,
                telegram_bot_token=TOKEN,
                telegram_api_base_url=api.root,
                public_base_url="https://rapport.example/",
                telegram_webhook_secret=SECRET,
                spool_path=tmp_path / "spool.db",
            )
        )
        service = build_telegram_service(runtime)
        assert service is not None
        try:
            with TestClient(create_app(runtime, [service])) as client:
                answers = {
                    name: client.post(
                        "/telegram/webhook", content=json.dumps(update), headers=headers
                    ).status_code
                    for name, update in TELEGRAM_CORPUS
                }
                big = client.post(
                    "/telegram/webhook", content=b" " * (MAX_BODY_BYTES + 1) + b"{}", headers=headers
                )
                answers["body over the limit"] = big.status_code
                assert {name: code for name, code in answers.items() if code >= 500} == {}
                assert big.status_code == 413
                # Telegram would deliver a refused update again and again: these are confirmed.
                assert {name for name, code in answers.items() if code != 200} == {"body over the limit"}
                ok = client.post(
                    "/telegram/webhook", json=message_update(92, "hi", update_id=2000), headers=headers
                )
                assert ok.status_code == 200
        finally:
            runtime.db.dispose()
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info and r.name.startswith("bot.")]
    assert tracebacks == []
    ignored = [r for r in caplog.records if r.name == "bot.channels.telegram" and "ignored" in r.getMessage()]
    assert len(ignored) >= 8
