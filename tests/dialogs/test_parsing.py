"""Answer parsing: real-world sloppy answers, confidence, ambiguity, formatting and hostile input."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dialogs.bank import Kind, QuestionBank
from dialogs.parsing import (
    REMEMBER_TEXT_MAX,
    find_question,
    forget_remembered,
    format_value,
    mentions,
    normalize,
    parse_answer,
    parse_yes_no,
    remembered,
)

BANK = QuestionBank.load()
ACCEPT = 0.75  # the engine's default threshold


def window(name: str, start: str, end: str) -> dict[str, str]:
    return {"window": name, "start": start, "end": end}


MORNING = window("morning", "08:00", "12:00")
AFTERNOON = window("afternoon", "12:00", "17:00")
EVENING = window("evening", "17:00", "21:00")
ANYTIME = window("anytime", "08:00", "21:00")

SLOPPY: list[tuple[str, str, Any]] = [
    # contact_channel
    ("contact_channel", "txt me", "sms"),
    ("contact_channel", "Telegarm", "telegram"),
    ("contact_channel", "TEXT MESSAGE", "sms"),
    ("contact_channel", "e-mail", "email"),
    ("contact_channel", "Email me pls", "email"),
    ("contact_channel", "emal", "email"),
    ("contact_channel", "sms please", "sms"),
    ("contact_channel", "tg", "telegram"),
    ("contact_channel", "telegram!!", "telegram"),
    ("contact_channel", "no telegram, email", "email"),
    ("contact_channel", "“text” please", "sms"),
    ("contact_channel", "ｅｍａｉｌ", "email"),
    ("contact_channel", "2", "telegram"),
    ("contact_channel", "#3", "email"),
    ("contact_channel", "option 1", "sms"),
    # contact_time
    ("contact_time", "evnings", EVENING),
    ("contact_time", "after work", EVENING),
    ("contact_time", "Mornings", MORNING),
    ("contact_time", "mornings pls", MORNING),
    ("contact_time", "aftrnoons", AFTERNOON),
    ("contact_time", "lunchtime", AFTERNOON),
    ("contact_time", "before noon", MORNING),
    ("contact_time", "any time", ANYTIME),
    ("contact_time", "anytime really", ANYTIME),
    ("contact_time", "whenever", ANYTIME),
    ("contact_time", "not mornings, evenings", EVENING),
    ("contact_time", "after 5", EVENING),
    ("contact_time", "after 6pm", window("custom", "18:00", "21:00")),
    ("contact_time", "between 9 and 11am", window("custom", "09:00", "11:00")),
    ("contact_time", "6-8pm", window("custom", "18:00", "20:00")),
    ("contact_time", "from 10am to 2", window("custom", "10:00", "14:00")),
    ("contact_time", "18:00–20:00", window("custom", "18:00", "20:00")),
    ("contact_time", "9 to 5", window("custom", "09:00", "17:00")),
    ("contact_time", "4", ANYTIME),
    # monthly_budget
    ("monthly_budget", "$40", "40.00"),
    ("monthly_budget", "40 bucks", "40.00"),
    ("monthly_budget", "40/month", "40.00"),
    ("monthly_budget", "40 a month", "40.00"),
    ("monthly_budget", "forty dollars", "40.00"),
    ("monthly_budget", "fifty", "50.00"),
    ("monthly_budget", "$39.99", "39.99"),
    ("monthly_budget", "$40.5", "40.50"),
    ("monthly_budget", "39.995", "40.00"),
    ("monthly_budget", "40$", "40.00"),
    ("monthly_budget", "USD 40", "40.00"),
    ("monthly_budget", "€40", "40.00"),
    ("monthly_budget", "40 quid", "40.00"),
    ("monthly_budget", "under 50", "50.00"),
    ("monthly_budget", "no more than 60", "60.00"),
    ("monthly_budget", "between 30 and 40", "40.00"),
    ("monthly_budget", "$30-$40", "40.00"),
    ("monthly_budget", "1,200", "1200.00"),
    ("monthly_budget", "about 40 bucks a month", "40.00"),
    ("monthly_budget", "$50 for 2 lines", "50.00"),
    ("monthly_budget", "two hundred", "200.00"),
    # data_estimate_gb
    ("data_estimate_gb", "about 5 gigs", 5),
    ("data_estimate_gb", "5GB", 5),
    ("data_estimate_gb", "5 gb", 5),
    ("data_estimate_gb", "five", 5),
    ("data_estimate_gb", "twenty two", 22),
    ("data_estimate_gb", "twenty-two gigs", 22),
    ("data_estimate_gb", "a couple", 2),
    ("data_estimate_gb", "1.5", 1.5),
    ("data_estimate_gb", "1,5", 1.5),
    ("data_estimate_gb", "500mb", 0.5),
    ("data_estimate_gb", "~10", 10),
    ("data_estimate_gb", "10ish", 10),
    ("data_estimate_gb", "3-5 gigs", 4),
    ("data_estimate_gb", "1.5 TB", 1500),
    ("data_estimate_gb", "maybe 3", 3),
    ("data_estimate_gb", "2", 2),
    ("data_estimate_gb", "one and a half gigs", 1.5),
    ("data_estimate_gb", "5 gigs for $40", 5),
    # household_lines
    ("household_lines", "just me", 1),
    ("household_lines", "only me", 1),
    ("household_lines", "me and my wife", 2),
    ("household_lines", "a couple", 2),
    ("household_lines", "3 lines", 3),
    ("household_lines", "two", 2),
    ("household_lines", "4", 4),
    # yes/no questions
    ("travel_abroad", "Yeah", True),
    ("travel_abroad", "nope", False),
    ("travel_abroad", "yess", True),
    ("travel_abroad", "i don't", False),
    ("travel_abroad", "I do travel, yes", True),
    ("travel_abroad", "I never travel", False),
    ("travel_abroad", "definately", True),
    ("travel_abroad", "of course not", False),
    ("auto_topup", "yes please", True),
    ("auto_topup", "no thanks", False),
    ("auto_topup", "please do", True),
    ("auto_topup", "👍", True),
    # contract, priority, billing
    ("contract", "no contract", "month_to_month"),
    ("contract", "either", "no_preference"),
    ("contract", "whatever's cheaper", "no_preference"),
    ("contract", "24 months", "contract"),
    ("contract", "pay as you go", "month_to_month"),
    ("contract", "I don't mind", "no_preference"),
    ("priority", "cheapest", "price"),
    ("priority", "internet", "data"),
    ("priority", "streaming", "data"),
    ("priority", "covrage", "coverage"),
    ("priority", "good signal", "coverage"),
    ("priority", "calls abroad", "calls_abroad"),
    ("billing", "papr", "paper"),
    ("billing", "by post", "paper"),
    ("billing", "snail mail", "paper"),
    ("billing", "in the app", "app"),
    ("billing", "pdf", "email"),
    ("billing", "3", "paper"),
    # free text keeps the original text, trimmed
    ("main_use", "  Mostly maps & music  ", "Mostly maps & music"),
]


@pytest.mark.parametrize(("key", "text", "expected"), SLOPPY, ids=[f"{k}:{t}" for k, t, _ in SLOPPY])
def test_sloppy_answers_are_understood(key: str, text: str, expected: Any) -> None:
    parse = parse_answer(BANK[key], text)
    assert parse is not None
    assert parse.value == expected
    assert type(parse.value) is type(expected)  # 5, not 5.0; "40.00", not Decimal
    assert parse.confidence >= ACCEPT
    assert parse.matched
    json.dumps(parse.value)


@pytest.mark.parametrize(
    ("key", "text", "low", "high"),
    [
        ("contact_channel", "sms", 1.0, 1.0),
        ("contact_channel", "3", 1.0, 1.0),
        ("contact_time", "evnings", 0.85, 0.95),
        ("contact_channel", "telegarm", 0.75, 0.9),
        ("travel_abroad", "yess", 0.9, 0.99),
        ("data_estimate_gb", "5 gb", 1.0, 1.0),
        ("data_estimate_gb", "about 5 gigs", 0.85, 0.95),
        ("data_estimate_gb", "maybe 3", 0.85, 0.95),
        ("data_estimate_gb", "3-5 gigs", 0.75, 0.85),
        ("monthly_budget", "between 30 and 40", 0.75, 0.85),
        ("monthly_budget", "under 50", 0.85, 0.95),
        ("household_lines", "just me", 1.0, 1.0),
        # Guesses the engine should not take without asking.
        ("travel_abroad", "I travel to Spain every summer", 0.5, 0.74),
        ("main_use", "what?", 0.0, 0.49),
    ],
)
def test_confidence_levels(key: str, text: str, low: float, high: float) -> None:
    parse = parse_answer(BANK[key], text)
    assert parse is not None
    assert low <= parse.confidence <= high


UNRELATED = ["hello", "what?", "banana", "I like turtles", "purple", "'; DROP TABLE message; --", "🙂"]


@pytest.mark.parametrize("text", UNRELATED)
@pytest.mark.parametrize("key", [q.key for q in BANK if q.kind is not Kind.FREE_TEXT])
def test_unrelated_text_is_not_an_answer(key: str, text: str) -> None:
    parse = parse_answer(BANK[key], text)
    assert parse is None or parse.confidence < 0.5


@pytest.mark.parametrize(
    ("key", "text", "values"),
    [
        ("contact_time", "morning or evening", ("morning", "evening")),
        ("contact_channel", "text or email", ("sms", "email")),
        ("billing", "paper or the app", ("paper", "app")),
        ("travel_abroad", "yes and no", (True, False)),
        ("household_lines", "2 phones and 3 tablets", (2, 3)),
    ],
)
def test_two_different_answers_are_ambiguous(key: str, text: str, values: tuple[Any, ...]) -> None:
    parse = parse_answer(BANK[key], text)
    assert parse is not None
    value = parse.value["window"] if isinstance(parse.value, dict) else parse.value
    assert value in values
    assert parse.confidence <= 0.5


@pytest.mark.parametrize(
    ("key", "text", "value"),
    [
        ("monthly_budget", "$20000", "20000.00"),
        ("household_lines", "25", 25),
        ("household_lines", "0", 0),
        ("data_estimate_gb", "3000", 3000),
        ("contact_time", "after 10pm", window("custom", "22:00", "23:00")),
    ],
)
def test_out_of_range_is_low_confidence(key: str, text: str, value: Any) -> None:
    parse = parse_answer(BANK[key], text)
    assert parse is not None
    assert parse.value == value
    assert parse.confidence <= 0.3


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("contact_channel", "1", "sms"),
        ("contact_channel", "#2", "telegram"),
        ("contact_channel", "option 3", "email"),
        ("contact_channel", "5", None),
        ("contact_time", "2", AFTERNOON),
        ("billing", "2.", "app"),
        ("household_lines", "3", 3),  # a number question: "3" is three, not option 3
        ("data_estimate_gb", "1", 1),
    ],
)
def test_option_numbers(key: str, text: str, expected: Any) -> None:
    parse = parse_answer(BANK[key], text)
    assert (parse.value if parse else None) == expected
    if parse is not None:
        assert parse.confidence == 1.0


@pytest.mark.parametrize(
    "text",
    [
        "yes", "y", "yeah", "yep", "yup", "sure", "ok", "of course", "definitely", "absolutely", "please do",
        "yes please", "yess", "YES!", "👍", "i do", "why not", "no problem", "sure, why not",
    ],
)  # fmt: skip
def test_yes(text: str) -> None:
    parse = parse_yes_no(text)
    assert parse is not None
    assert parse.value is True
    assert parse.confidence >= ACCEPT


@pytest.mark.parametrize(
    "text",
    [
        "no", "n", "nope", "nah", "never", "not really", "no thanks", "noo", "👎", "i don't", "I do not",
        "No.", "definitely not", "no way",
    ],
)  # fmt: skip
def test_no(text: str) -> None:
    parse = parse_yes_no(text)
    assert parse is not None
    assert parse.value is False
    assert parse.confidence >= ACCEPT


@pytest.mark.parametrize("text", ["not sure", "I don't know", "hello", "maybe", "evenings", ""])
def test_neither_yes_nor_no(text: str) -> None:
    assert parse_yes_no(text) is None


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        ("contact_channel", "sms", "text message"),
        ("contact_time", EVENING, "evenings"),
        ("contact_time", "morning", "mornings"),
        ("contact_time", window("custom", "18:00", "20:00"), "between 18:00 and 20:00"),
        ("monthly_budget", "40.00", "$40.00"),
        ("monthly_budget", "1200.00", "$1,200.00"),
        ("data_estimate_gb", 5, "5 GB"),
        ("data_estimate_gb", 5.0, "5 GB"),
        ("data_estimate_gb", 0.5, "0.5 GB"),
        ("household_lines", 2, "2 lines"),
        ("household_lines", 1, "1 line"),
        ("travel_abroad", True, "yes"),
        ("auto_topup", False, "no"),
        ("main_use", "maps and music", "maps and music"),
    ],
)
def test_format_value(key: str, value: Any, said: str) -> None:
    assert format_value(BANK[key], value) == said


@pytest.mark.parametrize(
    ("key", "text", "expected"),
    [
        ("monthly_budget", "actually my budget is $40", True),
        ("monthly_budget", "my budegt is 40", True),  # one typo in a long word
        ("auto_topup", "top-ups are fine", True),
        ("household_lines", "we have 3 lines", True),
        ("household_lines", "just one line", True),
        ("travel_abroad", "I travel a lot", True),
        ("contact_time", "what contact time?", True),
        ("household_lines", "airlines", False),  # whole words only
        ("billing", "billboard", False),
        ("contact_channel", "evenings", False),
        ("monthly_budget", "I like turtles", False),
        ("data_estimate_gb", "sage", False),  # "usage" with its first letter missing is another word
    ],
)
def test_mentions(key: str, text: str, expected: bool) -> None:
    assert mentions(BANK[key], text) is expected


@pytest.mark.parametrize(
    ("topic", "key"),
    [
        ("budget", "monthly_budget"),
        ("Monthly Budget", "monthly_budget"),
        ("budegt", "monthly_budget"),
        ("contact time", "contact_time"),
        ("contact_time", "contact_time"),
        ("billing", "billing"),
        ("the bill", "billing"),
        ("data use", "data_estimate_gb"),
        ("data", "data_estimate_gb"),
        ("top ups", "auto_topup"),
        ("channel", "contact_channel"),
        ("travel", "travel_abroad"),
        ("household", "household_lines"),
        ("main use", "main_use"),
        ("shoe size", None),
        ("banana", None),
        ("", None),
        ("contact", None),  # contact channel or contact time: ask rather than guess
    ],
)
def test_find_question(topic: str, key: str | None) -> None:
    question = find_question(BANK, topic)
    assert (question.key if question else None) == key


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  Hello\u00a0 World ", "hello world"),
        ("“Yes” – sure", '"yes" - sure'),
        ("ＥＶＥＮＩＮＧＳ", "evenings"),
        ("a\x00b\u202e c", "ab c"),
        ("tab\tand\nnewline", "tab and newline"),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected


@pytest.mark.parametrize(
    ("key", "option_value", "text"),
    [(q.key, o.value, s) for q in BANK for o in q.options for s in (o.label, *o.synonyms)],
)
def test_every_label_and_synonym_answers_its_own_option(key: str, option_value: Any, text: str) -> None:
    parse = parse_answer(BANK[key], text)
    assert parse is not None
    value = parse.value["window"] if isinstance(parse.value, dict) else parse.value
    assert value == option_value
    assert parse.confidence >= ACCEPT


NASTY = [
    "x" * 10_000,
    "evenings $40 yes 5 gigs " * 500,
    "🎉🔥💯 " * 50,
    "مرحبا، أفضل الرسائل في المساء",
    "'; DROP TABLE x; --",
    "\x00\x01\x02 null bytes \x00 and bells \x07",
    "\ud83d",  # a lone surrogate
    "9" * 5_000,
    "a hundred " * 1_000,
    "\u200b\u2066\ufeff",
]


@pytest.mark.parametrize("text", NASTY, ids=range(len(NASTY)))
def test_nasty_input_never_raises(text: str) -> None:
    for question in BANK:
        parse = parse_answer(question, text)
        assert parse is None or 0.0 <= parse.confidence <= 1.0
        if parse is not None:
            json.dumps(parse.value)
        mentions(question, text)
        format_value(question, parse.value if parse else None)
    parse_yes_no(text)
    find_question(BANK, text)
    assert "\x00" not in normalize(text)


def test_hostile_text_keeps_its_meaning() -> None:
    assert parse_answer(BANK["contact_time"], "שלום \u202eevenings\u202c") is not None
    parse = parse_answer(BANK["contact_time"], "eve\x00nings")
    assert parse is not None and parse.value == EVENING
    free = parse_answer(BANK["main_use"], "maps\x00 and music" + "!" * 1000)
    assert free is not None and free.value == "maps and music" + "!" * 486  # cut to 500 characters
    assert parse_answer(BANK["main_use"], " \x00 \u200b ") is None


def test_only_the_start_of_a_long_message_is_parsed() -> None:
    # A 10,000-character message costs no more than its first MAX_CHARS (speed is in bench/).
    assert parse_answer(BANK["contact_time"], "x " * 300 + "evenings") is None
    parse = parse_answer(BANK["contact_time"], "evenings " + "x " * 5000)
    assert parse is not None and parse.value == EVENING


@settings(max_examples=150, deadline=None, database=None)
@given(st.text(max_size=200))
def test_any_text_parses_or_not_without_raising(text: str) -> None:
    for question in BANK:
        parse = parse_answer(question, text)
        if parse is not None:
            assert 0.0 <= parse.confidence <= 1.0
            json.dumps(parse.value)


def test_a_remembered_parse_is_the_same_and_the_caller_owns_its_value() -> None:
    question = BANK.get("contact_time")
    assert question is not None
    first = parse_answer(question, "evnings")
    assert first is not None and first.value == EVENING
    first.value["window"] = "changed by a caller"
    again = parse_answer(question, "evnings")
    assert again is not None and again.value == EVENING and again.confidence == first.confidence
    # Remembered per question: the same text is parsed afresh for another question.
    channel = BANK.get("contact_channel")
    assert channel is not None
    assert parse_answer(channel, "evnings") is None


def test_remembered_works_out_a_short_text_once_and_a_long_one_every_time() -> None:
    calls: list[str] = []

    @remembered
    def shout(text: str) -> str:
        calls.append(text)
        return text.upper()

    assert shout("hi") == shout("hi") == "HI"
    assert calls == ["hi"]
    long = "x" * (REMEMBER_TEXT_MAX + 1)
    assert shout(long) == shout(long) == long.upper()
    assert calls.count(long) == 2
    forget_remembered()
    assert shout("hi") == "HI"
    assert calls.count("hi") == 2
