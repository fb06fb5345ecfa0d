"""`rapport demo` data: a realistic catalog, a book with skewed usage, idempotent, a mix of fits.
On both databases."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, update

from bot.demo import DEMO_PHONE, METRICS, demo_periods, load_demo
from plans.fit import Fit, Reason, fit_book, load_catalog
from storage.db import transaction
from storage.tables import CUSTOMER, PLAN, PREFERENCE, USAGE

NOW = datetime(2026, 4, 15, 9, 30, tzinfo=UTC)
PERIODS = (202510, 202511, 202512, 202601, 202602, 202603)
PERKS = {"hotspot", "eu_roaming", "intl_calls"}


def rows(db: Engine, query: Any) -> list[tuple[Any, ...]]:
    with db.connect() as conn:
        return [tuple(r) for r in conn.execute(query)]


def snapshot(db: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the demo writes, in key order."""
    return {
        "plan": rows(db, select(PLAN).order_by(PLAN.c.id)),
        "customer": rows(db, select(CUSTOMER).order_by(CUSTOMER.c.id)),
        "preference": rows(db, select(PREFERENCE).order_by(PREFERENCE.c.id)),
        "usage": rows(db, select(USAGE).order_by(USAGE.c.customer_id, USAGE.c.period, USAGE.c.metric)),
    }


def fits(db: Engine) -> dict[str | None, Fit]:
    with db.connect() as conn:
        return dict(fit_book(conn, load_catalog(conn), roles={}, with_usage=True))


def test_demo_periods_are_the_months_before_now() -> None:
    assert demo_periods(NOW) == PERIODS
    assert demo_periods(datetime(2026, 1, 1, tzinfo=UTC), 2) == (202511, 202512)


def test_demo_loads_a_realistic_catalog(db: Engine) -> None:
    summary = load_demo(db, now=NOW)
    with db.connect() as conn:
        plans = [dict(r._mapping) for r in conn.execute(select(PLAN))]
    assert 12 <= len(plans) <= 16
    assert summary.plans_created == len(plans) and summary.plans_updated == 0
    assert sum(not p["available"] for p in plans) == 1
    assert any(p["contract_months"] > 0 for p in plans)
    assert any(p["contract_months"] == 0 for p in plans)
    assert any("family" in p["id"] for p in plans)
    assert any(p["allowance"]["data_gb"] == "unlimited" for p in plans)
    # A travel plan: roaming data included, with the travel perks.
    assert any(p["allowance"]["roaming_data_gb"] > 0 and "intl_calls" in p["perks"] for p in plans)
    for plan in plans:
        assert plan["currency"] == "USD"
        assert set(plan["perks"]) <= PERKS, plan["id"]
        assert set(plan["allowance"]) == set(METRICS), plan["id"]
        # Roaming is never free by omission: included, or charged from the first GB.
        roaming = plan["allowance"]["roaming_data_gb"]
        assert roaming > 0 or Decimal(plan["overage"]["roaming_data_gb"]) > 0, plan["id"]


def test_demo_book_has_customers_on_plans_with_six_months_of_usage(db: Engine) -> None:
    summary = load_demo(db, now=NOW)
    assert (summary.customers_created, summary.customers_updated) == (300, 0)
    assert summary.periods == PERIODS
    assert summary.usage_rows == 300 * 6 * 4
    customers = rows(db, select(CUSTOMER.c.id, CUSTOMER.c.external_id, CUSTOMER.c.current_plan_id))
    plan_ids = {r[0] for r in rows(db, select(PLAN.c.id))}
    assert len(customers) == 300
    assert all(plan in plan_ids for _, _, plan in customers)
    assert len({plan for _, _, plan in customers}) >= 10  # spread over the catalog
    periods = rows(
        db,
        select(USAGE.c.customer_id, func.count(func.distinct(USAGE.c.period)), func.count()).group_by(
            USAGE.c.customer_id
        ),
    )
    assert len(periods) == 300
    assert {(n, m) for _, n, m in periods} == {(6, 24)}
    assert {r[0] for r in rows(db, select(USAGE.c.period).distinct())} == set(PERIODS)
    assert {r[0] for r in rows(db, select(USAGE.c.metric).distinct())} == set(METRICS)
    alex = rows(
        db,
        select(CUSTOMER.c.id, CUSTOMER.c.name, CUSTOMER.c.phone).where(CUSTOMER.c.external_id == "DEMO-0001"),
    )
    assert [(name, phone) for _, name, phone in alex] == [("Alex", DEMO_PHONE)]
    assert rows(db, select(PREFERENCE.c.key).where(PREFERENCE.c.customer_id == alex[0][0])) == []
    phones = rows(db, select(CUSTOMER.c.phone).where(CUSTOMER.c.external_id == "DEMO-0300"))
    assert phones == [("+14155550399",)]


def test_usage_is_skewed_most_far_below_the_allowance_some_over_few_roaming(db: Engine) -> None:
    load_demo(db, now=NOW)
    allowance = dict(rows(db, select(PLAN.c.id, PLAN.c.allowance)))
    plan_of = dict(rows(db, select(CUSTOMER.c.id, CUSTOMER.c.current_plan_id)))
    shares, roaming = [], Counter[int]()
    for cid, metric, qty in rows(db, select(USAGE.c.customer_id, USAGE.c.metric, USAGE.c.quantity_milli)):
        limit = allowance[plan_of[cid]][metric]
        if metric == "data_gb" and limit != "unlimited":
            shares.append(qty / 1000 / limit)
        if metric == "roaming_data_gb" and qty > 0:
            roaming[cid] += 1
    shares.sort()
    assert shares[len(shares) // 2] < 0.6  # the median customer-month uses well under the allowance
    over = sum(s > 1 for s in shares) / len(shares)
    assert 0.05 <= over <= 0.3
    assert 0.03 * 300 <= len(roaming) <= 0.3 * 300  # some travellers, most never roam


def test_demo_twice_changes_nothing(db: Engine) -> None:
    load_demo(db, now=NOW)
    before = snapshot(db)
    again = load_demo(db, now=NOW)
    assert (again.customers_created, again.customers_updated) == (0, 300)
    assert (again.plans_created, again.plans_updated) == (0, 0)
    assert snapshot(db) == before


def test_demo_replaces_changed_usage_and_restores_customers(db: Engine) -> None:
    load_demo(db, now=NOW)
    before = snapshot(db)
    with transaction(db) as s:
        conn = s.connection()
        conn.execute(update(USAGE).where(USAGE.c.customer_id == 2).values(quantity_milli=123))
        conn.execute(update(CUSTOMER).where(CUSTOMER.c.id == 3).values(current_plan_id=None))
    load_demo(db, now=NOW)
    assert snapshot(db) == before


def test_demo_adopts_a_customer_who_texted_before_it_was_loaded(db: Engine) -> None:
    with transaction(db) as s:
        s.connection().execute(
            insert(CUSTOMER).values(phone=DEMO_PHONE, marketing_consent=False, created_at=NOW)
        )
    summary = load_demo(db, now=NOW)
    assert (summary.customers_created, summary.customers_updated) == (299, 1)
    alex = rows(db, select(CUSTOMER.c.id, CUSTOMER.c.external_id).where(CUSTOMER.c.phone == DEMO_PHONE))
    assert alex == [(1, "DEMO-0001")]


def test_fit_over_the_demo_book_is_a_mix(db: Engine) -> None:
    load_demo(db, now=NOW)
    book = fits(db)
    price = {pid: Decimal(p) for pid, p in rows(db, select(PLAN.c.id, PLAN.c.monthly_price))}
    assert len(book) == 300
    assert sum(f.suggest for f in book.values()) >= 0.3 * 300
    paying_overage = [
        f for f in book.values() if f.current_cost and f.current_cost > price[f.current_plan or ""]
    ]
    assert paying_overage
    assert any(f.best_plan == f.current_plan and f.reason is Reason.BEST_ALREADY for f in book.values())
    reasons = Counter(f.reason for f in book.values())
    assert reasons[Reason.NO_USAGE] == reasons[Reason.NO_CURRENT_PLAN] == 0


def test_alex_is_suggested_a_cheaper_plan(db: Engine) -> None:
    load_demo(db, now=NOW)
    alex = fits(db)["DEMO-0001"]
    assert alex.current_plan == "plus-20"
    assert alex.suggest and alex.reason is Reason.SUGGEST
    assert alex.saving is not None and alex.saving >= Decimal("10.00")
    assert Decimal("1.5") < alex.usage["data_gb"] < Decimal("2.5")


def test_demo_refuses_an_empty_book(db: Engine) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        load_demo(db, customers=0, now=NOW)


def test_demo_loads_through_the_import_and_its_checks(db: Engine) -> None:
    # Someone else already has Alex's phone: the customer import refuses that row, so does the demo.
    with transaction(db) as s:
        s.connection().execute(
            insert(CUSTOMER).values(
                external_id="SHOP-1", phone=DEMO_PHONE, marketing_consent=False, created_at=NOW
            )
        )
    with pytest.raises(RuntimeError, match=r"1 rejected rows; the first: 2,phone .* already belongs"):
        load_demo(db, customers=3, now=NOW)
