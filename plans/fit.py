"""Plan fit: what each plan would have cost a customer on their actual usage, and which fits best.

The rule (one implementation, for one customer or a million):

- Take the customer's most recent ``lookback`` periods with usage; a metric with no row in a
  period counts as 0.
- Cost of plan P in month m = price + sum over metrics of max(0, usage - allowance) x overage.
  A month over an allowance that has no overage price makes P infeasible. A metric a plan names
  in neither its allowance nor its overage is not priced by it.
- Expected cost = the mean monthly cost. The current plan is priced the same way, except that a
  month over a capped allowance costs just the price (the usage was capped): never infeasible.
- Candidates: available, feasible plans that meet the hard preferences (budget, month-to-month
  only, must-have perk). Best = the lowest expected cost; ties go to fewer contract months, then
  the lower price, then the id.
- Suggest the best plan when it is not the current one and saves at least
  ``max(min_saving_abs, min_saving_pct x current cost)`` a month.

Arithmetic is exact: quantities are integer thousandths of a unit and money is integer
ten-thousandths, so a month's cost is an integer in money-units x thousandths and ties are
real ties. Money becomes ``Decimal`` at the edge, rounded half-up to cents only for display.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from enum import StrEnum
from fractions import Fraction
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection

# read_usage, usage_query and iter_customers are also this module's (broadcasts and the fit
# benchmark use them from here; fit_book calls them through this module's names).
from storage.plan_queries import hard_preferences
from storage.plan_queries import iter_customers as iter_customers
from storage.plan_queries import plans as plan_rows
from storage.plan_queries import read_usage as read_usage
from storage.plan_queries import usage_query as usage_query

QTY_SCALE = 1_000  # Usage.quantity_milli
MONEY_SCALE = 10_000  # money in ten-thousandths (overage prices have up to 4 decimals)
_UNIT = MONEY_SCALE * QTY_SCALE  # one currency unit, in the scale monthly costs are summed in
_NO_LIMIT = np.int64(2**62)
_CENT = Decimal("0.01")

I64: TypeAlias = npt.NDArray[np.int64]
Bools: TypeAlias = npt.NDArray[np.bool_]


class Reason(StrEnum):
    """Why a customer gets a suggestion, or not."""

    SUGGEST = "saves enough to suggest"
    NO_USAGE = "no usage history"
    NO_CURRENT_PLAN = "no current plan on file"
    NO_CANDIDATE = "no plan meets the customer's preferences"
    BEST_ALREADY = "the current plan costs least"
    SMALL_SAVING = "saving below the threshold"


@dataclass(frozen=True, slots=True)
class FitConfig:
    """Tunables of the rule."""

    lookback: int = 3
    min_saving_abs: Decimal = Decimal("5.00")
    min_saving_pct: Decimal = Decimal("0.10")


@dataclass(frozen=True, slots=True)
class Needs:
    """A customer's hard preferences."""

    budget: Decimal | None = None
    month_to_month: bool = False
    perks: frozenset[str] = frozenset()


def needs_from(preferences: Mapping[str, Any], roles: Mapping[str, str]) -> Needs:
    """Hard preferences from stored answers; ``roles`` maps a preference key to its role in the fit:
    ``budget`` (a money answer), ``month_to_month`` (true, or the answer "month_to_month"), or
    ``perk`` (a perk name every candidate must have; "none" or false for none)."""
    budget: Decimal | None = None
    month_to_month = False
    perks: set[str] = set()
    for key, role in roles.items():
        value = preferences.get(key)
        if value is None:
            continue
        if role == "budget":
            budget = Decimal(str(value))
        elif role == "month_to_month":
            month_to_month = value is True or value == "month_to_month"
        elif role == "perk" and isinstance(value, str) and value not in ("none", ""):
            perks.add(value)
    return Needs(budget, month_to_month, frozenset(perks))


@dataclass(frozen=True, slots=True)
class PlanTerms:
    """A plan as the fit sees it. ``allowance[m] is None`` means unlimited."""

    id: str
    name: str
    currency: str
    monthly_price: Decimal
    contract_months: int
    available: bool
    perks: frozenset[str]
    allowance: Mapping[str, Decimal | None]
    overage: Mapping[str, Decimal]

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> PlanTerms:
        """From a catalog row (a ``plan`` table row's mapping)."""
        allowance = {
            m: None if str(v).lower() == "unlimited" else Decimal(str(v)) for m, v in row["allowance"].items()
        }
        return cls(
            id=row["id"],
            name=row["name"],
            currency=row["currency"],
            monthly_price=Decimal(row["monthly_price"]),
            contract_months=row["contract_months"],
            available=row["available"],
            perks=frozenset(row["perks"]),
            allowance=allowance,
            overage={m: Decimal(str(v)) for m, v in row["overage"].items()},
        )


def _units(value: Decimal, scale: int) -> int:
    scaled = value * scale
    if scaled != scaled.to_integral_value():
        raise ValueError(f"{value} has more decimals than plan fit keeps (1/{scale})")
    return int(scaled)


@dataclass(frozen=True, slots=True)
class Catalog:
    """The plans as arrays (plan x metric) for the vectorised rule."""

    plans: tuple[PlanTerms, ...]
    metrics: tuple[str, ...]
    price: I64  # (P,) money units
    allowance: I64  # (P, K) thousandths; _NO_LIMIT when unlimited or not priced
    overage: I64  # (P, K) money units per unit; 0 when capped or not priced
    capped: Bools  # (P, K) a finite allowance with no overage price
    available: Bools
    contract_months: I64
    rank: I64  # tie-break order: fewer contract months, lower price, id
    index: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, plans: Iterable[PlanTerms]) -> Catalog:
        """Arrays for ``plans`` (in a stable order)."""
        ordered = tuple(sorted(plans, key=lambda p: p.id))
        metrics = tuple(sorted({m for p in ordered for m in (*p.allowance, *p.overage)}))
        n, k = len(ordered), len(metrics)
        allowance = np.full((n, k), _NO_LIMIT, dtype=np.int64)
        overage = np.zeros((n, k), dtype=np.int64)
        capped = np.zeros((n, k), dtype=np.bool_)
        for i, plan in enumerate(ordered):
            for j, metric in enumerate(metrics):
                limit = plan.allowance.get(metric, Decimal(0) if metric in plan.overage else None)
                price = plan.overage.get(metric)
                if limit is not None:
                    allowance[i, j] = _units(limit, QTY_SCALE)
                    capped[i, j] = price is None
                if price is not None and limit is not None:
                    overage[i, j] = _units(price, MONEY_SCALE)
        by_terms = sorted(
            range(n), key=lambda i: (ordered[i].contract_months, ordered[i].monthly_price, ordered[i].id)
        )
        rank = np.empty(n, dtype=np.int64)
        rank[by_terms] = np.arange(n)
        return cls(
            plans=ordered,
            metrics=metrics,
            price=np.array([_units(p.monthly_price, MONEY_SCALE) for p in ordered], dtype=np.int64),
            allowance=allowance,
            overage=overage,
            capped=capped,
            available=np.array([p.available for p in ordered], dtype=np.bool_),
            contract_months=np.array([p.contract_months for p in ordered], dtype=np.int64),
            rank=rank,
            index={p.id: i for i, p in enumerate(ordered)},
        )

    def get(self, plan_id: str | None) -> PlanTerms | None:
        """The plan with ``plan_id``, if it is in the catalog."""
        i = self.index.get(plan_id) if plan_id else None
        return self.plans[i] if i is not None else None


def load_catalog(conn: Connection) -> Catalog:
    """Every plan in the database, available or not."""
    return Catalog.build(PlanTerms.from_row(row) for row in plan_rows(conn))


@dataclass(frozen=True, slots=True)
class UsageBatch:
    """Usage of several customers over their latest ``lookback`` periods, as one array."""

    customer_ids: I64  # (B,)
    months: I64  # (B,) how many periods each customer has (at most lookback); 0 = no usage
    quantity: I64  # (B, lookback, K) thousandths, metrics in catalog order, newest period first

    def mean(self, b: int, metrics: Sequence[str]) -> dict[str, Decimal]:
        """Customer ``b``'s mean monthly usage per metric, in units."""
        n = int(self.months[b])
        if n == 0:
            return {}
        totals = self.quantity[b, :n, :].sum(axis=0)
        return {m: Decimal(int(t)) / QTY_SCALE / n for m, t in zip(metrics, totals, strict=True)}

    def repeat(self, times: int) -> UsageBatch:
        """This batch ``times`` over (to price one customer under several hypotheses at once)."""
        return UsageBatch(
            np.repeat(self.customer_ids, times),
            np.repeat(self.months, times),
            np.repeat(self.quantity, times, axis=0),
        )


def usage_batch(
    customer_ids: Sequence[int],
    rows: Iterable[Sequence[Any]],
    metrics: Sequence[str],
    lookback: int,
) -> UsageBatch:
    """Arrange (customer_id, period, metric, quantity_milli) rows, in any order, into a batch.

    ``metric`` is a name, or its index in ``metrics`` (-1 for others) as :func:`usage_query`
    selects it. Rows of customers not in ``customer_ids`` are ignored, and so are metrics no plan
    prices (they still count towards which periods are the latest).
    """
    ids = np.asarray(customer_ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    quantity = np.zeros((len(ids), lookback, len(metrics)), dtype=np.int64)
    months = np.zeros(len(ids), dtype=np.int64)
    table = list(rows)
    if not table or not len(ids):
        return UsageBatch(ids, months, quantity)
    cid = np.fromiter((r[0] for r in table), dtype=np.int64, count=len(table))
    period = np.fromiter((r[1] for r in table), dtype=np.int64, count=len(table))
    qty = np.fromiter((r[3] for r in table), dtype=np.int64, count=len(table))
    if isinstance(table[0][2], str):
        names, name_index = np.unique(np.array([r[2] for r in table], dtype=object), return_inverse=True)
        lookup = {m: k for k, m in enumerate(metrics)}
        metric = np.array([lookup.get(str(n), -1) for n in names], dtype=np.int64)[name_index]
    else:  # already coded by the query (see usage_query): the index in ``metrics``, or -1
        metric = np.fromiter((r[2] for r in table), dtype=np.int64, count=len(table))
    # Position of each row's customer in the batch (rows of other customers drop out).
    sorted_ids = ids[order]
    slot = np.minimum(np.searchsorted(sorted_ids, cid), len(ids) - 1)
    known = sorted_ids[slot] == cid
    pos, period, metric, qty = order[slot[known]], period[known], metric[known], qty[known]
    # Rank each row's period among its customer's distinct periods, newest first.
    by = np.lexsort((-period, pos))
    pos, period, metric, qty = pos[by], period[by], metric[by], qty[by]
    new_customer = np.r_[True, pos[1:] != pos[:-1]]
    new_period = new_customer | np.r_[True, period[1:] != period[:-1]]
    run = np.cumsum(new_period) - 1
    first_run = np.maximum.accumulate(np.where(new_customer, run, 0))
    rank = run - first_run
    keep = (rank < lookback) & (metric >= 0)
    quantity[pos[keep], rank[keep], metric[keep]] = qty[keep]
    np.maximum.at(months, pos, np.minimum(rank + 1, lookback))
    return UsageBatch(ids, months, quantity)


@dataclass(frozen=True, slots=True)
class Fit:
    """The rule's answer for one customer. Monthly amounts are exact ``Decimal`` means."""

    customer_id: int
    current_plan: str | None
    current_cost: Decimal | None
    best_plan: str | None
    best_cost: Decimal | None
    saving: Decimal | None
    suggest: bool
    reason: Reason
    months: int
    usage: Mapping[str, Decimal]  # mean monthly usage per metric

    def as_row(self, external_id: str | None = None) -> dict[str, Any]:
        """The fit as ``rapport plans fit`` prints it: money as strings with two decimals."""
        return {
            "external_id": external_id,
            "current_plan": self.current_plan,
            "current_monthly_cost": cents(self.current_cost),
            "best_plan": self.best_plan,
            "best_monthly_cost": cents(self.best_cost),
            "monthly_saving": cents(self.saving),
            "suggest": self.suggest,
            "reason": self.reason.value,
        }


def cents(amount: Decimal | None) -> str | None:
    """``amount`` rounded half-up to cents, as a string ("45.00")."""
    return None if amount is None else str(amount.quantize(_CENT, rounding=ROUND_HALF_UP))


def fit_batch(
    catalog: Catalog,
    batch: UsageBatch,
    current: Sequence[str | None],
    needs: Sequence[Needs],
    config: FitConfig = FitConfig(),
    *,
    with_usage: bool = True,
) -> list[Fit]:
    """The fit for every customer in ``batch`` (``current`` and ``needs`` in the same order).

    ``with_usage=False`` leaves ``Fit.usage`` empty (a bulk report has no use for it).
    """
    result = _fit_arrays(catalog, batch, current, needs, config)
    return [result.fit(b, with_usage=with_usage) for b in range(len(batch.customer_ids))]


@dataclass(frozen=True, slots=True)
class _Result:
    catalog: Catalog
    batch: UsageBatch
    current: I64  # (B,) plan index or -1
    current_total: I64  # (B,) summed over the customer's months, money units x thousandths
    best: I64  # (B,) plan index or -1
    best_total: I64
    suggest: Bools
    reason: list[Reason]

    def fit(self, b: int, *, with_usage: bool = True) -> Fit:
        n = int(self.batch.months[b])
        cur, best = int(self.current[b]), int(self.best[b])
        plans = self.catalog.plans
        cur_cost = _money(int(self.current_total[b]), n) if cur >= 0 and n else None
        best_cost = _money(int(self.best_total[b]), n) if best >= 0 and n else None
        saving = cur_cost - best_cost if cur_cost is not None and best_cost is not None else None
        return Fit(
            customer_id=int(self.batch.customer_ids[b]),
            current_plan=plans[cur].id if cur >= 0 else None,
            current_cost=cur_cost,
            best_plan=plans[best].id if best >= 0 else None,
            best_cost=best_cost,
            saving=saving,
            suggest=bool(self.suggest[b]),
            reason=self.reason[b],
            months=n,
            usage=self.batch.mean(b, self.catalog.metrics) if with_usage else {},
        )


def _money(total: int, months: int) -> Decimal:
    return Decimal(total) / (_UNIT * months)


def _fit_arrays(
    catalog: Catalog,
    batch: UsageBatch,
    current: Sequence[str | None],
    needs: Sequence[Needs],
    config: FitConfig,
) -> _Result:
    quantity, months = batch.quantity, batch.months
    size, n_plans = len(months), len(catalog.plans)
    _check_range(catalog, quantity)
    # total[b, p]: plan p's cost summed over customer b's months (money units x thousandths).
    total = np.empty((size, n_plans), dtype=np.int64)
    feasible = np.empty((size, n_plans), dtype=np.bool_)
    for p in range(n_plans):
        excess = np.maximum(quantity - catalog.allowance[p], 0)  # (B, L, K)
        total[:, p] = months * catalog.price[p] * QTY_SCALE + (excess * catalog.overage[p]).sum(axis=(1, 2))
        feasible[:, p] = ~((excess > 0) & catalog.capped[p]).any(axis=(1, 2))
    # Over a capped allowance the current plan just costs its price, so its total stands as is.
    cur = np.array([catalog.index.get(c, -1) if c else -1 for c in current], dtype=np.int64)
    rows = np.arange(size)
    current_total = (
        np.where(cur >= 0, total[rows, np.maximum(cur, 0)], 0) if n_plans else np.zeros(size, dtype=np.int64)
    )

    candidate = feasible & catalog.available
    m2m = np.array([n.month_to_month for n in needs], dtype=np.bool_)
    candidate &= ~(m2m[:, None] & (catalog.contract_months > 0))
    for b, need in enumerate(needs):
        if need.perks:
            candidate[b] &= np.array([need.perks <= plan.perks for plan in catalog.plans], dtype=np.bool_)
        if need.budget is not None:
            limit = _units(need.budget, MONEY_SCALE) * QTY_SCALE * int(months[b])
            candidate[b] &= total[b] <= limit
    candidate &= (months > 0)[:, None]

    masked = np.where(candidate, total, np.iinfo(np.int64).max)
    best_total = masked.min(axis=1) if n_plans else np.zeros(size, dtype=np.int64)
    ties = candidate & (masked == best_total[:, None])
    best = np.where(ties, catalog.rank, n_plans).argmin(axis=1) if n_plans else np.full(size, -1)
    best = np.where(ties.any(axis=1), best, -1).astype(np.int64)

    saving = current_total - best_total
    pct = Fraction(config.min_saving_pct)
    enough = (saving >= _units(config.min_saving_abs, MONEY_SCALE) * QTY_SCALE * months) & (
        saving * pct.denominator >= pct.numerator * current_total
    )
    suggest = (best >= 0) & (cur >= 0) & (best != cur) & enough

    reason = []
    for b in range(size):
        if months[b] == 0:
            reason.append(Reason.NO_USAGE)
        elif cur[b] < 0:
            reason.append(Reason.NO_CURRENT_PLAN)
        elif best[b] < 0:
            reason.append(Reason.NO_CANDIDATE)
        elif best[b] == cur[b] or saving[b] <= 0:
            reason.append(Reason.BEST_ALREADY)
        elif not suggest[b]:
            reason.append(Reason.SMALL_SAVING)
        else:
            reason.append(Reason.SUGGEST)
    return _Result(catalog, batch, cur, current_total, best, best_total, suggest, reason)


def _check_range(catalog: Catalog, quantity: I64) -> None:
    # Keep every product and sum inside int64 (about 9.2e18), with room to spare.
    biggest = int(quantity.max(initial=0)) * int(catalog.overage.max(initial=0)) * max(quantity[0].size, 1)
    if biggest >= 2**61:
        raise ValueError(
            "usage or overage prices too large for exact plan fit; check the imported quantities"
        )


def fit_book(
    conn: Connection,
    catalog: Catalog,
    roles: Mapping[str, str],
    config: FitConfig | None = None,
    *,
    external_id: str | None = None,
    batch_size: int = 20_000,
    with_usage: bool = False,
) -> Iterator[tuple[str | None, Fit]]:
    """(external id, fit) for every customer (or the one with ``external_id``), in id order.

    Reads customers, their hard preferences (the preference keys in ``roles``) and usage a batch
    of ids at a time, so memory stays flat however large the book is. ``Fit.usage`` (the mean
    usage per metric) is filled in only ``with_usage``.
    """
    config = config or FitConfig()
    usage_of = usage_query(catalog.metrics)
    for customers in iter_customers(conn, batch_size=batch_size, external_id=external_id):
        lo, hi = customers[0][0], customers[-1][0]
        answers: dict[int, dict[str, Any]] = {}
        if roles:
            for cid, key, value in hard_preferences(conn, lo=lo, hi=hi, keys=list(roles)):
                answers.setdefault(cid, {})[key] = value
        ids = [c[0] for c in customers]
        rows = read_usage(conn, usage_of, lo, hi)
        batch = usage_batch(ids, rows, catalog.metrics, config.lookback)
        needs = [needs_from(answers.get(cid, {}), roles) for cid in ids]
        fits = fit_batch(catalog, batch, [c[2] for c in customers], needs, config, with_usage=with_usage)
        yield from zip((c[1] for c in customers), fits, strict=True)
