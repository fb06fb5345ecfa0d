"""Queries of plan advice in the dialogue: the catalog's version, one customer's usage, how
often each answer was given, declines and switch requests. SQLAlchemy Core with bound parameters."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, cast, func, insert, select
from sqlalchemy.types import String

from storage.tables import PLAN, PLAN_DECLINE, PREFERENCE, SWITCH_REQUEST, USAGE


def catalog_version(conn: Connection) -> tuple[Any, ...]:
    """(number of plans, latest ``updated_at``): changes whenever the plan table does."""
    return tuple(conn.execute(select(func.count(), func.max(PLAN.c.updated_at))).one())


def customer_usage(conn: Connection, *, customer_id: int) -> list[tuple[int, int, str, int]]:
    """(customer id, period, metric, quantity_milli) of every usage row of one customer."""
    query = select(USAGE.c.customer_id, USAGE.c.period, USAGE.c.metric, USAGE.c.quantity_milli).where(
        USAGE.c.customer_id == customer_id
    )
    return [(r[0], r[1], r[2], r[3]) for r in conn.execute(query)]


def answer_counts(conn: Connection, *, key: str) -> list[tuple[str | None, int]]:
    """(stored JSON text of a value, how many customers have it) for preference ``key``."""
    text = cast(PREFERENCE.c.value, String)
    query = select(text, func.count()).where(PREFERENCE.c.key == key).group_by(text)
    return [(value, int(n)) for value, n in conn.execute(query)]


def latest_decline(
    conn: Connection, *, customer_id: int, plan_id: str, since: datetime
) -> tuple[datetime, Any] | None:
    """(declined_at, usage then) of the customer's latest "no" to ``plan_id`` after ``since``."""
    row = conn.execute(
        select(PLAN_DECLINE.c.declined_at, PLAN_DECLINE.c.usage)
        .where(
            PLAN_DECLINE.c.customer_id == customer_id,
            PLAN_DECLINE.c.plan_id == plan_id,
            PLAN_DECLINE.c.declined_at > since,
        )
        .order_by(PLAN_DECLINE.c.declined_at.desc())
        .limit(1)
    ).first()
    return None if row is None else (row[0], row[1])


def add_switch_request(
    conn: Connection,
    *,
    customer_id: int,
    from_plan_id: str | None,
    to_plan_id: str,
    monthly_saving: Decimal,
    message_id: int,
    now: datetime,
) -> None:
    """A customer's YES to a plan: a switch request for billing, status ``requested``."""
    conn.execute(
        insert(SWITCH_REQUEST).values(
            customer_id=customer_id,
            from_plan_id=from_plan_id,
            to_plan_id=to_plan_id,
            monthly_saving=monthly_saving,
            message_id=message_id,
            status="requested",
            created_at=now,
        )
    )


def add_plan_decline(
    conn: Connection,
    *,
    customer_id: int,
    plan_id: str,
    usage: Mapping[str, float],
    message_id: int,
    now: datetime,
) -> None:
    """A customer's NO to a plan, with the usage (metric -> monthly mean) it was offered on."""
    conn.execute(
        insert(PLAN_DECLINE).values(
            customer_id=customer_id,
            plan_id=plan_id,
            usage=dict(usage),
            message_id=message_id,
            declined_at=now,
        )
    )


def metric_by_period(conn: Connection, *, customer_id: int, metric: str) -> dict[int, int]:
    """quantity_milli of one metric of one customer, by period."""
    query = select(USAGE.c.period, USAGE.c.quantity_milli).where(
        USAGE.c.customer_id == customer_id, USAGE.c.metric == metric
    )
    return {int(row[0]): int(row[1]) for row in conn.execute(query)}


def latest_periods(conn: Connection, *, customer_id: int, limit: int) -> list[int]:
    """The customer's latest ``limit`` periods (yyyymm) with any usage, newest first."""
    query = (
        select(USAGE.c.period)
        .where(USAGE.c.customer_id == customer_id)
        .group_by(USAGE.c.period)
        .order_by(USAGE.c.period.desc())
        .limit(limit)
    )
    return list(conn.execute(query).scalars())
