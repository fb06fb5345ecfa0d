"""``rapport plans fit``: the plan fit of the whole book (or one customer) as a table, JSON or CSV.

Rows are written as they are computed, so a book of a million customers streams out with flat
memory in every format.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any, TextIO

from plans.fit import Fit
from storage.csv_safe import SafeWriter

COLUMNS = (
    "external_id",
    "current_plan",
    "current_monthly_cost",
    "best_plan",
    "best_monthly_cost",
    "monthly_saving",
    "suggest",
    "reason",
)
_WIDTHS = (14, 18, 20, 18, 17, 14, 7, 0)


class Format(StrEnum):
    """Output formats."""

    TABLE = "table"
    JSON = "json"
    CSV = "csv"


@dataclass(slots=True)
class Totals:
    """What the report counted."""

    customers: int = 0
    suggestions: int = 0
    monthly_saving: Decimal = Decimal(0)


def write_report(fits: Iterable[tuple[str | None, Fit]], out: TextIO, fmt: Format) -> Totals:
    """Write one row per customer to ``out``; the totals of suggested savings."""
    totals = Totals()
    writer = SafeWriter(out) if fmt is Format.CSV else None
    if writer is not None:
        writer.writerow(COLUMNS)
    elif fmt is Format.TABLE:
        out.write(_line(COLUMNS) + "\n")
    else:
        out.write("[")
    for external_id, fit in fits:
        row = fit.as_row(external_id)
        if fmt is Format.JSON:
            out.write(("," if totals.customers else "") + "\n  " + json.dumps(row))
        elif writer is not None:
            writer.writerow([_plain(row[c]) for c in COLUMNS])
        else:
            out.write(_line([_plain(row[c]) for c in COLUMNS]) + "\n")
        totals.customers += 1
        if fit.suggest and fit.saving is not None:
            totals.suggestions += 1
            totals.monthly_saving += fit.saving
    if fmt is Format.JSON:
        out.write("\n]\n" if totals.customers else "]\n")
    return totals


def _plain(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _line(cells: Iterable[str]) -> str:
    return "  ".join(c.ljust(w) if w else c for c, w in zip(cells, _WIDTHS, strict=True)).rstrip()
