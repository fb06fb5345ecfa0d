"""The dashboard page and its CSV exports over HTTP, on both databases: operators see the
conversation figures only (403 on the others), staff and admins everything; customer text is
escaped on the page and formula-safe in CSV; a bad range is a 422, never a 500."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import insert

from bot.console.dashboard_view import newcombe, safe_cell, wilson
from schedulers.dashboard import rollup
from storage.tables import MESSAGE
from tests.bot import test_console
from tests.bot.test_console import XSS, Console, login, make_user
from tests.schedulers.test_dashboard import D1, D3, NOW, at, seed

console = test_console.console
STAFF_FIGURES = ("funnel", "money", "holdout", "broadcasts", "value", "labels", "moved")
OPERATOR_FIGURES = ("preferences", "questions", "stale", "intents", "phrasings", "handoffs")
SCRIPT = XSS[0]
RANGE = f"start={D1.isoformat()}&end={D3.isoformat()}"


@pytest.fixture
def rolled(console: Console) -> Console:
    seed(console.db)
    with console.db.begin() as conn:  # a phrasing that is markup, and one that is a formula
        for i, text in enumerate((SCRIPT, "=HYPERLINK(1)")):
            conn.execute(
                insert(MESSAGE).values(
                    id=900 + i, customer_id=4, direction="in", channel="sms", address="+15550000004",
                    text=text, intent="unparsed", created_at=at(D1, 20),
                )
            )  # fmt: skip
    rollup(console.db, console.runtime.bank, NOW, start=D1, end=D3)
    console.clock.now = NOW
    return console


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def test_operators_see_the_conversation_figures_only(rolled: Console) -> None:
    assert login(rolled.client, "op@example.com")[0] == 303
    page = rolled.client.get(f"/console/dashboard?{RANGE}")
    assert page.status_code == 200
    for figure in OPERATOR_FIGURES:
        assert f'id="figure-{figure}"' in page.text
    for figure in STAFF_FIGURES:
        assert f'id="figure-{figure}"' not in page.text
        assert rolled.client.get(f"/console/dashboard/{figure}.csv?{RANGE}").status_code == 403
    assert 'href="/console/review"' in page.text  # review and teach the phrasings
    assert SCRIPT not in page.text and "&lt;script&gt;window.__xss=1&lt;/script&gt;" in page.text


@pytest.mark.parametrize("role", ["staff", "admin"])
def test_staff_and_admins_see_every_figure(rolled: Console, role: str) -> None:
    make_user(rolled.db, f"{role}2@example.com", role)
    assert login(rolled.client, f"{role}2@example.com")[0] == 303
    page = rolled.client.get(f"/console/dashboard?{RANGE}")
    assert page.status_code == 200
    for figure in OPERATOR_FIGURES + STAFF_FIGURES:
        assert f'id="figure-{figure}"' in page.text
        assert rolled.client.get(f"/console/dashboard/{figure}.csv?{RANGE}").status_code == 200
    assert page.text.count("<svg") >= 5 and "<script" not in page.text.split("</head>")[1]
    funnel = rows_of(rolled.client.get(f"/console/dashboard/funnel.csv?{RANGE}").text)
    assert funnel[:7] == [
        ["step", "count", "of eligible"],
        ["eligible", "3", "1"],
        ["offered", "2", "0.666667"],
        ["delivered", "1", "0.333333"],
        ["answered", "2", "0.666667"],
        ["accepted", "2", "0.666667"],
        ["switched", "1", "0.333333"],
    ]
    holdout = rows_of(rolled.client.get(f"/console/dashboard/holdout.csv?{RANGE}").text)
    switched = next(r for r in holdout if r[0] == "switched")
    assert switched[1:5] == ["1", "0.5", "1", "1"]
    diff, lo, hi = newcombe(1, 2, 1, 1)
    assert [float(x) for x in switched[5:]] == pytest.approx([diff, lo, hi], abs=1e-5)
    broadcasts = rows_of(rolled.client.get(f"/console/dashboard/broadcasts.csv?{RANGE}").text)
    assert broadcasts[1] == ["spring", "2", "1", "1", "1", "0", "1", "1", "0.02"]  # 2 segments x 0.0079


def test_csv_cells_are_formula_safe(rolled: Console) -> None:
    assert login(rolled.client, "op@example.com")[0] == 303
    phrasings = rows_of(rolled.client.get(f"/console/dashboard/phrasings.csv?{RANGE}").text)
    assert ["kumquat", "2"] in phrasings
    assert ["'=hyperlink(1)", "1"] in phrasings
    assert safe_cell("-1") == "'-1" and safe_cell(-1) == "-1" and safe_cell("@x") == "'@x"


@pytest.mark.parametrize(
    "query",
    [
        "start=2026-03-05&end=2026-03-01",
        "start=2024-01-01&end=2026-03-01",
        "days=0",
        "days=400",
        "days=7&start=2026-03-01",
        "start=yesterday",
    ],
)
def test_a_bad_range_is_a_422(rolled: Console, query: str) -> None:
    assert login(rolled.client, "op@example.com")[0] == 303
    assert rolled.client.get(f"/console/dashboard?{query}").status_code == 422
    assert rolled.client.get(f"/console/dashboard/intents.csv?{query}").status_code == 422


def test_an_unknown_figure_is_a_404_and_signed_out_goes_to_login(rolled: Console) -> None:
    assert rolled.client.get("/console/dashboard", follow_redirects=False).status_code == 303
    assert login(rolled.client, "admin@example.com")[0] == 303
    assert rolled.client.get("/console/dashboard/nope.csv").status_code == 404
    assert rolled.client.get("/console/dashboard?days=365").status_code == 200


def test_newcombe_matches_the_published_example() -> None:
    # Newcombe (1998), Statistics in Medicine 17, table II, example (a): 56/70 vs 48/80.
    diff, lo, hi = newcombe(56, 70, 48, 80)
    assert diff == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-4)
    assert hi == pytest.approx(0.3339, abs=1e-4)
    assert wilson(0, 10)[0] == 0 and wilson(0, 0) == (0.0, 1.0)
