"""Demo data: the demo plan catalog and a book of customers with six months of usage.

Usage is drawn, with a fixed seed, as a skewed (lognormal) share of each customer's current
allowance: most people use far less than they pay for, about one in six goes over, and a few
travel. So the plan fit has something to say out of the box: many customers on too big a plan,
some paying overage, some already on the best plan.
"""

from __future__ import annotations

import csv
import importlib.resources
import random
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine

from plans.catalog import UNLIMITED, CatalogFile, PlanSpec, apply_catalog, load_catalog_file
from plans.imports import USAGE_COLUMNS, ImportSummary, import_customers, import_usage
from storage.db import transaction
from storage.queries import customer_ids, set_preference
from storage.types import Source, utcnow

DEMO_PHONE = "+14155550100"
DEMO_CATALOG = "demo_catalog.toml"
DEMO_MONTHS = 6
METRICS = ("data_gb", "minutes", "sms", "roaming_data_gb")
ALEX_PLAN = "plus-20"

_FIRST = [
    "Alex",
    "Sam",
    "Jordan",
    "Taylor",
    "Morgan",
    "Casey",
    "Riley",
    "Jamie",
    "Avery",
    "Quinn",
    "Maria",
    "Wei",
    "Aisha",
    "Luca",
    "Noor",
    "Kenji",
    "Sofia",
    "Omar",
    "Ines",
    "Tomasz",
]
_LAST = ["Lee", "Garcia", "Okafor", "Novak", "Silva", "Chen", "Haddad", "Rossi", "Kim", "Patel"]
_ZONES = ["America/Los_Angeles", "America/Denver", "America/Chicago", "America/New_York"]
# How many demo customers are on each plan, relatively (the retired one still has some).
_PLAN_WEIGHTS = {
    "mini-1": 6,
    "prepaid-3": 8,
    "basic-5": 14,
    "plus-20": 20,
    "max-50": 6,
    "unlimited": 10,
    "travel-10": 4,
    "world-25": 2,
    "family-60": 3,
    "basic-5-12": 6,
    "plus-20-24": 8,
    "unlimited-24": 6,
    "family-60-24": 2,
    "classic-10": 5,
}
# What "a share of the allowance" means where the allowance is unlimited (typical heavy use).
_UNLIMITED_REFERENCE = {"data_gb": 30.0, "minutes": 600.0, "sms": 300.0}
_BOOK_COLUMNS = ("external_id", "phone", "name", "current_plan", "timezone", "marketing_consent")


@dataclass(frozen=True, slots=True)
class DemoSummary:
    """What ``load_demo`` did. ``periods`` are the usage months (yyyymm), oldest first."""

    customers_created: int
    customers_updated: int
    preferences: int
    plans_created: int
    plans_updated: int
    usage_rows: int
    periods: tuple[int, ...]


def demo_catalog() -> CatalogFile:
    """The demo plan catalog shipped with the ``plans`` package."""
    resource = importlib.resources.files("plans").joinpath(DEMO_CATALOG)
    with importlib.resources.as_file(resource) as path:
        return load_catalog_file(path)


def demo_periods(now: datetime, months: int = DEMO_MONTHS) -> tuple[int, ...]:
    """The ``months`` months (yyyymm) before the month of ``now``, oldest first."""
    index = now.year * 12 + now.month - 1  # months since year 0, of ``now``
    return tuple((i // 12) * 100 + i % 12 + 1 for i in range(index - months, index))


def load_demo(db: Engine, *, customers: int = 300, seed: int = 7, now: datetime | None = None) -> DemoSummary:
    """Load the demo catalog and customers with usage (idempotent), through the code a user's
    ``rapport plans load`` and ``rapport import customers|usage`` run: the book and the usage
    are written as CSV files and imported.

    A second run updates the same rows: plans by id, customers by external id (DEMO-0001...),
    their preferences by key, and usage by (customer, period). Usage covers the
    ``DEMO_MONTHS`` months before the month of ``now`` (default: the current time).

    Customer 1, Alex (+14155550100), starts with a blank profile, to try the whole dialogue, and
    uses about 2 GB a month of a 20 GB plan, so "which plan fits me?" gets a suggestion; a few
    others have answers on file, one of them old enough to be re-confirmed.
    """
    if customers < 1:
        raise ValueError(f"customers must be at least 1, got {customers}")
    now = now or utcnow()
    catalog = demo_catalog()
    plans = {spec.id: spec for spec in catalog.plans}
    periods = demo_periods(now)
    book = _book(customers, seed, plans)
    usage = _usage(book, plans, periods, seed)
    with transaction(db) as session:
        plan_summary = apply_catalog(session, catalog)
    with tempfile.TemporaryDirectory(prefix="rapport-demo-") as folder:
        book_file, usage_file = Path(folder, "customers.csv"), Path(folder, "usage.csv")
        _write_csv(book_file, _BOOK_COLUMNS, ([row[c] for c in _BOOK_COLUMNS] for row in book))
        _write_csv(usage_file, USAGE_COLUMNS, _usage_rows(book, periods, usage))
        people = _imported(import_customers(db, book_file, default_region="US", now=now))
        used = _imported(import_usage(db, usage_file))
    with transaction(db) as session:
        ids = customer_ids(session.connection(), external_ids=[row["external_id"] for row in book])
        prefs = _preferences([ids[row["external_id"]] for row in book], seed, now)
        for pref in prefs:
            set_preference(session, source=Source.IMPORT, **pref)
    return DemoSummary(
        customers_created=people.created,
        customers_updated=customers - people.created,
        preferences=len(prefs),
        plans_created=plan_summary.created,
        plans_updated=plan_summary.updated,
        usage_rows=used.imported,
        periods=periods,
    )


def _write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(header)
        writer.writerows(rows)


def _imported(summary: ImportSummary) -> ImportSummary:
    """The summary of an import of demo data, which must take every row."""
    if summary.rejected and summary.rejects_path is not None:
        first = summary.rejects_path.read_text(encoding="utf-8").splitlines()[1]
        raise RuntimeError(f"the demo data has {summary.rejected} rejected rows; the first: {first}")
    return summary


# -- the book ------------------------------------------------------------------------------------


def _book(customers: int, seed: int, plans: Mapping[str, PlanSpec]) -> list[dict[str, Any]]:
    """The customer rows (``import customers`` columns), Alex first."""
    rng = random.Random(seed)
    ids, weights = zip(*((p, w) for p, w in _PLAN_WEIGHTS.items() if p in plans), strict=True)
    book = []
    for i in range(customers):
        name = "Alex" if i == 0 else f"{rng.choice(_FIRST)} {rng.choice(_LAST)}"
        book.append(
            {
                "external_id": f"DEMO-{i + 1:04d}",
                "name": name,
                "phone": f"+1415555{100 + i:04d}",
                "timezone": rng.choice(_ZONES),
                "marketing_consent": "true" if rng.random() < 0.8 else "false",
                "current_plan": ALEX_PLAN if i == 0 else rng.choices(ids, weights)[0],
            }
        )
    return book


def _preferences(ids: Sequence[int], seed: int, now: datetime) -> list[dict[str, Any]]:
    """Answers on file: every third customer prefers texts; every fifth has a budget a year old."""
    rng = random.Random(seed + 1)
    rows = []
    for i, customer_id in enumerate(ids):
        if i == 0:
            continue  # Alex starts blank
        if i % 3 == 0:
            rows.append(_preference(customer_id, "contact_channel", "sms", now - timedelta(days=30)))
        if i % 5 == 0:
            budget = f"{rng.choice([25, 30, 40, 60])}.00"
            rows.append(_preference(customer_id, "monthly_budget", budget, now - timedelta(days=400)))
    return rows


def _preference(customer_id: int, key: str, value: object, at: datetime) -> dict[str, Any]:
    return {"customer_id": customer_id, "key": key, "value": value, "at": at}


# -- usage ---------------------------------------------------------------------------------------


def _allowance(spec: PlanSpec, metric: str) -> float | None:
    """The plan's monthly allowance of ``metric`` as a number, None when unlimited."""
    value = spec.allowance.get(metric, UNLIMITED)
    return None if value == UNLIMITED else float(value)


def _usage(
    book: Sequence[Mapping[str, Any]], plans: Mapping[str, PlanSpec], periods: Sequence[int], seed: int
) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Usage in thousandths, shaped (customer, period, metric) in ``METRICS`` order.

    Each customer has a level per metric, a lognormal share of the allowance (median 40%, about
    one in six above it), that varies month to month; roaming is zero for most, and travellers
    (more of them on travel plans) roam in about one month out of three.
    """
    rng = np.random.default_rng(seed)
    n, months = len(book), len(periods)
    quantity = np.zeros((n, months, len(METRICS)), dtype=np.float64)
    reference = np.empty((n, 3))
    travel_odds = np.empty(n)
    for b, row in enumerate(book):
        spec = plans[row["current_plan"]]
        for k, metric in enumerate(METRICS[:3]):
            reference[b, k] = _allowance(spec, metric) or _UNLIMITED_REFERENCE[metric]
        travel_odds[b] = 0.6 if "intl_calls" in spec.perks else 0.25 if "eu_roaming" in spec.perks else 0.1
    level = rng.lognormal(np.log(0.4), 0.85, size=(n, 1, 3))
    wobble = rng.lognormal(0.0, 0.2, size=(n, months, 3))
    quantity[:, :, :3] = reference[:, None, :] * level * wobble
    traveller = rng.random(n) < travel_odds
    trips = rng.random((n, months)) < 0.35
    roaming = rng.lognormal(np.log(1.5), 0.8, size=(n, months))
    quantity[:, :, 3] = np.where(traveller[:, None] & trips, roaming, 0.0)
    # Minutes and texts are whole numbers; data is kept to the MB.
    quantity[:, :, 1:3] = np.round(quantity[:, :, 1:3])
    milli = np.round(quantity * 1000).astype(np.int64)
    # Alex: about 2 GB a month of a 20 GB plan, a few calls and texts, never abroad.
    alex = rng.normal(0, 1, size=months)
    milli[0, :, 0] = (2100 + np.round(alex * 150)).astype(np.int64)
    milli[0, :, 1] = (150 + np.round(alex * 20).astype(np.int64)) * 1000
    milli[0, :, 2] = 40_000
    milli[0, :, 3] = 0
    return milli


def _usage_rows(
    book: Sequence[Mapping[str, Any]], periods: Sequence[int], usage: np.ndarray[Any, np.dtype[np.int64]]
) -> Iterator[tuple[str, str, str, str]]:
    """The usage as ``import usage`` rows: external_id, period (YYYY-MM), metric, quantity."""
    for b, row in enumerate(book):
        for m, period in enumerate(periods):
            month = f"{period // 100}-{period % 100:02d}"
            for k, metric in enumerate(METRICS):
                milli = int(usage[b, m, k])
                yield row["external_id"], month, metric, f"{milli // 1000}.{milli % 1000:03d}"
