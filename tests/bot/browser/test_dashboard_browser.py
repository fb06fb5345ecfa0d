"""The dashboard in a real browser (the fixtures of test_console_browser: Debian's chromium, the
demo book served by uvicorn, after a proactive scan and the roll-up): staff see every section with
its charts, change the range and download a figure's CSV, under the console's CSP; operators see
the conversation figures only."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from playwright.sync_api import Browser, Page, expect

from dialogs.bank import QuestionBank
from schedulers.dashboard import rollup
from schedulers.proactive import scan
from storage.db import open_database
from tests.bot.browser import test_console_browser as base
from tests.bot.browser.test_console_browser import DOCS, Served
from tests.bot.test_console import PASSWORD, make_runtime, make_user

served = base.served
browser = base.browser
page = base.page

STAFF = "dash-staff@example.com"


@pytest.fixture(scope="module")
def rolled(served: Served) -> Served:
    db = open_database(served.db_url)
    runtime = make_runtime(served.db_url, db, QuestionBank.load())
    now = datetime.now(UTC).replace(hour=15)
    policy = runtime.settings.policy_config()
    scan(db, runtime.dialog.advisor, policy, now)
    rollup(db, runtime.bank, datetime.now(UTC))
    make_user(db, STAFF, "staff")
    db.dispose()
    return served


@pytest.fixture
def staff_page(browser: Browser, rolled: Served) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    staff = context.new_page()
    staff.goto(f"{rolled.url}/console/login")
    staff.fill("input[name=email]", STAFF)
    staff.fill("input[name=password]", PASSWORD)
    staff.click("button[type=submit]")
    expect(staff.get_by_role("link", name="Dashboard")).to_be_visible()
    yield staff
    context.close()


def test_staff_see_every_section_change_the_range_and_download_a_figure(
    staff_page: Page, rolled: Served
) -> None:
    page = staff_page
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.get_by_role("link", name="Dashboard").click()
    expect(page.locator("h1")).to_have_text("Dashboard")
    for section in ("Learning", "Understanding", "Suggestions", "Broadcasts", "Customer value"):
        expect(page.get_by_role("heading", name=section, exact=True)).to_be_visible()
    expect(page.locator("#figure-funnel svg.dash-chart")).to_be_visible()
    expect(page.locator("#figure-value svg.dash-chart")).to_be_visible()
    expect(page.locator("#figure-preferences tbody tr").first).not_to_contain_text("No data")
    offered = page.locator("#figure-funnel tbody tr").nth(1)
    expect(offered).to_contain_text("offered")
    page.screenshot(path=str(DOCS / "console-dashboard.png"), full_page=True)

    page.get_by_role("link", name="last 365 days").click()
    start = page.locator("input[name=start]").input_value()
    end = page.locator("input[name=end]").input_value()
    assert (datetime.fromisoformat(end) - datetime.fromisoformat(start)).days == 364
    page.fill("input[name=start]", end)
    page.get_by_role("button", name="Show").click()
    expect(page.locator("input[name=start]")).to_have_value(end)

    with page.expect_download() as download:
        page.locator("#figure-funnel").get_by_role("link", name="CSV").click()
    saved = download.value
    assert saved.suggested_filename == f"funnel-{end}-{end}.csv"
    with open(saved.path(), encoding="utf-8") as handle:
        assert handle.readline().strip() == "step,count,of eligible"
    assert not [p for p in problems if "Content Security Policy" in p], problems


def test_operators_see_only_the_conversation_figures(page: Page, rolled: Served) -> None:
    page.goto(f"{rolled.url}/console/dashboard")
    expect(page.get_by_role("heading", name="Understanding", exact=True)).to_be_visible()
    expect(page.locator("#figure-intents svg.dash-chart")).to_be_visible()
    expect(
        page.locator("#figure-phrasings").get_by_role("link", name="Review and teach them")
    ).to_be_visible()
    expect(page.get_by_role("heading", name="Suggestions", exact=True)).to_have_count(0)
    response = page.goto(f"{rolled.url}/console/dashboard/funnel.csv")
    assert response is not None and response.status == 403
