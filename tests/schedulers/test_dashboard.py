"""The dashboard's figures, every one, against a small data set computed by hand, on both
databases: rolled up by the scheduler's roll-up and read back as the page reads them."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, insert, select

from dialogs.bank import QuestionBank
from schedulers.dashboard import rollup
from storage import dashboard as store
from storage.tables import (
    BILLING_DELIVERY,
    BROADCAST,
    BROADCAST_RECIPIENT,
    CONVERSATION,
    CUSTOMER,
    DASHBOARD_DAY,
    MESSAGE,
    OUTREACH_EVENT,
    PLAN,
    PLAN_DECLINE,
    PREFERENCE,
    STATE,
    SWITCH_REQUEST,
)
from tests.bot.test_cli import rapport

D1, D2, D3 = date(2026, 3, 2), date(2026, 3, 3), date(2026, 3, 4)
NOW = datetime(2026, 3, 4, 12, tzinfo=UTC)


def at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


def seed(db: Engine) -> None:
    """Five customers: c1 offered and switched, c2 offered then declined and opted out, c3 held
    out and switched on their own, c4 without consent who dropped off a question, c5 erased."""
    t0 = at(D1, 0)
    with db.begin() as conn:
        for pid, price in (("big", "50.00"), ("mid", "30.00"), ("small", "20.00")):
            conn.execute(
                insert(PLAN).values(
                    id=pid, name=pid, currency="USD", monthly_price=Decimal(price), contract_months=0,
                    available=True, perks=[], allowance={}, overage={}, updated_at=t0,
                )
            )  # fmt: skip
        customers: list[dict[str, Any]] = [
            {"id": 1, "current_plan_id": "big", "marketing_consent": True},
            {"id": 2, "current_plan_id": "big", "marketing_consent": True, "opted_out_at": at(D2, 11)},
            {"id": 3, "current_plan_id": "mid", "marketing_consent": True},
            {"id": 4, "current_plan_id": "small", "marketing_consent": False},
            {"id": 5, "current_plan_id": None, "marketing_consent": True, "erased_at": at(D1, 5)},
        ]
        for c in customers:
            conn.execute(insert(CUSTOMER).values(created_at=t0, phone=f"+1555000000{c['id']}", **c))
        msg_id = iter(range(1, 1000))

        def message(cid: int, direction: str, day: date, hour: int, intent: str, **extra: Any) -> int:
            mid = next(msg_id)
            values = {"text": "hello", "channel": "sms", "question_key": None, **extra}
            conn.execute(
                insert(MESSAGE).values(
                    id=mid, customer_id=cid, direction=direction, address=f"+1555000000{cid}",
                    intent=intent, created_at=at(day, hour), **values,
                )
            )  # fmt: skip
            return mid

        message(1, "out", D1, 8, "ask", question_key="monthly_budget")
        message(1, "in", D1, 9, "unparsed", question_key="monthly_budget", text=" Kumquat ")
        message(1, "out", D1, 9, "reask", question_key="monthly_budget")
        message(1, "in", D1, 10, "answer", question_key="monthly_budget")
        message(2, "in", D1, 9, "unparsed", question_key="monthly_budget", text="kumquat")
        message(2, "out", D1, 9, "fallback")
        message(2, "in", D1, 10, "command:skip", question_key="monthly_budget")
        message(3, "in", D1, 11, "reconfirmed", question_key="data_estimate_gb")
        message(1, "out", D1, 12, "suggestion", marketing=True, status="delivered")
        message(2, "out", D1, 12, "suggestion", marketing=True, status="sent")
        message(1, "in", D1, 13, "suggestion_yes")
        message(3, "in", D2, 8, "answer", question_key="data_estimate_gb")
        # The broadcast of D2, 09:00: c1 (SMS, delivered), c2 (Telegram, failed), c4 (SMS, sent).
        conn.execute(
            insert(BROADCAST).values(
                id=1, name="spring", segment="all", template="Hi", created_by="staff@x", created_at=t0,
                status="done",
            )
        )  # fmt: skip
        for cid, channel, status in ((1, "sms", "delivered"), (2, "telegram", "failed"), (4, "sms", "sent")):
            mid = message(
                cid, "out", D2, 9, "broadcast", channel=channel, status=status, text="Hi", marketing=True
            )
            conn.execute(
                insert(BROADCAST_RECIPIENT).values(
                    broadcast_id=1, customer_id=cid, message_id=mid, status="queued", created_at=at(D2, 9)
                )
            )
        message(2, "in", D2, 10, "suggestion_no", channel="telegram")
        # Offers: c1 and c2 offered "small" (saving 30 each), c3 held out (would have saved 10).
        for cid, kind, reason in (
            (1, "queued", None),
            (2, "deferred", "quiet_hours"),
            (3, "skipped", "holdout"),
        ):
            conn.execute(
                insert(OUTREACH_EVENT).values(
                    customer_id=cid, kind=kind, reason=reason, plan_id="small", at=at(D1, 7)
                )
            )
        conn.execute(
            insert(OUTREACH_EVENT).values(customer_id=4, kind="skipped", reason="no_consent", at=at(D1, 7))
        )
        for sid, cid, plan, saving, day in ((1, 1, "big", "25.00", D1), (2, 3, "mid", "10.00", D2)):
            conn.execute(
                insert(SWITCH_REQUEST).values(
                    id=sid, customer_id=cid, from_plan_id=plan, to_plan_id="small",
                    monthly_saving=Decimal(saving), status="requested", created_at=at(day, 14),
                )
            )  # fmt: skip
        conn.execute(
            insert(BILLING_DELIVERY).values(switch_request_id=1, attempts=1, delivered_at=at(D1, 15))
        )
        conn.execute(
            insert(PLAN_DECLINE).values(customer_id=2, plan_id="small", usage={}, declined_at=at(D2, 10))
        )
        conn.execute(insert(CONVERSATION).values(customer_id=1, state="resolved", started_at=at(D1, 8)))
        conn.execute(
            insert(CONVERSATION).values(
                customer_id=2, open_for=2, state="waiting", started_at=at(D1, 9), waiting_since=at(D1, 10)
            )
        )
        old = datetime(2025, 1, 1, tzinfo=UTC)
        for cid, key, source, confirmed in (
            (1, "monthly_budget", "asked", at(D1, 10)),
            (1, "data_estimate_gb", "usage", at(D1, 10)),
            (2, "monthly_budget", "operator", at(D1, 10)),
            (3, "data_estimate_gb", "asked", old),  # stale: older than 180 days
            (5, "monthly_budget", "asked", old),  # erased customer: not counted
        ):
            conn.execute(
                insert(PREFERENCE).values(
                    customer_id=cid,
                    key=key,
                    value=1,
                    source=source,
                    stated_at=confirmed,
                    confirmed_at=confirmed,
                )
            )
        states: list[tuple[int, str | None, str | None, datetime, datetime | None]] = [
            (1, None, None, at(D1, 13), at(D1, 13)),
            (4, "ask", "monthly_budget", at(D1, 8), None),  # 52 hours ago: dropped off
            (3, "ask", "priority", at(D3, 10), None),  # 2 hours ago: still talking
        ]
        for cid, pending_kind, pending, activity, finished in states:
            conn.execute(
                insert(STATE).values(
                    customer_id=cid, pending_kind=pending_kind, pending_key=pending, last_activity=activity,
                    finished_at=finished, reask_count=0, deferred={}, version=0,
                )
            )  # fmt: skip


@pytest.fixture
def figures(db: Engine, bank: QuestionBank) -> store.Figures:
    seed(db)
    report = rollup(db, bank, NOW, start=D1, end=D3)
    assert report.days == 3
    with db.connect() as conn:
        return store.read(conn, D1, D3)


def test_learning_figures(figures: store.Figures) -> None:
    assert figures.snapshot_day == D3
    assert figures.count("snap.customers") == 4  # c5 is erased
    assert {k: v[0] for k, v in figures.rows("snap.pref").items()} == {
        ("monthly_budget", "asked"): 1,
        ("data_estimate_gb", "usage"): 1,
        ("monthly_budget", "operator"): 1,
        ("data_estimate_gb", "asked"): 1,
    }
    assert {k: v[0] for k, v in figures.rows("q").items()} == {
        ("monthly_budget", "asked"): 2,
        ("monthly_budget", "misunderstood"): 2,
        ("monthly_budget", "answered"): 1,
        ("monthly_budget", "skipped"): 1,
        ("data_estimate_gb", "reconfirmed"): 1,
        ("data_estimate_gb", "answered"): 1,
    }
    assert {k: v[0] for k, v in figures.rows("snap.stale").items()} == {("data_estimate_gb", ""): 1}
    assert {k: v[0] for k, v in figures.rows("snap.dropoff").items()} == {("monthly_budget", ""): 1}


def test_understanding_figures(figures: store.Figures) -> None:
    turns = {k[0]: v[0] for k, v in figures.rows("turn").items()}
    assert turns == {
        "unparsed": 2,
        "answer": 2,
        "command:skip": 1,
        "reconfirmed": 1,
        "suggestion_yes": 1,
        "suggestion_no": 1,
    }
    assert figures.daily["turn"] == {D1: 6, D2: 2}
    assert figures.daily["understood"] == {D1: 4, D2: 2}
    assert figures.count("out", "fallback") == 1
    assert {k[0]: v[0] for k, v in figures.rows("phrase").items()} == {"kumquat": 2}
    assert (figures.count("conv.started"), figures.count("conv.handed"), figures.count("conv.contained")) == (
        2,
        1,
        1,
    )


def test_suggestion_funnel_money_and_holdout(figures: store.Figures) -> None:
    assert figures.count("sugg.offered") == 2 and figures.amount("sugg.offered") == Decimal("60.00")
    assert figures.count("sugg.held") == 1 and figures.amount("sugg.held") == Decimal("10.00")
    assert figures.count("sugg.delivered") == 1
    assert figures.count("sugg.accepted") == 2 and figures.amount("sugg.accepted") == Decimal("35.00")
    assert figures.count("sugg.switched") == 1 and figures.amount("sugg.switched") == Decimal("25.00")
    assert figures.count("sugg.declined") == 1
    cohort = {k: v[0] for k, v in figures.rows("cohort").items()}
    assert cohort == {
        ("offered", "customers"): 2,
        ("offered", "switched"): 1,
        ("offered", "opted_out"): 1,
        ("offered", "erased"): 0,
        ("holdout", "customers"): 1,
        ("holdout", "switched"): 1,
        ("holdout", "opted_out"): 0,
        ("holdout", "erased"): 0,
    }


def test_broadcast_figures(figures: store.Figures) -> None:
    status = {k: v[0] for k, v in figures.rows("bc.status").items()}
    assert status == {("1", "delivered:sms"): 1, ("1", "failed:telegram"): 1, ("1", "sent:sms"): 1}
    react = {k: v[0] for k, v in figures.rows("bc.react").items()}
    assert react == {("1", "replies"): 1, ("1", "declined"): 1, ("1", "opt_outs"): 1}
    assert figures.count("bc.segments", "1") == 2  # two SMS of one segment left


def test_customer_value_figures(figures: store.Figures) -> None:
    value = figures.rows("snap.value")
    assert value == {
        ("50 and over", "big"): (2, Decimal("100.00")),
        ("25-50", "mid"): (1, Decimal("30.00")),
        ("10-25", "small"): (1, Decimal("20.00")),
    }
    labels = {k: v[0] for k, v in figures.rows("snap.label").items()}
    assert labels == {
        ("50 and over", "keep"): 1,
        ("50 and over", "leave alone"): 1,
        ("25-50", "keep"): 1,
        ("10-25", "leave alone"): 1,
    }
    assert figures.rows("snap.moved") == {
        ("50 and over", ""): (1, Decimal("25.00")),
        ("25-50", ""): (1, Decimal("10.00")),
    }


def test_a_range_sums_only_its_days_and_a_rollup_is_idempotent(db: Engine, bank: QuestionBank) -> None:
    seed(db)
    rollup(db, bank, NOW, start=D1, end=D3)
    rollup(db, bank, NOW, start=D1, end=D3)  # again: replaced, not doubled
    with db.connect() as conn:
        day2 = store.read(conn, D2, D2)
        rows = conn.execute(
            select(DASHBOARD_DAY.c.day).where(DASHBOARD_DAY.c.metric == "snap.customers")
        ).all()
    assert [r[0] for r in rows] == [D3]  # one snapshot, on the last day rolled
    assert {k[0]: v[0] for k, v in day2.rows("turn").items()} == {"answer": 1, "suggestion_no": 1}
    assert day2.snapshot_day is None  # no snapshot taken on or before D2
    assert day2.count("sugg.accepted") == 1


def test_holdout_share_in_sql(db: Engine) -> None:
    seed(db)
    with db.connect() as conn:
        assert store.holdout_share(conn, 10) == (1, 4)  # customer 1 is in bucket 3; c5 erased
        assert store.holdout_share(conn, 0) == (0, 4)


def test_a_backwards_range_is_refused(db: Engine, bank: QuestionBank) -> None:
    with pytest.raises(ValueError, match="after it ends"):
        rollup(db, bank, NOW, start=D3, end=D1)


def test_the_rollup_command_backfills_a_range(db: Engine, db_url: str, tmp_path: Path) -> None:
    seed(db)
    done = rapport(
        "dashboard", "rollup", "--start", "2026-03-02", "--end", "2026-03-03", db_url=db_url, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Rolled up 2 days (2026-03-02 to 2026-03-03)" in done.stdout
    bad = rapport(
        "dashboard", "rollup", "--start", "2026-03-04", "--end", "2026-03-03", db_url=db_url, cwd=tmp_path
    )
    assert bad.returncode == 2 and "after it ends" in bad.stdout + bad.stderr
    assert rapport("dashboard", "rollup", "--end", "March", db_url=db_url, cwd=tmp_path).returncode == 2
    with db.connect() as conn:
        figures = store.read(conn, D1, D3)
    assert figures.snapshot_day == D2 and figures.count("sugg.accepted") == 2
