"""Queries of the plan side: the catalog, and what the plan fit reads (customers, their hard
preferences and usage, a batch of ids at a time). SQLAlchemy Core with bound parameters."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, Select, bindparam, case, literal, select
from sqlmodel import Session
from sqlmodel import select as orm_select

from storage.models import Plan
from storage.tables import CUSTOMER, PLAN, PREFERENCE, USAGE


def plans(conn: Connection) -> list[RowMapping]:
    """Every plan of the catalog, available or not."""
    return list(conn.execute(select(PLAN)).mappings().all())


def plan_ids(conn: Connection) -> set[str]:
    """The ids of every plan of the catalog."""
    return set(conn.execute(select(PLAN.c.id)).scalars())


def upsert_plans(
    session: Session, *, rows: Sequence[Mapping[str, Any]], now: datetime
) -> tuple[int, int, int, int]:
    """Create or update plans by id from full rows (without ``updated_at``); plans not given are
    kept. A plan's ``updated_at`` moves to ``now`` only when one of its columns changed.

    (created, updated, unchanged, kept): kept counts stored plans not in ``rows``.
    """
    existing = {plan.id: plan for plan in session.exec(orm_select(Plan)).all()}
    created = updated = unchanged = 0
    for values in rows:
        plan = existing.get(values["id"])
        if plan is None:
            session.add(Plan(**values, updated_at=now))
            created += 1
        elif any(getattr(plan, name) != value for name, value in values.items()):
            for name, value in values.items():
                setattr(plan, name, value)
            plan.updated_at = now
            session.add(plan)
            updated += 1
        else:
            unchanged += 1
    session.flush()
    kept = len(existing.keys() - {values["id"] for values in rows})
    return created, updated, unchanged, kept


def usage_query(metrics: Sequence[str]) -> Select[Any]:
    """Usage rows with the metric coded as its index in ``metrics`` (-1 for others), for
    customers with ids between the parameters ``lo`` and ``hi``: integers only, fast to load."""
    code = (
        case({m: i for i, m in enumerate(metrics)}, value=USAGE.c.metric, else_=-1)
        if metrics
        else literal(-1)
    )
    return select(USAGE.c.customer_id, USAGE.c.period, code, USAGE.c.quantity_milli).where(
        USAGE.c.customer_id.between(bindparam("lo"), bindparam("hi"))
    )


def read_usage(conn: Connection, query: Select[Any], lo: int, hi: int) -> Sequence[Any]:
    """The rows of a :func:`usage_query` for ids ``lo`` to ``hi``, fetched at once (row by row
    costs several times more)."""
    return conn.execute(query, {"lo": lo, "hi": hi}).all()


def hard_preferences(
    conn: Connection, *, lo: int, hi: int, keys: Sequence[str]
) -> list[tuple[int, str, Any]]:
    """(customer id, key, value) of the preferences with these keys, for ids ``lo`` to ``hi``."""
    query = select(PREFERENCE.c.customer_id, PREFERENCE.c.key, PREFERENCE.c.value).where(
        PREFERENCE.c.customer_id.between(lo, hi), PREFERENCE.c.key.in_(list(keys))
    )
    return [(customer_id, key, value) for customer_id, key, value in conn.execute(query)]


def iter_customers(
    conn: Connection, *, batch_size: int = 20_000, external_id: str | None = None
) -> Iterator[list[tuple[int, str | None, str | None]]]:
    """(id, external id, current plan id) of every customer not erased, in batches by id."""
    last = 0
    while True:
        query = (
            select(CUSTOMER.c.id, CUSTOMER.c.external_id, CUSTOMER.c.current_plan_id)
            .where(CUSTOMER.c.id > last, CUSTOMER.c.erased_at.is_(None))
            .order_by(CUSTOMER.c.id)
            .limit(batch_size)
        )
        if external_id is not None:
            query = query.where(CUSTOMER.c.external_id == external_id)
        rows = conn.execute(query).all()
        if not rows:
            return
        yield [(r[0], r[1], r[2]) for r in rows]
        last = rows[-1][0]
