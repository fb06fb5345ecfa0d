"""Property: over random conversations the bot never asks what it knows, nor two questions at once."""

from __future__ import annotations

import itertools
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from dialogs.bank import Kind, Question, QuestionBank
from dialogs.engine import DialogEngine, Inbound, TurnResult
from dialogs.policy import is_current
from storage.db import transaction
from storage.queries import find_identity
from storage.turns import load_facts
from tests.utils import START

_numbers = itertools.count()

ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("answer"), st.integers(0, 50)),
        st.tuples(st.just("garbage"), st.sampled_from(["banana", "???", "hmm", "🙃", "", "x" * 300])),
        st.tuples(
            st.just("command"),
            st.sampled_from(
                [
                    "skip",
                    "why?",
                    "what do you know about me",
                    "help",
                    "hi",
                    "change my budget to $45",
                    "later",
                ]
            ),
        ),
        st.tuples(
            st.just("out_of_turn"),
            st.sampled_from(
                ["actually my budget is $40", "btw I travel abroad a lot, yes", "my billing: paper"]
            ),
        ),
        st.tuples(st.just("restart"), st.just(0)),
        st.tuples(st.just("duplicate"), st.just(0)),
        st.tuples(st.just("wait_days"), st.integers(1, 400)),
    ),
    min_size=1,
    max_size=25,
)


def _answer_for(question: Question | None, pick: int) -> str:
    if question is None:
        return "ok"
    if question.kind in (Kind.CHOICE, Kind.TIME_WINDOW):
        option = question.options[pick % len(question.options)]
        words = [option.label, *option.synonyms]
        return words[pick % len(words)]
    return {
        Kind.YES_NO: ["yes", "no", "yep", "nope"][pick % 4],
        Kind.MONEY: f"${20 + pick}",
        Kind.NUMBER: str(1 + pick % 5),
        Kind.FREE_TEXT: "mostly maps and music",
    }[question.kind]


def _check(db: Engine, bank: QuestionBank, address: str, result: TurnResult, inbound: Inbound) -> None:
    asked = [r for r in result.replies if r.intent in ("ask", "reask", "reconfirm", "confirm")]
    assert len(asked) <= 1, f"two questions in one turn: {[r.text for r in result.replies]}"
    assert inbound.received_at is not None
    with transaction(db) as s:
        identity = find_identity(s, channel="sms", address=address)
        assert identity is not None
        prefs = load_facts(s.connection(), customer_id=identity.customer_id)
    for reply in asked:
        question = bank.get(reply.question_key)
        if question is not None and reply.intent in ("ask", "reask"):
            assert not is_current(question, prefs, inbound.received_at), (
                f"asked {question.key!r} although its answer {prefs[question.key].value!r} is stored"
            )


def test_random_conversations_keep_the_promises(db: Engine, bank: QuestionBank) -> None:
    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(actions=ACTIONS)
    def run(actions: list[tuple[str, object]]) -> None:
        dialog = DialogEngine(db, bank)
        address = f"+1415556{next(_numbers):04d}"
        now = START
        last: Inbound | None = None
        pending: Question | None = None
        for kind, arg in [("command", "hi"), *actions]:
            now += timedelta(minutes=1)
            if kind == "restart":
                dialog = DialogEngine(db, bank)
                continue
            if kind == "wait_days":
                assert isinstance(arg, int)
                now += timedelta(days=arg)
                continue
            if kind == "duplicate":
                if last is None:
                    continue
                inbound = last
            else:
                text = _answer_for(pending, arg) if kind == "answer" else str(arg)  # type: ignore[arg-type]
                inbound = Inbound(
                    channel="sms",
                    address=address,
                    text=text,
                    provider_id=f"{address}-{now.isoformat()}",
                    received_at=now,
                )
            result = dialog.handle(inbound)
            _check(db, bank, address, result, inbound)
            if not result.duplicate:
                asked = [r for r in result.replies if r.question_key and r.intent in ("ask", "reask")]
                pending = bank.get(asked[0].question_key) if asked else None
            last = inbound

    run()
