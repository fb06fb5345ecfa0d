"""Switch requests to the billing system: a signed JSON POST per request, retried with backoff until
a 2xx acknowledges it, and a CSV export.

The signature is ``X-Rapport-Signature: sha256=<hex HMAC-SHA256 of the body with the secret>``;
``X-Rapport-Delivery`` carries the switch request id, so billing can drop a repeat (a 2xx lost on
the way back makes us send again: delivery is at least once).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TextIO

import httpx
from sqlalchemy import Engine

from schedulers.delivery import RetryPolicy
from storage import billing_queries
from storage.csv_safe import SafeWriter

REQUESTED, SENT = "requested", "sent_to_billing"


@dataclass(frozen=True, slots=True)
class BillingConfig:
    """Where switch requests go (settings ``BILLING_WEBHOOK_URL``, ``BILLING_WEBHOOK_SECRET``)."""

    url: str
    secret: str
    timeout: float = 10.0
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(base=30.0, cap=3600.0))

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("BILLING_WEBHOOK_SECRET must be set when BILLING_WEBHOOK_URL is")


def signature(body: bytes, secret: str) -> str:
    """The ``X-Rapport-Signature`` header value for ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class BillingReport:
    sent: int
    failed: int


Post = Callable[[str, bytes, dict[str, str]], int]


def deliver_switches(
    db: Engine, config: BillingConfig, *, now: datetime, post: Post | None = None, limit: int = 100
) -> BillingReport:
    """POST every due switch request still ``requested`` once; record the outcome of each."""
    with db.connect() as conn:
        rows = billing_queries.due_switches(conn, status=REQUESTED, now=now, limit=limit)
    sent = failed = 0
    with httpx.Client(timeout=config.timeout) as client:
        send = post or _poster(client)
        for r in rows:
            body = json.dumps(
                {
                    "id": r["id"],
                    "customer_id": r["customer_id"],
                    "external_id": r["external_id"],
                    "from_plan_id": r["from_plan_id"],
                    "to_plan_id": r["to_plan_id"],
                    "monthly_saving": str(r["monthly_saving"]),
                    "requested_at": r["created_at"].isoformat(),
                },
                separators=(",", ":"),
            ).encode()
            headers = {
                "Content-Type": "application/json",
                "X-Rapport-Signature": signature(body, config.secret),
                "X-Rapport-Delivery": str(r["id"]),
            }
            error: str | None = None
            try:
                status = send(config.url, body, headers)
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"
            attempts = (r["attempts"] or 0) + 1
            _record(db, r["id"], attempts, error, now, config)
            sent, failed = (sent + 1, failed) if error is None else (sent, failed + 1)
    return BillingReport(sent, failed)


def _poster(client: httpx.Client) -> Post:
    def post(url: str, body: bytes, headers: dict[str, str]) -> int:
        return client.post(url, content=body, headers=headers).status_code

    return post


def _record(
    db: Engine, switch_id: int, attempts: int, error: str | None, now: datetime, config: BillingConfig
) -> None:
    values: dict[str, object] = {"attempts": attempts, "last_error": error and error[:500]}
    if error is None:
        values.update(delivered_at=now, next_attempt_at=None)
    else:
        values["next_attempt_at"] = now + timedelta(seconds=config.retry.delay(attempts, None))
    with db.begin() as conn:
        billing_queries.record_billing_attempt(
            conn, switch_id=switch_id, values=values, delivered_status=SENT if error is None else None
        )


EXPORT_COLUMNS = (
    "id",
    "created_at",
    "customer_id",
    "external_id",
    "from_plan_id",
    "to_plan_id",
    "monthly_saving",
    "status",
    "attempts",
    "last_error",
    "delivered_at",
)


def export_switches(db: Engine, out: TextIO, since: datetime | None = None) -> int:
    """Write switch requests (made at or after ``since``) as CSV to ``out``; the number written."""
    writer = SafeWriter(out)
    writer.writerow(EXPORT_COLUMNS)
    n = 0
    with db.connect() as conn:
        for row in billing_queries.switch_export_rows(conn, since=since):
            writer.writerow(row)  # None empty, times ISO, text formula-safe
            n += 1
    return n
