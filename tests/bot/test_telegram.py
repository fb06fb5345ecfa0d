"""The Telegram channel end to end: python-telegram-bot over HTTP to a Bot API stand-in."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from bot.channels.telegram import (
    BAD_CODE,
    EDITED,
    GROUPS,
    LINKED,
    NOT_OWN_CONTACT,
    ChatRateLimiter,
    TelegramSender,
    TelegramService,
    build_telegram_service,
    make_bot,
    new_link_code,
    split_text,
)
from bot.runtime import Runtime, build_runtime
from bot.settings import Settings
from bot.web import create_app, make_outbox
from dialogs import texts
from dialogs.engine import Inbound, ReplyOption
from schedulers.delivery import Outgoing
from schedulers.ratelimit import SharedLimiter
from storage.db import transaction
from storage.queries import find_identity, preferences
from storage.tables import CUSTOMER, MESSAGE
from tests.telegram_standin import TOKEN, BotApiStandin, Sent, button_update, message_update

T = TypeVar("T")
ASK_CHANNEL = "How would you like us to reach you"
ASK_TIME = "When is a good time to contact you"
ASK_BUDGET = "how much would you like to spend"


@pytest.fixture
def api() -> Iterator[BotApiStandin]:
    with BotApiStandin() as standin:
        yield standin


RuntimeFactory = Callable[..., Runtime]


@pytest.fixture
def make_runtime(db_url: str, api: BotApiStandin, tmp_path: Path) -> Iterator[RuntimeFactory]:
    """Runtimes on the test database talking to the stand-in (their engines closed after)."""
    made: list[Runtime] = []

    def make(**settings: Any) -> Runtime:
        values: dict[str, Any] = {
            "database_url": db_url,
            "telegram_bot_token": TOKEN,
            "telegram_api_base_url": api.root,
            "telegram_rate_per_second": 200.0,
            "telegram_rate_per_chat": 50.0,
            "spool_path": tmp_path / "spool.db",
            **settings,
        }
        made.append(build_runtime(Settings(**values, _env_file=None)))
        return made[-1]

    yield make
    for runtime in made:
        runtime.db.dispose()


@pytest.fixture
def runtime(make_runtime: RuntimeFactory) -> Runtime:
    return make_runtime()


@contextlib.asynccontextmanager
async def running(runtime: Runtime, **options: float) -> AsyncIterator[TelegramService]:
    """The bot in polling mode with the outbox loop, as ``rapport telegram`` runs it."""
    service = build_telegram_service(
        runtime, mode="polling", **{"poll_timeout": 0.5, "idle_delay": 0.02, "drain_timeout": 5.0, **options}
    )
    assert service is not None
    stop = asyncio.Event()
    await service.start()
    sending = asyncio.create_task(make_outbox(runtime, [service]).run(interval=0.1, stop=stop))
    try:
        yield service
    finally:
        stop.set()
        await sending
        await service.stop()


async def until(check: Callable[[], T], timeout: float = 5.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting; last value {value!r}")
        await asyncio.sleep(0.02)


async def replies(api: BotApiStandin, chat: int, count: int) -> list[Sent]:
    """Wait until ``chat`` got ``count`` messages in all; all of them."""

    def check() -> list[Sent]:
        sent = api.sent_messages(chat)
        return sent if len(sent) >= count else []

    return await until(check)


def inbound_count(runtime: Runtime) -> int:
    with runtime.db.connect() as conn:
        return int(conn.execute(select(func.count()).where(MESSAGE.c.direction == "in")).scalar_one())


def customer_id(runtime: Runtime, channel: str, address: str) -> int | None:
    with transaction(runtime.db) as session:
        identity = find_identity(session, channel=channel, address=address)
        return identity.customer_id if identity else None


def prefs(runtime: Runtime, customer: int) -> dict[str, Any]:
    with transaction(runtime.db) as session:
        return {k: p.value for k, p in preferences(session, customer_id=customer).items()}


# -- dialogue ----------------------------------------------------------------------------------


def test_start_then_answers_by_button_and_by_text(runtime: Runtime, api: BotApiStandin) -> None:
    async def scenario() -> None:
        async with running(runtime):
            api.push_update(message_update(11, "/start"))
            first = await replies(api, 11, 2)
            question = first[-1]
            assert ASK_CHANNEL in question.text
            assert question.buttons == [
                ("text message", "sms"),
                ("Telegram", "telegram"),
                ("email", "email"),
                ("WhatsApp", "whatsapp"),
            ]

            api.push_update(button_update(11, question, "telegram"))
            after_button = await replies(api, 11, 3)
            assert ASK_TIME in after_button[-1].text
            assert len(api.called("answerCallbackQuery")) == 1
            (edit,) = api.edits(11)
            assert edit.message_id == question.message_id and edit.text.endswith("» Telegram")
            assert edit.reply_markup is None  # the keyboard is gone

            api.push_update(message_update(11, "evenings please"))
            after_text = await replies(api, 11, 4)
            assert ASK_BUDGET in after_text[-1].text

    asyncio.run(scenario())
    customer = customer_id(runtime, "telegram", "11")
    assert customer is not None
    stored = prefs(runtime, customer)
    assert stored["contact_channel"] == "telegram"
    assert stored["contact_time"]["window"] == "evening"


def test_a_restarted_bot_resumes_with_the_pending_question(runtime: Runtime, api: BotApiStandin) -> None:
    async def scenario() -> None:
        async with running(runtime):
            api.push_update(message_update(12, "/start"))
            question = (await replies(api, 12, 2))[-1]
            api.push_update(button_update(12, question, "email"))
            await replies(api, 12, 3)
        # A new process on the same database.
        async with running(runtime):
            api.push_update(message_update(12, "/start"))
            resumed = await replies(api, 12, 5)
            assert ASK_TIME in resumed[-1].text
            api.push_update(message_update(12, "mornings"))
            assert ASK_BUDGET in (await replies(api, 12, 6))[-1].text

    asyncio.run(scenario())


def test_a_redelivered_update_does_nothing_new(runtime: Runtime, api: BotApiStandin) -> None:
    async def scenario() -> None:
        async with running(runtime):
            update = api.push_update(message_update(13, "hello"))
            await replies(api, 13, 2)
            before = inbound_count(runtime)
            api.push_update(update)  # Telegram sends it again (same update, same message)
            # Updates are handled in order: once chat 14 is answered, the redelivery was seen.
            api.push_update(message_update(14, "hello"))
            await replies(api, 14, 2)
            await asyncio.sleep(0.2)
            assert len(api.sent_messages(13)) == 2
            assert inbound_count(runtime) == before + 1  # chat 14's message only

    asyncio.run(scenario())


def test_optional_start_up_calls_may_fail(runtime: Runtime, api: BotApiStandin, caplog: Any) -> None:
    api.failing_methods |= {"setMyCommands", "setChatMenuButton"}

    async def scenario() -> None:
        async with running(runtime):
            api.push_update(message_update(15, "/start"))
            await replies(api, 15, 2)

    with caplog.at_level(logging.WARNING, logger="bot.channels.telegram"):
        asyncio.run(scenario())
    assert "setMyCommands failed" in caplog.text and "setChatMenuButton failed" in caplog.text


def test_polling_backs_off_when_the_server_answers_at_once(runtime: Runtime, api: BotApiStandin) -> None:
    async def scenario() -> None:
        async with running(runtime, idle_delay=0.25):
            await asyncio.sleep(1.0)

    asyncio.run(scenario())
    # Without the back-off this loop makes hundreds of calls a second.
    assert 2 <= len(api.called("getUpdates")) <= 8


# -- rate limits and failures ------------------------------------------------------------------


def test_a_429_for_one_chat_does_not_delay_another(make_runtime: RuntimeFactory, api: BotApiStandin) -> None:
    runtime = make_runtime(telegram_rate_per_chat=1.0)
    api.fail_next("sendMessage", 21, retry_after=1)

    async def scenario() -> float:
        async with running(runtime):
            t0 = time.monotonic()
            api.push_update(message_update(21, "hi"))
            api.push_update(message_update(22, "hi"))
            await replies(api, 22, 1)
            await replies(api, 21, 2)
            return t0

    t0 = asyncio.run(scenario())
    chat_a, chat_b = api.sent_messages(21), api.sent_messages(22)
    assert chat_b[0].at - t0 < 0.9  # chat B served before chat A's hold (1 s) is over
    assert chat_a[0].at - t0 >= 1.0  # chat A waited as Telegram asked
    assert chat_b[0].at < chat_a[0].at
    assert [m.text for m in chat_a][-1].startswith(ASK_CHANNEL)  # in order despite the 429


def test_a_long_429_and_network_errors_are_recorded_and_retried(runtime: Runtime, api: BotApiStandin) -> None:
    api.fail_next("sendMessage", 23, retry_after=60)
    api.failing_methods.add("sendMessage")  # checked first: a 500 for everyone

    async def scenario() -> None:
        async with running(runtime):
            api.push_update(message_update(23, "hi"))
            rows = await until(
                lambda: _rows(runtime, "23") if any(r[2] for r in _rows(runtime, "23")) else []
            )
            status, attempts, error = rows[0]
            assert (status, attempts) == ("queued", 1) and "NetworkError" in (error or "")
            api.failing_methods.clear()
            # The outbox loop retries after its back-off (2 s); then the 429 (60 s) is recorded.
            await until(lambda: "rate limited" in (_rows(runtime, "23")[0][2] or ""), timeout=6)

    asyncio.run(scenario())
    assert api.sent_messages(23) == []


def _rows(runtime: Runtime, address: str) -> list[tuple[str, int, str | None]]:
    with runtime.db.connect() as conn:
        rows = conn.execute(
            select(MESSAGE.c.status, MESSAGE.c.attempts, MESSAGE.c.error)
            .where(MESSAGE.c.address == address, MESSAGE.c.direction == "out")
            .order_by(MESSAGE.c.id)
        ).all()
    return [(r[0], r[1], r[2]) for r in rows]


def test_long_text_is_split_at_boundaries_with_buttons_on_the_last_part(
    runtime: Runtime, api: BotApiStandin
) -> None:
    paragraphs = [f"Paragraph {i}: " + " ".join(["word"] * 300) for i in range(6)]
    text = "\n\n".join(paragraphs)

    async def scenario() -> str | None:
        async with make_bot(runtime.settings) as bot:
            sender = TelegramSender(bot, ChatRateLimiter(SharedLimiter(runtime.db), 100, 100))
            options = (ReplyOption("yes", "Yes"), ReplyOption("no", "No"))
            return await sender.send(Outgoing(1, "telegram", "31", text, options, 1))

    provider_id = asyncio.run(scenario())
    parts = api.sent_messages(31)
    assert len(parts) >= 3 and all(len(p.text) <= 4096 for p in parts)
    assert all(p.text.startswith("Paragraph") for p in parts)  # cut between paragraphs
    assert "\n\n".join(p.text for p in parts) == text
    assert [bool(p.buttons) for p in parts] == [False] * (len(parts) - 1) + [True]
    assert provider_id == str(parts[-1].message_id)


def test_split_text_prefers_lines_then_words_and_counts_utf16() -> None:
    assert split_text("short") == ["short"]
    lines = split_text("a" * 60 + "\n" + "b" * 60, limit=100)
    assert lines == ["a" * 60, "b" * 60]
    words = split_text("aaaa bbbb cccc", limit=10)
    assert words == ["aaaa bbbb", "cccc"]
    assert split_text("x" * 25, limit=10) == ["x" * 10, "x" * 10, "x" * 5]
    emoji = split_text("😀" * 10, limit=10)  # each counts 2 in UTF-16
    assert emoji == ["😀" * 5, "😀" * 5]


# -- linking -----------------------------------------------------------------------------------

PHONE = "+14155550142"


def _sms_customer_waiting_for_contact_time(runtime: Runtime) -> int:
    for i, text in enumerate(("hi", "text message")):
        result = runtime.dialog.handle(
            Inbound(channel="sms", address=PHONE, phone=PHONE, text=text, provider_id=f"SM{i}")
        )
    assert result.replies[-1].question_key == "contact_time"
    return result.customer_id


def test_a_deep_link_joins_the_sms_customers_conversation(runtime: Runtime, api: BotApiStandin) -> None:
    sms_customer = _sms_customer_waiting_for_contact_time(runtime)
    code = new_link_code(runtime, "(415) 555-0142")

    async def scenario() -> None:
        async with running(runtime):
            # The chat talked first: it has a customer (and an answer) of its own.
            api.push_update(message_update(41, "/start"))
            question = (await replies(api, 41, 2))[-1]
            api.push_update(button_update(41, question, "email"))
            await replies(api, 41, 3)
            api.push_update(message_update(41, f"/start {code}"))
            linked = await replies(api, 41, 5)
            assert ASK_TIME in linked[-1].text  # where the SMS conversation stood
            api.push_update(message_update(41, "afternoons"))
            await replies(api, 41, 6)
            # The code was single-use: another chat gets a polite no and a conversation of its own.
            api.push_update(message_update(42, f"/start {code}"))
            other = await replies(api, 42, 3)
            assert BAD_CODE in [m.text for m in other]

    asyncio.run(scenario())
    assert customer_id(runtime, "telegram", "41") == sms_customer
    assert customer_id(runtime, "telegram", "42") not in (None, sms_customer)
    stored = prefs(runtime, sms_customer)
    assert stored["contact_channel"] == "sms"  # the customer's own answer wins over the merged one
    assert stored["contact_time"]["window"] == "afternoon"
    with runtime.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(CUSTOMER)).scalar_one() == 2


def test_sharing_ones_own_contact_links_and_someone_elses_does_not(
    runtime: Runtime, api: BotApiStandin
) -> None:
    sms_customer = _sms_customer_waiting_for_contact_time(runtime)
    contact = {"phone_number": PHONE.lstrip("+"), "first_name": "Ada"}

    async def scenario() -> None:
        async with running(runtime):
            api.push_update(message_update(51, None, contact={**contact, "user_id": 999}))
            await until(lambda: NOT_OWN_CONTACT in [m.text for m in api.sent_messages(51)])
            api.push_update(message_update(52, None, contact={**contact, "user_id": 52}))
            linked = await replies(api, 52, 3)
            assert linked[0].text == LINKED
            assert ASK_TIME in linked[-1].text

    asyncio.run(scenario())
    assert customer_id(runtime, "telegram", "51") is None
    assert customer_id(runtime, "telegram", "52") == sms_customer


# -- odd updates -------------------------------------------------------------------------------


def test_edits_stickers_and_groups_get_a_short_answer(runtime: Runtime, api: BotApiStandin) -> None:
    sticker = {"file_id": "s1", "file_unique_id": "u1", "width": 1, "height": 1, "is_animated": False,
               "is_video": False, "type": "regular"}  # fmt: skip

    async def scenario() -> None:
        async with running(runtime):
            api.push_update(message_update(61, "evenings", kind="edited_message"))
            await until(lambda: [m.text for m in api.sent_messages(61)] == [EDITED])
            api.push_update(message_update(62, None, sticker=sticker))
            sticker_replies = await replies(api, 62, 2)
            assert ASK_CHANNEL in sticker_replies[-1].text
            api.push_update(message_update(-100, "/start", chat_type="supergroup", from_id=63))
            api.push_update(message_update(-100, "just chatting", chat_type="supergroup", from_id=63))
            api.push_update(
                {"channel_post": {"message_id": 1, "date": 0, "chat": {"id": -200, "type": "channel"}}}
            )
            api.push_update(message_update(64, "/help"))
            await replies(api, 64, 1)
            await asyncio.sleep(0.2)
            assert [m.text for m in api.sent_messages(-100)] == [GROUPS]

    asyncio.run(scenario())
    assert customer_id(runtime, "telegram", "-100") is None


def test_a_sticker_says_text_only_and_asks_the_pending_question_again(
    runtime: Runtime, api: BotApiStandin
) -> None:
    sticker = {"file_id": "s2", "file_unique_id": "u2", "width": 1, "height": 1, "is_animated": False,
               "is_video": False, "type": "regular"}  # fmt: skip

    async def scenario() -> None:
        async with running(runtime):
            api.push_update(message_update(66, "hi"))
            first = await replies(api, 66, 2)
            question = first[-1].text
            assert ASK_CHANNEL in question
            api.push_update(message_update(66, None, sticker=sticker))
            after = await replies(api, 66, 4)
            assert [m.text for m in after[2:]] == [texts.TEXT_ONLY, question]

    asyncio.run(scenario())
    with runtime.db.connect() as conn:
        intents = conn.execute(
            select(MESSAGE.c.intent).where(MESSAGE.c.direction == "in").order_by(MESSAGE.c.id)
        ).scalars()
        assert list(intents)[-1] == "media"


# -- webhook -----------------------------------------------------------------------------------

SECRET = "a-long-webhook-secret-1234"


def test_webhook_mode_through_the_web_app(
    make_runtime: RuntimeFactory, api: BotApiStandin, caplog: Any
) -> None:
    runtime = make_runtime(
        public_base_url="https://rapport.example/",
        telegram_webhook_secret=SECRET,
        telegram_delete_webhook_on_stop=True,
    )
    service = build_telegram_service(runtime)
    assert service is not None and service.mode == "webhook"
    update = message_update(71, "/start", update_id=api.new_update_id())
    good = {"X-Telegram-Bot-Api-Secret-Token": SECRET}

    with caplog.at_level(logging.WARNING), TestClient(create_app(runtime, [service])) as client:
        assert api.webhook == {"url": "https://rapport.example/telegram/webhook", "secret_token": SECRET}
        assert client.post("/telegram/webhook", json=update).status_code == 403
        wrong = {"X-Telegram-Bot-Api-Secret-Token": "nope"}
        assert client.post("/telegram/webhook", json=update, headers=wrong).status_code == 403
        assert client.post("/telegram/webhook", content=b"{not json", headers=good).status_code == 400
        assert client.post("/telegram/webhook", json=[1, 2], headers=good).status_code == 400
        assert client.post("/telegram/webhook", json={"update_id": "x"}, headers=good).status_code == 400
        assert api.sent_messages(71) == []

        assert client.post("/telegram/webhook", json=update, headers=good).status_code == 200
        asyncio.run(replies(api, 71, 2))
        assert client.post("/telegram/webhook", json=update, headers=good).status_code == 200  # again
        time.sleep(0.2)
        assert len(api.sent_messages(71)) == 2
    assert api.webhook == {}  # removed on stop, as configured
    assert caplog.text.count("wrong or missing secret") == 2
    assert caplog.text.count("malformed update") == 3


def test_webhook_mode_needs_a_secret(make_runtime: RuntimeFactory) -> None:
    runtime = make_runtime(public_base_url="https://rapport.example")
    with pytest.raises(ValueError, match="TELEGRAM_WEBHOOK_SECRET"):
        build_telegram_service(runtime)


def test_no_token_no_service(make_runtime: RuntimeFactory) -> None:
    assert build_telegram_service(make_runtime(telegram_bot_token=None)) is None
