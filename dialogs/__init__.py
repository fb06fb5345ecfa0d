"""Rapport's dialog engine: question bank, answer parsing, commands and the next-question policy."""

from dialogs.bank import BankError, Kind, Option, Question, QuestionBank
from dialogs.engine import DialogEngine, EngineConfig, Inbound, Reply, ReplyOption, TurnResult

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
]
