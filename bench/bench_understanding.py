"""How well the bot understands customers: the labelled set in tests/data/understanding_eval.jsonl.

Prints, for the held-out part (never used as training examples) and the development part:
accuracy overall and per category, a confusion table of categories (expected rows, understood
columns), the share of messages with a wrongly stored fact next to the share of fallbacks (a
wrong stored fact is worse than a fallback: the bot acts on something the customer never said),
and speed: the classifier's training time and the time to understand one message never seen
before (parses and scores are remembered per text; the time for a text seen before is shown
too), against a baseline measured in the same run (the answer parser alone on the same messages).
Targets (issue 13): held-out >= 90% overall and >= 80% in every category.

    python bench/bench_understanding.py [--misses]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from dialogs.bank import QuestionBank
from dialogs.evaluation import Report, evaluate, load_rows
from dialogs.parsing import forget_remembered, parse_answer
from dialogs.understanding import IntentData, Understander

TARGET_OVERALL, TARGET_CATEGORY = 0.90, 0.80


def _print_report(name: str, report: Report, *, misses: bool) -> bool:
    print(f"\n== {name}: {report.total} messages, {report.accuracy:.1%} right")
    cats = report.category_accuracy()
    for cat, acc in cats.items():
        right, n = report.by_category[cat]
        print(f"  {cat:<13} {acc:6.1%}  ({right}/{n})")
    print(f"  wrong stored fact: {report.wrong_fact_rows / report.total:.1%} of messages "
          f"({report.wrong_fact_rows});  fallback: {report.fallback_rows / report.total:.1%} "
          f"({report.fallback_rows})")  # fmt: skip
    labels = sorted({c for pair in report.confusion for c in pair})
    width = max(len(x) for x in labels) + 1
    print("\n  confusion (rows: expected, columns: understood)")
    print(" " * (width + 2) + " ".join(f"{x[:6]:>6}" for x in labels))
    for row in labels:
        counts = [report.confusion.get((row, col), 0) for col in labels]
        if sum(counts):
            print(f"  {row:<{width}}" + " ".join(f"{c or '.':>6}" for c in counts))
    if misses:
        print("\n  misses:")
        for miss, got in report.misses:
            facts = {f.key: f.value for f in got.facts}
            print(f"   [{miss['pending']}] {miss['text']!r}: want {miss['intent']} {miss['facts']}, "
                  f"got {got.intent} {got.confidence:.2f} {facts}")  # fmt: skip
    return report.accuracy >= TARGET_OVERALL and all(a >= TARGET_CATEGORY for a in cats.values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--misses", action="store_true", help="list every message understood wrongly")
    parser.add_argument("--repeat", type=int, default=5, help="timing runs (median)")
    args = parser.parse_args()
    bank = QuestionBank.load()
    data = IntentData.load()
    trainings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        understander = Understander(data)
        trainings.append(time.perf_counter() - started)
    examples = sum(len(v) for v in data.examples.values())
    heldout, dev = load_rows(split="heldout"), load_rows(split="dev")
    met = _print_report("held out", evaluate(understander, bank, heldout), misses=args.misses)
    _print_report("development", evaluate(understander, bank, dev), misses=args.misses)

    rows = heldout + dev
    per_message, baseline, seen = [], [], []
    for _ in range(args.repeat):
        # Parses and scores are remembered per text: time each message as if new, then again.
        forget_remembered()
        understander.classifier.forget()
        started = time.perf_counter()
        for row in rows:
            understander.understand(bank, row["text"], pending=bank.get(row["pending"]))
        per_message.append((time.perf_counter() - started) / len(rows))
        started = time.perf_counter()
        for row in rows:
            understander.understand(bank, row["text"], pending=bank.get(row["pending"]))
        seen.append((time.perf_counter() - started) / len(rows))
        forget_remembered()
        started = time.perf_counter()
        for row in rows:
            pending = bank.get(row["pending"])
            if pending is not None:
                parse_answer(pending, row["text"])
        baseline.append((time.perf_counter() - started) / len(rows))
    classify = []
    texts = [row["text"] for row in rows]
    for _ in range(args.repeat):
        understander.classifier.forget()
        started = time.perf_counter()
        for text in texts:
            understander.classifier.scores(text)
        classify.append((time.perf_counter() - started) / len(texts))
    one, base, clf = statistics.median(per_message), statistics.median(baseline), statistics.median(classify)
    print(f"\n== speed (median of {args.repeat})")
    print(f"  training on {examples} examples: {statistics.median(trainings) * 1000:.0f} ms")
    print(f"  classifier alone:             {clf * 1e6:7.0f} us a message")
    print(f"  understanding a message:      {one * 1e6:7.0f} us")
    print(f"  the same text seen before:    {statistics.median(seen) * 1e6:7.0f} us")
    print(f"  baseline (pending parse only):{base * 1e6:7.0f} us  -> {one / base:.1f}x")
    print(f"\ntarget (held out >= {TARGET_OVERALL:.0%} overall, >= {TARGET_CATEGORY:.0%} per category): "
          f"{'met' if met else 'NOT met'}")  # fmt: skip
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
