"""Answers operators taught in the console, merged into the question bank the engine uses."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from typing import Any

from sqlalchemy import Connection
from sqlmodel import Session

from dialogs.bank import Option, Question, QuestionBank
from storage import console_queries as q


def merge_synonyms(bank: QuestionBank, taught: Any) -> QuestionBank:
    """A new bank whose options also accept the given (question_key, option_value, phrase) rows."""
    extra: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in taught:
        extra[(row["question_key"], repr(row["option_value"]))].append(row["phrase"])
    if not extra:
        return bank
    questions: list[Question] = []
    for question in bank:
        options: list[Option] = []
        for option in question.options:
            phrases = extra.get((question.key, repr(option.value)), [])
            new = tuple(p for p in dict.fromkeys(phrases) if p and p not in option.synonyms)
            options.append(option.model_copy(update={"synonyms": option.synonyms + new}) if new else option)
        if options != list(question.options):
            question = question.model_copy(update={"options": tuple(options)})
        questions.append(question)
    return QuestionBank(questions, source=bank.source)


def taught_bank(bank: QuestionBank, session: Session | Connection) -> QuestionBank:
    """``bank`` with every synonym operators have taught (a new bank; ``bank`` is unchanged)."""
    conn = session.connection() if isinstance(session, Session) else session
    return merge_synonyms(bank, q.taught_synonyms(conn))


class TaughtBankCache:
    """The taught bank, rebuilt only when the taught-synonym table changed (a cheap check per call).

    Give ``cache.get`` to the dialog engine as its ``bank_provider``.
    """

    def __init__(self, bank: QuestionBank, *, max_age: float = 1.0) -> None:
        self.base = bank
        self.max_age = max_age  # seconds between checks: a taught answer works within a second
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int | None], QuestionBank] = ((0, None), bank)
        self._checked = -max_age

    def get(self, conn: Connection) -> QuestionBank:
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.max_age:
                return self._cached[1]
        version = q.taught_version(conn)
        with self._lock:
            self._checked = now
            if self._cached[0] == version:
                return self._cached[1]
        built = taught_bank(self.base, conn)
        with self._lock:
            self._cached = (version, built)
        return built
