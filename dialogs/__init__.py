"""Rapport's dialog engine: question bank, understanding (intents, facts, corrections), answer
parsing, commands and the next-question policy."""

from dialogs.bank import BankError, Kind, Option, Question, QuestionBank
from dialogs.engine import DialogEngine, EngineConfig, Inbound, Reply, ReplyOption, TurnResult
from dialogs.understanding import Understander, Understanding, understander

__all__ = [
    "BankError",
    "DialogEngine",
    "EngineConfig",
    "Inbound",
    "Kind",
    "Option",
    "Question",
    "QuestionBank",
    "Reply",
    "ReplyOption",
    "TurnResult",
    "Understander",
    "Understanding",
    "understander",
]
