"""Teaching the bot from the review queue: which questions can learn, and what phrase is kept.

The taught bank itself lives in :mod:`dialogs.taught` (the engine uses it).
"""

from __future__ import annotations

from dialogs.bank import Question
from dialogs.parsing import normalize
from dialogs.taught import TaughtBankCache, merge_synonyms, taught_bank

MAX_PHRASE = 200


def teachable(question: Question | None) -> bool:
    """Whether answers to ``question`` are options that can take synonyms."""
    return question is not None and bool(question.options)


def phrase_of(text: str) -> str:
    """The taught phrase for a customer's message: normalised, and short enough to store."""
    return normalize(text)[:MAX_PHRASE].strip()


__all__ = ["MAX_PHRASE", "TaughtBankCache", "merge_synonyms", "phrase_of", "taught_bank", "teachable"]
