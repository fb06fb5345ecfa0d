"""CSV imports of customers and usage, through the library and through the command line."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import typer
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner

from bot.cli.data import import_app, plans_app
from bot.settings import get_settings
from plans.catalog import apply_catalog, load_catalog_file
from plans.imports import CsvImportError, import_customers, import_usage
from storage.db import transaction
from storage.models import Customer, Usage
from storage.tables import CUSTOMER, USAGE

CATALOG = Path(__file__).parents[1] / "data" / "catalog.toml"
CUSTOMERS_HEADER = "external_id,phone,name,current_plan\n"


@pytest.fixture
def shop(db: Engine) -> Engine:
    """The test database with the sample catalog loaded."""
    with transaction(db) as session:
        apply_catalog(session, load_catalog_file(CATALOG))
    return db


@pytest.fixture
def book(shop: Engine, tmp_path: Path) -> Engine:
    """The catalog plus customers C1-C3."""
    path = write(
        tmp_path / "book.csv",
        CUSTOMERS_HEADER
        + "C1,+14155550101,Ann,basic-5\nC2,+14155550102,Bob,talk-300\nC3,+14155550103,Cy,basic-5\n",
    )
    assert import_customers(shop, path, default_region="US").imported == 3
    return shop


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8", newline="")
    return path


def rejects_of(path: Path | None) -> list[tuple[int, str, str]]:
    assert path is not None
    with path.open(encoding="utf-8", newline="") as file:
        rows = list(csv.reader(file))
    assert rows[0] == ["line", "reason", "row"]
    return [(int(line), reason, raw) for line, reason, raw in rows[1:]]


def customers_in(db: Engine) -> dict[str, dict[str, object]]:
    columns = (
        "phone",
        "name",
        "current_plan_id",
        "timezone",
        "marketing_consent",
        "email",
        "telegram_username",
    )
    with db.connect() as conn:
        rows = conn.execute(select(CUSTOMER).order_by(CUSTOMER.c.id)).mappings().all()
    return {row["external_id"]: {c: row[c] for c in columns} for row in rows}


def usage_in(db: Engine) -> dict[tuple[str, int, str], int]:
    query = select(CUSTOMER.c.external_id, USAGE.c.period, USAGE.c.metric, USAGE.c.quantity_milli).join_from(
        USAGE, CUSTOMER, CUSTOMER.c.id == USAGE.c.customer_id
    )
    with db.connect() as conn:
        return {(e, p, m): q for e, p, m, q in conn.execute(query)}


# -- customers -------------------------------------------------------------------------------------


def test_customers_are_imported_with_phones_in_e164_and_every_optional_field(
    shop: Engine, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "customers.csv",
        "external_id,phone,name,current_plan,timezone,marketing_consent,email,telegram_username\n"
        "C1,(415) 555-0101,Ann Lee,basic-5,America/New_York,Yes,ann@example.com,@ann_lee\n"
        "C2,415.555.0102,Bob,talk-300,,0,,\n"
        "C3,+44 20 7946 0958,,unlimited-plus,Europe/London,,,\n"
        "C4,020 7946 0959,Dee,basic-5,,n,,\n",
    )
    summary = import_customers(shop, path, default_region="US")
    assert (summary.rows, summary.imported, summary.rejected) == (4, 3, 1)
    assert summary.ignored_columns == ()
    assert customers_in(shop) == {
        "C3": {
            "phone": "+442079460958",
            "name": None,
            "current_plan_id": "unlimited-plus",
            "timezone": "Europe/London",
            "marketing_consent": False,
            "email": None,
            "telegram_username": None,
        },
        "C1": {
            "phone": "+14155550101",
            "name": "Ann Lee",
            "current_plan_id": "basic-5",
            "timezone": "America/New_York",
            "marketing_consent": True,
            "email": "ann@example.com",
            "telegram_username": "ann_lee",
        },
        "C2": {
            "phone": "+14155550102",
            "name": "Bob",
            "current_plan_id": "talk-300",
            "timezone": None,
            "marketing_consent": False,
            "email": None,
            "telegram_username": None,
        },
    }
    assert rejects_of(summary.rejects_path) == [
        (5, "invalid phone number '020 7946 0959' (write it as +14155550100)", lines(path)[4])
    ]
    # A national number is read in the default region.
    assert import_customers(shop, path, default_region="GB").imported == 2  # C3 and C4
    assert customers_in(shop)["C4"]["phone"] == "+442079460959"


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def test_reimport_upserts_by_external_id_and_the_last_row_of_an_id_wins(book: Engine, tmp_path: Path) -> None:
    path = write(
        tmp_path / "changes.csv",
        CUSTOMERS_HEADER
        + "C1,+14155550101,Ann Old,basic-5\nC4,+14155550104,Di,talk-300\nC1,+14155550111,Ann,talk-300\n",
    )
    summary = import_customers(book, path, default_region="US")
    assert (summary.rows, summary.imported, summary.rejected, summary.rejects_path) == (3, 3, 0, None)
    stored = customers_in(book)
    assert list(stored) == ["C1", "C2", "C3", "C4"]
    assert (stored["C1"]["name"], stored["C1"]["phone"], stored["C1"]["current_plan_id"]) == (
        "Ann",
        "+14155550111",
        "talk-300",
    )


def test_a_column_absent_from_the_file_leaves_the_field_as_stored(shop: Engine, tmp_path: Path) -> None:
    first = write(
        tmp_path / "a.csv", "external_id,phone,name,current_plan,email\nC1,+14155550101,Ann,basic-5,a@b.co\n"
    )
    second = write(tmp_path / "b.csv", CUSTOMERS_HEADER + "C1,+14155550101,Ann,talk-300\n")
    import_customers(shop, first, default_region="US")
    import_customers(shop, second, default_region="US")
    assert customers_in(shop)["C1"]["email"] == "a@b.co"
    assert customers_in(shop)["C1"]["current_plan_id"] == "talk-300"


def test_each_kind_of_bad_customer_row_is_rejected_with_its_line_and_reason(
    book: Engine, tmp_path: Path
) -> None:
    rows = [
        "external_id,phone,name,current_plan,timezone,marketing_consent,email,telegram_username,notes",
        "C10,+14155550110,Good,basic-5,America/Chicago,true,g@example.com,good_one,vip",
        "C11,+14155550111,Plan,gold-99,,,,,",
        "",
        "C12,555,Phone,basic-5,,,,,",
        "C13,+14155550113,Zone,basic-5,Mars/Olympus,,,,",
        "C14,+14155550114,Consent,basic-5,,maybe,,,",
        "C15,+14155550115,Mail,basic-5,,,not-an-email,,",
        "C16,+14155550116,Tg,basic-5,,,,@abc,",
        "C17,+1 415 555 0102,Taken,basic-5,,,,,",
        "C18,+14155550118,Short,basic-5",
        ",+14155550119,NoId,basic-5,,,,,",
        "C20,+14155550120,NoPlan,,,,,,",
        '"C21","+1 (415) 555-0121","Quoted, Name",basic-5,,Y,,,',
    ]
    path = write(tmp_path / "customers.csv", "\r\n".join(rows) + "\r\n")
    summary = import_customers(book, path, default_region="US")
    assert (summary.rows, summary.imported, summary.rejected) == (12, 2, 10)
    assert summary.ignored_columns == ("notes",)
    assert summary.rejects_path == tmp_path / "customers.rejects.csv"
    assert rejects_of(summary.rejects_path) == [
        (3, "unknown plan 'gold-99': not in the plan catalog", rows[2]),
        (5, "invalid phone number '555' (write it as +14155550100)", rows[4]),
        (6, "unknown timezone 'Mars/Olympus' (use an IANA name like America/New_York)", rows[5]),
        (7, "marketing_consent 'maybe' is not one of true/false/yes/no/1/0/y/n", rows[6]),
        (8, "invalid email 'not-an-email'", rows[7]),
        (9, "invalid telegram_username '@abc' (5-32 letters, digits or _)", rows[8]),
        (10, "phone +14155550102 already belongs to another customer (C2)", rows[9]),
        (11, "expected 9 fields, found 4", rows[10]),
        (12, "external_id is empty", rows[11]),
        (13, "current_plan is empty", rows[12]),
    ]
    stored = customers_in(book)
    assert list(stored) == ["C1", "C2", "C3", "C10", "C21"]
    assert stored["C10"]["telegram_username"] == "good_one" and stored["C10"]["marketing_consent"] is True
    assert stored["C21"]["name"] == "Quoted, Name" and stored["C21"]["phone"] == "+14155550121"
    assert stored["C2"]["phone"] == "+14155550102"


def test_a_customer_who_texted_before_the_import_is_adopted_not_duplicated(
    shop: Engine, tmp_path: Path
) -> None:
    with transaction(shop) as session:
        session.add(Customer(phone="+14155550101"))
    path = write(tmp_path / "c.csv", CUSTOMERS_HEADER + "C1,+14155550101,Ann,basic-5\n")
    assert import_customers(shop, path, default_region="US").imported == 1
    with shop.connect() as conn:
        assert conn.execute(select(CUSTOMER.c.id, CUSTOMER.c.external_id)).all() == [(1, "C1")]


def test_a_missing_customer_column_stops_the_import_before_anything_is_written(
    shop: Engine, tmp_path: Path
) -> None:
    path = write(tmp_path / "c.csv", "external_id,name\nC1,Ann\n")
    with pytest.raises(CsvImportError) as info:
        import_customers(shop, path, default_region="US")
    assert "missing required column(s): phone, current_plan" in str(info.value)
    assert str(path) in str(info.value)
    assert customers_in(shop) == {}
    assert not (tmp_path / "c.rejects.csv").exists()


# -- usage -----------------------------------------------------------------------------------------


def test_every_bad_usage_row_is_reported_and_every_good_row_imported(book: Engine, tmp_path: Path) -> None:
    rows = [
        "external_id,period,metric,quantity",
        "C1,2026-01,data_gb,4.5",
        "C1,2026-01,minutes,120",
        "NOBODY,2026-01,data_gb,1",
        "C1,2026-13,data_gb,1",
        "C1,26-01,data_gb,1",
        "C1,1999-12,data_gb,1",
        "C2,2026-01,data_gb,-1",
        "C2,2026-01,data_gb,lots",
        "C2,2026-01,data_gb,NaN",
        "C2,2026-01,Data GB,1",
        "C2,2026-01,data_gb",
        "C2,2026-01,data_gb,1,extra",
        "C1,2026-01,data_gb,9",
        "C2,2026-01,sms,0",
        "C2,2026-01,sms,7",
        ",2026-01,sms,7",
        "C2,2026-01,data_gb,inf",
    ]
    path = write(tmp_path / "usage.csv", "\n".join(rows) + "\n")
    summary = import_usage(book, path)
    assert (summary.rows, summary.imported, summary.rejected) == (17, 2, 15)
    assert rejects_of(summary.rejects_path) == [
        (4, "unknown customer: no customer has this external_id (import customers first)", rows[3]),
        (5, "period '2026-13' is not YYYY-MM (a year 2000-2100, a month 01-12)", rows[4]),
        (6, "period '26-01' is not YYYY-MM (a year 2000-2100, a month 01-12)", rows[5]),
        (7, "period '1999-12' is not YYYY-MM (a year 2000-2100, a month 01-12)", rows[6]),
        (8, "quantity '-1' is negative", rows[7]),
        (9, "quantity 'lots' is not a number", rows[8]),
        (10, "quantity 'NaN' is not a finite number", rows[9]),
        (
            11,
            "metric 'Data GB' must be lower-case letters, digits and _, start with a letter, at most 32",
            rows[10],
        ),
        (12, "expected 4 fields, found 3", rows[11]),
        (13, "expected 4 fields, found 5", rows[12]),
        (14, "duplicate of line 2", rows[13]),
        # C2's January had bad rows (lines 8-11): it is kept as it was, not half replaced.
        (15, "period kept as it was: line 8 was rejected", rows[14]),
        (16, "period kept as it was: line 8 was rejected", rows[15]),
        (17, "external_id is empty", rows[16]),
        (18, "quantity 'inf' is not a finite number", rows[17]),
    ]
    assert usage_in(book) == {
        ("C1", 202601, "data_gb"): 4500,
        ("C1", 202601, "minutes"): 120_000,
    }


def test_a_period_with_a_bad_row_keeps_what_it_had(book: Engine, tmp_path: Path) -> None:
    good = write(
        tmp_path / "jan.csv", "external_id,period,metric,quantity\nC2,2026-01,data_gb,3\nC2,2026-01,sms,5\n"
    )
    import_usage(book, good)
    bad = write(
        tmp_path / "fix.csv", "external_id,period,metric,quantity\nC2,2026-01,sms,7\nC2,2026-01,data_gb,-1\n"
    )
    summary = import_usage(book, bad)
    assert (summary.imported, summary.rejected) == (0, 2)
    assert rejects_of(summary.rejects_path)[0][:2] == (2, "period kept as it was: line 3 was rejected")
    assert usage_in(book) == {("C2", 202601, "data_gb"): 3000, ("C2", 202601, "sms"): 5000}


def test_reimporting_a_period_replaces_it_and_leaves_other_periods(book: Engine, tmp_path: Path) -> None:
    first = write(
        tmp_path / "jan-feb.csv",
        "external_id,period,metric,quantity\n"
        "C1,2026-01,data_gb,1\nC1,2026-01,minutes,10\n"
        "C1,2026-02,data_gb,2\nC1,2026-02,minutes,20\n"
        "C2,2026-02,data_gb,3\n",
    )
    import_usage(book, first)
    second = write(tmp_path / "feb.csv", "external_id,period,metric,quantity\nC1,2026-02,data_gb,2.5\n")
    summary = import_usage(book, second)
    assert (summary.rows, summary.imported, summary.rejected, summary.rejects_path) == (1, 1, 0, None)
    assert usage_in(book) == {
        ("C1", 202601, "data_gb"): 1000,
        ("C1", 202601, "minutes"): 10_000,
        ("C1", 202602, "data_gb"): 2500,  # C1's February: replaced, its minutes gone
        ("C2", 202602, "data_gb"): 3000,  # another customer's February: untouched
    }


def test_reimporting_the_same_file_gives_the_same_table(book: Engine, tmp_path: Path) -> None:
    path = write(
        tmp_path / "usage.csv",
        "external_id,period,metric,quantity\nC1,2026-01,data_gb,1.25\nC2,2026-01,sms,3\nC9,2026-01,sms,1\n",
    )
    first = import_usage(book, path)
    table = usage_in(book)
    second = import_usage(book, path)
    assert usage_in(book) == table == {("C1", 202601, "data_gb"): 1250, ("C2", 202601, "sms"): 3000}
    assert first == second
    assert (second.imported, second.rejected) == (2, 1)


def test_quantities_with_more_than_three_decimals_round_half_up(book: Engine, tmp_path: Path) -> None:
    quantities = {
        "a": "1.0005",
        "b": "1.0004",
        "c": "0.0025",
        "d": "2.9995",
        "e": "7",
        "f": "1e3",
        "g": "0.0001",
    }
    body = "".join(f"C1,2026-03,{metric},{q}\n" for metric, q in quantities.items())
    import_usage(book, write(tmp_path / "u.csv", "external_id,period,metric,quantity\n" + body))
    assert {m: q for (_, _, m), q in usage_in(book).items()} == {
        "a": 1001,
        "b": 1000,
        "c": 3,
        "d": 3000,
        "e": 7000,
        "f": 1_000_000,
        "g": 0,
    }


def test_bom_crlf_blank_lines_quotes_and_extra_columns_are_handled(book: Engine, tmp_path: Path) -> None:
    data = (
        b"\xef\xbb\xbfExternal_ID,source,period,metric,quantity\r\n"
        b"C1,bill,2026-01,data_gb,1\r\n"
        b"\r\n"
        b'"C2","bill, paper",2026-01,"minutes","2"\r\n'
        b"  ,  ,  ,  ,  \r\n"
        b'C3,"multi\r\nline",2026-01,sms,-3\r\n'
        b"C3,bill,2026-01,sms,3"
    )
    path = tmp_path / "usage.csv"
    path.write_bytes(data)
    seen: list[tuple[int, int]] = []
    summary = import_usage(book, path, progress=lambda done, total: seen.append((done, total)))
    assert (summary.rows, summary.imported, summary.rejected) == (4, 2, 2)
    assert summary.ignored_columns == ("source",)
    assert rejects_of(summary.rejects_path) == [
        (6, "quantity '-3' is negative", 'C3,"multi\r\nline",2026-01,sms,-3'),
        (8, "period kept as it was: line 6 was rejected", "C3,bill,2026-01,sms,3"),
    ]
    assert usage_in(book) == {
        ("C1", 202601, "data_gb"): 1000,
        ("C2", 202601, "minutes"): 2000,
    }
    assert seen[-1] == (len(data), len(data))


def test_a_missing_usage_column_stops_the_import_before_anything_is_written(
    book: Engine, tmp_path: Path
) -> None:
    path = write(tmp_path / "u.csv", "external_id,month,quantity\nC1,2026-01,1\n")
    with pytest.raises(CsvImportError) as info:
        import_usage(book, path)
    assert "missing required column(s): period, metric" in str(info.value)
    assert usage_in(book) == {}
    assert not (tmp_path / "u.rejects.csv").exists()


@pytest.mark.parametrize("content", ["", "\n\n"], ids=["empty", "blank"])
def test_an_empty_file_is_a_fatal_error(book: Engine, tmp_path: Path, content: str) -> None:
    with pytest.raises(CsvImportError, match="the file is empty"):
        import_usage(book, write(tmp_path / "u.csv", content))


def test_a_clean_run_deletes_the_rejects_file_of_a_previous_run(book: Engine, tmp_path: Path) -> None:
    path = write(tmp_path / "u.csv", "external_id,period,metric,quantity\nC1,2026-01,data_gb,x\n")
    assert import_usage(book, path).rejects_path == tmp_path / "u.rejects.csv"
    write(path, "external_id,period,metric,quantity\nC1,2026-01,data_gb,1\n")
    assert import_usage(book, path).rejects_path is None
    assert not (tmp_path / "u.rejects.csv").exists()


def test_undecodable_bytes_and_nul_reject_the_row_which_is_kept_as_it_was(
    book: Engine, tmp_path: Path
) -> None:
    path = tmp_path / "u.csv"
    path.write_bytes(
        b"external_id,period,metric,quantity\nC\xe9,2026-01,sms,1\nC1,2026-01,sms,2\nC\x001,2026-01,sms,3\n"
    )
    summary = import_usage(book, path)
    assert (summary.imported, summary.rejected) == (1, 2)
    assert summary.rejects_path is not None
    assert summary.rejects_path.read_bytes().splitlines()[1:] == [
        b'2,not valid UTF-8 (save the file as UTF-8),"C\xe9,2026-01,sms,1"',
        b'4,contains a NUL character,"C\x001,2026-01,sms,3"',
    ]
    assert usage_in(book) == {("C1", 202601, "sms"): 2000}


# -- command line ----------------------------------------------------------------------------------


@pytest.fixture
def cli(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[typer.Typer]:
    """The sub-apps on a test-local app, configured for the test database (no .env is read)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("DEFAULT_REGION", "US")
    get_settings.cache_clear()
    app = typer.Typer()
    app.add_typer(plans_app, name="plans")
    app.add_typer(import_app, name="import")
    yield app
    get_settings.cache_clear()


def test_cli_loads_plans_and_imports_customers_and_usage(
    cli: typer.Typer, db: Engine, tmp_path: Path
) -> None:
    runner = CliRunner()
    loaded = runner.invoke(cli, ["plans", "load", str(CATALOG)])
    assert loaded.exit_code == 0, loaded.output
    assert "catalog.toml: 3 created, 0 updated, 0 unchanged, 0 kept" in loaded.stdout

    write(tmp_path / "customers.csv", CUSTOMERS_HEADER + "C1,(415) 555-0101,Ann,basic-5\nC2,12,Bob,basic-5\n")
    customers = runner.invoke(cli, ["import", "customers", "customers.csv"])
    assert customers.exit_code == 0, customers.output
    assert "customers.csv: 2 rows, 1 imported, 1 rejected." in customers.stdout
    assert f"Rejected rows (line, reason, row): {Path('customers.rejects.csv')}" in customers.stdout

    write(tmp_path / "usage.csv", "external_id,period,metric,quantity,note\nC1,2026-01,data_gb,1.5,x\n")
    usage = runner.invoke(cli, ["import", "usage", "usage.csv"])
    assert usage.exit_code == 0, usage.output
    assert "usage.csv: 1 rows, 1 imported, 0 rejected." in usage.stdout
    assert "Ignored columns: note" in usage.stdout
    assert "Rejected rows" not in usage.stdout
    with db.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Usage)).scalar() == 1
        assert conn.execute(select(CUSTOMER.c.phone)).scalars().all() == ["+14155550101"]


def test_cli_fatal_errors_exit_2_with_the_problem_and_what_to_do(cli: typer.Typer, tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(cli, ["import", "usage", "nope.csv"])
    assert missing.exit_code == 2
    assert "No such file: nope.csv" in missing.stderr

    write(tmp_path / "u.csv", "external_id,quantity\nC1,1\n")
    header = runner.invoke(cli, ["import", "usage", "u.csv"])
    assert header.exit_code == 2
    assert "Nothing was imported: u.csv: missing required column(s): period, metric" in header.stderr
    assert "Fix the file and run the command again." in header.stderr

    write(tmp_path / "bad.toml", 'currency = "USD"\n[[plan]]\nid = "x"\nname = "X"\nmonthly_price = "-5"\n')
    catalog = runner.invoke(cli, ["plans", "load", "bad.toml"])
    assert catalog.exit_code == 2
    assert 'bad.toml: plan "x": monthly_price: must not be negative, got -5' in catalog.stderr


def _opt_ins(db: Engine) -> dict[str, object]:
    with db.connect() as conn:
        return dict(conn.execute(select(CUSTOMER.c.external_id, CUSTOMER.c.whatsapp_opt_in_at)).all())


def test_whatsapp_opt_in_is_imported_with_when_it_was_given(shop: Engine, tmp_path: Path) -> None:
    now = datetime(2026, 3, 5, 12, 0, tzinfo=UTC)
    path = write(
        tmp_path / "book.csv",
        "external_id,phone,name,current_plan,whatsapp_opt_in\n"
        "W1,+14155550101,Ann,basic-5,yes\n"
        "W2,+14155550102,Bob,basic-5,2026-03-01\n"
        "W3,+14155550103,Cy,basic-5,2026-03-02T09:30:00+01:00\n"
        "W4,+14155550104,Di,basic-5,no\n"
        "W5,+14155550105,Ed,basic-5,\n"
        "W6,+14155550106,Flo,basic-5,maybe\n"
        "W7,+14155550107,Gus,basic-5,2027-01-01\n",
    )
    summary = import_customers(shop, path, default_region="US", now=now)
    assert (summary.imported, summary.rejected) == (5, 2)
    assert rejects_of(summary.rejects_path) == [
        (
            7,
            "whatsapp_opt_in 'maybe' is not one of true/false/yes/no/1/0/y/n nor an ISO date or time "
            "such as 2026-03-01 or 2026-03-01T09:30:00Z (when the customer agreed)",
            "W6,+14155550106,Flo,basic-5,maybe",
        ),
        (8, "whatsapp_opt_in '2027-01-01' is in the future", "W7,+14155550107,Gus,basic-5,2027-01-01"),
    ]
    assert _opt_ins(shop) == {
        "W1": now,
        "W2": datetime(2026, 3, 1, tzinfo=UTC),
        "W3": datetime(2026, 3, 2, 8, 30, tzinfo=UTC),
        "W4": None,
        "W5": None,
    }
    # Again a week later: an opt-in keeps its first time; "no" withdraws it; absent: as stored.
    write(
        path,
        "external_id,phone,name,current_plan,whatsapp_opt_in\n"
        "W1,+14155550101,Ann,basic-5,yes\nW2,+14155550102,Bob,basic-5,no\nW4,+14155550104,Di,basic-5,1\n",
    )
    later = now + timedelta(days=7)
    assert import_customers(shop, path, default_region="US", now=later).imported == 3
    write(path, CUSTOMERS_HEADER + "W3,+14155550103,Cy,basic-5\n")
    assert import_customers(shop, path, default_region="US", now=later).imported == 1
    opt_ins = _opt_ins(shop)
    assert (opt_ins["W1"], opt_ins["W2"], opt_ins["W4"]) == (now, None, later)
    assert opt_ins["W3"] == datetime(2026, 3, 2, 8, 30, tzinfo=UTC)
