"""Hostile and odd input: no crash, nothing lost (the inbound is stored), a sensible reply."""

from __future__ import annotations

import pytest

from dialogs.engine import DialogEngine
from tests.utils import Texter, question_of

NASTY = [
    "",
    "   \n\t ",
    "x" * 10_000,
    "🎉🔥💯 " * 50,
    "مرحبا، أفضل الرسائل في المساء",
    "שלום \u202eevenings\u202c",
    "\x00\x01\x02 null bytes \x00 and bells \x07",
    "'; DROP TABLE customer; --",
    "Robert'); DELETE FROM preference WHERE ('1'='1",
    "%s %d {0} {value} ${HOME} $(rm -rf /)",
    "<script>alert(1)</script>",
    "\ud83d",  # a lone surrogate, as a broken client may send
]


@pytest.mark.parametrize("text", NASTY, ids=range(len(NASTY)))
def test_nasty_input_is_stored_and_answered(dialog: DialogEngine, text: str) -> None:
    alex = Texter(dialog)
    alex.say("hi")
    replies = alex.say(text)
    assert replies, "every message gets a reply"
    assert question_of(replies) == "contact_channel"
    stored = [m.text for m in alex.messages() if m.direction == "in"][-1]
    assert stored == text.replace("\x00", "\u2400").replace("\ud83d", "\ufffd")
    # The dialogue carries on normally afterwards.
    alex.say("sms")
    assert alex.prefs()["contact_channel"].value == "sms"
