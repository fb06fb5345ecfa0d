"""Handoff end to end: the app under uvicorn with the SMS channel (Twilio played by its stand-in)
and the Telegram channel (the Bot API stand-in, polling), the console in Debian's chromium.

A customer asks for a person -> the bot says what happens next -> the conversation shows up
waiting in the inbox -> an operator claims it and replies -> the reply reaches the stand-in with
its delivery state in the transcript -> the customer's answer shows up without a reload ->
resolve -> the customer's next message gets the pending question again."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select

from bot.channels.sms import build_sms_service
from bot.channels.telegram import build_telegram_service
from bot.runtime import Runtime, build_runtime
from bot.settings import Settings
from bot.web import create_app
from storage.tables import IDENTITY
from tests.bot.browser.test_console_browser import ARGS, CHROMIUM
from tests.bot.test_console import PASSWORD, make_user
from tests.telegram_standin import TOKEN as TELEGRAM_TOKEN
from tests.telegram_standin import BotApiStandin, message_update
from tests.twilio_standin import ACCOUNT, FROM, TOKEN, SmsApp, TwilioStandin

DOCS = Path(__file__).resolve().parents[3] / "docs"
ASK_CHANNEL = "How would you like us to reach you"
PHONE = "+14155550161"
CHAT = 4242


@dataclass
class Live:
    url: str
    runtime: Runtime
    sms: SmsApp
    telegram: BotApiStandin


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    db_url = f"sqlite:///{tmp_path_factory.mktemp('inbox') / 'rapport.db'}"
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with TwilioStandin(ACCOUNT, TOKEN) as twilio, BotApiStandin() as telegram:
        settings = Settings(
            _env_file=None,
            database_url=db_url,
            twilio_account_sid=ACCOUNT,
            twilio_auth_token=TOKEN,
            twilio_from_number=FROM,
            twilio_api_base_url=twilio.url,
            telegram_bot_token=TELEGRAM_TOKEN,
            telegram_api_base_url=telegram.root,
            telegram_rate_per_second=200.0,
            telegram_rate_per_chat=50.0,
            public_base_url=url,
            sms_rate_per_second=200.0,
            handoff_hours="Mon-Sun 00:00-23:59",
        )
        runtime = build_runtime(settings)
        sms = build_sms_service(runtime)
        tg = build_telegram_service(runtime, mode="polling", poll_timeout=0.5, idle_delay=0.02)
        assert sms is not None and tg is not None
        sms.status_grace = 0.3
        make_user(runtime.db, "op@example.com", "operator")
        app = create_app(runtime, [sms, tg])
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not server.started:
                assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.02)
            with httpx.Client(timeout=10) as http:
                yield Live(url, runtime, SmsApp(url, runtime, sms, None, twilio, http), telegram)  # type: ignore[arg-type]
        finally:
            server.should_exit = True
            thread.join(timeout=15)
            sock.close()
            runtime.db.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, live: Live) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1360, "height": 1000})
    page = context.new_page()
    page.goto(f"{live.url}/console/login")
    page.fill("input[name=email]", "op@example.com")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Conversations")
    yield page
    context.close()


def wait_for(check: Callable[[], list[str]], count: int, timeout: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if len(got) >= count:
            return got
        time.sleep(0.05)
    raise AssertionError(f"{count} messages expected, got {check()}")


@dataclass
class Customer:
    """The customer on one channel: ``say`` texts the bot, ``received`` what reached them."""

    say: Callable[[str], object]
    received: Callable[[], list[str]]
    channel: str
    address: str


def customer_on(channel: str, live: Live) -> Customer:
    if channel == "sms":
        sids = iter(range(1, 1000))
        return Customer(
            lambda text: live.sms.sms(text, sid=f"SMh{next(sids)}", sender=PHONE),
            lambda: live.sms.standin.to(PHONE),
            "sms",
            PHONE,
        )
    return Customer(
        lambda text: live.telegram.push_update(message_update(CHAT, text)),
        lambda: [s.text for s in live.telegram.sent_messages(CHAT)],
        "telegram",
        str(CHAT),
    )


def customer_id(live: Live, who: Customer) -> int:
    with live.runtime.db.connect() as conn:
        found = conn.execute(
            select(IDENTITY.c.customer_id).where(
                IDENTITY.c.channel == who.channel, IDENTITY.c.address == who.address
            )
        ).scalar_one()
    return int(found)


@pytest.mark.parametrize("channel", ["sms", "telegram"])
def test_a_customer_is_handed_to_a_person_and_back_to_the_bot(channel: str, live: Live, page: Page) -> None:
    who = customer_on(channel, live)
    who.say("hi")
    assert ASK_CHANNEL in wait_for(who.received, 2)[1]
    who.say("can I talk to a real person?")
    told = wait_for(who.received, 3)[2]
    assert "someone from our team will reply here shortly" in told
    cid = customer_id(live, who)

    page.goto(f"{live.url}/console/inbox")
    waiting = page.locator('section[data-state="waiting"]')
    expect(waiting.locator(f"#c{cid}")).to_be_visible()
    expect(page.locator("[data-inbox-badge]")).not_to_have_text("")
    if channel == "telegram":  # by now the SMS customer's conversations are there too
        expect(page.locator('section[data-state="resolved"]')).to_contain_text("op@example.com")
        DOCS.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS / "console-inbox.png"), full_page=True)
    waiting.locator(f"#c{cid} a").click()
    expect(page.locator("#conv-state")).to_have_text("waiting")
    expect(page.locator("#transcript")).to_contain_text("can I talk to a real person?")
    expect(page.locator("#transcript")).to_contain_text("handoff")
    page.click("#claim")
    expect(page.locator("#conv-state")).to_have_text("human")

    reply = "Hi, this is Dana from the team. What can I do for you?"
    page.fill("#reply-text", reply)
    if channel == "sms":
        expect(page.locator('#segments [data-field="segments"]')).to_have_text("1")
        expect(page.locator('#segments [data-field="units"]')).to_have_text(str(len(reply)))
    page.click("#send")
    assert wait_for(who.received, 4)[3] == reply
    operator_message = page.locator(".msg.operator").filter(has_text=reply)
    expect(operator_message.locator(".tag")).to_have_text(
        "delivered" if channel == "sms" else "sent", timeout=15_000
    )

    # The customer answers: it shows up on the open page, with no reload.
    page.evaluate("window.__still_here = true")
    who.say("I pay too much, can you check my plan?")
    expect(page.locator("#transcript")).to_contain_text("I pay too much", timeout=15_000)
    assert page.evaluate("window.__still_here") is True
    assert len(who.received()) == 4  # the bot said nothing

    page.click("#resolve")
    expect(page.locator(".notice")).to_contain_text("Resolved")
    expect(page.locator("#conv-state")).to_have_text("resolved")
    if channel == "sms":
        page.screenshot(path=str(DOCS / "console-inbox-conversation.png"), full_page=True)
    who.say("ok thanks")
    # The bot is back: it answers the thanks and asks the pending question (one or two texts).
    wait_for(lambda: [text for text in who.received()[4:] if ASK_CHANNEL in text], 1)
