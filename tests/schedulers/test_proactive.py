"""The daily proactive scan on both databases: one suggestion per customer who may be contacted,
deferred when not now, skipped with a reason otherwise; YES/NO answered through the dialogue."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select, update

from dialogs.engine import DialogEngine
from schedulers.policy import PolicyConfig, Skip
from schedulers.proactive import ScanSkip, scan
from storage.models import DeliveryStatus
from storage.outreach_models import OUTREACH_EVENT
from storage.tables import CUSTOMER, MESSAGE, PLAN_DECLINE, PREFERENCE, STATE, SWITCH_REQUEST
from tests.dialogs.test_dialog_plans import LIGHT, PHONE, dana, setup_customer

CONFIG = PolicyConfig(default_timezone="UTC")
MORNING_NY = datetime(2026, 4, 6, 14, 0, tzinfo=UTC)  # 10:00 in New York
NIGHT_NY = datetime(2026, 4, 6, 3, 0, tzinfo=UTC)  # 23:00 the evening before


def customer(db: Engine, **fields: Any) -> int:
    setup_customer(db, LIGHT)
    with db.begin() as conn:
        values = {"marketing_consent": True, "timezone": "America/New_York", **fields}
        conn.execute(update(CUSTOMER).values(**values))
        return int(conn.execute(select(CUSTOMER.c.id)).scalar_one())


def suggestions(db: Engine) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(select(MESSAGE).where(MESSAGE.c.intent == "suggestion").order_by(MESSAGE.c.id))
        return [dict(r._mapping) for r in rows]


def mark_sent(db: Engine, at: datetime) -> None:
    """What the outbox does once a queued suggestion went."""
    with db.begin() as conn:
        conn.execute(
            update(MESSAGE)
            .where(MESSAGE.c.intent == "suggestion")
            .values(status=DeliveryStatus.SENT, sent_at=at)
        )


def events(db: Engine) -> list[tuple[str, str | None]]:
    with db.connect() as conn:
        rows = conn.execute(
            select(OUTREACH_EVENT.c.kind, OUTREACH_EVENT.c.reason).order_by(OUTREACH_EVENT.c.id)
        )
        return [(k, r) for k, r in rows]


def test_scan_queues_one_suggestion_and_yes_becomes_a_switch_request(
    db: Engine, dialog: DialogEngine
) -> None:
    cid = customer(db)
    report = scan(db, dialog.advisor, CONFIG, MORNING_NY)
    assert (report.considered, report.queued, report.deferred) == (1, 1, 0)
    [message] = suggestions(db)
    assert message["text"].startswith("Over the last 3 months you used 2.1 GB")
    assert (message["channel"], message["address"], message["direction"]) == ("sms", PHONE, "out")
    assert (message["status"], message["marketing"], message["next_attempt_at"]) == ("queued", True, None)
    assert message["customer_id"] == cid
    with db.connect() as conn:
        state = conn.execute(select(STATE.c.pending_kind, STATE.c.pending_key)).one()
    assert tuple(state) == ("suggestion", "plan:basic-5")
    assert events(db) == [("queued", None)]

    again = scan(db, dialog.advisor, CONFIG, MORNING_NY + timedelta(hours=1))
    assert (again.queued, again.deferred, dict(again.skipped_by_reason)) == (
        0,
        0,
        {ScanSkip.SUGGESTION_PENDING: 1},
    )
    assert len(suggestions(db)) == 1

    mark_sent(db, MORNING_NY)
    d = dana(dialog)
    d.now = MORNING_NY + timedelta(hours=2)
    replies = d.say("YES")
    assert "move you to Basic 5 GB" in replies[0].text
    with db.connect() as conn:
        switch = conn.execute(select(SWITCH_REQUEST.c.customer_id, SWITCH_REQUEST.c.to_plan_id)).one()
    assert tuple(switch) == (cid, "basic-5")


def test_no_is_remembered_and_the_next_scan_skips_the_declined_plan(db: Engine, dialog: DialogEngine) -> None:
    customer(db)
    scan(db, dialog.advisor, CONFIG, MORNING_NY)
    mark_sent(db, MORNING_NY)
    d = dana(dialog)
    d.now = MORNING_NY + timedelta(hours=2)
    assert "stay on Plus 20 GB" in d.said("no")
    with db.connect() as conn:
        assert conn.execute(select(PLAN_DECLINE.c.plan_id)).scalar_one() == "basic-5"
    later = scan(db, dialog.advisor, CONFIG, MORNING_NY + timedelta(days=10))
    assert dict(later.skipped_by_reason) == {Skip.DECLINED: 1}
    assert len(suggestions(db)) == 1


def test_at_night_the_suggestion_is_deferred_to_8_local(db: Engine, dialog: DialogEngine) -> None:
    customer(db)
    report = scan(db, dialog.advisor, CONFIG, NIGHT_NY)
    assert (report.queued, report.deferred) == (0, 1)
    [message] = suggestions(db)
    assert message["status"] == "queued"
    assert message["next_attempt_at"] == datetime(2026, 4, 6, 12, 0, tzinfo=UTC)  # 08:00 EDT
    assert events(db) == [("deferred", Skip.QUIET_HOURS)]


def test_a_yes_before_the_deferred_offer_went_out_is_not_taken_as_a_switch(
    db: Engine, dialog: DialogEngine
) -> None:
    customer(db)
    scan(db, dialog.advisor, CONFIG, NIGHT_NY)
    d = dana(dialog)
    d.now = NIGHT_NY
    d.say("yes")  # about something else: the offer waits for the morning, unseen
    with db.connect() as conn:
        assert conn.execute(select(SWITCH_REQUEST)).all() == []
        assert conn.execute(select(STATE.c.pending_kind)).scalar_one() != "suggestion"


def test_without_consent_nothing_is_queued_and_the_skip_is_recorded(db: Engine, dialog: DialogEngine) -> None:
    customer(db, marketing_consent=False)
    report = scan(db, dialog.advisor, CONFIG, MORNING_NY)
    assert (report.queued, dict(report.skipped_by_reason)) == (0, {Skip.NO_CONSENT: 1})
    assert suggestions(db) == []
    assert events(db) == [("skipped", Skip.NO_CONSENT)]
    with db.connect() as conn:
        assert conn.execute(select(STATE.c.pending_kind)).scalar_one() is None


def test_opted_out_customers_are_skipped(db: Engine, dialog: DialogEngine) -> None:
    customer(db, opted_out_at=MORNING_NY - timedelta(days=1))
    assert dict(scan(db, dialog.advisor, CONFIG, MORNING_NY).skipped_by_reason) == {Skip.OPTED_OUT: 1}


def test_preferred_channel_without_an_address_is_skipped(db: Engine, dialog: DialogEngine) -> None:
    cid = customer(db)
    with db.begin() as conn:
        conn.execute(
            insert(PREFERENCE).values(
                customer_id=cid,
                key="contact_channel",
                value="telegram",
                source="asked",
                stated_at=MORNING_NY,
                confirmed_at=MORNING_NY,
            )
        )
    report = scan(db, dialog.advisor, CONFIG, MORNING_NY)
    assert dict(report.skipped_by_reason) == {Skip.NO_ADDRESS: 1}


def test_a_recent_proactive_message_defers_by_the_cap(db: Engine, dialog: DialogEngine) -> None:
    cid = customer(db)
    sent = MORNING_NY - timedelta(days=3)
    with db.begin() as conn:
        conn.execute(
            insert(MESSAGE).values(
                customer_id=cid,
                channel="sms",
                direction="out",
                address=PHONE,
                text="earlier offer",
                intent="broadcast",
                needs_review=False,
                status=DeliveryStatus.DELIVERED,
                marketing=True,
                sent_at=sent,
                created_at=sent,
            )
        )
    report = scan(db, dialog.advisor, CONFIG, MORNING_NY)
    assert report.deferred == 1
    assert suggestions(db)[0]["next_attempt_at"] == sent + timedelta(days=7)
    assert events(db) == [("deferred", Skip.FREQUENCY_CAP)]
