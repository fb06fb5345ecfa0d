"""The console in a real browser: Debian's headless chromium driven by Playwright, against the app
served by uvicorn on 127.0.0.1. Never downloads a browser (``.ci/run`` installs ``chromium``)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvicorn
from playwright.sync_api import Browser, Page, expect, sync_playwright
from sqlalchemy import select, update
from sqlmodel import Session

from bot.console import ConsoleConfig, taught_bank
from bot.demo import DEMO_PHONE, load_demo
from bot.web import create_app
from dialogs.bank import QuestionBank
from dialogs.engine import DialogEngine, EngineConfig, Inbound
from storage.db import open_database
from storage.tables import CUSTOMER, MESSAGE
from tests.bot.test_console import PASSWORD, XSS, make_runtime, make_user, say

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parents[3] / "docs"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@dataclass
class Served:
    url: str
    db_url: str
    customer_id: int  # the demo customer, with a conversation
    xss_customer_id: int
    pigeon_message_id: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    db_url = f"sqlite:///{tmp_path_factory.mktemp('browser') / 'rapport.db'}"
    db = open_database(db_url)
    runtime = make_runtime(db_url, db, QuestionBank.load())
    load_demo(db, customers=40)
    say(runtime, DEMO_PHONE, "hi", "travel perks i guess", "yes")
    say(runtime, "+14155550555", "hi", "txt me pls", "evnings", "about 40 bucks", "whatever is cheapest")
    xss_ids = say(runtime, "+14155550666", "hello", *XSS)
    pigeon = say(runtime, "+14155550777", "hi", "carrier pigeon")
    with db.begin() as conn:
        customer_id = conn.execute(select(CUSTOMER.c.id).where(CUSTOMER.c.phone == DEMO_PHONE)).scalar_one()
        xss_customer = conn.execute(
            select(MESSAGE.c.customer_id).where(MESSAGE.c.id == xss_ids[0])
        ).scalar_one()
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == xss_customer).values(name=XSS[0]))
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.phone == "+14155550555").values(name="Dana Diaz"))
    make_user(db, "op@example.com", "operator")
    app = create_app(runtime, console=ConsoleConfig())
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield Served(f"http://127.0.0.1:{port}", db_url, customer_id, xss_customer, pigeon[1])
    server.should_exit = True
    thread.join(timeout=10)
    db.dispose()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, served: Served) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{served.url}/console/conversations")
    expect(page).to_have_url(f"{served.url}/console/login?next=%2Fconsole%2Fconversations")
    page.fill("input[name=email]", "op@example.com")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Conversations")
    yield page
    context.close()


def test_search_and_open_a_transcript(page: Page, served: Served) -> None:
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "console-conversations.png"), full_page=False)
    page.fill("input[name=q]", "evnings")
    page.click("form.search button[type=submit]")
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("evnings")
    rows.first.get_by_role("link", name="transcript").click()
    expect(page.locator("h1")).to_contain_text("Transcript")
    expect(page.locator(".msg.in").filter(has_text="txt me pls")).to_contain_text("contact_channel")
    expect(page.locator(".msg.out").first).to_be_visible()
    page.screenshot(path=str(DOCS / "console-transcript.png"), full_page=False)
    page.goto(f"{served.url}/console/customers/{served.customer_id}")
    expect(page.locator("svg.chart").first).to_be_visible()
    expect(page.get_by_text("Plan fit")).to_be_visible()
    page.screenshot(path=str(DOCS / "console-customer.png"), full_page=True)


def test_customer_markup_is_shown_as_text_and_never_runs(page: Page, served: Served) -> None:
    for path in (
        f"/console/customers/{served.xss_customer_id}/transcript",
        f"/console/customers/{served.xss_customer_id}",
        "/console/conversations",
        "/console/review",
    ):
        page.goto(served.url + path)
        assert page.evaluate("typeof window.__xss") == "undefined", path
    page.goto(f"{served.url}/console/customers/{served.xss_customer_id}/transcript")
    expect(page.get_by_text(XSS[0]).first).to_be_visible()
    expect(page.get_by_text(XSS[1]).first).to_be_visible()
    assert page.locator("img[src=x]").count() == 0


def test_operator_is_refused_admin_pages(page: Page, served: Served) -> None:
    response = page.goto(f"{served.url}/console/admin/users")
    assert response is not None and response.status == 403
    assert page.get_by_role("link", name="Users").count() == 0


def test_teach_a_synonym_then_a_new_conversation_understands_it(page: Page, served: Served) -> None:
    page.goto(f"{served.url}/console/review")
    row = page.locator(f"#m{served.pigeon_message_id}")
    expect(row).to_contain_text("carrier pigeon")
    row.locator("select[name=answer]").select_option(label="contact channel: text message")
    row.get_by_role("button", name="Teach", exact=True).click()
    expect(page.locator(".notice")).to_contain_text("Taught")
    expect(page.locator(f"#m{served.pigeon_message_id}")).to_have_count(0)

    # A new customer gives the same answer to an engine built on the taught bank.
    db = open_database(served.db_url)
    with Session(db) as session:
        bank = taught_bank(QuestionBank.load(), session)
    engine = DialogEngine(db, bank, EngineConfig())
    for text in ("hi", "carrier pigeon"):
        engine.handle(Inbound(channel="sms", address="+14155550888", phone="+14155550888", text=text))
    db.dispose()
    page.goto(f"{served.url}/console/conversations?who=5550888&q=pigeon")
    page.locator("tbody tr").first.get_by_role("link", name="transcript").click()
    understood = page.locator(".msg.in").filter(has_text="carrier pigeon")
    expect(understood).to_contain_text("answer")
    expect(understood).to_contain_text("text message")
    expect(page.locator(".msg.out").filter(has_text="Got it: text message.")).to_be_visible()
