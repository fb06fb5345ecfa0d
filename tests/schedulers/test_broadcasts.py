"""Broadcasts on both databases: create checks segment and template, dry-run counts each rule,
send queues one message per recipient (idempotent, policy-timed, optionally at local time),
status and cancel."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select, true, update

from dialogs.advisor import Advisor
from dialogs.engine import DialogEngine
from schedulers import broadcasts as bc
from schedulers.broadcasts import lifecycle
from schedulers.policy import PolicyConfig, Skip
from storage.broadcast_models import BROADCAST, BROADCAST_RECIPIENT, BroadcastStatus
from storage.queries import address_hash
from storage.tables import (
    CUSTOMER,
    MESSAGE,
    PLAN_DECLINE,
    PREFERENCE,
    STATE,
    SUPPRESSION,
    SWITCH_REQUEST,
    USAGE,
)
from tests.dialogs.test_dialog_plans import LIGHT, PHONE, setup_customer
from tests.utils import Texter

CONFIG = PolicyConfig(default_timezone="UTC")
MORNING_NY = datetime(2026, 4, 6, 14, 0, tzinfo=UTC)  # 10:00 in New York, 15:00 in London
NIGHT_NY = datetime(2026, 4, 6, 3, 0, tzinfo=UTC)  # 23:00 the evening before in New York
HEAVY = [(202601, "data_gb", "30"), (202602, "data_gb", "31"), (202603, "data_gb", "29")]
SEGMENT = 'plan == "plus-20" and saving >= 10'
TEMPLATE = (
    "Hi {{ name }}, you use about {{ usage.data_gb }} a month on {{ current_plan }}. "
    "{{ suggested_plan }} saves you {{ monthly_saving }} a month ({{ yearly_saving }} a year). Reply YES."
)


def add(db: Engine, name: str, phone: str, plan: str = "plus-20", usage: Any = LIGHT, **fields: Any) -> int:
    with db.begin() as conn:
        values = {"marketing_consent": True, "timezone": "America/New_York", **fields}
        cid = int(
            conn.execute(
                insert(CUSTOMER)
                .values(name=name, phone=phone, current_plan_id=plan, created_at=MORNING_NY, **values)
                .returning(CUSTOMER.c.id)
            ).scalar_one()
        )
        conn.execute(
            insert(USAGE),
            [
                {"customer_id": cid, "period": p, "metric": m, "quantity_milli": int(Decimal(q) * 1000)}
                for p, m, q in usage
            ],
        )
        return cid


@pytest.fixture
def book(db: Engine) -> dict[str, int]:
    """Dana (the fixture customer) and five more: each stopped by another rule, or not."""
    setup_customer(db, LIGHT)
    with db.begin() as conn:
        conn.execute(update(CUSTOMER).values(marketing_consent=True, timezone="America/New_York"))
        dana = int(conn.execute(select(CUSTOMER.c.id)).scalar_one())
    ids = {
        "dana": dana,
        "eve": add(db, "Eve", "+14155550171", marketing_consent=False),
        "finn": add(db, "Finn", "+14155550172", opted_out_at=MORNING_NY - timedelta(days=3)),
        "gus": add(db, "Gus", "+14155550173", plan="unlimited", usage=HEAVY),
        "hana": add(db, "Hana", "+442071838750", timezone=None),
        "ivy": add(db, "Ivy", "+14155550175"),
    }
    with db.begin() as conn:  # Ivy had a marketing message yesterday: the cap defers her
        conn.execute(
            insert(MESSAGE).values(
                customer_id=ids["ivy"], channel="sms", direction="out", address="+14155550175", text="x",
                status="sent", marketing=True, sent_at=MORNING_NY - timedelta(days=1), created_at=MORNING_NY,
            )
        )  # fmt: skip
    return ids


def create(db: Engine, advisor: Advisor, segment: str = SEGMENT, template: str = TEMPLATE) -> int:
    return bc.create(
        db, advisor, name="spring", segment=segment, template=template, created_by="ops", now=NIGHT_NY
    )


def messages(db: Engine, broadcast_id: int | None = None) -> dict[int, dict[str, Any]]:
    """The messages queued for broadcasts (or one), by customer."""
    mine = select(BROADCAST_RECIPIENT.c.message_id).where(
        BROADCAST_RECIPIENT.c.broadcast_id == broadcast_id if broadcast_id else true()
    )
    with db.connect() as conn:
        rows = conn.execute(select(MESSAGE).where(MESSAGE.c.id.in_(mine)))
        return {r.customer_id: dict(r._mapping) for r in rows}


def test_create_stores_a_draft(db: Engine, dialog: DialogEngine, book: dict[str, int]) -> None:
    bid = create(db, dialog.advisor)
    with db.connect() as conn:
        row = conn.execute(select(BROADCAST)).one()
    assert (row.id, row.name, row.segment, row.status, row.created_by) == (
        bid,
        "spring",
        SEGMENT,
        "draft",
        "ops",
    )


@pytest.mark.parametrize(
    ("segment", "template", "error"),
    [
        ("plan ==", TEMPLATE, "segment: expected a value"),
        ("avg(dtaa_gb) < 5", TEMPLATE, "unknown metric"),
        (SEGMENT, "{{ ''.__class__.__mro__ }}", "template"),
        (SEGMENT, "{{ name.__class__.__init__.__globals__ }}", "template"),
        (SEGMENT, "{% for x in ().__class__.__base__.__subclasses__() %}{{ x }}{% endfor %}", "template"),
        (SEGMENT, "Hi {{ nmae }}", "'nmae' is undefined"),
        (SEGMENT, "Hi {{ name ", "template"),
    ],
)
def test_create_refuses_bad_segments_and_unsafe_or_mistyped_templates(
    db: Engine, dialog: DialogEngine, book: dict[str, int], segment: str, template: str, error: str
) -> None:
    with pytest.raises(bc.BroadcastError, match=error):
        create(db, dialog.advisor, segment, template)
    with db.connect() as conn:
        assert conn.execute(select(BROADCAST)).first() is None


def test_dry_run_counts_who_gets_it_and_who_is_excluded_by_which_rule(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    bid = create(db, dialog.advisor)
    report = bc.dry_run(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    assert (report.considered, report.matched, report.would_queue) == (6, 5, 3)
    assert dict(report.excluded) == {bc.SEGMENT: 1, Skip.NO_CONSENT: 1, Skip.OPTED_OUT: 1}
    assert dict(report.deferred) == {Skip.FREQUENCY_CAP: 1}
    night = bc.dry_run(db, dialog.advisor, CONFIG, bid, NIGHT_NY)  # quiet hours defer, not exclude
    assert night.would_queue == 3 and night.deferred[Skip.QUIET_HOURS] == 2  # Dana, Hana (04:00 London)
    assert messages(db) == {}


def test_the_dry_runs_counts_by_rule_are_what_send_queues_and_records(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    """Preview, dry run and send ask the same audience: on a book where every rule stops someone,
    the dry run's counts by rule are the rows send writes, and the preview shows only recipients."""
    more = {
        "kai": add(db, "Kai", "+81312345678", timezone="Asia/Tokyo"),  # 23:00 in Tokyo: deferred
        "lea": add(db, "Lea", "+14155550176"),  # prefers Telegram, where she has no chat
        "mo": add(db, "Mo", "+14155550177"),  # declined Basic 5 GB last week
        "noa": add(db, "Noa", "+14155550178"),  # her number belongs to an erased customer
        "ora": add(db, "Ora", "+14155550179", marketing_consent=False, plan="unlimited", usage=HEAVY),
    }
    with db.begin() as conn:
        conn.execute(
            insert(PREFERENCE).values(
                customer_id=more["lea"], key="contact_channel", value="telegram", source="stated",
                stated_at=NIGHT_NY, confirmed_at=NIGHT_NY,
            )
        )  # fmt: skip
        conn.execute(
            insert(PLAN_DECLINE).values(
                customer_id=more["mo"],
                plan_id="basic-5",
                usage={"data_gb": "2.1"},  # as now: the decline still holds
                declined_at=MORNING_NY - timedelta(days=7),
            )
        )
        conn.execute(
            insert(SUPPRESSION).values(
                channel="sms", address_hash=address_hash("sms", "+14155550178"), reason="erased",
                created_at=NIGHT_NY,
            )
        )  # fmt: skip
    bid = create(db, dialog.advisor)
    dry = bc.dry_run(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    reasons = {Skip.NO_CONSENT, Skip.OPTED_OUT, Skip.NO_ADDRESS, Skip.DECLINED, Skip.SUPPRESSED, bc.SEGMENT}
    assert set(dry.excluded) == reasons  # every rule is exercised
    assert set(dry.deferred) == {Skip.FREQUENCY_CAP, Skip.QUIET_HOURS}
    shown = bc.preview(
        db, dialog.advisor, CONFIG, bid, MORNING_NY, price_per_segment=Decimal("0.01"), limit=100
    )

    report = bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    with db.connect() as conn:
        rows = conn.execute(
            select(
                BROADCAST_RECIPIENT.c.customer_id, BROADCAST_RECIPIENT.c.status, BROADCAST_RECIPIENT.c.reason
            )
        ).all()
    queued = [r for r in rows if r.status == "queued"]
    excluded = Counter(r.reason for r in rows if r.status == "excluded")
    deferred = Counter(r.reason for r in queued if r.reason is not None)
    assert len(messages(db, bid)) == len(queued) == report.queued == dry.would_queue
    assert deferred == dry.deferred == report.deferred
    assert excluded == Counter({k: v for k, v in dry.excluded.items() if k != bc.SEGMENT}) == report.excluded
    assert report.outside_segment == dry.excluded[bc.SEGMENT] == dry.considered - len(rows)
    assert sorted(p.customer_id for p in shown) == sorted(r.customer_id for r in queued)


def test_send_queues_one_message_per_recipient_and_a_second_send_adds_none(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    bid = create(db, dialog.advisor)
    report = bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    assert (report.queued, dict(report.deferred)) == (3, {Skip.FREQUENCY_CAP: 1})
    assert dict(report.excluded) == {Skip.NO_CONSENT: 1, Skip.OPTED_OUT: 1}
    sent = messages(db)
    assert set(sent) == {book["dana"], book["hana"], book["ivy"]}
    dana = sent[book["dana"]]
    assert dana["text"] == (
        "Hi Dana, you use about 2.1 GB a month on Plus 20 GB. "
        "Basic 5 GB saves you $20.00 a month ($240.00 a year). Reply YES."
    )
    assert (dana["status"], dana["marketing"], dana["direction"], dana["next_attempt_at"]) == (
        "queued", True, "out", None,
    )  # fmt: skip
    assert sent[book["ivy"]]["next_attempt_at"] == MORNING_NY - timedelta(days=1) + CONFIG.cap_period
    with db.connect() as conn:
        rows = conn.execute(select(BROADCAST_RECIPIENT.c.customer_id, BROADCAST_RECIPIENT.c.status)).all()
        assert conn.execute(select(BROADCAST.c.status)).scalar_one() == "scheduled"
    assert sorted(s for _, s in rows) == ["excluded", "excluded", "queued", "queued", "queued"]

    again = bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY + timedelta(minutes=5))
    assert (again.queued, again.already, sum(again.excluded.values())) == (0, 5, 0)
    assert len(messages(db)) == 3


def test_send_at_night_defers_to_the_morning_and_local_time_follows_each_zone(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    night = create(db, dialog.advisor)
    bc.send(db, dialog.advisor, CONFIG, night, NIGHT_NY)
    assert messages(db)[book["dana"]]["next_attempt_at"] == datetime(
        2026, 4, 6, 12, 0, tzinfo=UTC
    )  # 08:00 NY
    bc.cancel(db, night, NIGHT_NY)

    local = create(db, dialog.advisor)
    bc.send(db, dialog.advisor, CONFIG, local, NIGHT_NY, local_time="10:00")
    due = {cid: m["next_attempt_at"] for cid, m in messages(db, local).items()}
    assert due[book["dana"]] == datetime(2026, 4, 6, 14, 0, tzinfo=UTC)  # 10:00 EDT
    assert due[book["hana"]] == datetime(2026, 4, 6, 9, 0, tzinfo=UTC)  # 10:00 BST, zone from the phone
    with pytest.raises(ValueError, match="HH:MM"):
        bc.send(db, dialog.advisor, CONFIG, local, NIGHT_NY, local_time="25:99")


def test_cancel_stops_what_has_not_gone_and_status_counts_progress_and_results(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    bid = create(db, dialog.advisor)
    bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    sent = messages(db)
    with db.begin() as conn:
        conn.execute(
            update(MESSAGE)
            .where(MESSAGE.c.id == sent[book["dana"]]["id"])
            .values(status="delivered", sent_at=MORNING_NY)
        )
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == sent[book["hana"]]["id"]).values(status="failed"))
        conn.execute(
            insert(SWITCH_REQUEST).values(
                customer_id=book["dana"], from_plan_id="plus-20", to_plan_id="basic-5",
                monthly_saving=Decimal("20.00"), status="requested",
                created_at=MORNING_NY + timedelta(hours=1),
            )
        )  # fmt: skip
    status = bc.status(db, bid)
    assert dict(status.messages) == {"delivered": 1, "failed": 1, "queued": 1}
    assert dict(status.excluded) == {Skip.NO_CONSENT: 1, Skip.OPTED_OUT: 1}
    assert (status.status, status.recipients, status.accepted, status.declined) == ("sending", 5, 1, 0)
    assert (status.total, status.finished) == (3, 2)

    assert bc.cancel(db, bid, MORNING_NY) == 1
    after = messages(db)
    assert after[book["ivy"]]["status"] == "cancelled"
    assert after[book["dana"]]["status"] == "delivered"
    assert dict(bc.status(db, bid).messages) == {"delivered": 1, "failed": 1, "cancelled": 1}
    assert bc.status(db, bid).status == "cancelled"
    with pytest.raises(bc.BroadcastError, match="cancelled"):
        bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY)


def test_reading_a_broadcast_never_moves_its_state_the_job_records_it(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    bid = create(db, dialog.advisor)
    bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    sent = messages(db)

    def stored() -> str:
        with db.connect() as conn:
            return str(conn.execute(select(BROADCAST.c.status).where(BROADCAST.c.id == bid)).scalar_one())

    with db.begin() as conn:  # one went: the broadcast is sending, as far as its messages say
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == sent[book["dana"]]["id"]).values(status="sent"))
    assert bc.status(db, bid).status == "sending"
    assert [b["status"] for b in bc.list_broadcasts(db)] == ["sending"]
    assert stored() == "scheduled"  # reads derived it and wrote nothing
    assert bc.settle(db) == {bid: "sending"}  # the broadcasts job records it
    assert stored() == "sending"
    with db.begin() as conn:  # the rest went
        conn.execute(update(MESSAGE).where(MESSAGE.c.status == "queued").values(status="delivered"))
    assert bc.status(db, bid).status == "done" and stored() == "sending"
    with pytest.raises(bc.BroadcastError, match="nothing left to cancel"):
        bc.cancel(db, bid, MORNING_NY)  # done, as derived, before any job recorded it
    assert bc.settle(db) == {bid: "done"} and stored() == "done"
    assert bc.settle(db) == {}


def test_every_state_change_is_one_of_the_transitions_table() -> None:
    states = set(BroadcastStatus)
    assert set(bc.TRANSITIONS) == states
    assert all(targets <= states for targets in bc.TRANSITIONS.values())
    assert bc.TRANSITIONS[BroadcastStatus.DONE] == bc.TRANSITIONS[BroadcastStatus.CANCELLED] == frozenset()
    reachable = {BroadcastStatus.DRAFT}
    for _ in states:
        reachable |= {t for s in reachable for t in bc.TRANSITIONS[s]}
    assert reachable == states  # no state is left without a way in


def test_preview_renders_real_recipients_with_sms_segments_and_cost(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    bid = create(db, dialog.advisor)
    shown = bc.preview(
        db, dialog.advisor, CONFIG, bid, MORNING_NY, price_per_segment=Decimal("0.0079"), limit=2
    )
    assert [p.customer_id for p in shown] == [book["dana"], book["hana"]]
    assert shown[0].text.startswith("Hi Dana, you use about 2.1 GB")
    assert (shown[0].estimate.encoding, shown[0].estimate.segments) == ("GSM-7", 1)
    assert shown[0].estimate.cost == Decimal("0.0079")
    long = create(db, dialog.advisor, template=TEMPLATE + " 🎉" * 40)
    [p] = bc.preview(db, dialog.advisor, CONFIG, long, MORNING_NY, price_per_segment=Decimal("0.01"), limit=1)
    assert p.estimate.encoding == "UCS-2" and p.estimate.segments >= 3
    assert p.estimate.cost == Decimal("0.01") * p.estimate.segments
    assert messages(db) == {}


def test_a_reply_to_a_broadcast_offer_is_its_answer_and_counts_in_its_results(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    bid = create(db, dialog.advisor)
    bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    sent = messages(db, bid)
    assert {m["intent"] for m in sent.values()} == {"suggestion"}  # the template offers the plan
    with db.begin() as conn:  # Dana's and Hana's went out; Ivy's waits for her cap
        for who in ("dana", "hana"):
            conn.execute(
                update(MESSAGE)
                .where(MESSAGE.c.id == sent[book[who]]["id"])
                .values(status="delivered", sent_at=MORNING_NY)
            )
    yes = Texter(dialog, PHONE, channel="sms", phone=PHONE, now=MORNING_NY).say("YES")
    assert "switch" in yes[0].text.lower()
    no = Texter(dialog, "+442071838750", channel="sms", phone="+442071838750", now=MORNING_NY).say("no")
    assert no[0].text.startswith("OK, you'll stay on Plus 20 GB")
    Texter(dialog, "+14155550175", channel="sms", phone="+14155550175", now=MORNING_NY).say("yes")
    with db.connect() as conn:
        switches = conn.execute(select(SWITCH_REQUEST.c.customer_id, SWITCH_REQUEST.c.to_plan_id)).all()
    assert [tuple(s) for s in switches] == [(book["dana"], "basic-5")]  # Ivy has not seen hers yet
    status = bc.status(db, bid)
    assert (status.accepted, status.declined) == (1, 1)
    other = create(db, dialog.advisor, template="Hi {{ name }}, our shops open late on Fridays now.")
    assert (bc.status(db, other).accepted, bc.status(db, other).declined) == (0, 0)  # not its answers


def test_an_answer_to_a_later_suggestion_is_not_the_broadcasts(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    bid = create(db, dialog.advisor)
    bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    dana = messages(db, bid)[book["dana"]]
    with db.begin() as conn:
        conn.execute(
            update(MESSAGE).where(MESSAGE.c.id == dana["id"]).values(status="sent", sent_at=MORNING_NY)
        )
        conn.execute(
            insert(MESSAGE).values(
                customer_id=book["dana"],
                channel="sms",
                direction="out",
                address=dana["address"],
                text="a later offer",
                intent="suggestion",
                status="sent",
                marketing=True,
                sent_at=MORNING_NY + timedelta(days=2),
                created_at=MORNING_NY + timedelta(days=2),
            )
        )
        for days in (-1, 3):  # one before the broadcast went, one answering the later offer
            conn.execute(
                insert(SWITCH_REQUEST).values(
                    customer_id=book["dana"], from_plan_id="plus-20", to_plan_id="basic-5",
                    monthly_saving=Decimal("20.00"), created_at=MORNING_NY + timedelta(days=days),
                )
            )  # fmt: skip
    assert bc.status(db, bid).accepted == 0
    with db.begin() as conn:
        conn.execute(
            insert(SWITCH_REQUEST).values(
                customer_id=book["dana"], from_plan_id="plus-20", to_plan_id="basic-5",
                monthly_saving=Decimal("20.00"), created_at=MORNING_NY + timedelta(days=1),
            )
        )  # fmt: skip
    assert bc.status(db, bid).accepted == 1


def test_a_broadcast_without_an_offer_leaves_the_dialogue_alone(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    assert not bc.is_offer("Hi {{ name }}, news: {{ current_plan }} now has 5G.")
    assert bc.is_offer("{% if suggested_plan %}Try {{ suggested_plan }}{% endif %}")
    bid = create(db, dialog.advisor, template="Hi {{ name }}, news: {{ current_plan }} now has 5G.")
    bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    assert {m["intent"] for m in messages(db, bid).values()} == {bc.BROADCAST_INTENT}
    with db.connect() as conn:
        assert (
            conn.execute(select(STATE.c.pending_kind).where(STATE.c.pending_kind == "suggestion")).all() == []
        )


def test_a_broadcast_for_later_waits_and_the_job_prepares_it_with_that_days_policy(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    bid = create(db, dialog.advisor)
    monday = MORNING_NY + timedelta(days=7)
    report = bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY, at=monday)
    assert (report.queued, report.waiting_until) == (0, monday)
    assert messages(db) == {}
    assert bc.status(db, bid).status == "waiting"
    with db.begin() as conn:  # meanwhile Dana stops marketing; Ivy's cap has run out by Monday
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == book["dana"]).values(marketing_consent=False))
    assert bc.prepare_due(db, dialog.advisor, CONFIG, monday - timedelta(minutes=1)) == {}
    late = monday + timedelta(minutes=1)  # the job runs each minute
    prepared = bc.prepare_due(db, dialog.advisor, CONFIG, late)
    assert list(prepared) == [bid] and prepared[bid].queued == 2
    assert prepared[bid].excluded == {Skip.NO_CONSENT: 2, Skip.OPTED_OUT: 1}
    due = {cid: m["next_attempt_at"] for cid, m in messages(db, bid).items()}
    assert due == {book["hana"]: None, book["ivy"]: None}  # due at once: the time has come
    assert bc.status(db, bid).status == "scheduled"
    assert bc.prepare_due(db, dialog.advisor, CONFIG, late + timedelta(minutes=1)) == {}  # once


def test_a_job_that_runs_late_never_sends_at_night(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    bid = create(db, dialog.advisor)
    day_before = MORNING_NY - timedelta(days=1)  # 10:00 in New York; sent for noon
    bc.send(db, dialog.advisor, CONFIG, bid, day_before, at=day_before + timedelta(hours=2))
    bc.prepare_due(db, dialog.advisor, CONFIG, NIGHT_NY)  # the scheduler was down until 23:00 in NY
    dana = messages(db, bid)[book["dana"]]
    assert dana["next_attempt_at"] == datetime(2026, 4, 6, 12, 0, tzinfo=UTC)  # 08:00 NY, not now


def test_a_broadcast_that_cannot_be_prepared_fails_without_holding_up_the_others(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    broken = create(db, dialog.advisor, template="You use {{ usage.data_gb }} a month.")
    fine = create(db, dialog.advisor)
    later = MORNING_NY + timedelta(hours=1)
    for bid in (broken, fine):
        bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY, at=later)
    with db.begin() as conn:  # meanwhile its template stopped fitting (as if a field went away)
        conn.execute(update(BROADCAST).where(BROADCAST.c.id == broken).values(template="{{ gone }}"))
    prepared = bc.prepare_due(db, dialog.advisor, CONFIG, later)
    assert list(prepared) == [fine] and prepared[fine].queued == 3
    assert bc.status(db, broken).status == "failed"
    assert bc.prepare_due(db, dialog.advisor, CONFIG, later + timedelta(minutes=1)) == {}


def test_a_cancel_between_batches_stops_the_rest_of_the_preparation(
    db: Engine, dialog: DialogEngine, book: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    bid = create(db, dialog.advisor, segment="consent")
    real_facts = bc.facts_batch
    batches = 0

    def cancelled_during_the_first(conn: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal batches
        batches += 1
        if batches == 1:  # as bc.cancel() would, once this batch's transaction lets it
            conn.execute(update(BROADCAST).where(BROADCAST.c.id == bid).values(status="cancelled"))
        return real_facts(conn, *args, **kwargs)

    monkeypatch.setattr(lifecycle, "facts_batch", cancelled_during_the_first)
    report = bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY, batch_size=2)
    assert batches == 1 and report.queued == 1  # the first two customers; nobody after the cancel
    assert bc.status(db, bid).status == "cancelled"


def test_a_yes_after_the_offer_was_cancelled_or_failed_is_not_an_answer(
    db: Engine, dialog: DialogEngine, book: dict[str, int]
) -> None:
    bid = create(db, dialog.advisor)
    bc.send(db, dialog.advisor, CONFIG, bid, MORNING_NY)
    sent = messages(db, bid)
    with db.begin() as conn:  # Dana's offer failed at the carrier; Hana's broadcast was cancelled
        conn.execute(update(MESSAGE).where(MESSAGE.c.id == sent[book["dana"]]["id"]).values(status="failed"))
    bc.cancel(db, bid, MORNING_NY)
    Texter(dialog, PHONE, channel="sms", phone=PHONE, now=MORNING_NY).say("yes")
    Texter(dialog, "+442071838750", channel="sms", phone="+442071838750", now=MORNING_NY).say("yes")
    with db.connect() as conn:
        assert conn.execute(select(SWITCH_REQUEST.c.id)).all() == []  # neither saw an offer
