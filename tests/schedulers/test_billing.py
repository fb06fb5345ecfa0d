"""Switch requests reach billing: signed POSTs to a local server, retried until a 2xx, and CSV export."""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import Engine, insert, select

from schedulers.billing import BillingConfig, deliver_switches, export_switches
from storage.tables import CUSTOMER, SWITCH_REQUEST
from tests.utils import START

SECRET = "billing-shared-secret"


class Billing:
    """A billing endpoint that checks the signature and answers from a script of status codes."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[bytes, bool]] = []  # body, signature valid
        billing = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
                valid = hmac.compare_digest(expected, self.headers.get("X-Rapport-Signature", ""))
                billing.received.append((body, valid))
                status = billing.statuses.pop(0) if billing.statuses else 200
                self.send_response(status if valid else 401)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/switches"


@pytest.fixture
def billing() -> Iterator[Billing]:
    stand_in = Billing([500, 200])
    thread = threading.Thread(target=stand_in.server.serve_forever, daemon=True)
    thread.start()
    yield stand_in
    stand_in.server.shutdown()
    stand_in.server.server_close()


def _switch(db: Engine) -> int:
    with db.begin() as conn:
        cid = conn.execute(
            insert(CUSTOMER).values(external_id="C-1", created_at=START).returning(CUSTOMER.c.id)
        ).scalar_one()
        return int(
            conn.execute(
                insert(SWITCH_REQUEST)
                .values(
                    customer_id=cid,
                    from_plan_id="plus-20",
                    to_plan_id="basic-5",
                    monthly_saving=Decimal("20.00"),
                    status="requested",
                    created_at=START,
                )
                .returning(SWITCH_REQUEST.c.id)
            ).scalar_one()
        )


def test_a_switch_is_retried_after_a_500_and_delivered_once(db: Engine, billing: Billing) -> None:
    sid = _switch(db)
    config = BillingConfig(url=billing.url, secret=SECRET)
    first = deliver_switches(db, config, now=START)
    assert (first.sent, first.failed) == (0, 1)
    assert deliver_switches(db, config, now=START + timedelta(seconds=1)).failed == 0  # backing off
    assert len(billing.received) == 1
    second = deliver_switches(db, config, now=START + timedelta(seconds=31))
    assert (second.sent, second.failed) == (1, 0)
    assert deliver_switches(db, config, now=START + timedelta(hours=1)).sent == 0  # acknowledged: done
    assert len(billing.received) == 2
    assert all(valid for _, valid in billing.received)
    assert b'"to_plan_id":"basic-5"' in billing.received[-1][0]
    with db.connect() as conn:
        assert conn.execute(
            select(SWITCH_REQUEST.c.status).where(SWITCH_REQUEST.c.id == sid)
        ).scalar_one() == ("sent_to_billing")
    out = io.StringIO()
    assert export_switches(db, out) == 1
    [row] = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert (row["external_id"], row["status"], row["attempts"], row["last_error"]) == (
        "C-1",
        "sent_to_billing",
        "2",
        "",
    )
    assert export_switches(db, io.StringIO(), since=START + timedelta(days=1)) == 0


def test_a_wrong_secret_is_never_acknowledged(db: Engine, billing: Billing) -> None:
    _switch(db)
    report = deliver_switches(db, BillingConfig(url=billing.url, secret="wrong"), now=START)
    assert (report.sent, report.failed) == (0, 1)
    assert billing.received[0][1] is False
