"""Answers to a customer's questions about their own account, from the data the bot holds.

The bot holds the plan catalog, the customer's current plan and monthly usage. From these it
answers: the plan (name, price, allowances), usage (latest month, the month before, the average,
against the allowance), the bill (plan price plus overage by metric, and why it was higher than the
month before), which plan fits (the advisor) and the contract. What it does not hold (taxes,
one-off charges, payments, the contract's end date) it says plainly it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy import Connection

from dialogs.advisor import Advisor, describe, money
from plans.fit import QTY_SCALE, PlanTerms

NO_PLAN = "I don't have your current plan on file, so I can't answer that; a person from our team can."
NO_USAGE = "I can't see any usage for you yet."
NOT_KNOWN = (
    "I can't see taxes, one-off charges or payments, so if something else is on your bill "
    "a person can check it."
)


@dataclass(frozen=True, slots=True)
class MonthBill:
    """The plan price plus overage of one month (what the bot can work out of a bill)."""

    total: Decimal
    overage: dict[str, tuple[Decimal, Decimal, Decimal]]  # metric -> (used, allowance, cost)


def bill_for(plan: PlanTerms, used: dict[str, Decimal]) -> MonthBill:
    """What ``plan`` costs for a month's usage: its price and overage above the allowances."""
    total, overage = plan.monthly_price, {}
    for metric, amount in used.items():
        limit = plan.allowance.get(metric)
        price = plan.overage.get(metric)
        if limit is None or price is None or amount <= limit:
            continue
        cost = ((amount - limit) * price).quantize(Decimal("0.01"))
        overage[metric] = (amount, limit, cost)
        total += cost
    return MonthBill(total, overage)


def _allowances(plan: PlanTerms) -> str:
    parts = [
        f"unlimited {describe(m, Decimal(0)).split(' ', 1)[1]}" if v is None else describe(m, v)
        for m, v in sorted(plan.allowance.items(), key=lambda kv: kv[0] != "data_gb")
    ]
    return ", ".join(parts) if parts else "no set allowances"


class AccountDesk:
    """Answers account questions for the customer of a turn."""

    def __init__(self, advisor: Advisor) -> None:
        self.advisor = advisor

    def answer(self, conn: Connection, *, customer_id: int, current_plan: str | None, topic: str) -> str:
        """The answer to an account question about ``topic`` (plan, usage, bill or contract)."""
        catalog = self.advisor.catalog(conn)
        plan = catalog.get(current_plan) if current_plan else None
        if plan is None:
            return NO_PLAN
        if topic == "contract":
            if plan.contract_months:
                return (
                    f"{plan.name} is a {plan.contract_months}-month contract. I don't have the date your "
                    "contract started, so I can't tell when it ends; a person from our team can."
                )
            return f"{plan.name} is month-to-month: there's no contract, you can change or leave any month."
        price = money(plan.monthly_price, plan.currency)
        about_plan = f"You're on {plan.name}: {price} a month, with {_allowances(plan)}."
        if topic == "plan":
            return about_plan
        batch = self.advisor.usage(conn, customer_id, catalog)
        months = int(batch.months[0])
        if months == 0:
            return f"{about_plan} {NO_USAGE}"
        per_month = [
            {
                m: Decimal(int(q)) / QTY_SCALE
                for m, q in zip(catalog.metrics, batch.quantity[0, i], strict=True)
            }
            for i in range(months)
        ]
        if topic == "bill":
            return self._bill(plan, per_month)
        return self._usage(plan, per_month, batch.mean(0, catalog.metrics))

    def _usage(self, plan: PlanTerms, per_month: list[dict[str, Decimal]], mean: dict[str, Decimal]) -> str:
        latest = per_month[0]
        metrics = [m for m in sorted(latest, key=lambda m: m != "data_gb") if latest[m] > 0 or m == "data_gb"]
        parts = []
        for metric in metrics[:2]:
            limit = plan.allowance.get(metric)
            against = "" if limit is None else f" of your {describe(metric, limit)}"
            part = f"{describe(metric, latest[metric])}{against}"
            if len(per_month) > 1:
                part += f" (the month before: {describe(metric, per_month[1][metric])}"
                part += f", average {describe(metric, mean.get(metric, Decimal(0)))})"
            parts.append(part)
        return "In your latest month on record you used " + " and ".join(parts) + "."

    def _bill(self, plan: PlanTerms, per_month: list[dict[str, Decimal]]) -> str:
        cur = plan.currency
        latest = bill_for(plan, per_month[0])
        text = f"Your latest month on {plan.name} comes to {money(latest.total, cur)}"
        if latest.overage:
            extras = [
                f"{describe(m, used - limit)} over your {describe(m, limit)} cost {money(cost, cur)}"
                for m, (used, limit, cost) in latest.overage.items()
            ]
            text += f": the plan's {money(plan.monthly_price, cur)} plus " + " and ".join(extras)
        else:
            text += ", the plan price: your usage stayed within the allowance"
        text += "."
        if len(per_month) > 1:
            before = bill_for(plan, per_month[1])
            if latest.total > before.total:
                text += f" That's {money(latest.total - before.total, cur)} more than the month before."
            elif latest.total < before.total:
                text += f" That's {money(before.total - latest.total, cur)} less than the month before."
        return f"{text} {NOT_KNOWN}"
