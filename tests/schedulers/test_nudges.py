"""Nudges on both databases: a half-done profile is nudged after the silence, spaced out, at most
NUDGE_MAX times, and only when the contact policy allows it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select, update

from dialogs.engine import DialogEngine
from schedulers.nudges import NUDGE_INTENT, NUDGE_PREFIX, NudgeConfig, NudgeSkip, nudge
from schedulers.policy import PolicyConfig, Skip
from storage.outreach_models import OUTREACH_EVENT
from storage.tables import CUSTOMER, MESSAGE, STATE
from tests.utils import Texter

PHONE = "+14155550188"
ROOMY = PolicyConfig(cap=10)  # the frequency cap out of the way
CONFIG = NudgeConfig()  # 2 nudges, 3 days apart, after 48 h
LAST_WORD = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)  # 10:00 in New York


def half_done(dialog: DialogEngine, **fields: Any) -> Texter:
    """A customer who said hi (and got the first question) at LAST_WORD, then went quiet."""
    texter = Texter(dialog, PHONE, channel="sms", phone=PHONE, now=LAST_WORD - timedelta(minutes=1))
    texter.send("hi")
    with dialog.db.begin() as conn:
        values = {"marketing_consent": True, "timezone": "America/New_York", **fields}
        conn.execute(update(CUSTOMER).values(**values))
    return texter


def nudges(db: Engine) -> list[dict[str, Any]]:
    with db.connect() as conn:
        query = select(MESSAGE).where(MESSAGE.c.intent == NUDGE_INTENT).order_by(MESSAGE.c.id)
        return [dict(r._mapping) for r in conn.execute(query)]


def pending(db: Engine) -> tuple[str | None, str | None]:
    with db.connect() as conn:
        row = conn.execute(select(STATE.c.pending_kind, STATE.c.pending_key)).one()
    return row[0], row[1]


def test_a_half_done_profile_is_nudged_after_48h_spaced_and_at_most_twice(
    db: Engine, dialog: DialogEngine
) -> None:
    half_done(dialog)
    kind, key = pending(db)
    assert kind == "ask" and key is not None
    assert nudge(db, dialog.bank, CONFIG, ROOMY, LAST_WORD + timedelta(hours=47)).considered == 0
    assert nudges(db) == []

    first = nudge(db, dialog.bank, CONFIG, ROOMY, LAST_WORD + timedelta(hours=49))
    assert first.queued == 1
    [message] = nudges(db)
    question = dialog.bank.get(key)
    assert question is not None
    assert message["text"] == NUDGE_PREFIX + question.text
    assert (message["question_key"], message["marketing"], message["status"]) == (key, True, "queued")
    assert (message["channel"], message["address"]) == ("sms", PHONE)
    assert pending(db) == ("ask", key)  # the answer to the nudge is understood as an answer

    early = nudge(db, dialog.bank, CONFIG, ROOMY, LAST_WORD + timedelta(days=4))
    assert (early.queued, dict(early.skipped_by_reason)) == (0, {NudgeSkip.SPACING: 1})
    second = nudge(db, dialog.bank, CONFIG, ROOMY, LAST_WORD + timedelta(days=5, hours=2))
    assert second.queued == 1
    third = nudge(db, dialog.bank, CONFIG, ROOMY, LAST_WORD + timedelta(days=20))
    assert (third.queued, dict(third.skipped_by_reason)) == (0, {NudgeSkip.MAX_REACHED: 1})
    assert len(nudges(db)) == 2


def test_a_reply_starts_a_new_silence(db: Engine, dialog: DialogEngine) -> None:
    texter = half_done(dialog)
    nudge(db, dialog.bank, CONFIG, ROOMY, LAST_WORD + timedelta(hours=49))
    texter.now = LAST_WORD + timedelta(hours=50)
    texter.send("skip")
    assert nudge(db, dialog.bank, CONFIG, ROOMY, LAST_WORD + timedelta(hours=60)).queued == 0
    assert nudge(db, dialog.bank, CONFIG, ROOMY, LAST_WORD + timedelta(days=4, hours=3)).queued == 1
    assert len(nudges(db)) == 2


def test_no_nudge_at_night_a_later_run_sends_it(db: Engine, dialog: DialogEngine) -> None:
    half_done(dialog)
    night = datetime(2026, 3, 5, 4, 0, tzinfo=UTC)  # 23:00 in New York
    report = nudge(db, dialog.bank, CONFIG, ROOMY, night)
    assert (report.queued, dict(report.skipped_by_reason)) == (0, {Skip.QUIET_HOURS: 1})
    assert nudges(db) == []
    assert nudge(db, dialog.bank, CONFIG, ROOMY, night + timedelta(hours=10)).queued == 1


def test_the_frequency_cap_holds_back_the_second_nudge(db: Engine, dialog: DialogEngine) -> None:
    half_done(dialog)
    capped = PolicyConfig()  # one proactive message per 7 days
    assert nudge(db, dialog.bank, CONFIG, capped, LAST_WORD + timedelta(hours=49)).queued == 1
    later = nudge(db, dialog.bank, CONFIG, capped, LAST_WORD + timedelta(days=5, hours=2))
    assert (later.queued, dict(later.skipped_by_reason)) == (0, {Skip.FREQUENCY_CAP: 1})


def test_no_consent_is_skipped_and_recorded_once(db: Engine, dialog: DialogEngine) -> None:
    half_done(dialog, marketing_consent=False)
    for hours in (49, 50, 51):
        report = nudge(db, dialog.bank, CONFIG, ROOMY, LAST_WORD + timedelta(hours=hours))
        assert dict(report.skipped_by_reason) == {Skip.NO_CONSENT: 1}
    assert nudges(db) == []
    with db.connect() as conn:
        rows = conn.execute(select(OUTREACH_EVENT.c.kind, OUTREACH_EVENT.c.reason)).all()
    assert [tuple(r) for r in rows] == [("nudge_skipped", Skip.NO_CONSENT)]


def test_opted_out_customers_are_not_nudged(db: Engine, dialog: DialogEngine) -> None:
    texter = half_done(dialog)
    texter.now = LAST_WORD
    texter.send("STOP")
    with db.connect() as conn:
        assert conn.execute(select(CUSTOMER.c.opted_out_at)).scalar_one() is not None
    nudge(db, dialog.bank, CONFIG, ROOMY, LAST_WORD + timedelta(days=3))
    assert nudges(db) == []


def test_completed_profiles_are_not_nudged(db: Engine, dialog: DialogEngine) -> None:
    half_done(dialog)
    with db.begin() as conn:
        conn.execute(update(STATE).values(finished_at=LAST_WORD, pending_kind=None, pending_key=None))
    report = nudge(db, dialog.bank, CONFIG, ROOMY, LAST_WORD + timedelta(days=3))
    assert (report.considered, report.queued) == (0, 0)
    assert nudges(db) == []
