"""Scoring the understanding step against a labelled set (``tests/data/understanding_eval.jsonl``).

Each row: ``text``, ``pending`` (the question asked, or null), ``intent`` (expected), ``facts``
(expected question key -> value), ``split`` ("heldout" rows are never training examples).
A row is right when the intent and every fact are right. A fact stored that was not expected (or
with another value) is a *wrong stored fact*, counted apart: it is worse than a fallback.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dialogs.bank import QuestionBank
from dialogs.understanding import COMMANDS, StatedFact, Understander, Understanding

EVAL_FILE = Path(__file__).resolve().parent.parent / "tests" / "data" / "understanding_eval.jsonl"

_CATEGORY = {**dict.fromkeys(COMMANDS, "command"), "stop": "opt_out"}


def category(intent: str) -> str:
    """The category an intent is scored in (commands together, stop as opt-out)."""
    return _CATEGORY.get(intent, intent)


def load_rows(path: str | Path | None = None, *, split: str | None = None) -> list[dict[str, Any]]:
    """The labelled rows (of one split, if given)."""
    rows = [
        json.loads(line) for line in Path(path or EVAL_FILE).read_text("utf-8").splitlines() if line.strip()
    ]
    return [r for r in rows if split is None or r["split"] == split]


def comparable(value: Any) -> Any:
    """A stored value as the labels write it: a time window's name or "HH:MM-HH:MM"."""
    if isinstance(value, dict):
        window = value.get("window")
        return window if window not in (None, "custom") else f"{value.get('start')}-{value.get('end')}"
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


@dataclass
class Report:
    """Accuracy per category, the confusion of intents, wrong stored facts, fallbacks, speed."""

    total: int = 0
    right: int = 0
    wrong_fact_rows: int = 0
    fallback_rows: int = 0
    by_category: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    misses: list[tuple[dict[str, Any], Understanding]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def accuracy(self) -> float:
        return self.right / self.total if self.total else 0.0

    def category_accuracy(self) -> dict[str, float]:
        return {c: r / n for c, (r, n) in sorted(self.by_category.items()) if n}


def _known(bank: QuestionBank, row: Mapping[str, Any]) -> dict[str, StatedFact]:
    # Every other question was answered earlier; a correction corrects what was said last.
    then = datetime(2026, 1, 1, tzinfo=UTC)
    known = {q.key: StatedFact(None, then) for q in bank if q.key != row.get("pending")}
    if row["intent"] == "correction":
        for key in row["facts"]:
            known[key] = StatedFact(None, then + timedelta(hours=1))
    return known


def evaluate(understander: Understander, bank: QuestionBank, rows: Iterable[Mapping[str, Any]]) -> Report:
    """Understand every row and score it."""
    report = Report()
    for row in rows:
        pending = bank.get(row.get("pending"))
        known = _known(bank, row)
        started = time.perf_counter()
        understood = understander.understand(bank, row["text"], pending=pending, known=known)
        report.seconds += time.perf_counter() - started
        got = {f.key: comparable(f.value) for f in understood.facts}
        expected = {k: comparable(v) for k, v in row["facts"].items()}
        wrong_fact = any(k not in expected or expected[k] != v for k, v in got.items())
        ok = understood.intent == row["intent"] and got == expected
        report.total += 1
        report.right += ok
        report.wrong_fact_rows += wrong_fact
        report.fallback_rows += understood.intent == "unknown"
        cell = report.by_category[category(row["intent"])]
        cell[0] += ok
        cell[1] += 1
        report.confusion[(category(row["intent"]), category(understood.intent))] += 1
        if not ok:
            report.misses.append((dict(row), understood))
    return report
