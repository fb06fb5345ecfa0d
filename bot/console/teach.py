"""Teaching the bot from the review queue: which questions can learn, and what phrase is kept.

The taught bank itself lives in :mod:`dialogs.taught` (the engine uses it).
"""

from __future__ import annotations

from dialogs.bank import Question
from dialogs.taught import MAX_PHRASE, TaughtBankCache, merge_synonyms, phrase_of, taught_bank


def teachable(question: Question | None) -> bool:
    """Whether answers to ``question`` are options that can take synonyms."""
    return question is not None and bool(question.options)


__all__ = ["MAX_PHRASE", "TaughtBankCache", "merge_synonyms", "phrase_of", "taught_bank", "teachable"]
