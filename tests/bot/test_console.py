"""The operator console over HTTP, on SQLite and PostgreSQL: accounts, sessions, roles, CSRF,
lockout, audit, search, transcripts, customers, review and teaching, exports, escaping."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from sqlalchemy import Engine, insert, select, update
from sqlmodel import Session

from bot.console import ConsoleConfig, add_user, taught_bank
from bot.console.auth import Principal  # noqa: F401  (the module must import cleanly)
from bot.runtime import Runtime
from bot.settings import Settings
from bot.web import create_app
from dialogs.bank import QuestionBank
from dialogs.engine import DialogEngine, EngineConfig, Inbound
from schedulers.delivery import Outbox, RetryPolicy, SendError
from storage.console_queries import AUDIT, REVIEW, TAUGHT, USER, SearchFilter, fts5_query, search_messages
from storage.models import utcnow
from storage.tables import CONSOLE_SESSION, CUSTOMER, MESSAGE, PLAN, USAGE
from tests.schedulers.test_delivery import Exploding, RecordingSender

PASSWORD = "correct horse battery"
XSS = ["<script>window.__xss=1</script>", '<img src=x onerror="window.__xss=1">']


@dataclass
class Clock:
    now: datetime = field(default_factory=lambda: datetime(2026, 3, 10, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now


def make_runtime(db_url: str, db: Engine, bank: QuestionBank, *, channels: bool = True) -> Runtime:
    """A runtime whose settings configure Twilio SMS (never called: the console sends nothing
    itself), so the contact policy has a channel; ``channels=False``: none configured."""
    settings = Settings(database_url=db_url, _env_file=None)
    if channels:
        settings = settings.model_copy(
            update={
                "twilio_account_sid": "AC" + "0" * 32,
                "twilio_auth_token": SecretStr("console-test-token"),
                "twilio_from_number": "+15005550006",
            }
        )
    return Runtime(settings, db, bank, DialogEngine(db, bank, EngineConfig()), settings.policy_config())


def make_user(db: Engine, email: str, role: str, password: str = PASSWORD) -> None:
    with Session(db, expire_on_commit=False) as session, session.begin():
        add_user(session, email, role, password)


def say(
    runtime: Runtime, phone: str, *texts: str, channel: str = "sms", at: datetime | None = None
) -> list[int]:
    ids = []
    for text in texts:
        result = runtime.dialog.handle(
            Inbound(channel=channel, address=phone, phone=phone, text=text, received_at=at)
        )
        ids.append(result.inbound_id)
    return ids


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html[:500]
    return found.group(1)


def login(client: TestClient, email: str, password: str = PASSWORD) -> tuple[int, str]:
    page = client.get("/console/login")
    response = client.post(
        "/console/login",
        data={"email": email, "password": password, "csrf_token": csrf_of(page.text)},
        follow_redirects=False,
    )
    return response.status_code, response.text


@dataclass
class Console:
    client: TestClient
    runtime: Runtime
    clock: Clock
    db: Engine

    def csrf(self, path: str = "/console/review") -> str:
        return csrf_of(self.client.get(path).text)


@pytest.fixture
def console(db_url: str, db: Engine, bank: QuestionBank) -> Iterator[Console]:
    runtime = make_runtime(db_url, db, bank)
    clock = Clock()
    app = create_app(runtime, console=ConsoleConfig(idle_timeout=timedelta(minutes=30), clock=clock))
    make_user(db, "op@example.com", "operator")
    make_user(db, "admin@example.com", "admin")
    with TestClient(app) as client:
        yield Console(client, runtime, clock, db)


def audit_actions(db: Engine) -> list[tuple[str, str | None]]:
    with db.connect() as conn:
        return [(r.action, r.actor) for r in conn.execute(select(AUDIT).order_by(AUDIT.c.id))]


# -- accounts -----------------------------------------------------------------------------------------


def test_add_user_generates_a_password_once_and_stores_only_an_argon2_hash(db: Engine) -> None:
    with Session(db, expire_on_commit=False) as session, session.begin():
        user, generated = add_user(session, "New@Example.com", "staff", None)
    assert generated is not None and len(generated) >= 12
    assert user.email == "new@example.com"
    with db.connect() as conn:
        stored = conn.execute(select(USER.c.password_hash)).scalar_one()
    assert stored.startswith("$argon2id$") and generated not in stored
    with Session(db) as session, pytest.raises(ValueError, match="already has an account"):
        add_user(session, "new@example.com", "operator", None)
    with Session(db) as session, pytest.raises(ValueError, match="role"):
        add_user(session, "x@example.com", "root", None)


def test_login_sets_a_safe_cookie_and_logout_ends_the_session(console: Console) -> None:
    status, _ = login(console.client, "op@example.com")
    assert status == 303
    cookie = next(c for c in console.client.cookies.jar if c.name == "rapport_console")
    assert cookie.has_nonstandard_attr("HttpOnly")
    assert not cookie.secure  # plain http here; https requests get Secure
    token = cookie.value or ""
    assert console.client.get("/console/conversations").status_code == 200
    csrf = console.csrf("/console/conversations")
    assert console.client.post("/console/logout", data={"csrf_token": csrf}).status_code == 200
    # The old cookie no longer works: the session is gone from the server.
    console.client.cookies.set("rapport_console", token, path="/console")
    response = console.client.get("/console/conversations", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/console/login")
    assert [a for a, _ in audit_actions(console.db)] == ["login", "logout"]


def test_bad_password_is_refused_and_audited(console: Console) -> None:
    status, body = login(console.client, "op@example.com", "wrong password!")
    assert status == 401 and "Wrong e-mail or password" in body
    status, _ = login(console.client, "nobody@example.com", "whatever12345")
    assert status == 401
    assert audit_actions(console.db) == [
        ("login_failed", "op@example.com"),
        ("login_failed", "nobody@example.com"),
    ]
    assert console.client.get("/console/conversations", follow_redirects=False).status_code == 303


def test_five_failures_lock_the_account_even_for_the_right_password(console: Console) -> None:
    for _ in range(4):
        assert login(console.client, "op@example.com", "nope nope nope")[0] == 401
    _, body = login(console.client, "op@example.com", "nope nope nope")
    assert "locked" in body
    assert login(console.client, "op@example.com")[0] == 401  # right password, still locked
    console.clock.now += timedelta(minutes=16)
    assert login(console.client, "op@example.com")[0] == 303
    actions = [a for a, _ in audit_actions(console.db)]
    assert actions == ["login_failed"] * 4 + ["login_locked", "login_locked", "login"]


def test_idle_session_expires_on_the_server(console: Console) -> None:
    login(console.client, "op@example.com")
    console.clock.now += timedelta(minutes=29)
    assert console.client.get("/console/conversations").status_code == 200  # activity renews it
    console.clock.now += timedelta(minutes=29)
    assert console.client.get("/console/conversations", follow_redirects=False).status_code == 200
    console.clock.now += timedelta(minutes=31)
    response = console.client.get("/console/conversations", follow_redirects=False)
    assert response.status_code == 303
    with console.db.connect() as conn:
        assert conn.execute(select(CONSOLE_SESSION)).first() is None


def test_anonymous_is_sent_to_login_and_back(console: Console) -> None:
    response = console.client.get("/console/review?before=5", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/console/login?next=%2Fconsole%2Freview%3Fbefore%3D5"
    assert login_then(console.client, response.headers["location"], "/console/review?before=5") == (
        "/console/review?before=5"
    )


def test_login_never_redirects_off_site(console: Console) -> None:
    assert login_then(console.client, "/console/login", "//evil.example/x") == "/console/conversations"


def login_then(client: TestClient, login_page: str, next_page: str) -> str:
    """Log in as the operator from ``login_page`` asking to go on to ``next_page``; where to."""
    page = client.get(login_page)
    data = {
        "email": "op@example.com",
        "password": PASSWORD,
        "csrf_token": csrf_of(page.text),
        "next": next_page,
    }
    return str(client.post("/console/login", data=data, follow_redirects=False).headers["location"])


def test_operator_is_refused_admin_pages_and_actions(console: Console) -> None:
    login(console.client, "op@example.com")
    assert console.client.get("/console/admin/users").status_code == 403
    assert console.client.get("/console/admin/audit").status_code == 403
    csrf = console.csrf()
    response = console.client.post(
        "/console/admin/users", data={"csrf_token": csrf, "email": "x@example.com", "role": "admin"}
    )
    assert response.status_code == 403
    with console.db.connect() as conn:
        assert conn.execute(select(USER.c.id).where(USER.c.email == "x@example.com")).first() is None


def test_admin_adds_and_disables_users_and_it_is_audited(console: Console) -> None:
    login(console.client, "admin@example.com")
    csrf = console.csrf("/console/admin/users")
    page = console.client.post(
        "/console/admin/users", data={"csrf_token": csrf, "email": "staff@example.com", "role": "staff"}
    )
    assert page.status_code == 200
    password = re.search(r'<code id="new-password">([^<]+)</code>', page.text)
    assert password
    with console.db.connect() as conn:
        staff_id = conn.execute(select(USER.c.id).where(USER.c.email == "staff@example.com")).scalar_one()
    other = TestClient(console.client.app)
    assert login(other, "staff@example.com", password.group(1))[0] == 303
    assert other.get("/console/conversations").status_code == 200
    response = console.client.post(f"/console/admin/users/{staff_id}/disable", data={"csrf_token": csrf})
    assert response.status_code == 200
    # Disabling ends the user's sessions and refuses new logins.
    assert other.get("/console/conversations", follow_redirects=False).status_code == 303
    assert login(other, "staff@example.com", password.group(1))[0] == 401
    actions = audit_actions(console.db)
    assert ("user_added", "admin@example.com") in actions
    assert ("user_disabled", "admin@example.com") in actions
    assert ("login_disabled", "staff@example.com") in actions
    audit = console.client.get("/console/admin/audit")
    assert audit.status_code == 200 and "user_disabled" in audit.text and "login_disabled" in audit.text


@pytest.mark.parametrize("token", [None, "wrong"])
def test_posts_without_the_right_csrf_token_are_refused(console: Console, token: str | None) -> None:
    login(console.client, "admin@example.com")
    ids = say(console.runtime, "+14155550101", "hi", "zzzz qqqq")
    data = {} if token is None else {"csrf_token": token}
    for path, extra in [
        (f"/console/review/{ids[1]}/reviewed", {}),
        (f"/console/review/{ids[1]}/teach", {"answer": "contact_channel:0"}),
        ("/console/admin/users", {"email": "y@example.com", "role": "operator"}),
        ("/console/logout", {}),
    ]:
        assert console.client.post(path, data={**data, **extra}).status_code == 403, path
    with console.db.connect() as conn:
        assert conn.execute(select(REVIEW)).first() is None
        assert conn.execute(select(TAUGHT)).first() is None
    assert console.client.get("/console/conversations").status_code == 200  # still logged in


def test_login_form_needs_its_csrf_token(console: Console) -> None:
    response = console.client.post(
        "/console/login", data={"email": "op@example.com", "password": PASSWORD, "csrf_token": "x"}
    )
    assert response.status_code == 403


def test_every_console_response_has_the_security_headers(console: Console) -> None:
    for response in (
        console.client.get("/console/login"),
        console.client.get("/console/conversations", follow_redirects=False),
        console.client.get("/console/static/console.css"),
    ):
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"]
    assert "content-security-policy" not in console.client.get("/healthz").headers


# -- conversations --------------------------------------------------------------------------------


def seed_conversations(runtime: Runtime, db: Engine) -> dict[str, int]:
    """Three customers on two channels over two days."""
    day1 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    day2 = datetime(2026, 3, 5, 9, 0, tzinfo=UTC)
    ids = {}
    ids["ana"] = say(runtime, "+14155550111", "hello", "text me", at=day1)[1]
    ids["ben"] = say(runtime, "+14155550122", "hi", "purple elephants", at=day2)[1]
    ids["cat"] = say(runtime, "7001", "hey", 'he said "NEAR" * AND -x', channel="telegram", at=day2)[1]
    with db.begin() as conn:
        for phone, name in (("+14155550111", "Ana Alvarez"), ("+14155550122", "Ben Brown")):
            conn.execute(update(CUSTOMER).where(CUSTOMER.c.phone == phone).values(name=name))
    return ids


def listed_ids(html: str) -> set[int]:
    return {int(i) for i in re.findall(r'<tr id="m(\d+)">', html)}


def test_search_by_text_customer_channel_date_and_review(console: Console) -> None:
    ids = seed_conversations(console.runtime, console.db)
    login(console.client, "op@example.com")
    get = console.client.get
    assert ids["ben"] in listed_ids(
        get("/console/conversations", params={"view": "messages", "q": "elephants"}).text
    )
    assert listed_ids(get("/console/conversations", params={"view": "messages", "q": "elephants"}).text) == {
        ids["ben"]
    }
    by_name = listed_ids(get("/console/conversations", params={"view": "messages", "who": "ana alv"}).text)
    assert ids["ana"] in by_name and ids["ben"] not in by_name
    by_phone = listed_ids(get("/console/conversations", params={"view": "messages", "who": "555-0122"}).text)
    assert ids["ben"] in by_phone and ids["ana"] not in by_phone
    tg = listed_ids(get("/console/conversations", params={"view": "messages", "channel": "telegram"}).text)
    assert ids["cat"] in tg and ids["ana"] not in tg and ids["ben"] not in tg
    day1 = listed_ids(
        get(
            "/console/conversations",
            params={"view": "messages", "since": "2026-03-01", "until": "2026-03-01"},
        ).text
    )
    assert ids["ana"] in day1 and ids["ben"] not in day1
    review = listed_ids(get("/console/conversations", params={"view": "messages", "review": "1"}).text)
    assert ids["ben"] in review and ids["ana"] not in review
    combined = listed_ids(
        get(
            "/console/conversations", params={"view": "messages", "q": "elephants", "channel": "telegram"}
        ).text
    )
    assert combined == set()


def test_text_search_leaves_out_broadcasts_which_the_other_filters_still_show(console: Console) -> None:
    ids = seed_conversations(console.runtime, console.db)
    with console.db.begin() as conn:
        ana = conn.execute(select(MESSAGE.c.customer_id).where(MESSAGE.c.id == ids["ana"])).scalar_one()
        offer = conn.execute(
            insert(MESSAGE)
            .values(
                customer_id=ana, channel="sms", direction="out", address="+14155550111",
                text="Ana, purple elephants ride free on Plus 10!", intent="broadcast", status="queued",
                marketing=True, created_at=datetime(2026, 3, 5, 10, 0, tzinfo=UTC),
            )
            .returning(MESSAGE.c.id)
        ).scalar_one()  # fmt: skip
    login(console.client, "op@example.com")
    get = console.client.get
    assert listed_ids(
        get("/console/conversations", params={"view": "messages", "q": "purple elephants"}).text
    ) == {ids["ben"]}
    assert (
        listed_ids(get("/console/conversations", params={"view": "messages", "q": "ride free"}).text) == set()
    )
    assert offer in listed_ids(
        get("/console/conversations", params={"view": "messages", "who": "ana alv"}).text
    )
    assert offer in listed_ids(
        get("/console/conversations", params={"view": "messages", "since": "2026-03-05"}).text
    )


@pytest.mark.parametrize(
    "query",
    ['"', "*", "NEAR", "NEAR(a b)", "AND", "-x", '"NEAR" *', "a:b", "^", "(", "' OR 1=1 --", "%", "_"],
)
def test_search_text_with_query_syntax_is_taken_literally(console: Console, query: str) -> None:
    ids = seed_conversations(console.runtime, console.db)
    login(console.client, "op@example.com")
    response = console.client.get("/console/conversations", params={"view": "messages", "q": query})
    assert response.status_code == 200
    if query in ('"NEAR" *',):
        assert ids["cat"] in listed_ids(response.text)


def test_fts5_query_quotes_every_word() -> None:
    assert fts5_query('say "hi" NEAR*') == '"say"* """hi"""* "NEAR*"*'
    assert fts5_query("   ") == ""


def test_search_pages_by_message_id(console: Console) -> None:
    for i in range(60):
        say(console.runtime, f"+1415555{1000 + i:04d}", "hello there")
    with console.db.connect() as conn:
        first = search_messages(conn, SearchFilter(text="hello"), limit=50)
        second = search_messages(conn, SearchFilter(text="hello"), before=first[-1]["id"], limit=50)
    assert len(first) == 50 and len(second) == 10
    assert [r["id"] for r in first + second] == sorted((r["id"] for r in first + second), reverse=True)
    login(console.client, "op@example.com")
    page = console.client.get("/console/conversations", params={"view": "messages", "q": "hello"})
    assert f"before={first[-1]['id']}" in page.text


def test_erased_messages_leave_the_search_index(console: Console) -> None:
    say(console.runtime, "+14155550133", "hi", "kumquat please")
    with console.db.connect() as conn:
        assert len(search_messages(conn, SearchFilter(text="kumquat"))) == 1
    say(console.runtime, "+14155550133", "forget me", "yes")
    with console.db.connect() as conn:
        assert search_messages(conn, SearchFilter(text="kumquat")) == []
    login(console.client, "admin@example.com")
    audit = console.client.get("/console/admin/audit").text
    assert "No erasures" not in audit


# -- transcript, customer, escaping --------------------------------------------------------------------


def test_transcript_shows_what_the_bot_understood_and_delivery_state(console: Console) -> None:
    ids = say(console.runtime, "+14155550144", "hi", "txt me", "evnings")
    with console.db.begin() as conn:
        reply = conn.execute(select(MESSAGE.c.id).where(MESSAGE.c.reply_to_id == ids[1])).scalars().first()
        conn.execute(
            update(MESSAGE)
            .where(MESSAGE.c.id == reply)
            .values(status="failed", attempts=3, error="boom 30007")
        )
        customer_id = conn.execute(select(MESSAGE.c.customer_id).where(MESSAGE.c.id == ids[0])).scalar_one()
    login(console.client, "op@example.com")
    html = console.client.get(f"/console/customers/{customer_id}/transcript").text
    assert f'id="m{ids[1]}"' in html
    assert "txt me" in html and "contact_channel" in html and "text message" in html
    assert "Got it: text message." in html
    assert "failed" in html and "3 attempts" in html and "boom 30007" in html
    assert html.index("txt me") < html.index("evnings")  # in order


def test_transcript_lists_delivery_attempts_and_search_finds_unknown_sends(console: Console) -> None:
    ids = say(console.runtime, "+14155550146", "hi")
    with console.db.begin() as conn:
        reply = conn.execute(select(MESSAGE.c.id).where(MESSAGE.c.reply_to_id == ids[0])).scalars().first()
        customer_id = conn.execute(select(MESSAGE.c.customer_id).where(MESSAGE.c.id == ids[0])).scalar_one()
        offer = conn.execute(
            insert(MESSAGE).values(
                customer_id=customer_id, channel="sms", direction="out", address="+14155550146",
                text="Basic 5 GB saves you $20 a month", intent="suggestion", status="queued",
                marketing=True, needs_review=False, created_at=utcnow(),
            ).returning(MESSAGE.c.id)
        ).scalar_one()  # fmt: skip
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == customer_id).values(marketing_consent=True))
    assert reply is not None
    flaky = RecordingSender(failures=[SendError("<b>503</b> from Twilio", retryable=True)])
    asyncio.run(
        Outbox(console.db, {"sms": flaky}, lambda *_: (), policy=RetryPolicy(base=0)).deliver([reply])
    )
    asyncio.run(
        Outbox(console.db, {"sms": flaky}, lambda *_: (), policy=RetryPolicy(base=0)).deliver([reply])
    )
    asyncio.run(Outbox(console.db, {"sms": Exploding()}, lambda *_: ()).deliver([offer]))
    login(console.client, "op@example.com")
    html = console.client.get(f"/console/customers/{customer_id}/transcript").text
    assert "delivery attempts" in html
    assert "retry (&lt;b&gt;503&lt;/b&gt; from Twilio)" in html and "<b>503" not in html
    assert f"sent · SM{reply:06d}" in html and "unknown (ConnectionResetError" in html
    found = console.client.get(
        "/console/conversations", params={"view": "messages", "delivery": "unknown"}
    ).text
    assert f'id="m{offer}"' in found and f'id="m{reply}"' not in found
    assert '<option value="unknown" selected>' in found


def test_customer_text_is_escaped_everywhere(console: Console) -> None:
    ids = say(console.runtime, "+14155550155", *XSS)
    with console.db.begin() as conn:
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.phone == "+14155550155").values(name="<b>Eve</b>"))
        customer_id = conn.execute(select(MESSAGE.c.customer_id).where(MESSAGE.c.id == ids[0])).scalar_one()
    login(console.client, "op@example.com")
    for path in (
        "/console/conversations",
        f"/console/customers/{customer_id}/transcript",
        f"/console/customers/{customer_id}",
        "/console/review",
    ):
        html = console.client.get(path).text
        assert "<script>window" not in html and "<img src=x" not in html and "<b>Eve" not in html, path
    html = console.client.get(f"/console/customers/{customer_id}/transcript").text
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html


def test_customer_page_profile_provenance_chart_and_fit(console: Console) -> None:
    ids = say(console.runtime, "+14155550166", "hi", "text me")
    with console.db.begin() as conn:
        customer_id = conn.execute(select(MESSAGE.c.customer_id).where(MESSAGE.c.id == ids[0])).scalar_one()
        conn.execute(
            insert(PLAN).values(
                id="small",
                name="Small",
                currency="USD",
                monthly_price=Decimal("20.00"),
                contract_months=0,
                available=True,
                perks=[],
                allowance={"data_gb": 5},
                overage={"data_gb": "10.00"},
                updated_at=datetime.now(UTC),
            )
        )
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == customer_id).values(current_plan_id="small"))
        for period, gb in ((202601, 3), (202602, 7), (202603, 4)):
            conn.execute(
                insert(USAGE).values(
                    customer_id=customer_id, period=period, metric="data_gb", quantity_milli=gb * 1000
                )
            )
    login(console.client, "op@example.com")
    html = console.client.get(f"/console/customers/{customer_id}").text
    assert "text message" in html and f"transcript#m{ids[1]}" in html  # value and the message it came from
    assert "<svg" in html and html.count('class="bar') == 3 and html.count('class="bar over"') == 1
    assert 'class="allowance"' in html
    assert "Plan fit" in html and "Small" in html
    assert "WhatsApp opt-in: no" in html and "WhatsApp session: none open" in html
    with console.db.begin() as conn:
        conn.execute(
            update(CUSTOMER)
            .where(CUSTOMER.c.id == customer_id)
            .values(whatsapp_opt_in_at=datetime(2026, 3, 1, 9, 30, tzinfo=UTC))
        )
    html = console.client.get(f"/console/customers/{customer_id}").text
    assert "WhatsApp opt-in: <strong>yes</strong>, given 2026-03-01 09:30" in html
    assert console.client.get("/console/customers/999999").status_code == 404


# -- review and teaching -------------------------------------------------------------------------------


def test_review_queue_marks_reviewed_with_who_and_when(console: Console) -> None:
    ids = say(console.runtime, "+14155550177", "hi", "blorp")
    login(console.client, "op@example.com")
    assert f'id="m{ids[1]}"' in console.client.get("/console/review").text
    csrf = console.csrf()
    response = console.client.post(f"/console/review/{ids[1]}/reviewed", data={"csrf_token": csrf})
    assert response.status_code == 200 and "Marked reviewed" in response.text
    assert f'id="m{ids[1]}"' not in response.text
    with console.db.connect() as conn:
        review = conn.execute(select(REVIEW)).mappings().one()
    assert review["message_id"] == ids[1] and review["reviewed_by"] == "op@example.com"
    assert review["action"] == "reviewed" and review["reviewed_at"] == console.clock.now


def test_teaching_a_synonym_makes_a_new_conversation_understand_it(console: Console) -> None:
    runtime = console.runtime
    ids = say(runtime, "+14155550188", "hi", "carrier pigeon")
    with console.db.connect() as conn:
        row = conn.execute(select(MESSAGE).where(MESSAGE.c.id == ids[1])).mappings().one()
    assert row["needs_review"] and row["question_key"] == "contact_channel"
    question = runtime.bank["contact_channel"]
    index = next(i for i, o in enumerate(question.options) if o.value == "sms")
    login(console.client, "op@example.com")
    csrf = console.csrf()
    response = console.client.post(
        f"/console/review/{ids[1]}/teach", data={"csrf_token": csrf, "answer": f"contact_channel:{index}"}
    )
    assert response.status_code == 200 and "Taught" in response.text
    with console.db.connect() as conn:
        taught = conn.execute(select(TAUGHT)).mappings().one()
    assert taught["phrase"] == "carrier pigeon" and taught["taught_by"] == "op@example.com"
    assert taught["option_value"] == "sms"
    assert ("teach", "op@example.com") in audit_actions(console.db)

    # The shipped bank still does not understand it; the taught bank does, in a new conversation.
    with Session(console.db) as session:
        bank = taught_bank(runtime.bank, session)
    assert "carrier pigeon" not in runtime.bank["contact_channel"].option("sms").synonyms  # type: ignore[union-attr]
    engine = DialogEngine(console.db, bank, EngineConfig())
    engine.handle(Inbound(channel="sms", address="+14155550199", phone="+14155550199", text="hi"))
    result = engine.handle(
        Inbound(channel="sms", address="+14155550199", phone="+14155550199", text="Carrier pigeon!")
    )
    assert "Got it: text message." in result.replies[0].text
    with console.db.connect() as conn:
        understood = conn.execute(select(MESSAGE).where(MESSAGE.c.id == result.inbound_id)).mappings().one()
    assert understood["parsed_value"] == "sms" and not understood["needs_review"]


def test_teaching_refuses_a_question_without_options(console: Console) -> None:
    ids = say(console.runtime, "+14155550190", "hi", "blorp")
    login(console.client, "op@example.com")
    csrf = console.csrf()
    money = next(q.key for q in console.runtime.bank if not q.options)
    response = console.client.post(
        f"/console/review/{ids[1]}/teach", data={"csrf_token": csrf, "answer": f"{money}:0"}
    )
    assert response.status_code == 422


# -- exports -----------------------------------------------------------------------------------------


def test_export_search_as_csv_and_transcript_as_json_is_audited(console: Console) -> None:
    ids = seed_conversations(console.runtime, console.db)
    say(console.runtime, "+14155550111", '=HYPERLINK("http://x")')
    login(console.client, "op@example.com")
    response = console.client.get("/console/conversations/export", params={"who": "ana", "format": "csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert {int(r["id"]) for r in rows if r["direction"] == "in"} >= {ids["ana"]}
    assert all(r["customer_name"] == "Ana Alvarez" for r in rows)
    assert any(r["text"].startswith("'=HYPERLINK") for r in rows)  # no spreadsheet formulas
    with console.db.connect() as conn:
        customer_id = conn.execute(
            select(MESSAGE.c.customer_id).where(MESSAGE.c.id == ids["ben"])
        ).scalar_one()
    exported = console.client.get(f"/console/customers/{customer_id}/export", params={"format": "json"})
    data = json.loads(exported.text)
    assert [m["id"] for m in data] == sorted(m["id"] for m in data)
    assert any(m["text"] == "purple elephants" and m["needs_review"] for m in data)
    assert console.client.get("/console/conversations/export", params={"format": "xml"}).status_code == 422
    assert [a for a, _ in audit_actions(console.db)].count("export") == 2
