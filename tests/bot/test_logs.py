"""No secret in any log line, and chatty libraries quiet by default: real sends through the Bot
API and Twilio stand-ins, logging set up as every ``rapport`` command sets it up."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bot.channels.telegram import build_telegram_service
from bot.logs import LIBRARIES, REDACTED, configure_logging, redact
from bot.runtime import build_runtime
from bot.settings import Settings
from schedulers.delivery import Outgoing
from tests.telegram_standin import TOKEN as BOT_TOKEN
from tests.telegram_standin import BotApiStandin
from tests.twilio_standin import CUSTOMER_PHONE, serve_sms_app
from tests.twilio_standin import TOKEN as TWILIO_TOKEN


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging changes process-wide state: put it back after each test."""
    factory = logging.getLogRecordFactory()
    levels = {name: logging.getLogger(name).level for name in LIBRARIES}
    yield
    logging.setLogRecordFactory(factory)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _texts(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() + (r.exc_text or "") for r in caplog.records]


def _send_through_the_bot_api(db_url: str, tmp_path: Path, **settings: Any) -> None:
    with BotApiStandin() as api:
        values: dict[str, Any] = {
            "database_url": db_url,
            "telegram_bot_token": BOT_TOKEN,
            "telegram_api_base_url": api.root,
            "telegram_rate_per_second": 200.0,
            "telegram_rate_per_chat": 50.0,
            "spool_path": tmp_path / "spool.db",
            **settings,
        }
        configure_logging(Settings(_env_file=None, **values))
        runtime = build_runtime(Settings(_env_file=None, **values))
        service = build_telegram_service(runtime, mode="polling")
        assert service is not None

        async def send() -> None:
            await service.start(receive=False)
            try:
                await service.sender.send(Outgoing(1, "telegram", "77", "Hello", (), 1))
            finally:
                await service.stop()

        try:
            asyncio.run(send())
        finally:
            runtime.db.dispose()
        assert [m.text for m in api.sent_messages(77)] == ["Hello"]


def test_the_bot_token_is_in_no_log_record_and_httpx_is_quiet_by_default(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _send_through_the_bot_api(db_url, tmp_path)
    assert not any(BOT_TOKEN in text for text in _texts(caplog))
    assert [
        r for r in caplog.records if r.name.startswith(("httpx", "httpcore")) and r.levelno < logging.WARNING
    ] == []


def test_the_bot_token_is_redacted_even_when_httpx_logs_every_request(
    db_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    _send_through_the_bot_api(db_url, tmp_path, library_log_level="DEBUG")
    requests = [r.getMessage() for r in caplog.records if r.name == "httpx"]
    assert any("sendMessage" in line and REDACTED in line for line in requests)  # the line is there
    assert not any(BOT_TOKEN in text for text in _texts(caplog))


def test_twilio_logs_nothing_per_send_at_the_default_level(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with serve_sms_app(db_url) as app:
        configure_logging(app.runtime.settings)
        app.sms("hi", sid="SMlog1")
        app.standin.wait_for(CUSTOMER_PHONE, 2)
    assert [r for r in caplog.records if r.name.startswith("twilio") and r.levelno < logging.WARNING] == []
    assert not any(TWILIO_TOKEN in text for text in _texts(caplog))


def test_twilio_request_lines_come_back_with_a_library_level_of_info(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with serve_sms_app(db_url, library_log_level="INFO") as app:
        configure_logging(app.runtime.settings)
        app.sms("hi", sid="SMlog2")
        app.standin.wait_for(CUSTOMER_PHONE, 2)
    assert any(r.name.startswith("twilio") and r.levelno == logging.INFO for r in caplog.records)
    assert not any(TWILIO_TOKEN in text for text in _texts(caplog))


def test_log_levels_are_checked() -> None:
    assert Settings(_env_file=None, log_level="debug").log_level == "DEBUG"
    with pytest.raises(ValidationError, match="use DEBUG, INFO"):
        Settings(_env_file=None, log_level="LOUD")


def test_a_secret_in_a_traceback_is_redacted_too(caplog: pytest.LogCaptureFixture) -> None:
    redact(["s3cret-value-1"])
    log = logging.getLogger("bot.test")
    with caplog.at_level(logging.INFO):
        try:
            raise RuntimeError("GET https://api.example/bots3cret-value-1/getMe failed")
        except RuntimeError:
            log.exception("calling %s", "https://api.example/bots3cret-value-1/getMe")
    (record,) = [r for r in caplog.records if r.name == "bot.test"]
    assert record.getMessage() == f"calling https://api.example/bot{REDACTED}/getMe"
    assert record.exc_text is not None and "getMe failed" in record.exc_text
    assert "s3cret-value-1" not in record.exc_text
