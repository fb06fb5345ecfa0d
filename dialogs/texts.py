"""What the bot says. One place for every sentence, so tone and wording stay consistent."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from dialogs.bank import Question, QuestionBank
from dialogs.parsing import format_value
from storage.models import Source
from storage.turns import Fact

if TYPE_CHECKING:
    from dialogs.engine import EngineConfig

EMPTY = "I didn't catch anything there."
ALL_DONE = (
    "That's all my questions for now, thank you! Text 'what do you know about me' any time to see "
    "what I remember, or 'change my budget to $40' to update something."
)
THANKS = "Thanks for confirming."
WHAT_NOW = "OK, let's update it."
SKIPPED = "No problem, we can come back to that later."
MOVE_ON = "No worries, let's come back to that one later."
NOTHING_ASKED = "I'm not asking you anything right now. Text 'help' to see what I can do."
CONFIRM_STOP = "Do you want to stop all messages from us? Reply YES to stop, or NO to carry on."
CONFIRM_FORGET = (
    "This erases everything I know about you and our conversation, and can't be undone. "
    "Reply YES to erase it, or NO to keep it."
)
KEPT = "OK, I've kept everything as it was."
CARRY_ON = "OK, let's carry on."
ERASED = (
    "Done: I've erased what I knew about you and our conversation. We won't message you unless "
    "you write to us first."
)
OPTED_OUT = "You're unsubscribed and won't get any more messages from us. Reply START to opt back in."
OPTED_IN = "Welcome back! You're subscribed to our messages again. Reply STOP at any time to opt out."
ALREADY_IN = "You're already subscribed."
TEXT_ONLY = "Sorry, I can only read text. Please reply in words, without pictures or files."
HANDOFF = (
    "OK, I'll ask a person from our team to pick this up; they'll reply to you here. "
    "I won't ask you anything else in the meantime."
)
OFFER_PERSON = "If you'd rather talk to a person, just say 'person'."
COMPLAINT = (
    "Sorry to hear that. I can't fix network, phone or billing problems myself, but a person from "
    "our team can: just say 'person'."
)
OUT_OF_SCOPE = (
    "I'm afraid I can't help with that: I can tell you about your plan, usage and bill, and learn "
    "how you'd like us to serve you."
)
SUGGESTION_CHANGED = "Your numbers have changed since I suggested that plan, so here is a fresh look."

_SOURCES = {
    Source.ASKED: "you told me",
    Source.USAGE: "from your usage",
    Source.OPERATOR: "noted by our team",
    Source.IMPORT: "from our records",
}


def switch_requested(plan: str) -> str:
    """Confirm a YES to a suggested plan."""
    return f"Done: I've asked our team to move you to {plan}. You'll get a confirmation once it's switched."


def suggestion_declined(current: str, offered: str) -> str:
    """Confirm a NO to a suggested plan."""
    return f"OK, you'll stay on {current}. I won't suggest {offered} again unless your usage changes."


def _hi(name: str | None) -> str:
    return f"Hi {name}!" if name else "Hi!"


def greeting(cfg: EngineConfig, name: str | None) -> str:
    """The first message a new customer gets."""
    return (
        f"{_hi(name)} I'm {cfg.bot_name}, {cfg.company_name}'s assistant. I'll ask a few quick "
        "questions so we can offer you what really suits you. Reply 'why' to any question to see why "
        "we ask, 'skip' to skip it, or 'help' for more."
    )


def hello_again(name: str | None) -> str:
    """A greeting in an ongoing conversation."""
    return f"Hello again, {name}!" if name else "Hello again!"


def welcome_back(name: str | None, pending: Question | None) -> str:
    """Said after a long silence: where the conversation stands."""
    who = f"Welcome back, {name}!" if name else "Welcome back!"
    if pending is None:
        return who
    return f"{who} Last time we were talking about your {pending.name}."


def help_text(cfg: EngineConfig, *, opted_out: bool) -> str:
    """What the customer can say."""
    if opted_out:
        return f"{cfg.company_name}: you are opted out of messages. Reply START to opt back in."
    return (
        f"{cfg.company_name}'s assistant. You can say: 'skip' (skip a question), 'why' (why I ask), "
        "'what do you know about me', 'change my budget to $40', 'forget me' (erase your data), "
        "STOP (no more messages), START (messages again)."
    )


def ack(question: Question, value: Any) -> str:
    """Acknowledge an answer (a prefix for what comes next)."""
    return f"Got it: {format_value(question, value)}. "


def _listed(parts: Sequence[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def noted(items: Sequence[tuple[Question, Any]]) -> str:
    """Acknowledge facts stated in one message, in one sentence."""
    return "Noted: " + _listed([f"your {q.name} is {format_value(q, v)}" for q, v in items]) + "."


def corrected(items: Sequence[tuple[Question, Any]]) -> str:
    """Confirm a correction ("actually make that mornings")."""
    return "Fixed: " + _listed([f"your {q.name} is now {format_value(q, v)}" for q, v in items]) + "."


_SMALL_TALK = {
    "thanks": "You're welcome!",
    "bye": "Bye for now! Text me any time.",
    "how_are_you": "I'm doing well, thanks for asking!",
    "other": "Thanks for your message!",
}


def small_talk(topic: str, cfg: EngineConfig) -> str:
    """A short, honest, friendly reply to small talk."""
    if topic == "bot":
        return (
            f"Yes, I'm {cfg.bot_name}, {cfg.company_name}'s automated assistant. Say 'person' any time "
            "to reach someone from our team."
        )
    if topic == "name":
        return f"I'm {cfg.bot_name}, {cfg.company_name}'s automated assistant."
    return _SMALL_TALK.get(topic, _SMALL_TALK["other"])


def changed(question: Question, value: Any) -> str:
    """Confirm a "change my X to Y"."""
    return f"Done: your {question.name} is now {format_value(question, value)}."


def reconfirm(question: Question, value: Any) -> str:
    """Ask whether a stale answer still holds."""
    said = format_value(question, value)
    if question.confirm_text:
        return question.confirm_text.format(value=said)
    return f"Last time you told me your {question.name} is {said}. Is that still right?"


def reask_prefix(question: Question) -> str:
    """Lead-in when an answer was not understood."""
    if question.options:
        labels = ", ".join(o.label for o in question.options)
        return f"Sorry, I didn't quite get that. You can answer with one of: {labels}. "
    return "Sorry, I didn't quite get that. "


def fallback(finished: bool) -> str:
    """Reply to a message the bot has no use for."""
    if finished:
        return "Thanks for your message! Text 'help' to see what I can do."
    return "Thanks for your message."


def unknown_topic(bank: QuestionBank, topic: str) -> str:
    """The customer asked to change something the bot does not know."""
    names = ", ".join(q.name for q in bank)
    return f"I don't keep anything called '{topic[:40]}'. I can change your: {names}."


def not_understood_change(question: Question, value: str) -> str:
    """A "change my X to Y" whose Y the bot could not read."""
    return f"Sorry, I couldn't read '{value[:40]}' as your {question.name}."


def profile(bank: QuestionBank, prefs: Mapping[str, Fact]) -> str:
    """Everything the bot knows about the customer, with where and when it learned it."""
    if not prefs:
        return "I don't know anything about you yet."
    lines = ["Here's what I know about you:"]
    for question in bank:
        pref = prefs.get(question.key)
        if pref is None:
            continue
        source = _SOURCES.get(Source(pref.source), pref.source) if pref.source in set(Source) else pref.source
        when = pref.stated_at.strftime("%d %b %Y").lstrip("0")
        lines.append(f"- {question.name}: {format_value(question, pref.value)} ({source}, {when})")
    lines.append("Say 'change my budget to $40' to update something, or 'forget me' to erase it all.")
    return "\n".join(lines)
