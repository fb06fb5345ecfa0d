"""The console staff can trust, over HTTP on SQLite and PostgreSQL (issue #15): bad ids, queries,
segments and templates are a 4xx with a human error page, never a 5xx."""

from __future__ import annotations

import html
import re
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import Engine, func, select

from dialogs import taught
from schedulers import broadcasts as bc
from storage.broadcast_models import BROADCAST
from storage.tables import MESSAGE
from tests.bot import test_console, test_console_broadcasts
from tests.bot.test_console import Console, login, login_then, say
from tests.bot.test_console_broadcasts import broadcast_messages, counts, create
from tests.schedulers import test_broadcasts
from tests.schedulers.test_broadcasts import MORNING_NY, SEGMENT, TEMPLATE

console = test_console.console
book = test_broadcasts.book
staff = test_console_broadcasts.staff
unconfigured = test_console_broadcasts.unconfigured

BAD_IDS = [str(2**31), str(2**63), str(2**64), "99999999999999999999999999", "-1", "0", "abc", "1e3"]


def broadcasts_in(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(BROADCAST)).scalar_one())


@pytest.mark.parametrize("bad", BAD_IDS)
def test_every_id_route_answers_404_for_an_id_that_cannot_exist(staff: Console, bad: str) -> None:
    c = staff
    login(c.client, "admin@example.com")
    token = c.csrf()
    pages = [
        f"/console/customers/{bad}",
        f"/console/customers/{bad}/transcript",
        f"/console/customers/{bad}/export",
        f"/console/inbox/{bad}",
        f"/console/inbox/{bad}/live",
        f"/console/broadcasts/{bad}",
        f"/console/broadcasts/{bad}/dry-run",
        f"/console/broadcasts/{bad}/status.json",
    ]
    for path in pages:
        response = c.client.get(path)
        assert response.status_code == 404, (path, response.status_code, response.text[:300])
    posts = [
        f"/console/review/{bad}/reviewed",
        f"/console/review/{bad}/teach",
        f"/console/review/{bad}/teach-intent",
        f"/console/taught/{bad}/undo",
        f"/console/inbox/{bad}/claim",
        f"/console/inbox/{bad}/reply",
        f"/console/inbox/{bad}/resolve",
        f"/console/broadcasts/{bad}/schedule",
        f"/console/broadcasts/{bad}/cancel",
        f"/console/admin/users/{bad}/disable",
    ]
    for path in posts:
        response = c.client.post(path, data={"csrf_token": token}, follow_redirects=False)
        assert response.status_code == 404, (path, response.status_code, response.text[:300])


@pytest.mark.parametrize("bad", [str(2**63), "-5", "0", "x"])
def test_a_before_that_cannot_exist_is_404(console: Console, bad: str) -> None:
    login(console.client, "op@example.com")
    response = console.client.get("/console/conversations", params={"before": bad})
    assert response.status_code == 404
    assert "text/html" in response.headers["content-type"]
    assert console.client.get("/console/conversations", params={"before": str(2**31 - 1)}).status_code == 200


def test_nul_and_control_characters_in_search_are_ignored(console: Console) -> None:
    say(console.runtime, "+15550001111", "hi", "evenings please")
    login(console.client, "op@example.com")
    nasty = [{"q": "\x00"}, {"q": "even\x00ings"}, {"who": "\x00\x01"}, {"q": "a\x00b", "who": "5\x00"}]
    for params in nasty:
        response = console.client.get("/console/conversations", params=params)
        assert response.status_code == 200, (params, response.text[:300])
        export = console.client.get("/console/conversations/export", params=params)
        assert export.status_code == 200, params


def test_errors_are_human_pages_not_raw_json(console: Console) -> None:
    login(console.client, "op@example.com")
    missing = console.client.get("/console/customers/424242")
    assert missing.status_code == 404
    assert missing.headers["content-type"].startswith("text/html")
    assert "no such customer" in missing.text and "<h1>Not found</h1>" in missing.text
    assert "Back to the conversations" in missing.text  # the signed-in layout, with a way on

    forbidden = console.client.get("/console/broadcasts")
    assert forbidden.status_code == 403
    assert forbidden.headers["content-type"].startswith("text/html")
    assert '{"detail"' not in forbidden.text and "this page is for staffs" not in forbidden.text
    assert "Only staff and admins may open this page." in forbidden.text

    unknown = console.client.get("/console/no-such-page")
    assert unknown.status_code == 404 and unknown.headers["content-type"].startswith("text/html")

    bad_form = console.client.post("/console/review/1/reviewed", data={"csrf_token": "x" * 500})
    assert bad_form.status_code == 422 and bad_form.headers["content-type"].startswith("text/html")

    # The JSON routes keep JSON, for the pages' scripts.
    live = console.client.get("/console/inbox/424242/live")
    assert live.status_code == 404 and live.headers["content-type"].startswith("application/json")
    assert live.json()["detail"]
    # Outside the console, FastAPI's own answers stand.
    assert console.client.get("/no-such-page").headers["content-type"].startswith("application/json")


def test_a_deeply_bracketed_segment_is_a_clear_error(staff: Console) -> None:
    before = broadcasts_in(staff.db)
    token = staff.csrf()
    for segment in ["(" * 5000 + "consent" + ")" * 5000, "not " * 5000 + "consent", "(" * 40 + "consent"]:
        response = staff.client.post(
            "/console/broadcasts",
            data={"name": "deep", "segment": segment[:2000], "template": TEMPLATE, "csrf_token": token},
        )
        assert response.status_code == 422, response.text[:300]
        assert "too deeply nested" in response.text
    assert broadcasts_in(staff.db) == before


@pytest.mark.parametrize(
    ("template", "says"),
    [
        ("{{ 'x' * 10**7 }}", "too much for a message"),
        ("{{ range(10**6)|list|length }}", "cannot be rendered"),
        ("{{ 9**99**99**99 }}", "too large"),
        ("{{ 1 / 0 }}", "cannot be rendered"),
        ("{{ 'x' * 1601 }}", "1,601 characters"),
        ("Hi {{ name }} " + "word " * 330, "characters"),
    ],
)
def test_templates_that_blow_up_or_render_too_long_are_refused(
    staff: Console, template: str, says: str
) -> None:
    before = broadcasts_in(staff.db)
    response = staff.client.post(
        "/console/broadcasts",
        data={"name": "big", "segment": SEGMENT, "template": template, "csrf_token": staff.csrf()},
    )
    assert response.status_code == 422, response.text[:300]
    assert says in response.text
    assert broadcasts_in(staff.db) == before


def test_a_rendered_message_of_exactly_the_cap_is_accepted(staff: Console) -> None:
    bid = create(staff, template="{{ 'x' * 1600 }}")
    assert bid > 0
    with pytest.raises(bc.BroadcastError, match="1,601"):
        bc.render(bc.compile_template("{{ 'x' * 1601 }}"), {})
    assert MORNING_NY  # the staff fixture's clock


# -- the confirmation step ---------------------------------------------------------------------------


def test_scheduling_first_shows_what_it_will_send_and_cost_and_queues_nothing(staff: Console) -> None:
    long = TEMPLATE + " 🎉" * 40  # UCS-2: several segments, over SMS_MAX_SEGMENTS (2)
    bid = create(staff, template=long)
    token = staff.csrf()
    for path in (f"/console/broadcasts/{bid}/confirm", f"/console/broadcasts/{bid}/schedule"):
        page = staff.client.post(path, data={"csrf_token": token, "when": "now"})
        assert page.status_code == 200, page.text[:500]
        assert broadcast_messages(staff.db) == {}  # nothing queued before the confirmation
        settings = staff.runtime.settings
        expected = bc.confirmation(
            staff.db, staff.runtime.dialog.advisor, settings.policy_config(), bid, MORNING_NY,
            price_per_segment=settings.sms_price_per_segment, max_segments=settings.sms_max_segments,
        )  # fmt: skip
        dry = bc.dry_run(staff.db, staff.runtime.dialog.advisor, settings.policy_config(), bid, MORNING_NY)
        assert expected.recipients == dry.would_queue == 3
        shown = counts(page.text, "confirm")
        assert shown == {"recipients": 3, "total_segments": expected.total_segments}
        assert counts(page.text, "channel") == dict(expected.channels)
        assert counts(page.text, "segments-per-message") == {str(k): v for k, v in expected.segments.items()}
        total = re.search(r'data-confirm="total_cost">\$([\d.]+)<', page.text)
        assert total and Decimal(total.group(1)) == expected.total_cost.quantize(Decimal("0.01"))
        assert expected.total_cost == expected.total_segments * Decimal("0.0079") > 0
        assert expected.over_budget == 3 and 'id="over-budget"' in page.text
        assert "Confirm and schedule for 3 recipients" in page.text
    confirmed = staff.client.post(
        f"/console/broadcasts/{bid}/schedule",
        data={"csrf_token": token, "when": "now", "confirmed": "yes"},
        follow_redirects=False,
    )
    assert confirmed.status_code == 303
    assert len(broadcast_messages(staff.db)) == 3


def test_the_confirmation_refuses_when_no_channel_is_configured(unconfigured: Console) -> None:
    bid = create(unconfigured)
    for path in ("confirm", "schedule"):
        response = unconfigured.client.post(
            f"/console/broadcasts/{bid}/{path}", data={"csrf_token": unconfigured.csrf(), "when": "now"}
        )
        assert response.status_code == 422
        assert "no channel is configured" in html.unescape(response.text)
        assert "Confirm and schedule" not in response.text
    assert broadcast_messages(unconfigured.db) == {}


def test_the_preview_shows_the_text_as_sent_and_warns_over_the_segment_budget(staff: Console) -> None:
    short = create(staff, name="short")
    page = staff.client.get(f"/console/broadcasts/{short}").text
    assert "data-over-budget" not in page and "data-cut" not in page
    long = create(staff, template=TEMPLATE + " 🎉" * 40, name="long")
    page = staff.client.get(f"/console/broadcasts/{long}").text
    assert len(re.findall(r'data-over-budget="\d+"', page)) == 3
    assert "over the budget of 2 (SMS_MAX_SEGMENTS)" in page
    # Look-alikes are replaced as the SMS sender does: the preview shows that text.
    curly = create(staff, template="Hi {{ name }} — “thanks”", name="curly")
    page = html.unescape(staff.client.get(f"/console/broadcasts/{curly}").text)
    assert 'Hi Dana - "thanks"' in page


def test_polling_a_broadcasts_status_does_not_keep_the_session_alive(staff: Console) -> None:
    bid = create(staff)
    staff.client.post(
        f"/console/broadcasts/{bid}/schedule",
        data={"csrf_token": staff.csrf(), "when": "now", "confirmed": "yes"},
    )
    for _ in range(4):  # an open page polling for 40 minutes
        staff.clock.now += timedelta(minutes=10)
        assert staff.client.get(f"/console/broadcasts/{bid}/status.json").status_code == 200
    staff.clock.now += timedelta(minutes=1)  # 41 minutes since the last real request
    expired = staff.client.get(f"/console/broadcasts/{bid}/status.json", follow_redirects=False)
    assert expired.status_code == 303 and "/console/login" in expired.headers["location"]


# -- teaching ---------------------------------------------------------------------------------------


def test_the_teach_menus_preselect_no_answer(console: Console) -> None:
    say(console.runtime, "+14155550301", "hi", "carrier pigeon")
    login(console.client, "op@example.com")
    page = console.client.get("/console/review").text
    assert "carrier pigeon" in page
    assert re.findall(r'<option value="[^"]+"[^>]*selected', page) == []  # no real answer chosen
    assert '<option value="" selected disabled>Choose what it meant…</option>' in page
    assert '<option value="" selected disabled>Choose an intent…</option>' in page
    assert page.count(" required>") >= 2


def _option(console: Console, key: str, value: str) -> str:
    question = console.runtime.bank[key]
    return f"{key}:{next(i for i, o in enumerate(question.options) if o.value == value)}"


def test_teaching_an_answer_refuses_conflicts_and_messages_outside_the_queue(console: Console) -> None:
    first = say(console.runtime, "+14155550302", "hi", "carrier pigeon")[1]
    second = say(console.runtime, "+14155550303", "hi", "Carrier pigeon")[1]
    understood = say(console.runtime, "+14155550304", "hi", "sms")[1]
    login(console.client, "op@example.com")
    token = console.csrf()
    sms, telegram = (
        _option(console, "contact_channel", "sms"),
        _option(console, "contact_channel", "telegram"),
    )
    ok = console.client.post(f"/console/review/{first}/teach", data={"csrf_token": token, "answer": sms})
    assert ok.status_code == 200 and "Taught" in ok.text
    conflict = console.client.post(
        f"/console/review/{second}/teach", data={"csrf_token": token, "answer": telegram}
    )
    assert conflict.status_code == 422
    assert "already taught as answer contact_channel=sms" in html.unescape(conflict.text)
    outside = console.client.post(
        f"/console/review/{understood}/teach", data={"csrf_token": token, "answer": sms}
    )
    assert outside.status_code == 422 and "not waiting for review" in outside.text
    again = console.client.post(f"/console/review/{first}/teach", data={"csrf_token": token, "answer": sms})
    assert again.status_code == 422 and "already reviewed" in again.text
    nothing = console.client.post(f"/console/review/{second}/teach", data={"csrf_token": token, "answer": ""})
    assert nothing.status_code == 422
    with console.db.connect() as conn:
        rows = taught.list_taught(conn)
        assert [(t.phrase, t.value) for t in rows] == [("carrier pigeon", "sms")]
        assert conn.execute(select(MESSAGE.c.needs_review).where(MESSAGE.c.id == second)).scalar_one()


def test_teach_after_the_session_expired_logs_in_and_returns_to_the_form(console: Console) -> None:
    message = say(console.runtime, "+14155550305", "hi", "gimme the head honcho")[1]
    login(console.client, "op@example.com")
    token = console.csrf()
    console.clock.now += timedelta(hours=2)  # the session ends while the review page is open
    response = console.client.post(
        f"/console/review/{message}/teach-intent",
        data={"csrf_token": token, "intent": "handoff"},
        headers={"referer": "http://testserver/console/review"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/console/login?next=%2Fconsole%2Freview"
    back = login_then(console.client, response.headers["location"], "/console/review")
    assert back == "/console/review"
    page = console.client.get(back)
    assert page.status_code == 200 and "gimme the head honcho" in page.text  # still there to teach
    # Without a usable referer: the conversations, never the POST-only address (405).
    console.clock.now += timedelta(hours=2)
    response = console.client.post(
        f"/console/review/{message}/teach-intent",
        data={"csrf_token": token, "intent": "handoff"},
        headers={"referer": "http://evil.example/console/review"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/console/login?next=%2Fconsole%2Fconversations"


# -- pages ------------------------------------------------------------------------------------------


def test_text_search_finds_words_by_their_beginning(console: Console) -> None:
    say(console.runtime, "+14155550401", "hi", "evenings are best for me")
    say(console.runtime, "+14155550402", "hi", "mornings please")
    login(console.client, "op@example.com")
    for query in ("evening", "evenings", "EVEN", "even best", "evenings!"):
        page = console.client.get("/console/conversations", params={"q": query, "view": "messages"}).text
        assert "evenings are best for me" in html.unescape(page), query
        assert "mornings please" not in page, query
    page = console.client.get(
        "/console/conversations", params={"q": "evening morning", "view": "messages"}
    ).text
    assert "evenings are best" not in page  # every word is required
    for nasty in ("a & | ! : * ' ( )", "' OR 1=1 --", '"*', "_", ":*", "&"):
        assert console.client.get("/console/conversations", params={"q": nasty}).status_code == 200, nasty


def test_the_plan_fit_speaks_to_the_operator_with_names_and_currency(
    staff: Console, book: dict[str, int]
) -> None:
    page = html.unescape(staff.client.get(f"/console/customers/{book['dana']}").text)
    fit = page[page.index("<h2>Plan fit</h2>") : page.index("<h2>Suggestions and answers</h2>")]
    assert "Would save $20.00/month ($240.00/year) by moving to Basic 5 GB." in fit
    assert "Plus 20 GB (plus-20) · $" in fit and "Basic 5 GB (basic-5) · $" in fit
    assert "Reply YES" not in fit and "you used" not in fit.lower()
    gus = html.unescape(staff.client.get(f"/console/customers/{book['gus']}").text)
    fit = gus[gus.index("<h2>Plan fit</h2>") : gus.index("<h2>Suggestions and answers</h2>")]
    assert "Reply" not in fit and "unlimited" in fit.lower()


def test_usage_charts_have_human_names(staff: Console, book: dict[str, int]) -> None:
    page = staff.client.get(f"/console/customers/{book['dana']}").text
    assert "<h2>Mobile data (GB) per month</h2>" in page
    assert "<h2>data_gb</h2>" not in page


def test_the_conversations_page_has_one_row_per_conversation(console: Console) -> None:
    ana = say(console.runtime, "+14155550501", "hi", "evenings", "text me", "thanks")
    ben = say(console.runtime, "+14155550502", "hi")
    login(console.client, "op@example.com")
    page = console.client.get("/console/conversations").text
    with console.db.connect() as conn:
        rows = {
            r.customer_id: r
            for r in conn.execute(
                select(MESSAGE.c.customer_id, func.count(), func.max(MESSAGE.c.id)).group_by(
                    MESSAGE.c.customer_id
                )
            )
        }
        ana_customer = conn.execute(select(MESSAGE.c.customer_id).where(MESSAGE.c.id == ana[0])).scalar_one()
        ben_customer = conn.execute(select(MESSAGE.c.customer_id).where(MESSAGE.c.id == ben[0])).scalar_one()
    assert re.findall(r'<tr id="c(\d+)">', page) == [str(ben_customer), str(ana_customer)]  # newest first
    shown = counts(page, "count")
    assert shown == {str(ana_customer): rows[ana_customer][1], str(ben_customer): rows[ben_customer][1]}
    assert shown[str(ana_customer)] > 4  # the bot's replies count too
    # The text search counts the matching messages of each conversation.
    found = console.client.get("/console/conversations", params={"q": "even"}).text
    matching = console.client.get("/console/conversations", params={"q": "even", "view": "messages"}).text
    assert counts(found, "count") == {str(ana_customer): len(re.findall(r'<tr id="m\d+">', matching))}
    assert "evenings" in found
    flat = console.client.get("/console/conversations", params={"view": "messages"}).text
    assert len(re.findall(r'<tr id="m\d+">', flat)) == sum(r[1] for r in rows.values())


def test_a_form_with_a_nul_character_is_a_400_not_a_500(console: Console) -> None:
    page = console.client.get("/console/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token
    response = console.client.post(
        "/console/login",
        data={"email": "op\x00@example.com", "password": "x" * 12, "csrf_token": token.group(1)},
    )
    assert response.status_code == 400 and "NUL character" in response.text
    customer = say(console.runtime, "+14155550601", "hi")[0]
    login(console.client, "op@example.com")
    with console.db.connect() as conn:
        customer_id = conn.execute(select(MESSAGE.c.customer_id).where(MESSAGE.c.id == customer)).scalar_one()
    token_ = console.csrf()
    for path, form in [
        (f"/console/inbox/{customer_id}/note", {"text": "a\x00b"}),
        (f"/console/inbox/{customer_id}/reply", {"text": "a\x00b"}),
        ("/console/admin/users", {"email": "x\x00@y.zz", "role": "operator"}),
    ]:
        response = console.client.post(path, data={"csrf_token": token_, **form})
        assert response.status_code == 400, (path, response.status_code)
