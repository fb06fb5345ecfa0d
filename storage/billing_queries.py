"""Queries of the billing hand-off: switch requests due for delivery, the outcome of each attempt,
and the rows of the CSV export. SQLAlchemy Core with bound parameters."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, RowMapping, insert, or_, select, update

from storage.tables import BILLING_DELIVERY, CUSTOMER, SWITCH_REQUEST


def due_switches(conn: Connection, *, status: str, now: datetime, limit: int) -> list[RowMapping]:
    """Switch requests in ``status`` whose next attempt is due, oldest first: every column of the
    request with the customer's ``external_id`` and the ``attempts`` made so far (None: none)."""
    query = (
        select(SWITCH_REQUEST, CUSTOMER.c.external_id, BILLING_DELIVERY.c.attempts)
        .join(CUSTOMER, CUSTOMER.c.id == SWITCH_REQUEST.c.customer_id)
        .outerjoin(BILLING_DELIVERY, BILLING_DELIVERY.c.switch_request_id == SWITCH_REQUEST.c.id)
        .where(
            SWITCH_REQUEST.c.status == status,
            or_(BILLING_DELIVERY.c.next_attempt_at.is_(None), BILLING_DELIVERY.c.next_attempt_at <= now),
        )
        .order_by(SWITCH_REQUEST.c.id)
        .limit(limit)
    )
    return list(conn.execute(query).mappings().all())


def record_billing_attempt(
    conn: Connection, *, switch_id: int, values: dict[str, Any], delivered_status: str | None
) -> None:
    """Write the delivery row of a switch request (``values``: attempts, last_error,
    next_attempt_at, delivered_at), creating it on the first attempt; when ``delivered_status``
    is given, the request moves to it."""
    changed = conn.execute(
        update(BILLING_DELIVERY).where(BILLING_DELIVERY.c.switch_request_id == switch_id).values(**values)
    ).rowcount
    if not changed:
        conn.execute(insert(BILLING_DELIVERY).values(switch_request_id=switch_id, **values))
    if delivered_status is not None:
        conn.execute(
            update(SWITCH_REQUEST).where(SWITCH_REQUEST.c.id == switch_id).values(status=delivered_status)
        )


def switch_export_rows(conn: Connection, *, since: datetime | None = None) -> Iterator[Sequence[Any]]:
    """Switch requests (made at or after ``since``) with their delivery, by id: id, created_at,
    customer_id, external_id, from_plan_id, to_plan_id, monthly_saving, status, attempts,
    last_error, delivered_at."""
    query = (
        select(
            SWITCH_REQUEST.c.id,
            SWITCH_REQUEST.c.created_at,
            SWITCH_REQUEST.c.customer_id,
            CUSTOMER.c.external_id,
            SWITCH_REQUEST.c.from_plan_id,
            SWITCH_REQUEST.c.to_plan_id,
            SWITCH_REQUEST.c.monthly_saving,
            SWITCH_REQUEST.c.status,
            BILLING_DELIVERY.c.attempts,
            BILLING_DELIVERY.c.last_error,
            BILLING_DELIVERY.c.delivered_at,
        )
        .join(CUSTOMER, CUSTOMER.c.id == SWITCH_REQUEST.c.customer_id)
        .outerjoin(BILLING_DELIVERY, BILLING_DELIVERY.c.switch_request_id == SWITCH_REQUEST.c.id)
        .order_by(SWITCH_REQUEST.c.id)
    )
    if since is not None:
        query = query.where(SWITCH_REQUEST.c.created_at >= since)
    for row in conn.execute(query):
        yield tuple(row)
