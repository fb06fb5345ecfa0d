"""Commands a customer can type at any point: STOP/START/HELP keywords, skip, why, change, forget..."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from rapidfuzz import fuzz, process
from rapidfuzz.distance import OSA

from dialogs.parsing import normalize, remembered

LONG_MESSAGE = 200  # longer messages are answers or stories, never commands (except "change my X to Y")


class CommandKind(StrEnum):
    """What the customer asked the bot to do."""

    SKIP = "skip"
    WHY = "why"
    PROFILE = "profile"
    CHANGE = "change"
    FORGET = "forget"
    HELP = "help"
    STOP = "stop"
    START = "start"
    STOP_REQUEST = "stop_request"
    GREETING = "greeting"
    FIT = "fit"


@dataclass(frozen=True, slots=True)
class Command:
    """A detected command; ``topic``/``value`` are set for CHANGE ("budget", "$50")."""

    kind: CommandKind
    topic: str | None = None
    value: str | None = None


K = CommandKind

CARRIER_KEYWORDS: frozenset[CommandKind] = frozenset({K.STOP, K.START, K.HELP})
"""The kinds that are carrier keywords (STOP/START/HELP): honoured on every channel, opted out or not."""

# Carrier keywords: a command only when they are the whole message.
_KEYWORDS = {
    **dict.fromkeys(("stop", "stopall", "unsubscribe", "cancel", "end", "quit", "optout", "revoke"), K.STOP),
    "start": K.START,
    "unstop": K.START,
    "help": K.HELP,
    "info": K.HELP,
}
_SLASH = {"start": K.GREETING, "help": K.HELP, "stop": K.STOP, "profile": K.PROFILE, "forget": K.FORGET}

_PHRASES: dict[CommandKind, tuple[str, ...]] = {
    K.SKIP: (
        "skip", "skip it", "skip this", "skip this one", "skip that", "skip question", "skip the question",
        "later", "ask me later", "ask later", "maybe later", "later please", "come back later", "next",
        "next one", "next question", "pass", "i pass", "not now", "not right now", "another time", "move on",
        "rather not say", "id rather not say", "prefer not to say", "i prefer not to say",
        "prefer not to answer", "id rather not answer", "no comment", "not telling", "idk", "i dont know",
        "dont know", "dunno", "no idea", "no clue", "not sure", "im not sure", "i dunno", "i have no idea",
    ),
    K.WHY: (
        "why", "why do you ask", "why do you need that", "why do you need this", "why do you want to know",
        "why do you need to know", "why is that", "why does it matter", "what for", "whats this for",
        "whats that for", "what is this for", "what is that for", "why are you asking",
    ),
    K.PROFILE: (
        "what do you know about me", "what do you know", "my profile", "profile", "show my data",
        "show my profile", "what have you got on me", "my preferences", "show my preferences", "my data",
        "my answers", "what did i tell you", "what data do you have", "what data do you have on me",
        "what do you have on me", "show me my data",
    ),
    K.FORGET: (
        "forget me", "delete my data", "erase my data", "delete everything", "remove my data",
        "forget everything about me", "forget about me", "forget everything", "erase everything",
        "delete all my data", "erase me", "delete me", "wipe my data", "delete my profile", "delete my info",
        "delete my account", "remove everything", "forget all about me",
    ),
    K.HELP: (
        "help", "help me", "what can you do", "commands", "what are the commands", "show commands",
        "i need help", "need help", "help please", "how does this work", "what can i say", "menu",
    ),
    K.STOP_REQUEST: (
        "stop please", "please stop", "stop it", "leave me alone", "opt me out", "unsubscribe me",
        "dont text me", "dont message me", "dont contact me", "no more messages", "no more texts",
        "take me off your list", "i want to unsubscribe", "i want to opt out", "go away",
    ),
    K.GREETING: (
        "hi", "hello", "hey", "hiya", "heya", "howdy", "hola", "yo", "greetings", "hi there", "hello there",
        "hey there", "good morning", "good afternoon", "good evening", "hallo", "sup", "whats up",
    ),
    K.FIT: (
        "which plan fits me", "am i on the right plan", "what plan should i be on", "best plan for me",
        "which plan is best for me", "what plan is right for me", "which plan should i get",
        "is my plan right for me", "recommend a plan", "what plan do you recommend",
    ),
}  # fmt: skip
_EXACT = {phrase: kind for kind, phrases in _PHRASES.items() for phrase in phrases}
_SQUEEZED = {re.sub(r"(.)\1+", r"\1", p): k for p, k in _EXACT.items() if " " not in p}
# Typos are tolerated only in longer multi-word phrases: short words collide with real answers.
_FUZZY = [p for p in _EXACT if " " in p and len(p) >= 8]

_LEADING = frozenset(
    ("ok", "okay", "so", "um", "umm", "uh", "well", "please", "pls", "plz", "just", "and", "but", "hi",
     "hello", "hey", "sorry", "actually", "also")
)  # fmt: skip
_TRAILING = frozenset(("please", "pls", "plz", "thanks", "thx", "now", "ok"))
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

_POLITE = (
    r"(?:(?:please|pls|plz|ok|okay|hi|hey|hello|can you|could you|can i|could i|i want to|i'd like to|"
    r"id like to|i would like to|i need to|let me|i wanna)[\s,]+)*"
)
_CHANGE = re.compile(
    _POLITE + r"(?P<verb>[a-z]+)\s+(?:my\s+|the\s+)?(?P<topic>[^.!?,\n]{1,40}?)\s+(?:to|as|into|=)\s+"
    r"(?P<value>.+?)\s*(?:[!?\n,;]|\.(?!\d)|$)"
)
_CHANGE_BARE = re.compile(_POLITE + r"(?P<verb>[a-z]+)\s+my\s+(?P<topic>[a-z][a-z \-]{1,30}?)[\s.!?]*$")
_CHANGE_VERBS = ("change", "update", "set", "switch", "edit", "correct", "modify")
_STOP_START = re.compile(
    r"^(?:(?:can|could|will|would) you |i want to |i'd like to |id like to |i wish to |just )?"
    r"(?:stop|unsubscribe|opt out|optout|quit)\b"
)
_STOP_ANYWHERE = re.compile(
    r"\b(?:stop|quit|cease)\s+(?:messag|text|contact|email|spamm|send|bother|ping|writ|ask)"
)
_WHY = re.compile(r"^(?:why|what for)\b(?!\s+not\b)")
_PROFILE = re.compile(r"^what (?:do|did|have) you (?:know|have|got|store|keep|remember)\b")
_FORGET = re.compile(
    r"^(?:forget|delete|erase|remove|wipe|clear|purge)\s+(?:all\s+(?:of\s+)?)?"
    r"(?:me|everything|it all|my\s+(?:personal\s+)?(?:data|info|information|details|profile|account|answers|"
    r"preferences|records))(?:\s+about\s+me)?$"
)
_FIT_PLAN = re.compile(r"\b(?:plan|plans|tariff|package)\b")
_FIT_ASK = re.compile(r"\b(?:fit|fits|suit|suits|right|best|better|should|recommend|which)\b")
_FIT_ME = re.compile(r"\b(?:me|i|my|im)\b")


@remembered
def detect_command(text: str) -> Command | None:
    """The command in ``text``, or None when it is (probably) an ordinary answer."""
    raw = text.strip()
    norm = normalize(raw[: LONG_MESSAGE + 100])
    if not norm:
        return None
    if len(raw) > LONG_MESSAGE:
        return _change(norm)
    keyword = re.sub(r"[\s_-]", "", norm.rstrip(".! "))
    if keyword in _KEYWORDS:
        return Command(_KEYWORDS[keyword])
    if norm.startswith("/"):
        name = norm[1:].split("@")[0].split(" ")[0]
        return Command(_SLASH[name]) if name in _SLASH else None
    change = _change(norm)
    if change is not None:
        return change
    words = [w.replace("'", "") for w in _WORD.findall(norm)]
    if not words:
        return None
    full = " ".join(words)
    core = " ".join(_strip_fillers(words))
    for candidate in dict.fromkeys((full, core)):
        kind = _lookup(candidate)
        if kind is not None:
            return Command(kind)
    kind = _pattern(core or full, len(words))
    return Command(kind) if kind is not None else None


def _strip_fillers(words: list[str]) -> list[str]:
    start, end = 0, len(words)
    while start < end and words[start] in _LEADING:
        start += 1
    while end > start and words[end - 1] in _TRAILING:
        end -= 1
    if end - start >= 2 and words[end - 2 : end] == ["thank", "you"]:
        end -= 2
    return words[start:end]


def _lookup(phrase: str) -> CommandKind | None:
    if not phrase:
        return None
    if phrase in _EXACT:
        return _EXACT[phrase]
    squeezed = re.sub(r"(.)\1+", r"\1", phrase)
    if squeezed in _SQUEEZED:
        return _SQUEEZED[squeezed]
    if " " in phrase and len(phrase) >= 8:
        best = process.extractOne(phrase, _FUZZY, scorer=fuzz.ratio, score_cutoff=88)
        if best is not None:
            return _EXACT[best[0]]
    return None


def _pattern(core: str, n_words: int) -> CommandKind | None:
    if n_words <= 8 and _STOP_START.match(core):
        return K.STOP_REQUEST
    if n_words <= 15 and _STOP_ANYWHERE.search(core):
        return K.STOP_REQUEST
    if n_words <= 8 and _WHY.match(core):
        return K.WHY
    if n_words <= 10 and _PROFILE.match(core):
        return K.PROFILE
    if n_words <= 8 and _FORGET.match(core):
        return K.FORGET
    if n_words <= 12 and _FIT_PLAN.search(core) and _FIT_ASK.search(core) and _FIT_ME.search(core):
        return K.FIT
    return None


def _change(norm: str) -> Command | None:
    """ "change my budget to $50" -> CHANGE(budget, $50); "update my billing" -> CHANGE(billing)."""
    m = _CHANGE.match(norm) or _CHANGE_BARE.match(norm)
    if m is None or not _is_change_verb(m.group("verb")):
        return None
    topic = m.group("topic").strip()
    if len(topic.split()) > 4:
        return None
    value = m.groupdict().get("value")
    if value is not None:
        value = re.sub(r"(?:\s+(?:please|pls|plz|thanks|thank you|thx))+$", "", value.strip()) or None
    return Command(K.CHANGE, topic=topic, value=value)


def _is_change_verb(verb: str) -> bool:
    # "chnage" and "updte" are still a change: one typo is allowed in the longer verbs.
    return verb in _CHANGE_VERBS or any(
        len(v) >= 5 and verb[:1] == v[0] and OSA.distance(verb, v, score_cutoff=1) <= 1 for v in _CHANGE_VERBS
    )
