"""The segment filter: what each expression means, errors that say where and what was expected,
and strings that stay data whatever they contain."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from schedulers.segment_filter import SegmentError, Term, check_metrics, evaluate, parse

FACTS: dict[str, Any] = {
    "plan": "plus-20",
    "suggested": "basic-5",
    "suggest": True,
    "saving": Decimal("20"),
    "yearly_saving": Decimal("240"),
    "current_cost": Decimal("45"),
    "months": Decimal(3),
    "consent": True,
    "channel": "sms",
    "avg(data_gb)": Decimal("2.1"),
    "over(data_gb)": Decimal(0),
    "pref(priority)": "price",
    "pref(budget)": 30,
    "pref(roaming)": False,
}


def facts(term: Term) -> Any:
    return FACTS.get(str(term))


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ('plan == "plus-20"', True),
        ("plan == 'unlimited'", False),
        ('plan != "unlimited"', True),
        ('plan in ("plus-20", "unlimited")', True),
        ('plan not in ("plus-20")', False),
        ("avg(data_gb) < 5", True),
        ("avg(data_gb) >= 2.1", True),
        ("avg(roaming_data_gb) > 0", False),  # no value: a comparison is false
        ("avg(roaming_data_gb) == null", True),
        ("saving >= 10 and yearly_saving > 200", True),
        ("saving > 25 or months == 3", True),
        ("consent", True),
        ("not consent", False),
        ("suggest and suggested == 'basic-5'", True),
        ('channel == "sms"', True),
        ("over(data_gb) >= 1", False),
        ('pref(priority) == "price"', True),
        ("pref(budget) <= 30", True),
        ("pref(roaming) == false", True),
        ("pref(roaming) == 0", False),  # false is not 0
        ('pref("priority") == "price"', True),
        ("pref(missing) != 'x'", True),
        ('not (plan == "x" or saving < 1) and consent', True),
        ('PLAN == "plus-20" AND Consent', True),
        ("saving >= 1_0", True),
    ],
)
def test_valid_expressions_mean_what_the_readme_says(expression: str, expected: bool) -> None:
    assert evaluate(parse(expression), facts) is expected


def test_and_binds_tighter_than_or() -> None:
    assert evaluate(parse('plan == "x" and consent or saving > 1'), facts)
    assert not evaluate(parse('plan == "x" and (consent or saving > 1)'), facts)


@pytest.mark.parametrize(
    ("expression", "position", "expected"),
    [
        ("", 0, "expected a condition"),
        ("plan ==", 7, "expected a value"),
        ('plan == "x', 8, "unclosed string"),
        ('saving > "a"', 9, "expected a number"),
        ("plan > 3", 7, "expected a quoted string"),
        ("foo == 1", 0, "expected a field"),
        ("plan in (1)", 9, "expected a quoted string"),
        ('(plan == "a"', 12, 'expected ")"'),
        ('plan == "a" consent', 12, 'expected "and", "or" or the end'),
        ("avg data_gb < 5", 4, 'expected "(" after avg'),
        ("consent and", 11, "expected a field"),
        ("plan ; drop", 5, "unexpected character ';'"),
        ("plan not 3", 9, 'expected "in" after "not"'),
        ("consent == 'yes'", 11, "expected true or false"),
    ],
)
def test_errors_name_the_position_and_what_was_expected(
    expression: str, position: int, expected: str
) -> None:
    with pytest.raises(SegmentError) as caught:
        parse(expression)
    assert caught.value.position == position
    assert expected in str(caught.value)
    assert f"at position {position}" in str(caught.value)


@pytest.mark.parametrize(
    ("expression", "literal"),
    [
        ('plan == "x\\") or 1=1 --"', 'x") or 1=1 --'),
        ('plan == "\'; DROP TABLE customer; --"', "'; DROP TABLE customer; --"),
        ("plan == \"__import__('os').system('id')\"", "__import__('os').system('id')"),
        ('plan == "{{ 7*7 }}"', "{{ 7*7 }}"),
    ],
)
def test_injection_attempts_are_only_data(expression: str, literal: str) -> None:
    node = parse(expression)
    assert node.values == (literal,)  # type: ignore[union-attr]
    assert not evaluate(node, facts)


def test_unknown_metrics_are_refused() -> None:
    check_metrics(parse("avg(data_gb) < 5"), ["data_gb"])
    with pytest.raises(ValueError, match="unknown metric"):
        check_metrics(parse("over(dtaa_gb) > 0"), ["data_gb"])
