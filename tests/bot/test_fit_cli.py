"""`rapport plans fit` as staff use it: load a catalog, import a book, print the fit (both databases)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from tests.bot.test_cli import rapport

DATA = Path(__file__).parents[1] / "data"


def _book(db_url: str, tmp_path: Path) -> None:
    (tmp_path / "customers.csv").write_text(
        "external_id,phone,name,current_plan\n"
        "C1,+14155550201,Ann,unlimited-plus\n"  # retired plan, light user: Basic 5 GB saves 35.50
        "C2,+14155550202,Bo,basic-5\n"  # 7 GB a month: overage 20.00, but still the cheapest
        "C3,+14155550203,Cy,basic-5\n"  # no usage
    )
    (tmp_path / "usage.csv").write_text(
        "external_id,period,metric,quantity\n"
        + "".join(f"C1,2026-0{m},data_gb,2.5\nC1,2026-0{m},minutes,100\n" for m in (1, 2, 3))
        + "".join(f"C2,2026-0{m},data_gb,7\nC2,2026-0{m},minutes,500\n" for m in (1, 2, 3))
    )
    for args in (
        ("plans", "load", str(DATA / "catalog.toml")),
        ("import", "customers", str(tmp_path / "customers.csv")),
        ("import", "usage", str(tmp_path / "usage.csv")),
    ):
        result = rapport(*args, db_url=db_url, cwd=tmp_path)
        assert result.returncode == 0, result.stderr


def test_plans_fit_prints_the_whole_book_as_json_csv_and_a_table(db_url: str, tmp_path: Path) -> None:
    _book(db_url, tmp_path)
    result = rapport("plans", "fit", "--format", "json", db_url=db_url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {r["external_id"]: r for r in json.loads(result.stdout)}
    assert rows["C1"] == {
        "external_id": "C1",
        "current_plan": "unlimited-plus",
        "current_monthly_cost": "60.50",
        "best_plan": "basic-5",
        "best_monthly_cost": "25.00",
        "monthly_saving": "35.50",
        "suggest": True,
        "reason": "saves enough to suggest",
    }
    assert rows["C2"]["current_monthly_cost"] == "45.00"  # 25 + 2 GB x 10.00
    assert rows["C2"]["suggest"] is False and rows["C2"]["reason"] == "the current plan costs least"
    assert rows["C3"]["reason"] == "no usage history" and rows["C3"]["best_plan"] is None
    assert "3 customers, 1 suggestions, 35.50 a month" in result.stderr

    as_csv = rapport("plans", "fit", "--format", "csv", db_url=db_url, cwd=tmp_path)
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["external_id"] for r in table] == ["C1", "C2", "C3"]
    assert table[0]["monthly_saving"] == "35.50" and table[0]["suggest"] == "true"

    plain = rapport("plans", "fit", db_url=db_url, cwd=tmp_path)
    assert plain.stdout.splitlines()[0].split() == [
        "external_id",
        "current_plan",
        "current_monthly_cost",
        "best_plan",
        "best_monthly_cost",
        "monthly_saving",
        "suggest",
        "reason",
    ]


def test_plans_fit_for_one_customer_and_a_shorter_lookback(db_url: str, tmp_path: Path) -> None:
    _book(db_url, tmp_path)
    one = rapport(
        "plans", "fit", "--customer", "C2", "--format", "json", "--lookback", "1", db_url=db_url, cwd=tmp_path
    )
    assert [r["external_id"] for r in json.loads(one.stdout)] == ["C2"]
    missing = rapport("plans", "fit", "--customer", "nobody", db_url=db_url, cwd=tmp_path)
    assert missing.returncode == 2 and "No customer with external id 'nobody'" in missing.stderr


def test_plans_fit_without_a_catalog_says_what_to_do(tmp_path: Path) -> None:
    result = rapport("plans", "fit", db_url=f"sqlite:///{tmp_path}/empty.db", cwd=tmp_path)
    assert result.returncode == 2
    assert "rapport plans load FILE" in result.stderr
