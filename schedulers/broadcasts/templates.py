"""Broadcast templates: Jinja2 in a sandbox, checked at create time, rendered per customer."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, meta
from jinja2.sandbox import SandboxedEnvironment

from dialogs.advisor import describe, money
from plans.fit import Catalog
from schedulers.broadcasts.errors import BroadcastError
from schedulers.broadcasts.facts import Facts

MAX_RENDERED = 1_600
"""The most characters a rendered message may have: what the SMS sender sends at most (longer
texts are cut there), so a template that renders longer is refused, not silently truncated."""
_MAX_OPERAND = 10_000  # the largest repeat count or exponent a template may compute with


class _GuardedEnvironment(SandboxedEnvironment):
    """The sandbox, with ``*`` and ``**`` bounded so ``'x' * 10**7`` or ``9**9**9`` cannot eat the
    memory or the CPU (the sandbox already bounds ``range``)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if isinstance(right, int) and (
                abs(right) > 100 or (isinstance(left, int) and abs(left).bit_length() * abs(right) > 20_000)
            ):
                raise OverflowError("a power in it is too large")
            return left**right
        for a, b in ((left, right), (right, left)):
            if isinstance(a, str | list | tuple) and isinstance(b, int) and b > _MAX_OPERAND:
                raise OverflowError(f"repeating something {b} times is too much for a message")
        return left * right


_ENV = _GuardedEnvironment(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=False)

TEMPLATE_FIELDS = (
    "name",
    "current_plan",
    "current_plan_id",
    "suggested_plan",
    "suggested_plan_id",
    "monthly_saving",
    "yearly_saving",
    "current_cost",
    "usage",
    "over",
)


def compile_template(source: str, catalog: Catalog | None = None) -> Template:
    """The sandboxed template; syntax errors, unknown fields and unsafe access raise BroadcastError
    now (it is rendered once with sample values), not at send time."""
    try:
        template = _ENV.from_string(source)
    except TemplateError as exc:
        raise BroadcastError(f"template: {exc}") from None
    metrics = catalog.metrics if catalog is not None else ("data_gb", "minutes", "sms", "roaming_data_gb")
    sample = {
        "name": "Dana",
        "current_plan": "Plus 20 GB",
        "current_plan_id": "plus-20",
        "suggested_plan": "Basic 5 GB",
        "suggested_plan_id": "basic-5",
        "monthly_saving": "$20.00",
        "yearly_saving": "$240.00",
        "current_cost": "$45.00",
        "usage": {m: describe(m, Decimal("2.1")) for m in metrics},
        "over": dict.fromkeys(metrics, 0),
    }
    render(template, sample)
    return template


OFFER_FIELDS = frozenset({"suggested_plan", "suggested_plan_id"})


def is_offer(source: str) -> bool:
    """Whether a template offers each recipient their suggested plan (it names one of
    :data:`OFFER_FIELDS`): then a YES or NO reply is taken as the answer to that offer."""
    try:
        return bool(meta.find_undeclared_variables(_ENV.parse(source)) & OFFER_FIELDS)
    except TemplateError:
        return False


def render(template: Template, context: Mapping[str, Any]) -> str:
    """The text for one customer. Template errors, arithmetic that overflows or runs out of
    memory, and a text longer than :data:`MAX_RENDERED` become BroadcastError."""
    try:
        text = template.render(context).strip()
    except TemplateError as exc:
        raise BroadcastError(f"template: {exc}") from None
    except (ArithmeticError, MemoryError, RecursionError, ValueError, TypeError, LookupError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BroadcastError(f"template: it cannot be rendered ({reason})") from None
    if len(text) > MAX_RENDERED:
        raise BroadcastError(
            f"template: it renders to {len(text):,} characters; a message has at most "
            f"{MAX_RENDERED:,} (the SMS sender cuts it there)"
        )
    return text


def template_context(facts: Facts, catalog: Catalog) -> dict[str, Any]:
    """The per-customer template fields (see README: name, plans, savings as money, usage)."""
    fit = facts.fit
    current, best = catalog.get(fit.current_plan), catalog.get(fit.best_plan)
    known = current or best
    currency = known.currency if known is not None else "USD"
    saving = fit.saving if fit.suggest and fit.saving is not None else Decimal(0)
    return {
        "name": facts.name or "there",
        "current_plan": current.name if current else "",
        "current_plan_id": fit.current_plan or "",
        "suggested_plan": best.name if best and fit.suggest else "",
        "suggested_plan_id": fit.best_plan if fit.suggest and fit.best_plan else "",
        "monthly_saving": money(saving, currency),
        "yearly_saving": money(saving * 12, currency),
        "current_cost": money(fit.current_cost, currency) if fit.current_cost is not None else "",
        "usage": {m: describe(m, v) for m, v in fit.usage.items()},
        "over": dict(facts.over),
    }
