"""The console's broadcast pages over HTTP, on SQLite and PostgreSQL: staff only (operators get 403
on every page and action), CSRF, the create form's errors, preview and dry-run numbers equal to
schedulers.broadcasts' own, scheduling (now, a time, local time), live status, cancel, audit."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from markupsafe import escape
from sqlalchemy import Engine, func, insert, select, update

from bot.console import ConsoleConfig
from bot.console.broadcast_routes import status_json
from bot.web import create_app
from dialogs.bank import QuestionBank
from schedulers import broadcasts as bc
from storage.broadcast_models import BROADCAST
from storage.console_queries import AUDIT
from storage.tables import CUSTOMER, MESSAGE, PLAN_DECLINE, SWITCH_REQUEST
from tests.bot import test_console
from tests.bot.test_console import XSS, Clock, Console, login, make_runtime, make_user
from tests.schedulers import test_broadcasts
from tests.schedulers.test_broadcasts import MORNING_NY, SEGMENT, TEMPLATE

# The fixtures of the console and broadcast tests: a console app with op@ and admin@ accounts, and
# six customers each stopped by another rule of the contact policy (or not).
console = test_console.console
book = test_broadcasts.book

STAFF = "staff@example.com"
ACCEPTED = {
    "from_plan_id": "plus-20",
    "to_plan_id": "basic-5",
    "monthly_saving": Decimal(20),
    "status": "requested",
}
DANA_TEXT = (
    "Hi Dana, you use about 2.1 GB a month on Plus 20 GB. "
    "Basic 5 GB saves you $20.00 a month ($240.00 a year). Reply YES."
)


@pytest.fixture
def staff(console: Console, book: dict[str, int]) -> Console:
    """The console at 10:00 in New York, logged in as a staff member."""
    console.clock.now = MORNING_NY
    make_user(console.db, STAFF, "staff")
    assert login(console.client, STAFF)[0] == 303
    return console


def create(c: Console, segment: str = SEGMENT, template: str = TEMPLATE, name: str = "spring") -> int:
    """A broadcast created through the form; its id."""
    response = c.client.post(
        "/console/broadcasts",
        data={"name": name, "segment": segment, "template": template, "csrf_token": c.csrf()},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text[:2000]
    found = re.fullmatch(r"/console/broadcasts/(\d+)\?done=created", response.headers["location"])
    assert found, response.headers["location"]
    return int(found.group(1))


def counts(page: str, attribute: str) -> dict[str, int]:
    """The numbers in cells marked ``data-<attribute>="key"``."""
    return {k: int(n) for k, n in re.findall(rf'data-{attribute}="([^"]+)">(\d+)<', page)}


def schedule(c: Console, broadcast_id: int, **form: str) -> Any:
    return c.client.post(
        f"/console/broadcasts/{broadcast_id}/schedule",
        data={"csrf_token": c.csrf(), "confirmed": "yes", **form},
        follow_redirects=False,
    )


def broadcast_messages(db: Engine) -> dict[int, dict[str, Any]]:
    return test_broadcasts.messages(db)


def every_post(broadcast_id: int) -> list[tuple[str, dict[str, str]]]:
    """Each form the broadcast pages post (path under /console/broadcasts, fields but the token)."""
    return [
        ("", {"name": "again", "segment": SEGMENT, "template": TEMPLATE}),
        (f"/{broadcast_id}/schedule", {"when": "now"}),
        (f"/{broadcast_id}/cancel", {}),
    ]


def settle(db: Engine, statuses: dict[int, str]) -> None:
    """Messages (by id) move on to a delivery status, as the outbox and status callbacks would
    (those that went out were sent at MORNING_NY)."""
    with db.begin() as conn:
        for message_id, state in statuses.items():
            went = MORNING_NY if state in ("sent", "delivered") else None
            conn.execute(update(MESSAGE).where(MESSAGE.c.id == message_id).values(status=state, sent_at=went))


def broadcast_audit(db: Engine) -> list[tuple[str, str | None, str | None, dict[str, Any]]]:
    with db.connect() as conn:
        rows = conn.execute(select(AUDIT).where(AUDIT.c.action.like("broadcast%")).order_by(AUDIT.c.id))
        return [(r.action, r.actor, r.target, r.detail) for r in rows]


# -- who may ---------------------------------------------------------------------------------------


def test_operators_are_refused_every_broadcast_page_and_action(
    console: Console, book: dict[str, int]
) -> None:
    bid = bc.create(
        console.db, console.runtime.dialog.advisor, name="spring", segment=SEGMENT, template=TEMPLATE,
        created_by="someone", now=MORNING_NY,
    )  # fmt: skip
    anonymous = console.client.get(f"/console/broadcasts/{bid}", follow_redirects=False)
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/console/login")

    login(console.client, "op@example.com")
    token = console.csrf()  # the operator's own, valid token: refused for the role, not the token
    pages = ["", "/new", f"/{bid}", f"/{bid}/dry-run", f"/{bid}/status.json"]
    for path in pages:
        assert console.client.get(f"/console/broadcasts{path}").status_code == 403, path
    for path, form in every_post(bid):
        response = console.client.post(f"/console/broadcasts{path}", data={"csrf_token": token, **form})
        assert response.status_code == 403, path
        assert "Only staff and admins may do this." in response.text
    assert ">Broadcasts</a>" not in console.client.get("/console/review").text
    with console.db.connect() as conn:
        assert conn.execute(select(BROADCAST.c.id, BROADCAST.c.status)).all() == [(bid, "draft")]
    assert broadcast_messages(console.db) == {}
    assert broadcast_audit(console.db) == []


@pytest.mark.parametrize("role", ["staff", "admin"])
def test_staff_and_admins_see_the_broadcast_pages(console: Console, role: str) -> None:
    make_user(console.db, "someone@example.com", role)
    login(console.client, "someone@example.com")
    assert '<a href="/console/broadcasts">Broadcasts</a>' in console.client.get("/console/review").text
    listing = console.client.get("/console/broadcasts")
    assert listing.status_code == 200 and "No broadcasts yet" in listing.text
    assert console.client.get("/console/broadcasts/new").status_code == 200
    assert console.client.get("/console/broadcasts/999").status_code == 404
    assert console.client.get("/console/broadcasts/999/status.json").status_code == 404
    csrf = console.csrf()
    for action in ("schedule", "cancel"):
        response = console.client.post(f"/console/broadcasts/999/{action}", data={"csrf_token": csrf})
        assert response.status_code == 404, action


@pytest.mark.parametrize("token", [None, "", "not-the-token"])
def test_broadcast_posts_without_the_right_csrf_token_are_refused(staff: Console, token: str | None) -> None:
    bid = create(staff)
    data = {} if token is None else {"csrf_token": token}
    for path, form in every_post(bid):
        response = staff.client.post(f"/console/broadcasts{path}", data={**data, **form})
        assert response.status_code == 403, path
        assert "CSRF" in response.text
    with staff.db.connect() as conn:
        assert conn.execute(select(BROADCAST.c.id, BROADCAST.c.status)).all() == [(bid, "draft")]
    assert broadcast_messages(staff.db) == {}
    assert [a for a, *_ in broadcast_audit(staff.db)] == ["broadcast_created"]


# -- create ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segment", "template", "errors"),
    [
        ("plan == ", TEMPLATE, {"segment": "expected a value"}),
        ("avg(dtaa_gb) < 5", TEMPLATE, {"segment": "unknown metric(s) dtaa_gb"}),
        (SEGMENT, "Hi {{ nmae }}", {"template": "'nmae' is undefined"}),
        ("plan in (", "{{ ''.__class__.__mro__ }}", {"segment": "expected", "template": "unsafe"}),
    ],
)
def test_create_with_errors_shows_each_next_to_its_field_and_keeps_the_input(
    staff: Console, segment: str, template: str, errors: dict[str, str]
) -> None:
    name = "<b>spring</b> " + XSS[0]
    response = staff.client.post(
        "/console/broadcasts",
        data={"name": name, "segment": segment, "template": template, "csrf_token": staff.csrf()},
    )
    assert response.status_code == 422
    page = response.text
    for field in ("segment", "template"):
        shown = re.search(
            rf'<pre class="field-error" id="{field}-error" role="alert">(.*?)</pre>', page, re.S
        )
        if field in errors:
            assert shown is not None, field
            assert errors[field] in html.unescape(shown.group(1))
        else:
            assert shown is None, field
    kept = dict(re.findall(r'<textarea id="(\w+)"[^>]*>\n(.*?)</textarea>', page, re.S))
    assert {k: html.unescape(v) for k, v in kept.items()} == {"segment": segment, "template": template}
    assert f'value="{escape(name)}"' in page and XSS[0] not in page
    with staff.db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(BROADCAST)).scalar_one() == 0


def test_create_without_a_name_says_so(staff: Console) -> None:
    response = staff.client.post(
        "/console/broadcasts",
        data={"name": "  ", "segment": SEGMENT, "template": TEMPLATE, "csrf_token": staff.csrf()},
    )
    assert response.status_code == 422
    assert (
        '<p class="field-error" id="name-error" role="alert">Give the broadcast a name.</p>' in response.text
    )


# -- preview and dry run ----------------------------------------------------------------------------


def test_preview_shows_real_recipients_with_the_segments_and_cost_preview_gives(staff: Console) -> None:
    long = TEMPLATE + " 🎉" * 40  # UCS-2: several segments
    bid = create(staff, template=long)
    page = staff.client.get(f"/console/broadcasts/{bid}?done=created").text
    assert "Created as a draft" in page
    settings = staff.runtime.settings
    expected = bc.preview(
        staff.db, staff.runtime.dialog.advisor, settings.policy_config(), bid, MORNING_NY,
        price_per_segment=settings.sms_price_per_segment, limit=3,
    )  # fmt: skip
    assert [p.name for p in expected] == ["Dana", "Hana", "Ivy"]
    assert expected[0].estimate.segments >= 3
    assert expected[0].text.startswith(DANA_TEXT)
    assert counts(page, "segments") == {str(p.customer_id): p.estimate.segments for p in expected}
    costs = dict(re.findall(r'data-cost="(\d+)">\$([\d.]+)<', page))
    assert costs == {str(p.customer_id): str(p.estimate.cost) for p in expected}
    assert Decimal(costs[str(expected[0].customer_id)]) == Decimal("0.0079") * expected[0].estimate.segments
    texts = re.findall(r'<td class="text">(.*?)</td>', page, re.S)
    assert [html.unescape(t) for t in texts] == [p.text for p in expected]
    assert broadcast_messages(staff.db) == {}


def test_dry_run_shows_the_counts_and_exclusions_dry_run_gives(staff: Console) -> None:
    bid = create(staff)
    assert 'id="dry-run"' not in staff.client.get(f"/console/broadcasts/{bid}").text
    page = staff.client.get(f"/console/broadcasts/{bid}/dry-run").text
    expected = bc.dry_run(
        staff.db, staff.runtime.dialog.advisor, staff.runtime.settings.policy_config(), bid, MORNING_NY
    )
    assert counts(page, "count") == {
        "considered": expected.considered,
        "matched": expected.matched,
        "would_queue": expected.would_queue,
    } == {"considered": 6, "matched": 5, "would_queue": 3}  # fmt: skip
    assert counts(page, "excluded") == dict(expected.excluded)
    assert counts(page, "excluded") == {"segment": 1, "no_consent": 1, "opted_out": 1}
    assert counts(page, "deferred") == dict(expected.deferred) == {"frequency_cap": 1}
    assert "Excluded: outside the segment" in page and "Excluded: no consent" in page
    assert broadcast_messages(staff.db) == {}


@pytest.fixture
def unconfigured(db_url: str, db: Engine, bank: QuestionBank, book: dict[str, int]) -> Iterator[Console]:
    """The console, logged in as staff, in a Rapport with no channel configured."""
    runtime = make_runtime(db_url, db, bank, channels=False)
    clock = Clock(MORNING_NY)
    app = create_app(runtime, console=ConsoleConfig(idle_timeout=timedelta(minutes=30), clock=clock))
    make_user(db, STAFF, "staff")
    with TestClient(app) as client:
        c = Console(client, runtime, clock, db)
        assert login(c.client, STAFF)[0] == 303
        yield c


def test_with_no_channel_configured_the_dry_run_says_so_and_scheduling_queues_nothing(
    unconfigured: Console,
) -> None:
    bid = create(unconfigured)
    outbox_before = _outbox_rows(unconfigured.db)
    page = unconfigured.client.get(f"/console/broadcasts/{bid}/dry-run").text
    assert 'id="no-channel"' in page and "no channel is configured" in page
    assert counts(page, "count")["would_queue"] == 0
    assert counts(page, "count")["matched"] == 5  # the segment still counts: only the channel is missing
    for form in ({"when": "now"}, {"when": "at", "at": "2026-04-07T15:00"}):
        response = schedule(unconfigured, bid, **form)
        assert response.status_code == 422, form
        assert "no channel is configured" in html.unescape(response.text)
    assert _outbox_rows(unconfigured.db) == outbox_before  # 0 rows queued
    assert broadcast_messages(unconfigured.db) == {}
    with unconfigured.db.connect() as conn:
        assert conn.execute(select(BROADCAST.c.status)).scalar_one() == "draft"


def _outbox_rows(db: Engine) -> int:
    with db.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(MESSAGE)).scalar_one())


def test_markup_in_names_segments_templates_and_previews_is_escaped(
    staff: Console, book: dict[str, int]
) -> None:
    with staff.db.begin() as conn:
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == book["dana"]).values(name=XSS[1]))
    segment = SEGMENT + ' or pref(contact_time) == "</textarea><script>window.__xss=1</script>"'
    bid = create(staff, segment=segment, template="<b>Hi</b> {{ name }}", name=XSS[0])
    for path in ("", f"/{bid}", f"/{bid}/dry-run"):
        page = staff.client.get(f"/console/broadcasts{path}").text
        assert "<script>window" not in page and "<img" not in page and "<b>Hi" not in page, path
    page = staff.client.get(f"/console/broadcasts/{bid}").text
    assert f'<td class="text">{escape(f"<b>Hi</b> {XSS[1]}")}</td>' in page  # the rendered preview
    assert f"<h1>{escape(XSS[0])} " in page
    assert 'data-confirm="Cancel the broadcast &lt;script&gt;' in page


# -- schedule, progress, cancel, audit -------------------------------------------------------------


def test_schedule_now_then_live_status_results_cancel_and_the_audit_log(
    staff: Console, book: dict[str, int]
) -> None:
    bid = create(staff)
    response = schedule(staff, bid, when="now")
    assert response.status_code == 303
    assert response.headers["location"] == f"/console/broadcasts/{bid}?done=scheduled"
    sent = broadcast_messages(staff.db)
    assert set(sent) == {book["dana"], book["hana"], book["ivy"]}
    assert sent[book["dana"]]["text"] == DANA_TEXT

    status = staff.client.get(f"/console/broadcasts/{bid}/status.json")
    assert status.headers["cache-control"] == "no-store"
    assert status.json() == status_json(bc.status(staff.db, bid))
    assert status.json()["status"] == "scheduled"
    assert status.json()["messages"]["queued"] == 3
    assert status.json()["excluded"] == {"no_consent": 1, "opted_out": 1}

    answer = MORNING_NY + timedelta(hours=1)
    settle(staff.db, {sent[book["dana"]]["id"]: "delivered", sent[book["hana"]]["id"]: "sent"})
    with staff.db.begin() as conn:  # Dana asks for the switch, Hana says no
        conn.execute(insert(SWITCH_REQUEST).values(**ACCEPTED, customer_id=book["dana"], created_at=answer))
        conn.execute(
            insert(PLAN_DECLINE).values(
                customer_id=book["hana"], plan_id="basic-5", usage={}, declined_at=answer
            )
        )
    live = staff.client.get(f"/console/broadcasts/{bid}/status.json").json()
    assert live == status_json(bc.status(staff.db, bid))
    assert (live["status"], live["total"], live["finished"], live["accepted"], live["declined"]) == (
        "sending", 3, 2, 1, 1,
    )  # fmt: skip
    assert {k: v for k, v in live["messages"].items() if v} == {"queued": 1, "delivered": 1, "sent": 1}

    page = staff.client.get(f"/console/broadcasts/{bid}?done=scheduled").text
    assert "Scheduled: the messages are in the outbox" in page
    assert '<progress id="progress-bar" max="3" value="2">' in page
    assert 'data-status-url="/console/broadcasts/' in page and "data-live" in page
    assert '<script src="/console/static/broadcast.js" defer></script>' in page
    assert counts(page, "count") == {**live["messages"], "accepted": 1, "declined": 1}
    assert 'id="schedule"' not in page  # scheduled once; not again
    twice = schedule(staff, bid, when="local", local_time="10:00")
    assert twice.status_code == 422 and "this broadcast is sending: it is scheduled once" in twice.text
    listing = staff.client.get("/console/broadcasts").text
    row = re.search(rf'<tr id="b{bid}">(.*?)</tr>', listing, re.S)
    assert row is not None
    assert "spring" in row.group(1) and "sending" in row.group(1) and STAFF in row.group(1)
    assert "2 of 3 done" in row.group(1) and f"{MORNING_NY:%Y-%m-%d %H:%M}" in row.group(1)

    response = staff.client.post(
        f"/console/broadcasts/{bid}/cancel", data={"csrf_token": staff.csrf()}, follow_redirects=False
    )
    assert response.headers["location"] == f"/console/broadcasts/{bid}?done=cancelled"
    assert broadcast_messages(staff.db)[book["ivy"]]["status"] == "cancelled"
    final = staff.client.get(f"/console/broadcasts/{bid}/status.json").json()
    assert final["status"] == "cancelled" and final["messages"]["cancelled"] == 1
    page = staff.client.get(f"/console/broadcasts/{bid}").text
    assert "data-live" not in page and 'id="cancel"' not in page and "broadcast.js" not in page

    again = schedule(staff, bid, when="now")
    assert again.status_code == 422 and "this broadcast is cancelled" in again.text

    target = f"broadcast:{bid}"
    assert broadcast_audit(staff.db) == [
        ("broadcast_created", STAFF, target, {"name": "spring", "segment": SEGMENT}),
        (
            "broadcast_scheduled", STAFF, target,
            {"at": MORNING_NY.isoformat(), "local_time": None, "queued": 3, "deferred": 1,
             "excluded": {"no_consent": 1, "opted_out": 1}},
        ),
        ("broadcast_cancelled", STAFF, target, {"cancelled_messages": 1}),
    ]  # fmt: skip
    login(staff.client, "admin@example.com")
    log = staff.client.get("/console/admin/audit").text
    assert all(
        action in log for action in ("broadcast_created", "broadcast_scheduled", "broadcast_cancelled")
    )


def test_schedule_for_later_waits_for_the_scheduler_to_prepare_it(
    staff: Console, book: dict[str, int]
) -> None:
    bid = create(staff)
    response = schedule(staff, bid, when="at", at="2026-04-07T15:00")  # 11:00 in New York
    assert response.headers["location"] == f"/console/broadcasts/{bid}?done=waiting"
    assert broadcast_messages(staff.db) == {}
    page = staff.client.get(response.headers["location"]).text
    assert "the scheduler prepares it" in page and "scheduled for 2026-04-07 15:00 UTC" in page
    assert (
        'id="cancel"' in page
        and staff.client.get(f"/console/broadcasts/{bid}/status.json").json()["status"] == "waiting"
    )
    [detail] = [d for action, _, _, d in broadcast_audit(staff.db) if action == "broadcast_scheduled"]
    assert (detail["at"], detail["queued"]) == ("2026-04-07T15:00:00+00:00", 0)
    runtime = staff.runtime
    bc.prepare_due(
        staff.db,
        runtime.dialog.advisor,
        runtime.settings.policy_config(),
        datetime(2026, 4, 7, 15, 0, tzinfo=UTC),
    )
    due = {cid: m["next_attempt_at"] for cid, m in broadcast_messages(staff.db).items()}
    assert due[book["dana"]] is None and due[book["hana"]] is None  # prepared at its time: due now
    assert staff.client.get(f"/console/broadcasts/{bid}/status.json").json()["status"] == "scheduled"


def test_schedule_at_each_recipients_local_time(staff: Console, book: dict[str, int]) -> None:
    bid = create(staff)
    assert schedule(staff, bid, when="local", local_time="10:00").status_code == 303
    due = {cid: m["next_attempt_at"] for cid, m in broadcast_messages(staff.db).items()}
    # 10:00 EDT is now (14:00 UTC); 10:00 BST has passed in London today (the zone from the phone).
    assert due[book["dana"]] is None
    assert due[book["hana"]] == datetime(2026, 4, 7, 9, 0, tzinfo=UTC)
    with staff.db.connect() as conn:
        row = conn.execute(select(BROADCAST.c.status, BROADCAST.c.local_time)).one()
    assert tuple(row) == ("scheduled", "10:00")
    [detail] = [d for action, _, _, d in broadcast_audit(staff.db) if action == "broadcast_scheduled"]
    assert detail["local_time"] == "10:00" and detail["queued"] == 3


@pytest.mark.parametrize(
    ("form", "error", "kept"),
    [
        ({"when": "at", "at": "next tuesday"}, "expected a date and time", 'name="at" value="next tuesday"'),
        (
            {"when": "at", "at": "2026-04-06T13:59"},
            "2026-04-06 13:59 UTC has passed",
            'value="2026-04-06T13:59"',
        ),
        ({"when": "local", "local_time": "25:99"}, "expected a local time as HH:MM", 'value="25:99"'),
        ({"when": "later"}, "choose now, a date and time, or a local time", None),
    ],
)
def test_a_bad_schedule_is_refused_next_to_the_form_and_keeps_the_input(
    staff: Console, form: dict[str, str], error: str, kept: str | None
) -> None:
    bid = create(staff)
    response = schedule(staff, bid, **form)
    assert response.status_code == 422
    assert re.search(r'<p class="error" id="action-error" role="alert">(.*?)</p>', response.text)
    assert error in html.unescape(response.text)
    checked = re.findall(r'name="when" value="(\w+)" checked', response.text)
    assert checked == ([] if kept is None else [form["when"]])
    assert kept is None or kept in response.text
    assert broadcast_messages(staff.db) == {}
    with staff.db.connect() as conn:
        assert conn.execute(select(BROADCAST.c.status)).scalar_one() == "draft"
    assert [a for a, *_ in broadcast_audit(staff.db)] == ["broadcast_created"]


def test_a_finished_broadcast_cannot_be_cancelled(staff: Console) -> None:
    bid = create(staff)
    schedule(staff, bid, when="now")
    settle(staff.db, {m["id"]: "delivered" for m in broadcast_messages(staff.db).values()})
    assert staff.client.get(f"/console/broadcasts/{bid}/status.json").json()["status"] == "done"
    response = staff.client.post(f"/console/broadcasts/{bid}/cancel", data={"csrf_token": staff.csrf()})
    assert response.status_code == 422 and "nothing left to cancel" in response.text
    assert 'id="cancel"' not in response.text
    assert [a for a, *_ in broadcast_audit(staff.db)] == ["broadcast_created", "broadcast_scheduled"]
