"""The question bank: the default bank is complete, and a broken file says exactly what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from dialogs.bank import BankError, Kind, QuestionBank

MINIMAL = """
[[question]]
key = "colour"
text = "Favourite colour?"
why = "Just curious."
kind = "choice"
options = [{ value = "red", label = "red" }]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bank.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_bank_covers_the_mobile_operator_topics() -> None:
    bank = QuestionBank.load()
    keys = {q.key for q in bank}
    assert {
        "contact_channel",
        "contact_time",
        "monthly_budget",
        "priority",
        "contract",
        "travel_abroad",
        "household_lines",
        "billing",
        "auto_topup",
    } <= keys
    assert {o.value for o in bank["priority"].options} == {"price", "data", "calls_abroad", "coverage"}
    assert {q.kind for q in bank} == set(Kind)
    assert bank["travel_abroad"].derive_from_usage is not None
    priorities = [q.priority for q in bank]
    assert priorities == sorted(priorities, reverse=True)
    assert all(q.why and q.text for q in bank)


def test_a_bank_file_overrides_the_default(tmp_path: Path) -> None:
    bank = QuestionBank.load(_write(tmp_path, MINIMAL))
    assert [q.key for q in bank] == ["colour"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + MINIMAL, "question 'colour': duplicate key"),
        (
            MINIMAL.replace('options = [{ value = "red", label = "red" }]', ""),
            "question 'colour': a choice question needs options",
        ),
        (
            MINIMAL.replace('kind = "choice"', 'kind = "multiple"'),
            "question 'colour': unknown kind 'multiple'",
        ),
        (MINIMAL.replace('why = "Just curious."', ""), "question 'colour': why: Field required"),
        (
            MINIMAL.replace('key = "colour"', 'key = "Colour!"'),
            "question 'Colour!': key: key must be lower_snake_case",
        ),
        (
            MINIMAL.replace('kind = "choice"', 'kind = "money"'),
            "question 'colour': a money question takes no options",
        ),
        (MINIMAL + "stale_after_days = 0\n", "question 'colour': stale_after_days"),
        (MINIMAL + 'colour = "blue"\n', "question 'colour': colour: Extra inputs are not permitted"),
        (
            MINIMAL.replace('label = "red" }', 'label = "red" }, { value = "red", label = "rouge" }'),
            "question 'colour': option values must be unique",
        ),
        (
            "[[question]]\nkey = 'x'\ntext = 'X?'\nwhy = 'y'\nkind = 'yes_no'\n"
            "derive_from_usage = { metric = 'm' }\n",
            "question 'x': derive_from_usage on a yes_no question needs 'above'",
        ),
        ("title = 'nothing here'\n", "no [[question]] entries"),
        ("[[question]\n", "not valid TOML"),
    ],
)
def test_invalid_banks_name_the_question_and_the_problem(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(BankError) as info:
        QuestionBank.load(_write(tmp_path, text))
    assert message in str(info.value)
    assert str(tmp_path / "bank.toml") in str(info.value)


def test_missing_bank_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="cannot read the question bank"):
        QuestionBank.load(tmp_path / "nope.toml")
