"""The SMS webhooks accept only what Twilio signed, for the URL Twilio called, and answer fast."""

from __future__ import annotations

import logging

import pytest

from bot.channels.sms import BadRequest, e164, parse_form, public_url, verify_signature
from storage.models import Direction
from storage.tables import MESSAGE
from tests.twilio_standin import ACCOUNT, CUSTOMER_PHONE, FROM, TOKEN, serve_sms_app

DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+14158675309",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
}
DOC_SIGNATURE = "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_twilios_documented_example_validates() -> None:
    assert verify_signature("12345", DOC_URL, DOC_PARAMS, DOC_SIGNATURE)


@pytest.mark.parametrize(
    ("token", "url", "params", "signature"),
    [
        ("12345", DOC_URL, DOC_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8X"),  # forged
        ("12345", DOC_URL, {**DOC_PARAMS, "Digits": "1235"}, DOC_SIGNATURE),  # tampered body
        ("12345", "https://mycompany.com/myapp.php?foo=1&bar=3", DOC_PARAMS, DOC_SIGNATURE),  # wrong URL
        ("12345", DOC_URL, {**DOC_PARAMS, "FromCity": ""}, DOC_SIGNATURE),  # an empty field counts
        ("54321", DOC_URL, DOC_PARAMS, DOC_SIGNATURE),  # another account's token
        ("12345", DOC_URL, DOC_PARAMS, None),  # no header
    ],
)
def test_anything_but_the_signed_request_fails(
    token: str, url: str, params: dict[str, str], signature: str | None
) -> None:
    assert not verify_signature(token, url, params, signature)


def test_public_url_is_the_address_twilio_called_behind_a_proxy() -> None:
    assert public_url("https://rapport.example.com/bot/", "/sms/inbound", "a=1") == (
        "https://rapport.example.com/bot/sms/inbound?a=1"
    )
    assert (
        public_url("https://rapport.example.com", "/sms/status") == "https://rapport.example.com/sms/status"
    )


def test_forms_keep_empty_fields_and_refuse_what_twilio_never_sends() -> None:
    form = parse_form(
        b"Body=hi+there&FromCity=&NumMedia=0", "application/x-www-form-urlencoded; charset=utf-8"
    )
    assert form == {"Body": "hi there", "FromCity": "", "NumMedia": "0"}
    for body, content_type in [
        (b'{"Body": "hi"}', "application/json"),
        (b"Body=%FF%FE", "application/x-www-form-urlencoded"),
        (b"Body=a&Body=b", "application/x-www-form-urlencoded"),
        (b"not a form", "application/x-www-form-urlencoded"),
    ]:
        with pytest.raises(BadRequest):
            parse_form(body, content_type)


def test_phone_numbers_are_stored_in_e164() -> None:
    assert e164("+1 (415) 555-0123", "US") == "+14155550123"
    assert e164("(415) 555-0123", "US") == "+14155550123"
    assert e164("020 7946 0018", "GB") == "+442079460018"
    with pytest.raises(BadRequest):
        e164("not a number", "US")


def test_unsigned_forged_tampered_and_misaddressed_posts_get_403(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    form = {"MessageSid": "SM1", "AccountSid": ACCOUNT, "From": CUSTOMER_PHONE, "To": FROM, "Body": "hi"}
    caplog.set_level(logging.WARNING, logger="bot.channels.sms")
    with serve_sms_app(db_url) as app:
        url = app.url + "/sms/inbound"
        attempts = {
            "unsigned": app.http.post(url, data=form),
            "forged": app.post("/sms/inbound", form, signature="RSOYDt4T1cUTdK1PDd93/VVr8B8="),
            "other token": app.post("/sms/inbound", form, token="another-token"),
            "wrong url": app.post("/sms/inbound", form, signed_url="https://evil.example.com/sms/inbound"),
            "tampered": app.http.post(
                url,
                data={**form, "Body": "STOP"},
                headers={"X-Twilio-Signature": app.post_signature("/sms/inbound", form)},
            ),
            "status forged": app.post(
                "/sms/status", {"MessageSid": "SM1", "MessageStatus": "x"}, signature="x"
            ),
        }
        assert {name: r.status_code for name, r in attempts.items()} == dict.fromkeys(attempts, 403)
        assert app.rows(MESSAGE.c.direction == Direction.IN) == []
    rejected = [r.getMessage() for r in caplog.records if "rejected with 403" in r.getMessage()]
    assert len(rejected) == len(attempts)
    assert all(TOKEN not in line for line in caplog.text.splitlines())


def test_empty_fields_are_part_of_the_signature(db_url: str) -> None:
    form = {"MessageSid": "SM2", "From": CUSTOMER_PHONE, "To": FROM, "Body": "hi", "FromCity": ""}
    with serve_sms_app(db_url) as app:
        without_empty = {k: v for k, v in form.items() if k != "FromCity"}
        bad = app.http.post(
            app.url + "/sms/inbound",
            data=form,
            headers={"X-Twilio-Signature": app.post_signature("/sms/inbound", without_empty)},
        )
        assert bad.status_code == 403
        good = app.post("/sms/inbound", form)
        assert good.status_code == 200
        assert good.text == '<?xml version="1.0" encoding="UTF-8"?><Response/>'


def test_malformed_posts_get_400_never_500(db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bot.channels.sms")
    with serve_sms_app(db_url) as app:
        url = app.url + "/sms/inbound"
        answers = [
            app.http.post(url, content=b'{"Body": "hi"}', headers={"Content-Type": "application/json"}),
            app.http.post(
                url,
                content=b"Body=%FF",
                headers={"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": "x"},
            ),
            app.post("/sms/inbound", {"From": CUSTOMER_PHONE, "Body": "no sid"}),
            app.post("/sms/inbound", {"MessageSid": "SM3", "From": "hello", "Body": "bad number"}),
            app.post("/sms/inbound", {"MessageSid": "SM4", "From": CUSTOMER_PHONE, "NumMedia": "many"}),
            app.post("/sms/status", {"MessageSid": "SM5"}),
        ]
        assert [a.status_code for a in answers] == [400] * len(answers)
        assert app.rows(MESSAGE.c.direction == Direction.IN) == []
    assert sum("rejected with 400" in r.getMessage() for r in caplog.records) == len(answers)


def test_a_retried_message_sid_is_handled_once(db_url: str) -> None:
    with serve_sms_app(db_url) as app:
        app.sms("hi", sid="SMretry")
        first = app.standin.wait_for(CUSTOMER_PHONE, 2)
        app.sms("hi", sid="SMretry")  # Twilio's retry: same MessageSid
        app.sms("why", sid="SMnext")  # delivered after anything the retry could have queued
        bodies = app.standin.wait_for(CUSTOMER_PHONE, 3)
        assert bodies[:2] == first
        assert sum("I'm Rapport" in b for b in app.standin.to(CUSTOMER_PHONE)) == 1
        inbound = app.rows(MESSAGE.c.direction == Direction.IN)
        assert [r.provider_message_id for r in inbound] == ["SMretry", "SMnext"]
        assert inbound[0].address == CUSTOMER_PHONE
