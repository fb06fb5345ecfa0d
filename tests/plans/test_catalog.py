"""The plan catalog file: parsing, validation messages, and loading into the plan table."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from plans.catalog import CatalogError, apply_catalog, load_catalog_file
from storage.db import transaction
from storage.models import Plan

SAMPLE = Path(__file__).parents[1] / "data" / "catalog.toml"

PLAN = """
[[plan]]
id = "a"
name = "Plan A"
monthly_price = "10.00"
[plan.allowance]
data_gb = 5
minutes = "unlimited"
[plan.overage]
data_gb = "2.50"
"""


def plans_in(db: Engine) -> dict[str, Plan]:
    with Session(db) as session:
        return {p.id: p for p in session.exec(select(Plan)).all()}


def test_the_sample_catalog_parses_into_exact_terms() -> None:
    catalog = load_catalog_file(SAMPLE)
    assert catalog.currency == "USD"
    assert [p.id for p in catalog.plans] == ["basic-5", "talk-300", "unlimited-plus"]
    basic, talk, unlimited = catalog.plans
    assert basic.row_values("USD") == {
        "id": "basic-5",
        "name": "Basic 5 GB",
        "currency": "USD",
        "monthly_price": Decimal("25.00"),
        "contract_months": 0,
        "available": True,
        "perks": ["hotspot"],
        "allowance": {"data_gb": 5, "minutes": "unlimited", "sms": "unlimited"},
        "overage": {"data_gb": "10.00"},
    }
    # A number or a string, a price of 15 or "60.5": all become exact two-decimal money.
    assert talk.monthly_price == Decimal("15") and unlimited.monthly_price == Decimal("60.5")
    assert talk.allowance == {"data_gb": 1.5, "minutes": 300}
    assert talk.row_values("USD")["overage"] == {"minutes": "0.0125"}
    assert talk.available is True and talk.contract_months == 12
    assert unlimited.available is False
    assert unlimited.row_values("USD")["overage"] == {"roaming_mb": "0.02"}


def test_loading_the_sample_stores_every_plan(db: Engine) -> None:
    with transaction(db) as session:
        summary = apply_catalog(session, load_catalog_file(SAMPLE))
    assert (summary.created, summary.updated, summary.unchanged, summary.kept) == (3, 0, 0, 0)
    stored = plans_in(db)
    assert set(stored) == {"basic-5", "talk-300", "unlimited-plus"}
    basic = stored["basic-5"]
    assert basic.monthly_price == Decimal("25.00")
    assert basic.currency == "USD"
    assert basic.allowance == {"data_gb": 5, "minutes": "unlimited", "sms": "unlimited"}
    assert basic.overage == {"data_gb": "10.00"}
    assert basic.perks == ["hotspot"]
    assert stored["talk-300"].allowance == {"data_gb": 1.5, "minutes": 300}
    assert stored["talk-300"].monthly_price == Decimal("15.00")
    assert stored["unlimited-plus"].monthly_price == Decimal("60.50")
    assert stored["unlimited-plus"].available is False


def test_reloading_updates_by_id_and_keeps_plans_missing_from_the_file(db: Engine, tmp_path: Path) -> None:
    with transaction(db) as session:
        apply_catalog(session, load_catalog_file(SAMPLE))
    before = plans_in(db)
    changed = tmp_path / "catalog.toml"
    changed.write_text(
        SAMPLE.read_text()
        .replace('monthly_price = "25.00"', 'monthly_price = "22.50"')
        .replace('id = "talk-300"', 'id = "talk-500"')
        .replace('name = "Talk 300"', 'name = "Talk 500"')
    )
    with transaction(db) as session:
        summary = apply_catalog(session, load_catalog_file(changed))
    assert (summary.created, summary.updated, summary.unchanged, summary.kept) == (1, 1, 1, 1)
    after = plans_in(db)
    assert set(after) == {"basic-5", "talk-300", "talk-500", "unlimited-plus"}
    assert after["basic-5"].monthly_price == Decimal("22.50")
    assert after["basic-5"].updated_at > before["basic-5"].updated_at
    # A plan no longer in the file stays exactly as stored (customers may still be on it).
    kept = after["talk-300"]
    assert (kept.name, kept.available, kept.updated_at) == ("Talk 300", True, before["talk-300"].updated_at)
    assert after["unlimited-plus"].updated_at == before["unlimited-plus"].updated_at

    with transaction(db) as session:
        again = apply_catalog(session, load_catalog_file(changed))
    assert (again.created, again.updated, again.unchanged, again.kept) == (0, 0, 3, 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(PLAN + PLAN.replace("Plan A", "Plan A2"), 'plan "a": duplicate id', id="duplicate-id"),
        pytest.param(
            PLAN.replace('"10.00"', '"-1.00"'), 'plan "a": monthly_price: must not be negative', id="negative"
        ),
        pytest.param(
            PLAN.replace('"10.00"', '"9.999"'),
            'plan "a": monthly_price: a price has at most 2 decimals, got 9.999',
            id="price-decimals",
        ),
        pytest.param(
            PLAN.replace('"2.50"', '"0.00001"'),
            'plan "a": overage.data_gb: an overage price has at most 4 decimals',
            id="overage-decimals",
        ),
        pytest.param(
            PLAN.replace('"2.50"', '"-2.50"'),
            'plan "a": overage.data_gb: must not be negative',
            id="neg-overage",
        ),
        pytest.param(
            PLAN.replace("data_gb = 5", 'data_gb = "lots"'),
            'plan "a": allowance.data_gb: must be a number or "unlimited", got \'lots\'',
            id="allowance-word",
        ),
        pytest.param(
            PLAN.replace("data_gb = 5", "data_gb = -5"),
            'plan "a": allowance.data_gb: must not be negative',
            id="allowance-negative",
        ),
        pytest.param(
            PLAN.replace("data_gb = 5", "data_gb = nan"),
            'plan "a": allowance.data_gb: must be a number or "unlimited"',
            id="allowance-nan",
        ),
        pytest.param(
            PLAN + 'minutes = "0.10"\n',
            'plan "a": overage.minutes: the allowance is unlimited, so an overage price means nothing',
            id="overage-on-unlimited",
        ),
        pytest.param(
            PLAN.replace("data_gb = 5", '"Data GB" = 5'),
            "plan \"a\": allowance.Data GB: metric 'Data GB' must be lower-case",
            id="metric-name",
        ),
        pytest.param(
            PLAN.replace('name = "Plan A"', 'colour = "red"\nname = "A"'), 'plan "a": colour: unknown field'
        ),
        pytest.param(PLAN.replace('id = "a"\n', ""), "plan #1: id: Field required", id="no-id"),
        pytest.param(
            PLAN + PLAN.replace('id = "a"', 'id = ""'), "plan #2: id: String should match", id="empty-id"
        ),
        pytest.param(
            PLAN.replace("[[plan]]", 'currency = "US"\n[[plan]]'), "catalog: currency: must be a 3-letter"
        ),
        pytest.param(
            PLAN.replace("[[plan]]", 'currency = "usd"\n[[plan]]'), "catalog: currency: must be a 3-letter"
        ),
        pytest.param(PLAN.replace("[[plan]]", "[[plan]"), "invalid TOML: ", id="invalid-toml"),
    ],
)
def test_each_problem_is_named_with_the_file_and_the_plan(tmp_path: Path, text: str, expected: str) -> None:
    if "currency" not in text:
        text = 'currency = "USD"\n' + text
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(CatalogError) as info:
        load_catalog_file(path)
    assert f"{path}: {expected}" in str(info.value)


def test_every_problem_of_a_file_is_listed_one_a_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        'currency = "USD"\n' + PLAN.replace('"10.00"', '"-1"').replace("data_gb = 5", "data_gb = -5")
    )
    with pytest.raises(CatalogError) as info:
        load_catalog_file(path)
    assert str(info.value).splitlines() == [
        f'{path}: plan "a": monthly_price: must not be negative, got -1',
        f'{path}: plan "a": allowance.data_gb: must not be negative, got -5',
    ]


def test_a_missing_file_is_a_catalog_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="cannot read the file"):
        load_catalog_file(tmp_path / "nope.toml")


def test_an_overage_without_an_allowance_charges_every_unit(tmp_path: Path) -> None:
    path = tmp_path / "payg.toml"
    path.write_text('currency = "EUR"\n' + PLAN + 'kwh = "0.3125"\n')
    (plan,) = load_catalog_file(path).plans
    assert plan.row_values("EUR")["overage"] == {"data_gb": "2.50", "kwh": "0.3125"}
