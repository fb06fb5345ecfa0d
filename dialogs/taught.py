"""What operators taught: answers (merged into the question bank the engine uses) and intent
phrasings (added to the understanding step's examples), with the one place that teaches and undoes.

Both live in the ``taught_synonym`` table: an answer as (question key, option value, phrase), an
intent phrasing as (``INTENT_KEY``, intent name, phrase).
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection
from sqlmodel import Session

from dialogs.bank import Option, Question, QuestionBank
from dialogs.parsing import normalize
from dialogs.understanding import INTENTS, IntentData, clean
from storage import console_queries as q
from storage.models import Direction, utcnow

INTENT_KEY = "@intent"  # the question key of taught intent phrasings
MAX_PHRASE = 200


class TeachError(ValueError):
    """Teaching refused: the message cannot be taught, or the phrase means something else already."""


@dataclass(frozen=True, slots=True)
class Taught:
    """One taught phrase: an answer to a question, or an intent."""

    id: int
    phrase: str
    question_key: str | None  # None for an intent phrasing
    value: Any  # the option value, or the intent name
    message_id: int | None
    taught_by: str
    taught_at: datetime

    @property
    def meaning(self) -> str:
        """What the phrase was taught to mean: "intent handoff" or "answer contact_time=evening"."""
        if self.question_key is None:
            return f"intent {self.value}"
        return f"answer {self.question_key}={self.value}"


def _taught(row: Any) -> Taught:
    intent = row["question_key"] == INTENT_KEY
    return Taught(
        id=row["id"],
        phrase=row["phrase"],
        question_key=None if intent else row["question_key"],
        value=row["option_value"],
        message_id=row["message_id"],
        taught_by=row["taught_by"],
        taught_at=row["taught_at"],
    )


def phrase_of(text: str) -> str:
    """The taught phrase for a customer's message: normalised, and short enough to store."""
    return normalize(text)[:MAX_PHRASE].strip()


def taught_intents(rows: Any) -> tuple[tuple[str, str], ...]:
    """The (intent, phrase) pairs among taught rows."""
    return tuple((r["option_value"], r["phrase"]) for r in rows if r["question_key"] == INTENT_KEY)


def list_taught(conn: Connection) -> list[Taught]:
    """Everything taught, oldest first."""
    return [_taught(row) for row in q.taught_synonyms(conn)]


def teach(
    conn: Connection,
    *,
    message_id: int,
    by: str,
    bank: QuestionBank,
    intent: str | None = None,
    question_key: str | None = None,
    option_value: Any = None,
) -> Taught:
    """Teach what a reviewable customer message meant: an ``intent``, or an answer to a question.

    Refuses (:class:`TeachError`) a message that is not waiting for review, and a phrase already
    taught, or shipped in ``intents.toml``, as meaning something else.
    """
    found = q.message(conn, message_id)
    if found is None or found["direction"] != Direction.IN:
        raise TeachError(f"no customer message {message_id}")
    if not found["needs_review"]:
        raise TeachError(f"message {message_id} is not waiting for review")
    if message_id in q.reviews_for(conn, [message_id]):
        raise TeachError(f"message {message_id} is already reviewed")
    phrase = phrase_of(found["text"] or "")
    if not phrase:
        raise TeachError("this message has no text to learn from")
    key: str
    value: Any
    if intent is not None:
        if intent not in INTENTS:
            raise TeachError(f"unknown intent {intent!r} (known: {', '.join(INTENTS)})")
        key, value = INTENT_KEY, intent
        shipped = IntentData.load().examples
        other = next(
            (i for i, ex in shipped.items() if i != intent and clean(phrase) in {clean(e) for e in ex}), None
        )
        if other is not None:
            raise TeachError(f"'{phrase}' is already an example of the intent {other}")
    else:
        question = bank.get(question_key)
        if question is None or not question.options:
            raise TeachError("choose a question with options")
        option = question.option(option_value)
        if option is None:
            raise TeachError(f"{question.key} has no option {option_value!r}")
        key, value = question.key, option.value
    for row in q.taught_with_phrase(conn, phrase):
        if (row["question_key"], row["option_value"]) != (key, value):
            raise TeachError(f"'{phrase}' is already taught as {_taught(row).meaning}")
    taught_id = q.add_taught_synonym(
        conn, question_key=key, option_value=value, phrase=phrase, message_id=message_id, by=by
    )
    q.mark_reviewed(conn, message_id=message_id, by=by, action="taught", now=utcnow())
    return _taught(next(r for r in q.taught_with_phrase(conn, phrase) if r["id"] == taught_id))


def undo(conn: Connection, taught_id: int) -> Taught:
    """Forget one taught phrase; what it was (:class:`TeachError` if there is no such row)."""
    row = q.delete_taught(conn, taught_id)
    if row is None:
        raise TeachError(f"nothing taught with id {taught_id}")
    return _taught(row)


def merge_synonyms(bank: QuestionBank, taught: Any) -> QuestionBank:
    """A new bank whose options also accept the given (question_key, option_value, phrase) rows."""
    extra: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in taught:
        if row["question_key"] != INTENT_KEY:
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
    """The taught bank and taught intent phrasings, rebuilt only when the taught table changed (a
    cheap check per call).

    Give ``cache.get`` to the dialog engine as its ``bank_provider`` and ``cache.intents`` as its
    ``intents_provider``.
    """

    def __init__(self, bank: QuestionBank, *, max_age: float = 1.0) -> None:
        self.base = bank
        self.max_age = max_age  # seconds between checks: a taught answer works within a second
        self._lock = threading.Lock()
        self._cached: tuple[tuple[int, int | None], QuestionBank, tuple[tuple[str, str], ...]] = (
            (0, None),
            bank,
            (),
        )
        self._checked = -max_age

    def _refresh(self, conn: Connection) -> tuple[QuestionBank, tuple[tuple[str, str], ...]]:
        now = time.monotonic()
        with self._lock:
            if now - self._checked < self.max_age:
                return self._cached[1], self._cached[2]
        version = q.taught_version(conn)
        with self._lock:
            self._checked = now
            if self._cached[0] == version:
                return self._cached[1], self._cached[2]
        rows = q.taught_synonyms(conn)
        built = merge_synonyms(self.base, rows), taught_intents(rows)
        with self._lock:
            self._cached = (version, *built)
        return built

    def get(self, conn: Connection) -> QuestionBank:
        """The bank with every taught answer."""
        return self._refresh(conn)[0]

    def intents(self, conn: Connection) -> tuple[tuple[str, str], ...]:
        """Every taught (intent, phrase)."""
        return self._refresh(conn)[1]
