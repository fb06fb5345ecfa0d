"""The console on a phone (issue #15): at 390 px no page is wider than the screen, chart labels are
12 px or more, and the screenshots in docs/ are taken here (desktop and phone)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.bot.browser import test_console_browser as base
from tests.bot.browser.test_console_browser import DOCS, Served
from tests.bot.test_console import PASSWORD

served = base.served
browser = base.browser

PHONE = {"width": 390, "height": 844}


def signed_in(browser: Browser, served: Served, viewport: dict[str, int]) -> Iterator[Page]:
    context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    page = context.new_page()
    page.goto(f"{served.url}/console/login")
    page.fill("input[name=email]", "op@example.com")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_have_text("Conversations")
    yield page
    context.close()


@pytest.fixture
def phone(browser: Browser, served: Served) -> Iterator[Page]:
    yield from signed_in(browser, served, PHONE)


@pytest.fixture
def desktop(browser: Browser, served: Served) -> Iterator[Page]:
    yield from signed_in(browser, served, {"width": 1280, "height": 900})


def pages(served: Served) -> list[tuple[str, str]]:
    c = served.customer_id
    return [
        ("conversations", "/console/conversations"),
        ("messages", "/console/conversations?view=messages"),
        ("customer", f"/console/customers/{c}"),
        ("transcript", f"/console/customers/{c}/transcript"),
        ("review", "/console/review"),
        ("taught", "/console/taught"),
        ("inbox", "/console/inbox"),
        ("not-found", "/console/customers/999999"),
    ]


def test_no_page_is_wider_than_a_390px_phone(phone: Page, served: Served) -> None:
    DOCS.mkdir(exist_ok=True)
    for name, path in pages(served):
        phone.goto(served.url + path)
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)
        if name in ("conversations", "customer"):
            phone.screenshot(path=str(DOCS / f"console-phone-{name}.png"), full_page=False)


def test_chart_labels_are_readable_and_named_for_people(desktop: Page, phone: Page, served: Served) -> None:
    for page in (desktop, phone):
        page.goto(f"{served.url}/console/customers/{served.customer_id}")
        labels = page.locator("svg.chart text")
        assert labels.count() > 0
        sizes = labels.evaluate_all(
            "ts => ts.map(t => parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a)"
        )
        assert min(sizes) >= 12, sizes
        headings = page.locator(".card h2").all_inner_texts()
        assert any(h.startswith("Mobile data (GB)") for h in headings), headings
        assert not any("_" in h for h in headings), headings
    desktop.screenshot(path=str(DOCS / "console-customer.png"), full_page=True)
    desktop.goto(f"{served.url}/console/conversations")
    expect(desktop.locator("#conversations")).to_be_visible()
    desktop.screenshot(path=str(DOCS / "console-conversations.png"), full_page=False)
