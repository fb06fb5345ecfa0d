"""The customer page's queries in storage.console_queries, on both databases."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, Table, insert

from storage import console_queries as q
from storage.tables import CUSTOMER, MESSAGE, PLAN, PLAN_DECLINE, PREFERENCE, SWITCH_REQUEST, USAGE
from storage.types import Direction, Intent

AT = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)


def _add(conn: Connection, table: Table, **values: Any) -> Any:
    """Insert a row; its (first) primary key value."""
    key = conn.execute(insert(table).values(**values)).inserted_primary_key
    assert key is not None
    return key[0]


def _customer(db: Engine) -> tuple[int, int]:
    """A customer with a plan, two preferences, usage, two suggestions, a switch and two declines,
    and another customer with some of the same; (customer id, other id)."""
    with db.begin() as conn:
        plan = {"name": "Small", "currency": "USD", "monthly_price": Decimal("20.00"), "updated_at": AT}
        _add(conn, PLAN, id="small", allowance={}, overage={}, perks=[], **plan)
        cid, other = (_add(conn, CUSTOMER, name=n, current_plan_id="small", created_at=AT) for n in "AB")
        for key, value in (("monthly_budget", "30"), ("contact_channel", "sms")):
            _add(
                conn,
                PREFERENCE,
                customer_id=cid,
                key=key,
                value=value,
                source="asked",
                stated_at=AT,
                confirmed_at=AT,
            )
        for who in (cid, other):
            for period in (202602, 202601):
                for metric in ("sms", "data_gb"):
                    _add(conn, USAGE, customer_id=who, period=period, metric=metric, quantity_milli=1)
        sent = {"channel": "sms", "direction": Direction.OUT, "address": "+1", "text": "t", "created_at": AT}
        for who, intent in ((cid, Intent.SUGGESTION), (cid, Intent.ASK), (other, Intent.SUGGESTION)):
            _add(conn, MESSAGE, customer_id=who, intent=intent, **sent)
        _add(conn, MESSAGE, customer_id=cid, intent=Intent.SUGGESTION, **sent)
        saving = Decimal("5.00")
        _add(conn, SWITCH_REQUEST, customer_id=cid, to_plan_id="small", monthly_saving=saving, created_at=AT)
        for who, plan_id in ((cid, "a"), (other, "x"), (cid, "b")):
            _add(conn, PLAN_DECLINE, customer_id=who, plan_id=plan_id, usage={}, declined_at=AT)
    return cid, other


def test_customer_page_queries_return_this_customers_rows_in_page_order(db: Engine) -> None:
    cid, other = _customer(db)
    with db.connect() as conn:
        customer = q.customer(conn, customer_id=cid)
        assert customer is not None and customer["name"] == "A"
        assert q.customer(conn, customer_id=999_999) is None
        assert [p["key"] for p in q.customer_preferences(conn, customer_id=cid)] == [
            "contact_channel",
            "monthly_budget",
        ]
        plan = q.plan(conn, plan_id="small")
        assert plan is not None and plan["monthly_price"] == Decimal("20.00")
        usage = [(u["period"], u["metric"]) for u in q.customer_usage(conn, customer_id=cid)]
        assert usage == [(202601, "data_gb"), (202601, "sms"), (202602, "data_gb"), (202602, "sms")]
        assert [s["to_plan_id"] for s in q.switch_requests(conn, customer_id=cid)] == ["small"]
        assert [d["plan_id"] for d in q.plan_declines(conn, customer_id=cid)] == ["b", "a"]  # newest first
        suggestions = q.suggestions(conn, customer_id=cid)
        assert len(suggestions) == 2 and {m["intent"] for m in suggestions} == {Intent.SUGGESTION}
        assert suggestions[0]["id"] > suggestions[1]["id"]
        assert q.switch_requests(conn, customer_id=other) == []
