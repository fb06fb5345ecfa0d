"""The plan catalog: a TOML file of plans, validated, then upserted into the ``plan`` table.

A plan's ``allowance`` maps a metric (any name: data_gb, minutes, kwh, seats...) to a monthly
number or "unlimited"; ``overage`` maps a metric to the price per unit above the allowance. A
metric with an allowance and no overage price cannot go over on the plan; an overage price with
no allowance charges every unit (allowance 0).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    StringConstraints,
    ValidationError,
    model_validator,
)
from sqlmodel import Session

from storage.plan_queries import upsert_plans
from storage.types import utcnow

UNLIMITED = "unlimited"
METRIC_RE = re.compile(r"[a-z][a-z0-9_]{0,31}")
_MAX_MONEY = Decimal(10) ** 10  # monthly_price is NUMERIC(12, 2)


class CatalogError(ValueError):
    """A catalog that cannot be loaded; the message names the file, the plan and the problem."""


def _number(value: object) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"must be a number, got {value!r}")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"must be a number, got {value!r}") from None
    if not number.is_finite():
        raise ValueError(f"must be a finite number, got {value!r}")
    return number


def _amount(places: int, what: str) -> Callable[[object], Decimal]:
    step = Decimal(1).scaleb(-places)

    def parse(value: object) -> Decimal:
        number = _number(value)
        if number < 0:
            raise ValueError(f"must not be negative, got {number}")
        if number >= _MAX_MONEY:
            raise ValueError(f"is too large ({number})")
        if number != number.quantize(step):
            raise ValueError(f"{what} has at most {places} decimals, got {number}")
        return number

    return parse


def _allowance(value: object) -> int | float | str:
    if value == UNLIMITED:
        return UNLIMITED
    try:
        number = _number(value)
    except ValueError:
        raise ValueError(f'must be a number or "{UNLIMITED}", got {value!r}') from None
    if number < 0:
        raise ValueError(f"must not be negative, got {number}")
    if number != number.quantize(Decimal("0.001")):
        raise ValueError(f"has at most 3 decimals (usage is kept in thousandths), got {number}")
    return int(number) if number == number.to_integral_value() else float(number)


def _metric(name: str) -> str:
    if not METRIC_RE.fullmatch(name):
        raise ValueError(
            f"metric {name!r} must be lower-case letters, digits and _, start with a letter, at most 32"
        )
    return name


def _currency(code: str) -> str:
    if not re.fullmatch(r"[A-Z]{3}", code):
        raise ValueError(f"must be a 3-letter ISO 4217 code in capitals, like USD; got {code!r}")
    return code


Metric = Annotated[str, AfterValidator(_metric)]
Price = Annotated[Decimal, PlainValidator(_amount(2, "a price"))]
OveragePrice = Annotated[Decimal, PlainValidator(_amount(4, "an overage price"))]
Allowance = Annotated[int | float | str, PlainValidator(_allowance)]


class PlanSpec(BaseModel):
    """One ``[[plan]]`` table of the catalog file."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    monthly_price: Price
    contract_months: int = Field(default=0, ge=0, le=120)
    available: bool = True
    perks: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(default_factory=list)
    allowance: dict[Metric, Allowance] = Field(default_factory=dict)
    overage: dict[Metric, OveragePrice] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _no_overage_on_unlimited(self) -> PlanSpec:
        for metric in self.overage:
            if self.allowance.get(metric) == UNLIMITED:
                raise ValueError(
                    f"overage.{metric}: the allowance is unlimited, so an overage price means nothing"
                )
        return self

    def row_values(self, currency: str) -> dict[str, Any]:
        """The ``plan`` row's columns (allowances as JSON numbers, overage prices as strings)."""
        return {
            "id": self.id,
            "name": self.name,
            "currency": currency,
            "monthly_price": self.monthly_price.quantize(Decimal("0.01")),
            "contract_months": self.contract_months,
            "available": self.available,
            "perks": list(self.perks),
            "allowance": dict(self.allowance),
            "overage": {m: _decimal_text(p) for m, p in self.overage.items()},
        }


def _decimal_text(price: Decimal) -> str:
    """At least two decimals, no more than given: 10 -> "10.00", 0.0125 -> "0.0125"."""
    return str(price.quantize(Decimal("0.01"))) if price == price.quantize(Decimal("0.01")) else str(price)


class CatalogFile(BaseModel):
    """A parsed and validated catalog file."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    currency: Annotated[str, AfterValidator(_currency)]
    plans: list[PlanSpec] = Field(alias="plan", min_length=1)


@dataclass(frozen=True, slots=True)
class CatalogSummary:
    """What ``apply_catalog`` did; ``kept`` counts stored plans the file does not mention."""

    created: int
    updated: int
    unchanged: int
    kept: int


def load_catalog_file(path: str | Path) -> CatalogFile:
    """Read and validate a catalog file, or raise ``CatalogError`` naming every problem."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_bytes().decode("utf-8-sig"))
    except OSError as exc:
        raise CatalogError(f"{path}: cannot read the file ({exc.strerror})") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: invalid TOML: {exc}") from None
    try:
        catalog = CatalogFile.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError("\n".join(f"{path}: {p}" for p in _problems(exc, raw.get("plan")))) from None
    seen: dict[str, int] = {}
    for index, plan in enumerate(catalog.plans, start=1):
        if plan.id in seen:
            raise CatalogError(f'{path}: plan "{plan.id}": duplicate id (plan #{seen[plan.id]} has it too)')
        seen[plan.id] = index
    return catalog


def _problems(exc: ValidationError, plans: object) -> list[str]:
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown field"
        where = "catalog"
        if len(loc) >= 2 and loc[0] == "plan" and isinstance(loc[1], int):
            where, loc = _plan_label(plans, loc[1]), loc[2:]
        field = ".".join(str(part) for part in loc if part != "[key]")
        problems.append(f"{where}: {field}: {message}" if field else f"{where}: {message}")
    return problems


def _plan_label(plans: object, index: int) -> str:
    plan = plans[index] if isinstance(plans, Sequence) and index < len(plans) else None
    plan_id = plan.get("id") if isinstance(plan, dict) else None
    return f'plan "{plan_id}"' if isinstance(plan_id, str) and plan_id else f"plan #{index + 1}"


def apply_catalog(session: Session, catalog: CatalogFile) -> CatalogSummary:
    """Upsert the catalog's plans by id; plans not in the file are kept as stored.

    Runs in the caller's transaction (no commit). A plan's ``updated_at`` moves only when one of
    its columns changed.
    """
    rows = [spec.row_values(catalog.currency) for spec in catalog.plans]
    created, updated, unchanged, kept = upsert_plans(session, rows=rows, now=utcnow())
    return CatalogSummary(created=created, updated=updated, unchanged=unchanged, kept=kept)
