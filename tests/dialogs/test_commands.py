"""Commands typed anywhere in the dialogue, and ordinary answers that must never be taken for one."""

from __future__ import annotations

import pytest

from dialogs.bank import QuestionBank
from dialogs.commands import Command, CommandKind, detect_command

K = CommandKind

COMMANDS: list[tuple[str, CommandKind]] = [
    # carrier keywords: the whole message, any case
    ("STOP", K.STOP),
    ("stop", K.STOP),
    ("Stop.", K.STOP),
    ("STOPALL", K.STOP),
    ("unsubscribe", K.STOP),
    ("Cancel", K.STOP),
    ("END", K.STOP),
    ("quit", K.STOP),
    ("OPTOUT", K.STOP),
    ("opt-out", K.STOP),
    ("REVOKE", K.STOP),
    ("UNSTOP", K.START),
    ("start", K.START),
    ("HELP", K.HELP),
    ("info", K.HELP),
    # asking to stop in words: the bot confirms first
    ("stop please", K.STOP_REQUEST),
    ("please stop messaging me", K.STOP_REQUEST),
    ("stop texting me", K.STOP_REQUEST),
    ("unsubscribe me", K.STOP_REQUEST),
    ("can you stop messaging me?", K.STOP_REQUEST),
    ("leave me alone", K.STOP_REQUEST),
    # skip
    ("skip", K.SKIP),
    ("Skip!", K.SKIP),
    ("later", K.SKIP),
    ("ask me later", K.SKIP),
    ("next", K.SKIP),
    ("pass", K.SKIP),
    ("not now", K.SKIP),
    ("next question", K.SKIP),
    ("rather not say", K.SKIP),
    ("I'd rather not say", K.SKIP),
    ("prefer not to say", K.SKIP),
    ("idk", K.SKIP),
    ("I don't know", K.SKIP),
    ("dunno", K.SKIP),
    ("no idea", K.SKIP),
    ("not sure", K.SKIP),
    # why
    ("why", K.WHY),
    ("why?", K.WHY),
    ("Why do you ask?", K.WHY),
    ("why do you need that", K.WHY),
    ("why do you want to know", K.WHY),
    ("why do you need my budget?", K.WHY),
    ("what for", K.WHY),
    ("what's this for?", K.WHY),
    # profile
    ("what do you know about me", K.PROFILE),
    ("waht do you know about me", K.PROFILE),
    ("what do you know?", K.PROFILE),
    ("my profile", K.PROFILE),
    ("profile", K.PROFILE),
    ("show my data", K.PROFILE),
    ("what have you got on me", K.PROFILE),
    ("my preferences", K.PROFILE),
    # forget
    ("forget me", K.FORGET),
    ("forgt me", K.FORGET),
    ("delete my data", K.FORGET),
    ("Delete my data.", K.FORGET),
    ("erase my data", K.FORGET),
    ("delete everything", K.FORGET),
    ("remove my data", K.FORGET),
    ("forget everything about me", K.FORGET),
    ("please delete all my data", K.FORGET),
    # help
    ("help", K.HELP),
    ("help me", K.HELP),
    ("what can you do?", K.HELP),
    ("commands", K.HELP),
    # greetings
    ("hi", K.GREETING),
    ("Hello!", K.GREETING),
    ("hey", K.GREETING),
    ("hiya", K.GREETING),
    ("hiii", K.GREETING),
    ("good morning", K.GREETING),
    ("/start", K.GREETING),
    # fit
    ("which plan fits me", K.FIT),
    ("am I on the right plan?", K.FIT),
    ("what plan should I be on", K.FIT),
    ("best plan for me", K.FIT),
    # a greeting in front does not hide the command
    ("hi, delete my data", K.FORGET),
]


@pytest.mark.parametrize(("text", "kind"), COMMANDS, ids=[t for t, _ in COMMANDS])
def test_commands(text: str, kind: CommandKind) -> None:
    command = detect_command(text)
    assert command is not None
    assert command.kind is kind


@pytest.mark.parametrize(
    ("text", "topic", "value"),
    [
        ("change my budget to $50", "budget", "$50"),
        ("Change my budget to $50 please", "budget", "$50"),
        ("please change my budget to 39.99", "budget", "39.99"),
        ("update my contact time to evenings", "contact time", "evenings"),
        ("set my billing to paper", "billing", "paper"),
        ("could you update my data use to 5 gigs?", "data use", "5 gigs"),
        ("chnage my budget to 40", "budget", "40"),
        ("change my budget", "budget", None),
        ("change my budget to $50. " + "Also, let me tell you about my day. " * 10, "budget", "$50"),
    ],
)
def test_change(text: str, topic: str, value: str | None) -> None:
    assert detect_command(text) == Command(K.CHANGE, topic=topic, value=value)


ORDINARY = [
    "evenings", "text message", "no", "yes", "5 gigs", "$40", "paper", "2", "telegram",
    "I travel to Spain every summer", "morning", "email me", "text me", "ok", "please", "please do",
    "no thanks", "not really", "i don't", "i do", "why not", "just me", "a couple", "no preference",
    "I don't mind", "after work", "any time", "the cheapest plan", "calls abroad",
    "don't contact me at night", "I stopped using telegram", "non-stop streaming", "start over", "", "   ",
    "🙂", "'; DROP TABLE x; --", "help with data",
]  # fmt: skip


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_answers_are_not_commands(text: str) -> None:
    assert detect_command(text) is None


@pytest.mark.parametrize(
    "text", [s for q in QuestionBank.load() for o in q.options for s in (o.label, *o.synonyms)]
)
def test_no_answer_in_the_bank_is_a_command(text: str) -> None:
    assert detect_command(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "x" * 10_000,
        "I want to tell you a long story. " * 10 + "forget me",
        "stop " * 50,
        "why " + "really " * 60,
    ],
)
def test_long_or_odd_messages_are_not_commands(text: str) -> None:
    assert detect_command(text) is None
