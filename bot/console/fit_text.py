"""The plan fit on a customer's page, told to the operator: plan names with their ids, money with
its currency, "would save $X/month"; never the words the bot says to the customer ("Reply YES")."""

from __future__ import annotations

from dataclasses import dataclass, field

from dialogs.advisor import Advice, describe, money
from plans.fit import Reason


@dataclass(frozen=True, slots=True)
class FitText:
    """A one-sentence summary and the figures behind it, as (name, value) pairs."""

    summary: str
    facts: list[tuple[str, str]] = field(default_factory=list)


def fit_text(advice: Advice | None) -> FitText:
    """What the plan fit says about this customer, for staff."""
    if advice is None:
        return FitText("No plan catalog yet (rapport plans import), so no plan fit.")
    fit, best, current = advice.fit, advice.best, advice.current
    known = best or current
    currency = known.currency if known is not None else "USD"

    def plan(terms_name: str | None, plan_id: str | None) -> str:
        return f"{terms_name} ({plan_id})" if terms_name else (plan_id or "—")

    facts: list[tuple[str, str]] = []
    if fit.current_plan:
        name = current.name if current else None
        cost = f" · {money(fit.current_cost, currency)}/month" if fit.current_cost is not None else ""
        facts.append(("Current plan", plan(name, fit.current_plan) + cost))
    if fit.best_plan and fit.best_cost is not None:
        facts.append(
            (
                "Best plan",
                plan(best.name if best else None, fit.best_plan)
                + f" · {money(fit.best_cost, currency)}/month",
            )
        )
    if fit.months:
        used = ", ".join(describe(m, v) for m, v in sorted(fit.usage.items()) if v > 0) or "nothing"
        facts.append(
            ("Average usage", f"{used} a month over {fit.months} month{'s' if fit.months != 1 else ''}")
        )
    facts.append(("Rule", fit.reason.value))

    saving = fit.saving
    best_name = best.name if best else fit.best_plan
    if advice.offer and best_name and saving is not None:
        summary = (
            f"Would save {money(saving, currency)}/month ({money(saving * 12, currency)}/year) "
            f"by moving to {best_name}."
        )
    elif advice.declined_on is not None and best_name and saving is not None:
        summary = (
            f"{best_name} would save {money(saving, currency)}/month, but the customer declined it on "
            f"{advice.declined_on:%d %b %Y}: not offered again unless their usage changes."
        )
    elif fit.reason is Reason.NO_USAGE:
        summary = "No usage on file yet: no plan can be compared."
    elif fit.reason is Reason.NO_CURRENT_PLAN:
        summary = "The current plan is not on file: no plan can be compared."
    elif fit.reason is Reason.NO_CANDIDATE:
        summary = "No plan meets the customer's stated needs: keep the current plan."
    elif saving is not None and saving > 0 and best_name:
        summary = (
            f"{best_name} would save only {money(saving, currency)}/month: below the threshold for a "
            "suggestion, so the current plan stays."
        )
    else:
        summary = "Already on the best plan for this usage."
    return FitText(summary, facts)
