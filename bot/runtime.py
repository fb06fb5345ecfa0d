"""Wiring: settings -> database, question bank, dialog engine and contact policy, built once per
process."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Engine

from bot.settings import Settings
from dialogs.bank import QuestionBank
from dialogs.engine import DialogEngine
from dialogs.taught import TaughtBankCache
from schedulers.policy import PolicyConfig
from storage.db import open_database


@dataclass(frozen=True, slots=True)
class Runtime:
    """Everything a command or channel needs to talk to customers."""

    settings: Settings
    db: Engine
    bank: QuestionBank
    dialog: DialogEngine
    policy: PolicyConfig  # the contact policy, on the configured channels (Settings.policy_config)


def build_runtime(settings: Settings) -> Runtime:
    """Open (and migrate) the database, load the question bank, make the engine."""
    bank = QuestionBank.load(settings.question_bank)
    db = open_database(settings.database_url)
    taught = TaughtBankCache(bank)  # answers operators taught in the console
    dialog = DialogEngine(
        db, bank, settings.engine_config(), bank_provider=taught.get, intents_provider=taught.intents
    )
    return Runtime(settings, db, bank, dialog, settings.policy_config())
