"""The plan-fit rule on hand-computed cases, and a property test against a plain Decimal oracle."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plans.fit import Catalog, Fit, FitConfig, Needs, PlanTerms, Reason, cents, fit_batch, usage_batch

D = Decimal


def plan(
    pid: str,
    price: str,
    *,
    data: str | None = "unlimited",
    over: str | None = None,
    contract: int = 0,
    available: bool = True,
    perks: tuple[str, ...] = (),
    extra: dict[str, str | None] | None = None,
) -> PlanTerms:
    allowance: dict[str, Decimal | None] = {"data_gb": None if data == "unlimited" else D(data or 0)}
    allowance.update({k: None if v is None else D(v) for k, v in (extra or {}).items()})
    return PlanTerms(
        id=pid,
        name=pid.title(),
        currency="USD",
        monthly_price=D(price),
        contract_months=contract,
        available=available,
        perks=frozenset(perks),
        allowance=allowance,
        overage={"data_gb": D(over)} if over else {},
    )


BOOK = Catalog.build(
    [
        plan("basic-5", "25.00", data="5", over="10.00", perks=("hotspot",)),
        plan("plus-20", "45.00", data="20", over="5.00", perks=("hotspot",)),
        plan("unlimited", "60.00", perks=("hotspot", "eu_roaming")),
        plan("capped-2", "15.00", data="2"),
        plan("contract-10", "30.00", data="10", over="8.00", contract=24),
        plan("retired-15", "35.00", data="15", over="5.00", available=False),
    ]
)


def fit(
    data_by_month: list[str],
    current: str | None,
    needs: Needs | None = None,
    catalog: Catalog = BOOK,
    config: FitConfig | None = None,
) -> Fit:
    needs, config = needs or Needs(), config or FitConfig()
    rows = [(1, 202600 + i + 1, "data_gb", int(D(q) * 1000)) for i, q in enumerate(data_by_month)]
    batch = usage_batch([1], rows, catalog.metrics, config.lookback)
    return fit_batch(catalog, batch, [current], [needs], config)[0]


def test_too_big_a_plan_suggests_the_small_one_with_the_numbers() -> None:
    result = fit(["2.0", "2.1", "2.2"], "plus-20")
    assert (result.best_plan, result.best_cost, result.current_cost) == ("basic-5", D(25), D(45))
    assert result.saving == D(20)
    assert result.suggest and result.reason is Reason.SUGGEST
    assert result.usage["data_gb"] == D("2.1")


def test_overage_is_priced_per_unit_above_the_allowance() -> None:
    result = fit(["8", "9", "10"], "basic-5")
    assert result.current_cost == D(65)  # 25 + (30 + 40 + 50) / 3
    assert (result.best_plan, result.best_cost) == ("contract-10", D(30))


def test_month_to_month_only_rules_out_contracts() -> None:
    result = fit(["8", "9", "10"], "basic-5", Needs(month_to_month=True))
    assert (result.best_plan, result.best_cost) == ("plus-20", D(45))


def test_a_capped_allowance_makes_a_plan_infeasible_but_not_the_current_one() -> None:
    over = fit(["1.5", "2.5", "1.0"], "plus-20")
    assert over.best_plan == "basic-5"  # capped-2 ($15) is infeasible: one month over its cap
    current = fit(["3", "3", "3"], "capped-2")
    assert current.current_cost == D(15)  # capped usage costs just the price
    assert current.reason is Reason.BEST_ALREADY and not current.suggest


def test_unlimited_allowance_never_costs_more_than_the_price() -> None:
    result = fit(["500", "900", "700"], "unlimited")
    assert result.current_cost == D(60)
    assert result.best_plan == "unlimited" and result.reason is Reason.BEST_ALREADY


def test_budget_and_perks_are_hard_preferences() -> None:
    assert (
        fit(["8", "9", "10"], "basic-5", Needs(budget=D(29), month_to_month=True)).reason
        is Reason.NO_CANDIDATE
    )
    roaming = fit(["1", "1", "1"], "plus-20", Needs(perks=frozenset({"eu_roaming"})))
    assert roaming.best_plan == "unlimited" and not roaming.suggest  # dearer than the current plan
    assert fit(["8", "9", "10"], "basic-5", Needs(budget=D(45), month_to_month=True)).best_plan == "plus-20"


def test_a_retired_current_plan_is_priced_but_never_offered() -> None:
    result = fit(["14", "14", "14"], "retired-15")
    assert result.current_cost == D(35)
    # Offered plans: plus-20 costs 45, contract-10 30 + 4 x 8 = 62; the retired plan is not offered.
    assert (result.best_plan, result.best_cost) == ("plus-20", D(45))
    assert not result.suggest and result.reason is Reason.BEST_ALREADY
    cheaper = fit(["3", "3", "3"], "retired-15")
    assert cheaper.best_plan == "basic-5" and cheaper.suggest


def test_ties_go_to_fewer_contract_months_then_lower_price_then_id() -> None:
    book = Catalog.build(
        [
            plan("b-contract", "20.00", contract=12),
            plan("c-flat", "20.00"),
            plan("a-flat", "20.00"),
            plan("d-cheap-with-overage", "15.00", data="1", over="5.00"),
        ]
    )
    # d costs 15 + 5 = 20 too: all four tie at 20; no contract first, then the lower price.
    assert fit(["2", "2", "2"], "b-contract", catalog=book).best_plan == "d-cheap-with-overage"
    # Without overage d costs 15 and wins outright; with 3 GB it costs 25 and a-flat wins on id.
    assert fit(["3", "3", "3"], "b-contract", catalog=book).best_plan == "a-flat"


def test_a_single_month_of_history_is_enough() -> None:
    result = fit(["2.5"], "plus-20")
    assert result.months == 1 and result.best_plan == "basic-5" and result.suggest


def test_only_the_latest_lookback_months_count() -> None:
    # Months 1-3 are heavy, 4-6 light: with lookback 3 only the light ones count.
    result = fit(["30", "30", "30", "3", "3", "3"], "plus-20")
    assert result.months == 3 and result.best_plan == "basic-5"
    assert (
        fit(["30", "30", "30", "3", "3", "3"], "plus-20", config=FitConfig(lookback=6)).best_plan != "basic-5"
    )


def test_saving_thresholds_absolute_and_percentage() -> None:
    book = Catalog.build([plan("now", "100.00"), plan("a-bit-less", "92.00"), plan("much-less", "80.00")])
    assert fit(["1"], "now", catalog=book).suggest  # saves 20 >= max(5, 10)
    near = Catalog.build([plan("now", "100.00"), plan("a-bit-less", "92.00")])
    result = fit(["1"], "now", catalog=near)
    assert result.saving == D(8) and not result.suggest and result.reason is Reason.SMALL_SAVING
    small = Catalog.build([plan("now", "30.00"), plan("cheaper", "25.01")])
    assert not fit(["1"], "now", catalog=small).suggest  # 4.99 < 5.00
    assert fit(["1"], "now", catalog=small, config=FitConfig(min_saving_abs=D("4.99"))).suggest


def test_no_usage_and_no_current_plan_give_reasons() -> None:
    assert fit([], "plus-20").reason is Reason.NO_USAGE
    assert fit(["2"], None).reason is Reason.NO_CURRENT_PLAN
    assert fit(["2"], "no-such-plan").reason is Reason.NO_CURRENT_PLAN


def test_money_is_exact_and_rounded_half_up_only_for_display() -> None:
    book = Catalog.build([plan("metered", "0.00", data="0", over="0.0015"), plan("flat", "100.00")])
    result = fit(["1.001", "1.001", "1.002"], "flat", catalog=book)
    # (1.001 + 1.001 + 1.002) x 0.0015 / 3 = 0.004506 / 3 = 0.001502, no float error
    assert result.best_cost == D("0.001502")
    assert cents(D("0.005")) == "0.01" and cents(D("2.675")) == "2.68"
    row = result.as_row("C1")
    assert row["best_monthly_cost"] == "0.00" and row["current_monthly_cost"] == "100.00"


def test_metrics_no_plan_prices_are_ignored() -> None:
    rows = [(1, 202601, "data_gb", 3000), (1, 202601, "kwh", 999_000)]
    batch = usage_batch([1], rows, BOOK.metrics, 3)
    assert fit_batch(BOOK, batch, ["plus-20"], [Needs()])[0].best_plan == "basic-5"


def test_metric_named_only_in_overage_has_no_allowance() -> None:
    roaming = PlanTerms("r", "R", "USD", D(10), 0, True, frozenset(), {}, {"roaming_gb": D(3)})
    book = Catalog.build([roaming])
    batch = usage_batch([1], [(1, 202601, "roaming_gb", 2000)], book.metrics, 3)
    assert fit_batch(book, batch, ["r"], [Needs()])[0].current_cost == D(16)


# -- property: the choice is never beaten by another candidate, never breaks a hard preference ----

PRICES = st.integers(0, 10_000).map(lambda c: D(c) / 100)
QTY = st.integers(0, 40_000)  # thousandths of a GB


@st.composite
def catalogs(draw: st.DrawFn) -> list[PlanTerms]:
    count = draw(st.integers(1, 6))
    plans = []
    for i in range(count):
        limit = draw(st.one_of(st.none(), st.integers(0, 30)))
        overage = draw(st.one_of(st.none(), st.integers(1, 2000).map(lambda c: D(c) / 100)))
        plans.append(
            PlanTerms(
                id=f"p{i}",
                name=f"P{i}",
                currency="USD",
                monthly_price=draw(PRICES),
                contract_months=draw(st.sampled_from([0, 0, 12, 24])),
                available=draw(st.booleans()),
                perks=frozenset(draw(st.sets(st.sampled_from(["hotspot", "eu_roaming"])))),
                allowance={"data_gb": None if limit is None else D(limit)},
                overage={"data_gb": overage} if overage is not None and limit is not None else {},
            )
        )
    return plans


def oracle_cost(p: PlanTerms, months: list[int], *, current: bool) -> Decimal | None:
    """Plain Decimal arithmetic, month by month (None = infeasible)."""
    total = D(0)
    for milli in months:
        used = D(milli) / 1000
        limit = p.allowance["data_gb"]
        cost = p.monthly_price
        if limit is not None and used > limit:
            price = p.overage.get("data_gb")
            if price is None:
                if not current:
                    return None
            else:
                cost += (used - limit) * price
        total += cost
    return total / len(months)


@settings(max_examples=300, deadline=None)
@given(
    plans=catalogs(),
    months=st.lists(QTY, min_size=1, max_size=3),
    budget=st.one_of(st.none(), PRICES),
    m2m=st.booleans(),
    perk=st.sampled_from([None, "hotspot", "eu_roaming"]),
)
def test_choice_is_the_cheapest_candidate_and_respects_hard_preferences(
    plans: list[PlanTerms], months: list[int], budget: Decimal | None, m2m: bool, perk: str | None
) -> None:
    catalog = Catalog.build(plans)
    needs = Needs(budget=budget, month_to_month=m2m, perks=frozenset([perk]) if perk else frozenset())
    rows = [(7, 202601 + i, "data_gb", q) for i, q in enumerate(months)]
    result = fit_batch(catalog, usage_batch([7], rows, catalog.metrics, 3), [plans[0].id], [needs])[0]

    def allowed(p: PlanTerms, cost: Decimal | None) -> bool:
        return (
            cost is not None
            and p.available
            and not (m2m and p.contract_months > 0)
            and needs.perks <= p.perks
            and (budget is None or cost <= budget)
        )

    costs = {p.id: oracle_cost(p, months, current=False) for p in plans}
    candidates = {p.id: costs[p.id] for p in plans if allowed(p, costs[p.id])}
    assert result.current_cost == oracle_cost(plans[0], months, current=True)
    if not candidates:
        assert result.best_plan is None and result.reason is Reason.NO_CANDIDATE
        return
    assert result.best_plan in candidates
    assert result.best_cost is not None
    assert result.best_cost == candidates[result.best_plan]
    assert all(result.best_cost <= cost for cost in candidates.values() if cost is not None)
    threshold = max(D("5.00"), D("0.10") * (result.current_cost or D(0)))
    saving = (result.current_cost or D(0)) - result.best_cost
    assert result.suggest == (result.best_plan != plans[0].id and saving >= threshold)


@pytest.mark.parametrize("lookback", [1, 3, 6])
def test_batches_give_the_same_answer_as_one_customer_at_a_time(lookback: int) -> None:
    rows = [(c, 202601 + m, "data_gb", (c * 997 + m * 131) % 25_000) for c in range(1, 40) for m in range(6)]
    config = FitConfig(lookback=lookback)
    ids = list(range(1, 40))
    current = ["plus-20" if c % 2 else "basic-5" for c in ids]
    needs = [Needs(month_to_month=c % 3 == 0) for c in ids]
    together = fit_batch(BOOK, usage_batch(ids, rows, BOOK.metrics, lookback), current, needs, config)
    for c, expected in zip(ids, together, strict=True):
        mine = [r for r in rows if r[0] == c]
        alone = fit_batch(
            BOOK, usage_batch([c], mine, BOOK.metrics, lookback), [current[c - 1]], [needs[c - 1]], config
        )
        assert alone[0] == expected
