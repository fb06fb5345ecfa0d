"""The console's inbox over HTTP, on SQLite and PostgreSQL: conversations by state with counts,
claim, replies into the outbox, internal notes, operator facts, resolve, the live endpoints,
audit, roles, CSRF and escaping."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from storage import handoff as conversations
from storage.console_queries import AUDIT
from storage.tables import CUSTOMER, MESSAGE
from tests.bot import test_console
from tests.bot.test_console import XSS, Console, login, say
from tests.schedulers import test_broadcasts

console = test_console.console  # the console app with op@ and admin@ accounts

PHONE = "+14155550142"


def waiting_customer(c: Console, *texts: str) -> int:
    say(c.runtime, PHONE, "hi", *texts, "talk to someone", at=c.clock.now)
    with c.db.connect() as conn:
        return int(conn.execute(select(CUSTOMER.c.id).where(CUSTOMER.c.phone == PHONE)).scalar_one())


def post(c: Console, path: str, page: str, **data: str) -> object:
    return c.client.post(path, data={"csrf_token": c.csrf(page), **data}, follow_redirects=False)


def test_a_waiting_conversation_is_claimed_answered_noted_and_resolved(console: Console) -> None:
    c = console
    customer_id = waiting_customer(c)
    login(c.client, "op@example.com")
    c.clock.now += timedelta(minutes=7)
    inbox = c.client.get("/console/inbox")
    assert inbox.status_code == 200
    assert 'data-count="waiting">1<' in inbox.text and "7 min" in inbox.text
    assert c.client.get("/console/inbox/counts.json").json()["waiting"] == 1
    page = f"/console/inbox/{customer_id}"

    claimed = post(c, f"{page}/claim", page)
    assert claimed.status_code == 303  # type: ignore[attr-defined]
    assert c.client.get("/console/inbox/counts.json").json() | {} == {
        "bot": 0,
        "waiting": 0,
        "human": 1,
        "resolved": 0,
    }
    post(c, f"{page}/reply", page, text="Hi, this is Dana from the team. How can I help?")
    post(c, f"{page}/note", page, text="Wants a cheaper plan; check the family offer.")
    with c.db.connect() as conn:
        out = conn.execute(select(MESSAGE).where(MESSAGE.c.intent == conversations.OPERATOR_INTENT)).one()
        notes = conversations.notes(conn, customer_id=customer_id)
        conv = conversations.latest(conn, customer_id=customer_id)
    assert (out.channel, out.address, out.status) == ("sms", PHONE, "queued")
    assert [n["text"] for n in notes] == ["Wants a cheaper plan; check the family offer."]
    assert conv is not None and conv.first_human_reply_at == c.clock.now and conv.operator == "op@example.com"
    # The note is on the page and never in the outbox.
    live = c.client.get(f"{page}/live").json()
    assert "check the family offer" in live["html"] and "never sent" in live["html"]
    assert live["conversation"]["state"] == "human"
    with c.db.connect() as conn:
        assert not conn.execute(select(MESSAGE).where(MESSAGE.c.text.contains("family offer"))).first()

    recorded = post(c, f"{page}/fact", page, key="monthly_budget", value="about 30 bucks")
    assert recorded.status_code == 303  # type: ignore[attr-defined]
    post(c, f"{page}/resolve", page)
    with c.db.connect() as conn:
        done = conversations.latest(conn, customer_id=customer_id)
        actions = [r.action for r in conn.execute(select(AUDIT).order_by(AUDIT.c.id))]
        budget = conversations.profile(conn, customer_id=customer_id)
    assert done is not None and done.state == "resolved" and done.resolved_at == c.clock.now
    assert [a for a in actions if a.startswith("handoff_")] == [
        "handoff_claim",
        "handoff_reply",
        "handoff_note",
        "handoff_fact",
        "handoff_resolve",
    ]
    assert [(p["key"], p["value"], p["source"]) for p in budget if p["key"] == "monthly_budget"] == [
        ("monthly_budget", "30.00", "operator")
    ]


def test_every_inbox_form_needs_the_csrf_token_and_a_login(console: Console) -> None:
    c = console
    customer_id = waiting_customer(c)
    page = f"/console/inbox/{customer_id}"
    assert c.client.get("/console/inbox", follow_redirects=False).status_code == 303
    assert c.client.get("/console/inbox/live", follow_redirects=False).status_code == 303
    login(c.client, "op@example.com")
    for action, data in (
        ("claim", {}),
        ("reply", {"text": "hello"}),
        ("note", {"text": "n"}),
        ("fact", {"key": "monthly_budget", "value": "40"}),
        ("resolve", {}),
    ):
        response = c.client.post(f"{page}/{action}", data={"csrf_token": "forged", **data})
        assert response.status_code == 403, action
    with c.db.connect() as conn:
        assert conversations.latest(conn, customer_id=customer_id).state == "waiting"  # type: ignore[union-attr]
        assert not conn.execute(select(MESSAGE).where(MESSAGE.c.intent == "operator")).first()


def test_what_the_customer_typed_is_escaped_in_the_inbox_and_the_transcript(console: Console) -> None:
    c = console
    customer_id = waiting_customer(c, *XSS)
    with c.db.begin() as conn:
        conn.execute(CUSTOMER.update().where(CUSTOMER.c.id == customer_id).values(name=XSS[0]))
    login(c.client, "op@example.com")
    for html in (
        c.client.get("/console/inbox").text,
        c.client.get("/console/inbox/live").json()["html"],
        c.client.get(f"/console/inbox/{customer_id}").text,
        c.client.get(f"/console/inbox/{customer_id}/live").json()["html"],
    ):
        assert "<script>window.__xss" not in html and '<img src=x onerror="window' not in html
        assert "&lt;script&gt;" in html or "&lt;img" in html


def test_bad_input_gets_a_clear_answer_and_changes_nothing(console: Console) -> None:
    c = console
    customer_id = waiting_customer(c)
    login(c.client, "op@example.com")
    page = f"/console/inbox/{customer_id}"
    assert c.client.get("/console/inbox/999999").status_code == 404
    assert post(c, f"{page}/reply", page, text="   ").status_code == 422  # type: ignore[attr-defined]
    assert post(c, f"{page}/fact", page, key="nope", value="x").status_code == 422  # type: ignore[attr-defined]
    unreadable = post(c, f"{page}/fact", page, key="monthly_budget", value="purple")
    assert unreadable.status_code == 303  # type: ignore[attr-defined]
    shown = c.client.get(unreadable.headers["location"])  # type: ignore[attr-defined]
    assert "could not read" in shown.text
    long = post(c, f"{page}/reply", page, text="x" * 5000)
    assert long.status_code == 422  # type: ignore[attr-defined]


def test_replies_to_an_opted_out_customer_are_refused(console: Console) -> None:
    c = console
    customer_id = waiting_customer(c)
    say(c.runtime, PHONE, "STOP", at=c.clock.now)
    login(c.client, "op@example.com")
    page = f"/console/inbox/{customer_id}"
    refused = post(c, f"{page}/reply", page, text="Are you still there?")
    assert "opted+out" in refused.headers["location"]  # type: ignore[attr-defined]
    with c.db.connect() as conn:
        assert not conn.execute(select(MESSAGE).where(MESSAGE.c.intent == "operator")).first()


def test_sms_segments_are_counted_by_the_shared_counter(console: Console) -> None:
    login(console.client, "op@example.com")
    gsm = console.client.get("/console/inbox/segments.json", params={"text": "x" * 161}).json()
    assert (gsm["segments"], gsm["units"]) == (2, 161)
    ucs = console.client.get("/console/inbox/segments.json", params={"text": "🙂" * 40}).json()
    assert ucs["segments"] == 2 and "ucs" in ucs["encoding"].lower()


def test_two_operators_claiming_at_once_one_has_it(console: Console) -> None:
    c = console
    customer_id = waiting_customer(c)
    with c.db.begin() as conn:
        conversations.take_over(conn, customer_id=customer_id, operator="first@example.com", now=c.clock.now)
    login(c.client, "op@example.com")
    page = f"/console/inbox/{customer_id}"
    html = c.client.get(page).text
    assert "with first@example.com" in html and 'id="claim"' in html
    post(c, f"{page}/claim", page)  # taking it over is allowed, and audited
    with c.db.connect() as conn:
        assert conversations.latest(conn, customer_id=customer_id).operator == "op@example.com"  # type: ignore[union-attr]


book = test_broadcasts.book  # Dana on Plus 20 GB with light usage, and a catalog


def test_the_plan_fit_is_shown_in_operator_terms(console: Console, book: dict[str, int]) -> None:
    login(console.client, "op@example.com")
    page = console.client.get(f"/console/inbox/{book['dana']}")
    assert page.status_code == 200
    fit = re.search(r'<p id="fit">(.*?)</p>', page.text)
    assert fit is not None
    assert fit.group(1).startswith("On Plus 20 GB ($")
    assert "Best fit: Basic 5 GB at $" in fit.group(1)
    assert "saving $20.00/month ($240.00/year)" in fit.group(1)
