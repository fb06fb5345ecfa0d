"""Broadcasts in a real browser (the fixtures of test_console_browser: Debian's chromium, the demo
book served by uvicorn): staff create one, dry-run it, schedule it and watch its progress update
under the console's Content-Security-Policy; operators are refused the pages."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select, update

from dialogs.bank import QuestionBank
from schedulers import broadcasts as bc
from storage.broadcast_models import BROADCAST_RECIPIENT
from storage.db import open_database
from storage.tables import MESSAGE
from tests.bot.browser import test_console_browser as base
from tests.bot.browser.test_console_browser import DOCS, Served
from tests.bot.test_console import PASSWORD, make_runtime, make_user

# The same fixtures as the console's browser tests: `served` (the app on the demo book), `browser`
# and `page` (logged in as op@example.com, an operator).
served = base.served
browser = base.browser
page = base.page

STAFF = "staff@example.com"
SEGMENT = "suggest and saving >= 5"
TEMPLATE = "Hi {{ name }}, {{ suggested_plan }} saves you {{ monthly_saving }} a month. Reply YES to switch."


@pytest.fixture(scope="module")
def staff_account(served: Served) -> str:
    db = open_database(served.db_url)
    make_user(db, STAFF, "staff")
    db.dispose()
    return STAFF


@pytest.fixture
def staff_page(browser: Browser, served: Served, staff_account: str) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    staff = context.new_page()
    staff.goto(f"{served.url}/console/login")
    staff.fill("input[name=email]", staff_account)
    staff.fill("input[name=password]", PASSWORD)
    staff.click("button[type=submit]")
    expect(staff.get_by_role("link", name="Broadcasts")).to_be_visible()
    yield staff
    context.close()


def test_staff_create_dry_run_schedule_and_watch_a_broadcast(staff_page: Page, served: Served) -> None:
    page = staff_page
    page.get_by_role("link", name="Broadcasts").click()
    page.get_by_role("link", name="New broadcast").click()
    page.fill("input[name=name]", "Spring savings")
    page.fill("textarea[name=segment]", "suggest and saving >=")
    page.fill("textarea[name=template]", TEMPLATE)
    page.get_by_role("button", name="Create the draft").click()
    expect(page.locator("#segment-error")).to_contain_text("expected a value")
    expect(page.locator("textarea[name=template]")).to_have_value(TEMPLATE)  # the input is kept
    page.fill("textarea[name=segment]", SEGMENT)
    page.get_by_role("button", name="Create the draft").click()
    expect(page.locator("h1")).to_contain_text("Spring savings")
    expect(page.locator(".notice")).to_contain_text("Created as a draft")
    expect(page.locator("#preview tbody tr")).to_have_count(3)
    expect(page.locator("#preview tbody tr").first).to_contain_text("saves you $")

    page.get_by_role("link", name="Dry run").click()
    broadcast_id = int(page.url.split("/")[-2])
    db = open_database(served.db_url)
    runtime = make_runtime(served.db_url, db, QuestionBank.load())
    expected = bc.dry_run(
        db, runtime.dialog.advisor, runtime.settings.policy_config(), broadcast_id, datetime.now(UTC)
    )
    counts = page.locator("#dry-run")
    expect(counts.locator('[data-count="considered"]')).to_have_text(str(expected.considered))
    expect(counts.locator('[data-count="matched"]')).to_have_text(str(expected.matched))
    expect(counts.locator('[data-count="would_queue"]')).to_have_text(str(expected.would_queue))
    expect(counts.locator('[data-excluded="segment"]')).to_have_text(str(expected.excluded["segment"]))
    assert 0 < expected.would_queue < expected.matched < expected.considered  # no_consent excludes some
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "console-broadcast.png"), full_page=True)

    page.get_by_role("button", name="Schedule…").click()
    # The confirmation step: nothing is queued until staff confirm what it will send and cost.
    expect(page.locator('[data-confirm="recipients"]')).to_have_text(str(expected.would_queue))
    expect(page.locator('[data-confirm="total_cost"]')).to_contain_text("$")
    with db.connect() as conn:
        assert conn.execute(select(BROADCAST_RECIPIENT.c.message_id)).first() is None
    page.get_by_role("button", name="Confirm and schedule").click()
    expect(page.locator(".notice")).to_contain_text("Scheduled")
    expect(page.locator("#state")).to_have_text("scheduled")
    queued = page.locator('#deliveries [data-count="queued"]')
    expect(queued).to_have_text(str(expected.would_queue))
    expect(page.locator('[data-count="delivered"]')).to_have_text("0")

    # Two messages are delivered: the page shows it without a reload (its script polls status.json).
    with db.begin() as conn:
        ids = conn.execute(
            select(BROADCAST_RECIPIENT.c.message_id)
            .where(BROADCAST_RECIPIENT.c.message_id.is_not(None))
            .order_by(BROADCAST_RECIPIENT.c.message_id)
            .limit(2)
        ).scalars()
        conn.execute(update(MESSAGE).where(MESSAGE.c.id.in_(list(ids))).values(status="delivered"))
    db.dispose()
    expect(page.locator('[data-count="delivered"]')).to_have_text("2", timeout=15_000)
    expect(page.locator("#state")).to_have_text("sending")
    expect(queued).to_have_text(str(expected.would_queue - 2))
    expect(page.locator('[data-field="finished"]')).to_have_text("2")
    assert page.locator("#progress-bar").evaluate("bar => bar.value") == 2

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel the broadcast").click()
    expect(page.locator(".notice")).to_contain_text("Cancelled")
    expect(page.locator('[data-count="cancelled"]')).to_have_text(str(expected.would_queue - 2))
    page.goto(f"{served.url}/console/broadcasts")
    expect(page.locator(f"#b{broadcast_id}")).to_contain_text("cancelled")


def test_operator_is_refused_the_broadcast_pages(page: Page, served: Served) -> None:
    assert page.get_by_role("link", name="Broadcasts").count() == 0
    for path in ("/console/broadcasts", "/console/broadcasts/new", "/console/broadcasts/1"):
        response = page.goto(served.url + path)
        assert response is not None and response.status == 403, path
