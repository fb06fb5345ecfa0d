"""Every CSV export is formula-safe (issue #15): the console's exports of messages, the billing
export of switch requests, the plan fit report and import rejects all write through one helper."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine, update

from bot.fit_report import Format, write_report
from plans.fit import Fit, Reason
from schedulers.billing import export_switches
from storage.csv_safe import FORMULA_STARTS, SafeDictWriter, SafeWriter, safe_cell
from storage.tables import CUSTOMER, MESSAGE
from tests.bot import test_console
from tests.bot.test_console import Console, login, say
from tests.schedulers import test_billing

console = test_console.console

PAYLOADS = [
    '=HYPERLINK("http://evil.example","click")',
    "+1+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1:A2)",
    "\t=1+1",
    "\r=1+1",
]


def formula_cells(text: str) -> list[str]:
    """Every cell of a CSV document a spreadsheet would run as a formula."""
    found = []
    for row in csv.reader(io.StringIO(text)):
        for cell in row:
            if cell.startswith(FORMULA_STARTS) and safe_cell(cell) != cell:
                found.append(cell)
    return found


@pytest.mark.parametrize("payload", PAYLOADS)
def test_a_cell_that_starts_like_a_formula_is_neutralised(payload: str) -> None:
    assert safe_cell(payload) == "'" + payload
    out = io.StringIO()
    SafeWriter(out).writerow([payload, "plain", None])
    assert next(csv.reader(io.StringIO(out.getvalue()))) == ["'" + payload, "plain", ""]
    out = io.StringIO()
    writer = SafeDictWriter(out, ["a"])
    writer.writeheader()
    writer.writerow({"a": payload})
    assert list(csv.DictReader(io.StringIO(out.getvalue()))) == [{"a": "'" + payload}]


def test_numbers_dates_and_plain_text_are_left_alone() -> None:
    assert safe_cell(Decimal("-3.50")) == Decimal("-3.50")
    assert safe_cell(-7) == -7 and safe_cell(True) is True
    assert safe_cell("-3.50") == "-3.50" and safe_cell("+12") == "+12"
    assert safe_cell("Ana = happy") == "Ana = happy"
    assert safe_cell(date(2026, 3, 1)) == "2026-03-01"
    assert safe_cell(datetime(2026, 3, 1, 9, tzinfo=UTC)) == "2026-03-01T09:00:00+00:00"


def test_the_console_export_neutralises_names_phones_errors_and_text(console: Console) -> None:
    say(console.runtime, "+14155550111", "hi", "@SUM(A1:A2)")
    with console.db.begin() as conn:
        conn.execute(update(CUSTOMER).values(name=PAYLOADS[0]))
        conn.execute(update(MESSAGE).values(error=PAYLOADS[1], question_key=PAYLOADS[3]))
    login(console.client, "op@example.com")
    exports = [console.client.get("/console/conversations/export", params={"format": "csv"})]
    customer_id = int(next(csv.DictReader(io.StringIO(exports[0].text)))["customer_id"])
    exports.append(console.client.get(f"/console/customers/{customer_id}/export", params={"format": "csv"}))
    for response in exports:
        assert response.status_code == 200
        rows = list(csv.DictReader(io.StringIO(response.text)))
        assert rows and all(r["customer_name"] == "'" + PAYLOADS[0] for r in rows)
        assert all(r["error"] == "'" + PAYLOADS[1] for r in rows)
        assert any(r["text"] == "'@SUM(A1:A2)" for r in rows)
        assert formula_cells(response.text) == []


def test_the_billing_export_is_formula_safe(db: Engine) -> None:
    test_billing._switch(db)
    with db.begin() as conn:
        conn.execute(update(CUSTOMER).values(external_id=PAYLOADS[0]))
    out = io.StringIO()
    assert export_switches(db, out) == 1
    [row] = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert row["external_id"] == "'" + PAYLOADS[0]
    assert row["monthly_saving"] == "20.00"
    assert formula_cells(out.getvalue()) == []


def test_the_fit_report_is_formula_safe() -> None:
    fit = Fit(1, "@plus", Decimal(45), "=basic", Decimal(18), Decimal(27), True, Reason.SUGGEST, 3, {})
    out = io.StringIO()
    write_report([("-1+cmd", fit)], out, Format.CSV)
    [row] = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert (row["external_id"], row["current_plan"], row["best_plan"]) == ("'-1+cmd", "'@plus", "'=basic")
    assert row["monthly_saving"] == "27.00"
    assert formula_cells(out.getvalue()) == []


def test_import_rejects_are_formula_safe(tmp_path: Path) -> None:
    from plans.imports import _Rejects

    rejects = _Rejects(tmp_path / "customers.csv")
    rejects.add(2, "bad phone", PAYLOADS[0])
    path = rejects.close()
    assert path is not None
    text = path.read_text(encoding="utf-8")
    assert formula_cells(text) == [] and "'" + PAYLOADS[0] in next(csv.DictReader(io.StringIO(text)))["row"]
