"""The dialogue's view of plan fit: suggestions with their numbers, declines, value of information,
and answers derived from usage."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from sqlalchemy import Connection

from dialogs.bank import Kind, Question, QuestionBank
from plans.fit import (
    QTY_SCALE,
    Catalog,
    Fit,
    FitConfig,
    PlanTerms,
    UsageBatch,
    cents,
    fit_batch,
    load_catalog,
    needs_from,
    usage_batch,
)
from storage import advice_queries

_SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "AUD": "A$", "CAD": "C$"}
_PRIORS_TTL_S = 600.0


def money(amount: Decimal, currency: str) -> str:
    """ "$25.00" (rounded half-up to cents)."""
    symbol = _SYMBOLS.get(currency)
    text = f"{amount.quantize(Decimal('0.01'), rounding=ROUND_HALF_UP):,}"
    return f"{symbol}{text}" if symbol else f"{text} {currency}"


def _amount(value: Decimal) -> str:
    """1 decimal below 10, none above: "2.1", "250"."""
    places = Decimal("0.1") if value < 10 else Decimal(1)
    text = str(value.quantize(places, rounding=ROUND_HALF_UP))
    return text[:-2] if text.endswith(".0") else text


def describe(metric: str, amount: Decimal) -> str:
    """A quantity of a metric as a person says it: "2.1 GB", "250 minutes", "40 texts"."""
    if metric.endswith("_gb"):
        return f"{_amount(amount)} GB" + (
            "" if metric == "data_gb" else f" of {metric[:-3].replace('_', ' ')}"
        )
    if metric.endswith("_mb"):
        return f"{_amount(amount)} MB"
    if metric == "sms":
        return f"{_amount(amount)} texts"
    return f"{_amount(amount)} {metric.replace('_', ' ')}"


@dataclass(frozen=True, slots=True)
class AdviceConfig:
    """Tunables of suggestions in the dialogue."""

    fit: FitConfig = field(default_factory=FitConfig)
    decline_for: timedelta = timedelta(days=90)
    decline_usage_change: Decimal = Decimal("0.25")


@dataclass(frozen=True, slots=True)
class Advice:
    """A fit and whether it may be offered to this customer now."""

    fit: Fit
    catalog: Catalog
    offer: bool
    declined_on: datetime | None = None

    @property
    def best(self) -> PlanTerms | None:
        return self.catalog.get(self.fit.best_plan)

    @property
    def current(self) -> PlanTerms | None:
        return self.catalog.get(self.fit.current_plan)


def decline_holds(then: Mapping[str, Any], now: Mapping[str, Decimal], limit: Decimal) -> bool:
    """Whether a "no" given when usage was ``then`` (metric -> monthly mean) still speaks for
    usage ``now``: no metric moved by more than ``limit`` (a share) since."""
    for metric in set(then) | set(now):
        before, after = Decimal(str(then.get(metric, 0))), now.get(metric, Decimal(0))
        if abs(after - before) > limit * max(before, Decimal("0.001")):
            return False
    return True


class Advisor:
    """Plan fit for the customer in a turn, on the turn's connection."""

    def __init__(self, bank: QuestionBank, config: AdviceConfig | None = None) -> None:
        self.bank = bank
        self.config = config or AdviceConfig()
        self.roles = bank.fit_roles()
        self._catalog: tuple[tuple[Any, ...], Catalog] | None = None
        self._priors: dict[str, tuple[float, list[tuple[Any, int]]]] = {}

    # -- data ---------------------------------------------------------------------------------

    def catalog(self, conn: Connection) -> Catalog:
        """The plan catalog, reloaded when the plan table changed."""
        version = advice_queries.catalog_version(conn)
        if self._catalog is None or self._catalog[0] != version:
            self._catalog = (version, load_catalog(conn))
        return self._catalog[1]

    def usage(self, conn: Connection, customer_id: int, catalog: Catalog) -> UsageBatch:
        """The customer's latest usage periods as a batch of one."""
        rows = advice_queries.customer_usage(conn, customer_id=customer_id)
        return usage_batch([customer_id], rows, catalog.metrics, self.config.fit.lookback)

    def priors(self, conn: Connection, key: str) -> list[tuple[Any, int]]:
        """How often each answer to ``key`` was given, over all customers (cached a while)."""
        cached = self._priors.get(key)
        if cached is not None and time.monotonic() - cached[0] < _PRIORS_TTL_S:
            return cached[1]
        rows = advice_queries.answer_counts(conn, key=key)
        counts = [(json.loads(value), n) for value, n in rows if value is not None]
        self._priors[key] = (time.monotonic(), counts)
        return counts

    # -- advice -------------------------------------------------------------------------------

    def advise(
        self,
        conn: Connection,
        *,
        customer_id: int,
        current_plan: str | None,
        preferences: Mapping[str, Any],
        now: datetime,
    ) -> Advice:
        """The fit for this customer and whether its plan may be offered (not declined lately)."""
        catalog = self.catalog(conn)
        batch = self.usage(conn, customer_id, catalog)
        needs = needs_from(preferences, self.roles)
        fit = fit_batch(catalog, batch, [current_plan], [needs], self.config.fit)[0]
        if not fit.suggest or fit.best_plan is None:
            return Advice(fit, catalog, offer=False)
        declined = self._declined(conn, customer_id, fit.best_plan, fit.usage, now)
        return Advice(fit, catalog, offer=declined is None, declined_on=declined)

    def _declined(
        self, conn: Connection, customer_id: int, plan_id: str, usage: Mapping[str, Decimal], now: datetime
    ) -> datetime | None:
        """When the customer declined ``plan_id`` lately, unless their usage changed a lot since."""
        row = advice_queries.latest_decline(
            conn, customer_id=customer_id, plan_id=plan_id, since=now - self.config.decline_for
        )
        if row is None:
            return None
        declined_at, then = row
        if not decline_holds(then, usage, self.config.decline_usage_change):
            return None
        return declined_at if isinstance(declined_at, datetime) else None

    def record_switch(
        self, conn: Connection, advice: Advice, *, customer_id: int, message_id: int, now: datetime
    ) -> None:
        """The customer said YES: a switch request for billing."""
        assert advice.fit.best_plan is not None and advice.fit.saving is not None
        advice_queries.add_switch_request(
            conn,
            customer_id=customer_id,
            from_plan_id=advice.fit.current_plan,
            to_plan_id=advice.fit.best_plan,
            monthly_saving=advice.fit.saving.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP),
            message_id=message_id,
            now=now,
        )

    def record_decline(
        self, conn: Connection, advice: Advice, *, customer_id: int, message_id: int, now: datetime
    ) -> None:
        """The customer said NO: remember it with the usage it was offered on."""
        assert advice.fit.best_plan is not None
        advice_queries.add_plan_decline(
            conn,
            customer_id=customer_id,
            plan_id=advice.fit.best_plan,
            usage={m: float(v) for m, v in advice.fit.usage.items()},
            message_id=message_id,
            now=now,
        )

    # -- what to ask --------------------------------------------------------------------------

    def question_order(
        self,
        conn: Connection,
        *,
        customer_id: int,
        current_plan: str | None,
        preferences: Mapping[str, Any],
        open_questions: Sequence[Question],
    ) -> tuple[list[Question], set[str]] | None:
        """Open plan questions by value of information, then the others; and the plan questions
        no answer could change the suggestion for (not worth asking). None: no fit possible."""
        plan_questions = [q for q in open_questions if q.key in self.roles]
        if not plan_questions:
            return None
        catalog = self.catalog(conn)
        batch = self.usage(conn, customer_id, catalog)
        if int(batch.months[0]) == 0 or catalog.get(current_plan) is None:
            return None
        base = needs_from(preferences, self.roles)
        scored: list[tuple[float, int, Question]] = []
        useless: set[str] = set()
        best_now = fit_batch(catalog, batch, [current_plan], [base], self.config.fit)[0].best_plan
        for order, question in enumerate(plan_questions):
            answers = self._possible_answers(conn, question, catalog)
            if not answers:
                scored.append((1.0, order, question))
                continue
            hypotheses = [needs_from({**preferences, question.key: a}, self.roles) for a, _ in answers]
            repeated = batch.repeat(len(answers))
            fits = fit_batch(catalog, repeated, [current_plan] * len(answers), hypotheses, self.config.fit)
            total = sum(w for _, w in answers)
            value = sum(w for (_, w), f in zip(answers, fits, strict=True) if f.best_plan != best_now) / total
            if value > 0:
                scored.append((value, order, question))
            else:
                useless.add(question.key)
        scored.sort(key=lambda s: (-s[0], s[1]))
        ranked = [q for _, _, q in scored]
        return ranked + [q for q in open_questions if q.key not in self.roles], useless

    def _possible_answers(
        self, conn: Connection, question: Question, catalog: Catalog
    ) -> list[tuple[Any, int]]:
        """Answers weighted by how often customers gave them; without data, every option once
        (for a budget: each plan's price)."""
        seen = self.priors(conn, question.key)
        if seen:
            return seen
        if question.kind is Kind.MONEY:
            return [(cents(p.monthly_price), 1) for p in catalog.plans if p.available]
        return [(o.value, 1) for o in question.options]

    # -- derived answers ----------------------------------------------------------------------

    def derive(self, conn: Connection, customer_id: int, question: Question) -> Any | None:
        """The answer ``question.derive_from_usage`` gives for this customer, or None."""
        rule = question.derive_from_usage
        if rule is None:
            return None
        by_period = advice_queries.metric_by_period(conn, customer_id=customer_id, metric=rule.metric)
        periods = advice_queries.latest_periods(conn, customer_id=customer_id, limit=rule.lookback)
        if not periods:
            return None
        values = [Decimal(by_period.get(p, 0)) / QTY_SCALE for p in periods]
        total = sum(values, Decimal(0))
        aggregate = {"mean": total / len(values), "max": max(values), "sum": total}[rule.aggregate]
        if question.kind is Kind.YES_NO:
            return bool(aggregate > Decimal(str(rule.above)))
        number = aggregate.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)
        return int(number) if number == number.to_integral_value() else float(number)


def explain(advice: Advice) -> str:
    """The suggestion in numbers a person believes, ending with the YES/NO question."""
    fit, best, current = advice.fit, advice.best, advice.current
    assert best is not None and current is not None and fit.best_cost is not None
    assert fit.current_cost is not None and fit.saving is not None
    cur = best.currency
    months = "month" if fit.months == 1 else f"{fit.months} months"
    used = _usage_sentence(fit, current)
    yearly = money(fit.saving * 12, cur)
    return (
        f"Over the last {months} you used {used} on average. {best.name} would have cost you "
        f"{money(fit.best_cost, cur)} a month instead of {money(fit.current_cost, cur)}: "
        f"{yearly} a year less. Reply YES to switch or NO to keep your plan."
    )


def _usage_sentence(fit: Fit, current: PlanTerms) -> str:
    parts = []
    for metric, amount in sorted(fit.usage.items(), key=lambda kv: kv[0] != "data_gb"):
        if amount <= 0:
            continue
        limit = current.allowance.get(metric)
        if limit is None:  # unlimited, or not priced by the plan
            parts.append(describe(metric, amount))
        elif limit == 0:
            parts.append(f"{describe(metric, amount)} (not included in your plan)")
        else:
            parts.append(f"{describe(metric, amount)} of your {describe(metric, limit)}")
    return " and ".join(parts[:2]) or "your plan"


def no_offer_reason(advice: Advice) -> str:
    """Why there is no suggestion, in the customer's terms."""
    fit = advice.fit
    if advice.declined_on is not None and advice.best is not None:
        return (
            f"{advice.best.name} would still save you money, but you said no to it on "
            f"{advice.declined_on:%d %b %Y}, so I'll leave it unless your usage changes."
        )
    reason = fit.reason.value
    if reason == "no usage history":
        return "I can't see any usage for you yet, so I can't compare plans. I'll let you know when I can."
    if reason == "no current plan on file":
        return "I don't know which plan you're on yet, so I can't compare plans."
    if reason == "no plan meets the customer's preferences":
        return "None of our plans meets everything you told me you need, so I'd keep your plan for now."
    current = advice.current
    name = current.name if current else "your plan"
    if fit.current_cost is not None and advice.best is not None and fit.best_plan != fit.current_plan:
        return (
            f"You're on a good plan: {name} cost you {money(fit.current_cost, advice.best.currency)} "
            "a month on average, and no plan would save you enough to be worth a switch."
        )
    return f"You're on the right plan: nothing fits your usage better than {name}."
