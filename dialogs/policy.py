"""Which question comes next: one at a time, never one whose answer is stored and current."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from dialogs.bank import Question, QuestionBank
from storage.models import PendingKind
from storage.turns import Fact, TurnState


@dataclass(frozen=True, slots=True)
class Next:
    """The next thing to ask: a question (or its re-confirmation), or nothing."""

    question: Question | None
    kind: PendingKind = PendingKind.ASK


def is_stale(question: Question, pref: Fact, now: datetime) -> bool:
    """Whether a stored answer is old enough to be re-confirmed."""
    if question.stale_after_days is None:
        return False
    return now - pref.confirmed_at >= timedelta(days=question.stale_after_days)


def is_current(question: Question, prefs: Mapping[str, Fact], now: datetime) -> bool:
    """Whether the customer's answer to ``question`` is stored and not stale."""
    pref = prefs.get(question.key)
    return pref is not None and not is_stale(question, pref, now)


def open_questions(
    bank: QuestionBank, state: TurnState, prefs: Mapping[str, Fact], now: datetime
) -> list[Question]:
    """Unanswered questions that are not waiting after a skip, in bank order."""
    waiting = {key for key, until in state.deferred.items() if datetime.fromisoformat(until) > now}
    return [q for q in bank if q.key not in prefs and q.key not in waiting]


def next_step(
    bank: QuestionBank,
    state: TurnState,
    prefs: Mapping[str, Fact],
    now: datetime,
    *,
    order: Sequence[Question] | None = None,
    skip: Collection[str] = (),
) -> Next:
    """The pending question if it is still open; else the first unanswered question (in
    ``order``, by default the bank's priority order, leaving out ``skip``); else the first stale
    answer to re-confirm. Skipped questions wait until their time is up."""
    pending = bank.get(state.pending_key)
    if pending is not None:
        if state.pending_kind == PendingKind.RECONFIRM and pending.key in prefs:
            return Next(pending, PendingKind.RECONFIRM)
        if state.pending_kind == PendingKind.ASK and not is_current(pending, prefs, now):
            return Next(pending, PendingKind.ASK)
    waiting = {key for key, until in state.deferred.items() if datetime.fromisoformat(until) > now}
    for question in order if order is not None else bank:
        if question.key not in prefs and question.key not in waiting and question.key not in skip:
            return Next(question, PendingKind.ASK)
    for question in bank:
        pref = prefs.get(question.key)
        if pref is not None and question.key not in waiting and is_stale(question, pref, now):
            return Next(question, PendingKind.RECONFIRM)
    return Next(None)
