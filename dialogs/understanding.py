"""Understanding comes before deciding: what a customer's message means, before anything is stored.

:meth:`Understander.understand` turns one message into an :class:`Understanding`: the intent
(with a confidence), the facts stated in it for any question of the bank (each with its span and
confidence; a span of the message goes to at most one question), and whether it corrects
something said before. The engine then decides what to do.

How, in order:
1. exact rules: the opt-out and opt-in keywords in any language (``[keywords]`` of
   ``intents.toml``), yes/no words in other languages, and the command phrases of
   :mod:`dialogs.commands`;
2. facts by value, clause by clause ("3 gigs", "Mexico next month", "just me", "30 max"),
   with negation scoped to its clause ("not before 10" is after 10, "I never go abroad" is no),
   using the answer parsers of :mod:`dialogs.parsing` on the span that carries the value;
3. a classifier for everything else: TF-IDF over character n-grams (typos, slang and run-on
   words share most n-grams with the spelled-out phrasing) and a linear SVM, trained at
   start-up from the examples in ``intents.toml`` (and those operators taught), in well under a
   second; one message is scored in a few microseconds with the fitted weights.

A message that is not clearly an answer is never stored as one: facts need a value in the text,
and the classifier alone never produces a fact.
"""

from __future__ import annotations

import re
import threading
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from rapidfuzz import fuzz, process

from dialogs.bank import Kind, Question, QuestionBank
from dialogs.commands import CommandKind, detect_command
from dialogs.parsing import (
    REMEMBER_TEXT_MAX,
    Parse,
    find_question,
    looks_like_code,
    mentions,
    normalize,
    parse_answer,
    remembered,
)

INTENTS_FILE = Path(__file__).with_name("intents.toml")

# Intent names (the engine acts on these; ``storage.types.Intent`` may mirror them).
ANSWER = "answer"  # an answer to the pending question (perhaps with other facts)
FACTS = "facts"  # facts for other questions only
CORRECTION = "correction"
SKIP, WHY, PROFILE, CHANGE, FORGET, HELP = "skip", "why", "profile", "change", "forget", "help"
STOP, START = "stop", "start"
ACCOUNT = "account"
HANDOFF = "handoff"
SMALLTALK = "smalltalk"
COMPLAINT = "complaint"
OUT_OF_SCOPE = "out_of_scope"
UNKNOWN = "unknown"  # nothing understood: the engine re-asks (and after two, offers a person)

COMMANDS = (SKIP, WHY, PROFILE, CHANGE, FORGET, HELP, START)
INTENTS = (ANSWER, CORRECTION, *COMMANDS, STOP, ACCOUNT, HANDOFF, SMALLTALK, COMPLAINT, OUT_OF_SCOPE)

# Below this, a turn goes to the review queue (with the intent the bot chose).
REVIEW_BELOW = 0.6
CLASSIFIER_MIN = 0.4  # the classifier's best guess is taken at or above this
# A guess that acts on the conversation (a person, an opt-out) below this is taken only when every
# word of the message is one the examples know (or a typo of one), and never when a third of its
# words are unknown: "kumquat please" is nobody's request for a person, though "please" leans so.
ACT_MIN = 0.7
_STRONG = 0.7  # a classified account/person/complaint/stop question wins over facts at this


@dataclass(frozen=True, slots=True)
class FactHit:
    """A fact stated in the message: the question, the value, where it was said, how sure."""

    key: str
    value: Any
    span: tuple[int, int]  # in :attr:`Understanding.text` (the normalised message)
    confidence: float
    matched: str


@dataclass(frozen=True, slots=True)
class Understanding:
    """What the customer meant."""

    intent: str
    confidence: float
    text: str  # the normalised message the spans refer to
    facts: tuple[FactHit, ...] = ()
    topic: str | None = None  # account: plan|usage|bill|fit|contract; smalltalk: greeting|thanks|...
    command_topic: str | None = None  # change: "budget"
    command_value: str | None = None  # change: "$50"
    source: str = "rules"  # rules | facts | classifier

    @property
    def needs_review(self) -> bool:
        return self.intent == UNKNOWN or self.confidence < REVIEW_BELOW

    def fact(self, key: str) -> FactHit | None:
        return next((f for f in self.facts if f.key == key), None)


# -- text ---------------------------------------------------------------------------------------------

_SLANG = {
    "u": "you", "ur": "your", "r": "are",
    "pls": "please", "plz": "please", "pleas": "please", "thx": "thanks",
    "txt": "text", "txts": "texts", "msg": "message", "msgs": "messages", "im": "i'm", "dont": "don't",
    "cant": "can't", "wont": "won't", "isnt": "isn't",
    "doesnt": "doesn't", "didnt": "didn't", "wanna": "want to",
    "gonna": "going to", "gotta": "got to", "ya": "you", "yr": "your", "abt": "about", "mins": "minutes",
    "b4": "before", "2nite": "tonight", "tmrw": "tomorrow",
    "bc": "because", "cuz": "because", "coz": "because",
    "ppl": "people", "luv": "love", "ty": "thank you", "tyvm": "thank you", "nvm": "never mind",
}  # fmt: skip
_WORDS = re.compile(r"[\w']+|[^\w\s]", re.UNICODE)


def fold(text: str) -> str:
    """Normalised (see :func:`dialogs.parsing.normalize`) and without accents: "Arrêt" -> "arret"."""
    norm = normalize(text)
    decomposed = unicodedata.normalize("NFKD", norm)
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@remembered
def clean(text: str) -> str:
    """The message as understood: folded, common slang spelled out, spaced tokens."""
    words = _WORDS.findall(fold(text[:500]))
    return " ".join(_SLANG.get(w, w) for w in words)


# -- the intents file -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntentData:
    """The contents of ``intents.toml``."""

    examples: Mapping[str, tuple[str, ...]]
    stop: frozenset[str]
    start: frozenset[str]
    yes: frozenset[str]
    no: frozenset[str]

    @classmethod
    def load(cls, path: str | Path | None = None) -> IntentData:
        """Read and check an intents file (``ValueError`` naming the problem if it is wrong)."""
        path = Path(path) if path is not None else INTENTS_FILE
        with path.open("rb") as fh:
            data = tomllib.load(fh)
        examples: dict[str, tuple[str, ...]] = {}
        for entry in data.get("intent", []):
            name = entry.get("name")
            if name not in INTENTS:
                raise ValueError(f"{path}: unknown intent {name!r} (known: {', '.join(INTENTS)})")
            if name in examples:
                raise ValueError(f"{path}: intent {name!r} is defined twice")
            phrases = tuple(str(p) for p in entry.get("examples", []) if str(p).strip())
            if not phrases:
                raise ValueError(f"{path}: intent {name!r} has no examples")
            examples[name] = phrases
        keywords = data.get("keywords", {})

        def words(key: str) -> frozenset[str]:
            return frozenset(clean(w) for w in keywords.get(key, []))

        return cls(examples, words("stop"), words("start"), words("yes"), words("no"))


# -- the classifier --------------------------------------------------------------------------------


_SCORED_MAX = 4096  # remembered scores per classifier (the memory starts again when full)


class IntentClassifier:
    """Character n-gram TF-IDF and a linear SVM, fitted once (tens of milliseconds); scoring is a
    sparse dot product, and the margins become probabilities by a softmax (``temperature``)."""

    temperature = 3.0

    def __init__(self, examples: Mapping[str, Iterable[str]]) -> None:
        # Imported here: scikit-learn takes a while to import, and most commands never classify.
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.svm import LinearSVC

        texts: list[str] = []
        labels: list[str] = []
        for intent, phrases in examples.items():
            for phrase in phrases:
                texts.append(clean(phrase))
                labels.append(intent)
        self.vectorizer = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True)
        matrix = self.vectorizer.fit_transform(texts)
        model = LinearSVC(C=1.0)
        model.fit(matrix, labels)
        self.labels: tuple[str, ...] = tuple(str(c) for c in model.classes_)
        # Scoring by hand with the fitted numbers: sklearn's per-call checks cost ~0.3 ms a message.
        self._analyze = self.vectorizer.build_analyzer()
        self._vocab: dict[str, int] = dict(self.vectorizer.vocabulary_)
        self._words: dict[str, tuple[int, ...]] = {}
        self._idf = np.asarray(self.vectorizer.idf_, dtype=np.float64)
        coef = np.asarray(model.coef_, dtype=np.float64)
        intercept = np.asarray(model.intercept_, dtype=np.float64)
        if len(self.labels) == 2:  # binary: one row of weights for the second class
            coef = np.vstack([-coef[0], coef[0]])
            intercept = np.array([-intercept[0], intercept[0]])
        self._coef_t = np.ascontiguousarray(coef.T)  # (features, classes)
        self._intercept = intercept
        self._scored: dict[str, dict[str, float]] = {}

    def _features(self, word: str) -> tuple[int, ...]:
        # char_wb n-grams never cross a word boundary: a word's features are the same in any text.
        found = self._words.get(word)
        if found is None:
            vocab = self._vocab
            found = tuple(vocab[g] for g in self._analyze(word) if g in vocab)
            if len(self._words) > 50_000:
                self._words.clear()
            self._words[word] = found
        return found

    def scores(self, text: str) -> dict[str, float]:
        """Probability of each intent for an already :func:`clean` text (remembered for short
        texts: the same few words come again and again)."""
        if len(text) > REMEMBER_TEXT_MAX:
            return self._scores(text)
        found = self._scored.get(text)
        if found is None:
            found = self._scores(text)
            if len(self._scored) >= _SCORED_MAX:
                self._scored.clear()
            self._scored[text] = found
        return dict(found)

    def forget(self) -> None:
        """Forget the remembered scores (a benchmark timing the classifier itself calls this)."""
        self._scored.clear()

    def _scores(self, text: str) -> dict[str, float]:
        counts: dict[int, int] = {}
        for word in text.split():
            for index in self._features(word):
                counts[index] = counts.get(index, 0) + 1
        if not counts:
            return dict.fromkeys(self.labels, 1.0 / len(self.labels))
        idx = np.fromiter(counts, dtype=np.int64, count=len(counts))
        tf = 1.0 + np.log(np.fromiter(counts.values(), dtype=np.float64, count=len(counts)))
        weights = tf * self._idf[idx]
        weights /= np.sqrt(weights @ weights)
        logits = (weights @ self._coef_t[idx] + self._intercept) * self.temperature
        logits -= logits.max()
        probs = np.exp(logits)
        probs /= probs.sum()
        return dict(zip(self.labels, (float(p) for p in probs), strict=True))


# -- facts ------------------------------------------------------------------------------------------

_CLAUSE = re.compile(r"\s*(?:[,;.!?]+|\band also\b|\balso\b|\bbut\b|\band\b|\bplus\b|&)\s*")
_BETWEEN_OPEN = re.compile(r"\bbetween\s+\S+\s*$")
_GREETING_TIME = re.compile(r"\bgood (?:morning|afternoon|evening|night|day)\b")
_NEGATORS = re.compile(r"\b(?:not|no|never|don't|do not|doesn't|won't|rarely|hardly|seldom|without|nor)\b")
_NUM = (
    r"(?:\d+(?:[.,]\d+)?|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|a couple of|a couple)"
)
_DATA = re.compile(
    rf"(?:(?:about|around|like|maybe|roughly|approx|~|only|barely|under|over)\s+)*{_NUM}\s*"
    r"(?:gb|gbs|gig|gigs|gigabytes?|g|mb|megs?|tb)\b"
)
_LINES = re.compile(
    rf"\b{_NUM}\s+(?:lines?|phones?|sims?|numbers|people|persons|devices|mobiles|cells?|of us)\b"
    rf"|\bfamily of\s+{_NUM}\b|\b(?:we are|we're|there are"
    rf"|there's)\s+{_NUM}\b(?!\s*(?:gb|gig|\$|dollar|buck))"
)
_JUST_ME = re.compile(r"\b(?:just|only|simply)\s+(?:me|myself|mine|for me|the one|one)\b|\bonly one\b")
_COUPLE = re.compile(
    r"\b(?:me and my|me & my|my|me \+ my)\s+(?:wife|husband"
    r"|partner|gf|bf|girlfriend|boyfriend|spouse|hubby)\b"
    r"(?!\s+and\b)"
)
_MORE_PEOPLE = re.compile(
    r"\b(?:kids?|children|child|sons?|daughters?|family|mom|mum|dad|parents?|and \d+)\b"
)
_MONEY = re.compile(
    r"(?:[$€£]\s*\d+(?:[.,]\d+)?|\b\d+(?:[.,]\d+)?\s*(?:\$|€|£|dollars?|bucks?|usd|euros?|quid|pounds?)\b"
    r"|\b\d+(?:[.,]\d+)?\b)"
)
_BUDGET_CUES = re.compile(
    r"\b(?:budget|spend|afford|max|maximum|tops|limit|under|below|no more than|not more than|at most|up to|"
    r"a month|per month|monthly|a mo|/mo|/month|or less|cheaper than)\b"
)
_NOT_BUDGET = re.compile(
    r"\b(?:bill|billed|charged|charge|charges|paid|overage|last month|this month|invoice|why|gb|gig|gigs|"
    r"lines?|phones?)\b"
)
_PLACES = (
    "abroad", "overseas", "out of the country", "out of country", "international", "internationally",
    "mexico", "canada", "spain", "france", "italy",
    "germany", "portugal", "greece", "europe", "asia", "africa",
    "uk", "england", "ireland", "scotland", "japan", "china", "india", "brazil", "colombia", "peru", "cuba",
    "dominican republic", "puerto rico", "philippines", "vietnam", "thailand", "australia", "turkey", "egypt",
    "morocco", "argentina", "chile", "guatemala",
    "el salvador", "honduras", "jamaica", "poland", "netherlands",
    "the states", "the us", "usa", "korea", "nigeria",
    "ghana", "kenya", "pakistan", "bali", "paris", "london",
    "cancun", "rome", "madrid", "barcelona", "tokyo", "the caribbean",
)  # fmt: skip
_PLACE = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in _PLACES) + r")\b")
_TRAVEL_VERB = re.compile(
    r"\b(?:travel\w*|trips?|fly|flying|flights?|visit\w*"
    r"|going to|go to|goes to|heading|vacation\w*|holidays?|"
    r"leave the country|leaving the country|go abroad|roam\w*)\b"
)
_WHEN = re.compile(
    r"\b(?:next|this|every|each|in)\s+(?:week|month|year|summer|winter|spring|fall|autumn|christmas|"
    r"january|february|march|april|may|june|july|august|september|october|november|december)\b"
    r"|\b(?:twice|once|a few times|several times|a lot|often)\b"
)
_NOT_TIME = re.compile(r"\d\s*(?:gb|gig|g\b|mb|\$|dollar|buck|line|phone|people|of us|month|year|week)")
_TIME_CUE = re.compile(
    r"\b(?:morning|mornings|mornin|afternoon|afternoons|evening|evenings|evenin|night|nights|tonight|noon|"
    r"lunch|lunchtime|midday|after work|after dinner|before work|any ?time|whenever|weekdays?|"
    r"(?:before|after|from|between|until|till|since|around|at|not before|not after)\s+\d{1,2}"
    r"(?::\d\d)?\s*(?:am|pm|a\.m\.|p\.m\.)?\b|\d{1,2}(?::\d\d)?\s*(?:am|pm)\b|\d{1,2}\s*-\s*\d{1,2})"
)
_CHANNEL = re.compile(
    r"\b(?:by|via|through|thru|over|per|on|use|prefer|in)\s+(?:a\s+)?(?:text|texts|sms|email|e-mail|mail|"
    r"telegram|tg|message|messages)\b|\b(?:text|email|e-mail|telegram|message|sms)\s+me\b"
    r"|\b(?:texting|texts|text|sms|email|e-mail|telegram)\s+(?:is|are|works|please|instead|only)\b"
)
_CHANNEL_ALONE = re.compile(
    r"^(?:(?:i )?prefer |only |just |please |ok )?(?:text message|text|texts|sms|email|e-mail|telegram|tg)"
    r"(?: (?:please|is fine|is best|is better|works|works best|is better for me|for me|instead|only))*$"
)
_BILL_WORD = re.compile(r"\b(?:bill|bills|billing|invoice|invoices|statement|statements)\b")
_BILL_VALUE = re.compile(r"\b(?:paper|post|letter|printed|email|e-mail|app|online|paperless)\b")
_CONTRACT_NO = re.compile(
    r"\b(?:no|not|don't|do not|never|without|hate|against)\b[^,.]{0,20}?\b(?:contracts?"
    r"|commitment|tied|locked)\b"
    r"|\bmonth[ -]to[ -]month\b|\bno commitment\b|\bpay as you go\b|\bprepaid\b|\bflexible\b"
)
_CONTRACT_YES = re.compile(
    r"\b(?:contract is (?:fine|ok|good)|happy (?:with|to sign) a?\s*\w*\s*(?:year|month)?\s*contract|"
    r"(?:12|24|two|one) (?:month|year) contract)\b"
)
_PRIORITY_CUE = re.compile(
    r"\b(?:matters? most|most important|priority|all i care|care about|main thing|what i need is|i need good|"
    r"need lots of|is key|important to me)\b"
)
_PERK = re.compile(r"\b(?:hot ?spot|tether\w*)\b")
_EU_PERK = re.compile(
    r"\b(?:need|must|have to have|require)\b[^,.]{0,20}\b(?:eu roaming|roaming in europe)\b"
)
_TOPUP = re.compile(r"\b(?:top ?-?ups?|auto ?top|recharge)\b")


@dataclass(slots=True)
class _Clause:
    start: int
    text: str


def _clauses(text: str) -> list[_Clause]:
    out: list[_Clause] = []
    pos = 0
    for m in _CLAUSE.finditer(text):
        if m.group().strip() == "and" and _BETWEEN_OPEN.search(text[pos : m.start()]):
            continue  # "between 9 and 12" is one span
        if m.start() > pos:
            out.append(_Clause(pos, text[pos : m.start()]))
        pos = m.end()
    if pos < len(text):
        out.append(_Clause(pos, text[pos:]))
    return [c for c in out if c.text.strip()]


def _negated(clause: str, at: int) -> bool:
    """Whether a negator comes before position ``at`` in the clause (its scope is the clause)."""
    return _NEGATORS.search(clause[:at]) is not None


def _value_at(question: Question, span_text: str, threshold: float) -> Parse | None:
    parse = parse_answer(question, span_text)
    return parse if parse is not None and parse.confidence >= threshold else None


class _Finder:
    """Collects candidate facts in one message, then keeps the best that do not overlap."""

    def __init__(self, bank: QuestionBank, text: str, threshold: float) -> None:
        self.bank, self.text, self.threshold = bank, text, threshold
        self.found: list[FactHit] = []

    def add(self, key: str, value: Any, start: int, end: int, confidence: float, matched: str) -> None:
        if key in self.bank:
            self.found.append(FactHit(key, value, (start, end), round(confidence, 3), matched))

    def parse(self, key: str, clause: _Clause, m: re.Match[str] | None, *, conf: float = 1.0) -> None:
        question = self.bank.get(key)
        if question is None:
            return
        span = m.group() if m is not None else clause.text
        parse = _value_at(question, span, self.threshold)
        if parse is None:
            return
        start = clause.start + (m.start() if m is not None else 0)
        end = clause.start + (m.end() if m is not None else len(clause.text))
        self.add(key, parse.value, start, end, min(conf, parse.confidence), span)

    def best(self) -> list[FactHit]:
        chosen: list[FactHit] = []
        for hit in sorted(self.found, key=lambda h: (-h.confidence, h.span[0] - h.span[1])):
            overlaps = any(hit.span[0] < c.span[1] and c.span[0] < hit.span[1] for c in chosen)
            if overlaps or any(c.key == hit.key for c in chosen):
                continue
            chosen.append(hit)
        return sorted(chosen, key=lambda h: h.span[0])


def _time_text(clause: str) -> str:
    # Negation scope: "not before 10" is after 10, "not after 8pm" is before 8pm.
    clause = re.sub(r"\b(?:not|no|never)\s+(?:before|until|till|earlier than)\b", "after", clause)
    return re.sub(r"\b(?:not|no|never)\s+(?:after|later than)\b", "before", clause)


_WORD_NUMBERS = {"a": 1, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6}
_RELATIVES = re.compile(
    r"\b(?:(?P<n>\d|a|one|two|three|four|five|six)\s+)?(?:my\s+)?(?P<who>kids?|children|child|sons?|daughters?|"
    r"wife|husband|partner|spouse|gf|bf|girlfriend|boyfriend|mom|mum|dad|mother|father|brother|sister)\b"
)


def _household(text: str) -> int | None:
    """People in "me, my wife and 2 kids" (4): the customer and each relative named, if two or more."""
    found = list(_RELATIVES.finditer(text))
    if not found or not re.search(r"\b(?:me|myself|i)\b", text):
        return None
    people = 1
    for m in found:
        n = m.group("n")
        people += int(n) if n and n.isdigit() else _WORD_NUMBERS.get(n or "", 1)
    return people if people >= 3 or len(found) >= 2 else None


def find_facts(bank: QuestionBank, text: str, *, threshold: float = 0.75) -> list[FactHit]:
    """Facts stated by value anywhere in ``text`` (already :func:`clean`), at most one per span."""
    finder = _Finder(bank, text, threshold)
    if (people := _household(text)) is not None and not _LINES.search(text):
        finder.add("household_lines", people, 0, len(text), 0.85, text)
    m: re.Match[str] | None
    for clause in _clauses(text):
        c = clause.text
        for m in _DATA.finditer(c):
            finder.parse("data_estimate_gb", clause, m)
        for m in _LINES.finditer(c):
            finder.parse("household_lines", clause, m)
        if (m := _JUST_ME.search(c)) is not None and not _negated(c, m.start()):
            finder.add("household_lines", 1, clause.start + m.start(), clause.start + m.end(), 0.9, m.group())
        if (m := _COUPLE.search(c)) is not None and not _MORE_PEOPLE.search(text):
            finder.add(
                "household_lines", 2, clause.start + m.start(), clause.start + m.end(), 0.85, m.group()
            )
        if _BUDGET_CUES.search(c) and not _NOT_BUDGET.search(c):
            for m in _MONEY.finditer(c):
                finder.parse("monthly_budget", clause, m)
        elif not _NOT_BUDGET.search(c):
            for m in _MONEY.finditer(c):
                if re.search(r"[$€£]|dollar|buck|usd|euro|quid|pound", m.group()):
                    finder.parse("monthly_budget", clause, m, conf=0.8)
        untimed = _GREETING_TIME.sub(" ", c)
        if _TIME_CUE.search(untimed) and not _NOT_TIME.search(c):
            timed = _time_text(untimed)
            question = bank.get("contact_time")
            if question is not None and not re.match(r"^(?:not|no|never)\b(?! (?:before|after))", c):
                parse = _value_at(question, timed, threshold)
                if parse is not None:
                    finder.add(
                        "contact_time", parse.value, clause.start, clause.start + len(c), parse.confidence, c
                    )
        if _BILL_WORD.search(c):
            if _BILL_VALUE.search(c):
                finder.parse("billing", clause, None)
        else:
            m = _CHANNEL.search(c) or _CHANNEL_ALONE.search(c)
            if m is not None and not _negated(c, m.start()):
                finder.parse("contact_channel", clause, m)
        place = _PLACE.search(c)
        verb = _TRAVEL_VERB.search(c)
        if place or verb:
            cue = place or verb
            assert cue is not None
            start = min(x.start() for x in (place, verb) if x is not None)
            negated = _negated(c, start) or bool(re.search(r"\bnot\b.*\b(?:abroad|overseas)\b", c))
            if negated and (verb or place):
                finder.add("travel_abroad", False, clause.start, clause.start + len(c), 0.9, c)
            elif place and (verb or _WHEN.search(c) or len(c.split()) <= 4):
                finder.add("travel_abroad", True, clause.start, clause.start + len(c), 0.85, c)
        if (m := _CONTRACT_NO.search(c)) is not None:
            finder.add(
                "contract", "month_to_month", clause.start + m.start(), clause.start + m.end(), 0.9, m.group()
            )
        elif (m := _CONTRACT_YES.search(c)) is not None:
            finder.add(
                "contract", "contract", clause.start + m.start(), clause.start + m.end(), 0.85, m.group()
            )
        if _PRIORITY_CUE.search(c):
            finder.parse("priority", clause, None, conf=0.85)
        if (m := _PERK.search(c)) is not None and not _negated(c, m.start()):
            finder.add(
                "must_have_perk", "hotspot", clause.start + m.start(), clause.start + m.end(), 0.85, m.group()
            )
        elif (m := _EU_PERK.search(c)) is not None:
            finder.add(
                "must_have_perk",
                "eu_roaming",
                clause.start + m.start(),
                clause.start + m.end(),
                0.85,
                m.group(),
            )
        if _TOPUP.search(c):
            question = bank.get("auto_topup")
            if question is not None:
                parse = _value_at(question, c, threshold)
                if parse is not None:
                    finder.add(
                        "auto_topup", parse.value, clause.start, clause.start + len(c), parse.confidence, c
                    )
    return finder.best()


# -- corrections and the pending answer ---------------------------------------------------------------

_NUMERIC_FACTS = frozenset({"data_estimate_gb", "household_lines", "monthly_budget"})
_CORRECTION = re.compile(
    r"^(?:(?:no|nope|oh|oops|sorry|wait|hang on|hold on|um+|uh+|ok|okay)\b[\s,.!-]*)*"
    r"(?:actually|i meant|i mean|meant|make (?:it|that)|change (?:it|that) to|scratch that|correction|"
    r"let me correct (?:that|myself)|i said (?:that )?wrong|typo)\b[\s,:.-]*"
    r"|^(?:wait|oops|sorry)\b[\s,.!-]+|^no\s*[,.!-]+\s*"
)
_FILLER_TAIL = re.compile(r"(?:\s*[,.]?\s*\b(?:please|thanks|thank you|instead|then|not \S+)\b)+\s*[.!]*$")


def correction_value(text: str) -> str | None:
    """The new value in a correction ("actually make that mornings" -> "mornings"), else None."""
    m = _CORRECTION.match(text)
    if m is None:
        return None
    rest = _FILLER_TAIL.sub("", text[m.end() :]).strip(" ,.!")
    return rest or None


# -- small talk and account topics ----------------------------------------------------------------

_SMALLTALK_TOPICS = (
    ("bot", re.compile(r"\b(?:bot|robot|human|real person|machine|ai|automated|computer)\b")),
    ("thanks", re.compile(r"\b(?:thanks?|thank you|cheers|appreciated?|ty|thx)\b")),
    ("bye", re.compile(r"\b(?:bye|goodbye|see (?:you|ya)|later|ttyl|good night|night)\b")),
    (
        "how_are_you",
        re.compile(r"\b(?:how are you|how's it going|hows it going|how r you|how you doing|hows)\b"),
    ),
    ("name", re.compile(r"\b(?:your name|who are you)\b")),
    ("greeting", re.compile(r"\b(?:hi|hello|hey|hiya|yo|morning|evening|afternoon|howdy|hola|sup)\b")),
)
_ACCOUNT_TOPICS = (
    ("contract", re.compile(r"\b(?:contract|tied in|locked in|commitment)\b")),
    ("fit", re.compile(r"\b(?:cheaper|save|saving|right plan|best plan|better plan|which plan|should i|fits?|"
                       r"too much|switch|recommend|suit)\b")),
    ("bill", re.compile(r"\b(?:bill|billed|charged?|charges"
        r"|paid|overage|extra|so high|went up|higher|invoice)\b")),
    ("usage", re.compile(r"\b(?:use|used|usage|using|left|remaining|go over|went over|allowance|how many|"
                         r"minutes|gigs?|gb)\b")),
    ("plan", re.compile(r"\b(?:plan|tariff|package|pay|paying|cost|price)\b")),
)  # fmt: skip


def account_topic(text: str) -> str:
    """Which account question it is: plan, usage, bill, fit or contract."""
    for topic, pattern in _ACCOUNT_TOPICS:
        if pattern.search(text):
            if topic == "usage" and re.search(r"\b(?:allowance|how many \w+ do i get|do i get)\b", text):
                return "plan"
            return topic
    return "plan"


def smalltalk_topic(text: str) -> str:
    """Which small talk: greeting, thanks, bye, bot, how_are_you, name, or other."""
    for topic, pattern in _SMALLTALK_TOPICS:
        if pattern.search(text):
            return topic
    return "other"


# -- the understander -------------------------------------------------------------------------------

_COMMAND_INTENTS = {
    CommandKind.SKIP: SKIP,
    CommandKind.WHY: WHY,
    CommandKind.PROFILE: PROFILE,
    CommandKind.CHANGE: CHANGE,
    CommandKind.FORGET: FORGET,
    CommandKind.HELP: HELP,
    CommandKind.STOP: STOP,
    CommandKind.START: START,
    CommandKind.STOP_REQUEST: STOP,
    CommandKind.GREETING: SMALLTALK,
    CommandKind.FIT: ACCOUNT,
}
_POLITE_TAIL = re.compile(
    r"(?:\s+(?:please|thanks|thank you|merci|bitte|danke"
    r"|gracias|por favor|obrigado|obrigada|s'il vous plait))+$"
)


@dataclass(frozen=True, slots=True)
class StatedFact:
    """A stored fact, as far as understanding needs it: its value and when it was stated."""

    value: Any
    stated_at: datetime


@dataclass
class Understander:
    """Understands messages for one intents file and its taught phrasings (thread-safe, cached)."""

    data: IntentData
    taught: Sequence[tuple[str, str]] = ()  # (intent, phrase) taught by operators
    threshold: float = 0.75
    classifier: IntentClassifier = field(init=False)
    vocabulary: frozenset[str] = field(init=False)  # every word of the examples

    def __post_init__(self) -> None:
        examples = {k: list(v) for k, v in self.data.examples.items()}
        for intent, phrase in self.taught:
            if intent in examples:
                examples[intent].append(phrase)
        self.classifier = IntentClassifier(examples)
        self.vocabulary = frozenset(
            word
            for phrases in examples.values()
            for phrase in phrases
            for word in _WORDS.findall(clean(phrase))
        )

    def understand(
        self,
        bank: QuestionBank,
        text: str,
        *,
        pending: Question | None = None,
        known: Mapping[str, StatedFact] | None = None,
    ) -> Understanding:
        """What ``text`` means, with ``pending`` the question the bot asked (if any) and ``known``
        the customer's stored facts (corrections apply to the most recently stated match)."""
        norm = clean(text)
        if not norm:
            return Understanding(UNKNOWN, 0.0, norm)
        bare = _POLITE_TAIL.sub("", norm.strip(" .!?")).strip(" .!?")
        # 1. Exact rules.
        if bare in self.data.stop:
            return Understanding(STOP, 1.0, norm)
        if bare in self.data.start:
            return Understanding(START, 1.0, norm)
        if pending is not None and pending.kind is Kind.YES_NO and bare in self.data.yes | self.data.no:
            value = bare in self.data.yes
            return Understanding(ANSWER, 1.0, norm, (FactHit(pending.key, value, (0, len(norm)), 1.0, bare),))
        if looks_like_code(text):
            return Understanding(UNKNOWN, 0.0, norm)  # nobody's answer, nobody's request: for review
        command = detect_command(text)
        if command is None and pending is not None and pending.kind is not Kind.FREE_TEXT:
            # The common case, cheaply: the whole message is an answer ("evenings", "$40", "2").
            whole = normalize(text[:500]).strip(" .!")
            parse = parse_answer(pending, whole)
            if parse is not None and parse.confidence >= self.threshold and parse.matched == whole:
                fact = FactHit(pending.key, parse.value, (0, len(norm)), round(parse.confidence, 3), whole)
                return Understanding(ANSWER, fact.confidence, norm, (fact,), source="facts")
        scores = self.classifier.scores(norm)
        top = max(scores, key=scores.__getitem__)
        if command is not None and command.kind is CommandKind.CHANGE:
            return self._change(bank, norm, command.topic, command.value)
        # 2. Corrections: a correction marker and a value for a fact said before.
        corrected = self._correction(bank, norm, pending, known or {})
        if corrected is not None:
            return corrected
        facts = find_facts(bank, norm, threshold=self.threshold)
        strong = scores[top] >= _STRONG and top in (ACCOUNT, HANDOFF, COMPLAINT, STOP)
        if command is not None and not facts:
            intent = _COMMAND_INTENTS[command.kind]
            # "why is my bill so high" starts like "why?", but is about the bill.
            if (
                intent in (WHY, SKIP, HELP, SMALLTALK)
                and top in (ACCOUNT, HANDOFF, COMPLAINT)
                and scores[top] >= 0.5
            ):
                return self._result(top, scores[top], norm, (), "classifier")
            result = self._result(intent, 0.95, norm, (), "rules")
            if command.kind is CommandKind.GREETING:
                return Understanding(SMALLTALK, 0.95, norm, topic="greeting")
            return result
        # 3. The answer to the pending question, unless the message clearly means something else.
        other = top not in (ANSWER, CORRECTION) and scores[top] >= 0.6 and scores[ANSWER] < 0.2
        if pending is not None and pending.kind is Kind.FREE_TEXT:
            # Any text answers "what do you use your phone for?": only clear requests are not answers.
            strong = scores[top] >= _STRONG and top in (ACCOUNT, HANDOFF, STOP)
            other = scores[top] >= 0.6 and top in (*COMMANDS, SMALLTALK)
        if pending is not None and not strong and not other:
            facts = self._with_pending(bank, pending, norm, facts, scores, raw=text)
        if facts and not strong:
            intent = ANSWER if pending is not None and any(f.key == pending.key for f in facts) else FACTS
            return Understanding(intent, min(f.confidence for f in facts), norm, tuple(facts), source="facts")
        # 4. The classifier.
        acts = top in (HANDOFF, STOP) and self._guessing(norm, scores[top])
        if top in (ANSWER, CORRECTION) or scores[top] < CLASSIFIER_MIN or acts:
            if scores[ANSWER] + scores[CORRECTION] < 0.3:
                # Not like any answer, and not clearly anything else: out of scope, for review.
                return Understanding(OUT_OF_SCOPE, round(scores[OUT_OF_SCOPE], 3), norm, source="classifier")
            return Understanding(UNKNOWN, round(scores[top], 3), norm, source="classifier")
        return self._result(top, scores[top], norm, (), "classifier")

    def _guessing(self, norm: str, score: float) -> bool:
        """Whether the classifier leans on a few familiar words among unknown ones: a third of
        the words unknown, or any when it is not sure (below ``ACT_MIN``)."""
        share = self._unknown_share(norm)
        return share >= 1 / 3 or (share > 0 and score < ACT_MIN)

    def _unknown_share(self, norm: str) -> float:
        """The share of the words (3+ letters) of ``norm`` that no example has, nor anything close."""
        words = [word for word in _WORDS.findall(norm) if len(word) >= 3]
        unknown = sum(
            word not in self.vocabulary
            and process.extractOne(word, self.vocabulary, scorer=fuzz.ratio, score_cutoff=80) is None
            for word in words
        )
        return unknown / len(words) if words else 0.0

    def _change(self, bank: QuestionBank, norm: str, topic: str | None, value: str | None) -> Understanding:
        facts: tuple[FactHit, ...] = ()
        question = find_question(bank, topic or "")
        if question is not None and value:
            parse = parse_answer(question, value)
            if parse is not None and parse.confidence >= self.threshold:
                start = max(norm.find(clean(value)), 0)
                facts = (
                    FactHit(question.key, parse.value, (start, start + len(value)), parse.confidence, value),
                )
        return Understanding(CHANGE, 0.95, norm, facts, command_topic=topic, command_value=value)

    def _with_pending(
        self,
        bank: QuestionBank,
        pending: Question,
        norm: str,
        facts: list[FactHit],
        scores: Mapping[str, float],
        *,
        raw: str,
    ) -> list[FactHit]:
        """``facts`` with the answer to the pending question, when the message holds one."""
        if pending.kind is Kind.FREE_TEXT:
            parse = parse_answer(pending, raw)  # in the customer's own words
            if parse is None or parse.confidence < self.threshold:
                return facts
            return [
                *facts,
                FactHit(pending.key, parse.value, (0, len(norm)), parse.confidence, parse.matched),
            ]
        if pending.kind in (Kind.CHOICE, Kind.YES_NO):
            # A named option of the pending question wins its span ("calling abroad" is a priority).
            parse = parse_answer(pending, norm)
            if (
                parse is not None
                and parse.confidence >= self.threshold
                and not _negated_match(norm, parse.matched)
            ):
                at = norm.find(parse.matched)
                span = (at, at + len(parse.matched)) if at >= 0 else (0, len(norm))
                clash = [f for f in facts if f.span[0] < span[1] and span[0] < f.span[1]]
                if any(f.key in _NUMERIC_FACTS for f in clash):
                    return facts  # "3 phones" is a number of lines, not the word "phone"
                kept = [f for f in facts if f.key != pending.key and f not in clash]
                hit = FactHit(pending.key, parse.value, span, round(parse.confidence, 3), parse.matched)
                return sorted([*kept, hit], key=lambda f: f.span[0])
        if pending.key in {f.key for f in facts}:
            return facts
        answer = self._pending_answer(bank, pending, norm, facts, scores)
        return sorted([*facts, answer], key=lambda f: f.span[0]) if answer is not None else facts

    def _result(
        self, intent: str, confidence: float, norm: str, facts: tuple[FactHit, ...], source: str
    ) -> Understanding:
        topic = None
        if intent == ACCOUNT:
            topic = account_topic(norm)
        elif intent == SMALLTALK:
            topic = smalltalk_topic(norm)
        return Understanding(intent, round(confidence, 3), norm, facts, topic=topic, source=source)

    def _pending_answer(
        self,
        bank: QuestionBank,
        pending: Question,
        norm: str,
        facts: Sequence[FactHit],
        scores: Mapping[str, float],
    ) -> FactHit | None:
        # The clauses no fact claimed and that name no other question's topic.
        free: list[_Clause] = []
        for clause in _clauses(norm):
            end = clause.start + len(clause.text)
            if any(f.span[0] < end and clause.start < f.span[1] for f in facts):
                continue
            if any(q is not pending and mentions(q, clause.text) for q in bank):
                continue
            free.append(clause)
        if not free:
            return None
        rest = ", ".join(c.text for c in free)
        text = _time_text(rest) if pending.kind is Kind.TIME_WINDOW else rest
        parse = parse_answer(pending, text)
        if parse is None or parse.confidence < self.threshold or _negated_match(text, parse.matched):
            return None
        start, end = free[0].start, free[-1].start + len(free[-1].text)
        return FactHit(pending.key, parse.value, (start, end), round(parse.confidence, 3), parse.matched)

    def _correction(
        self, bank: QuestionBank, norm: str, pending: Question | None, known: Mapping[str, StatedFact]
    ) -> Understanding | None:
        value_text = correction_value(norm)
        if value_text is None:
            return None
        facts = find_facts(bank, value_text, threshold=self.threshold)
        if facts:
            shift = len(norm) - len(norm[norm.find(value_text) :]) if value_text in norm else 0
            moved = tuple(
                FactHit(f.key, f.value, (f.span[0] + shift, f.span[1] + shift), f.confidence, f.matched)
                for f in facts
            )
            return Understanding(CORRECTION, min(f.confidence for f in facts), norm, moved, source="facts")
        # A bare value: the most recently stated fact it can be a value of.
        candidates: list[tuple[datetime, int, Question, Parse]] = []
        for order, question in enumerate(bank):
            if question.kind is Kind.FREE_TEXT:
                continue
            parse = parse_answer(question, value_text)
            if parse is None or parse.confidence < self.threshold:
                continue
            stated = known.get(question.key)
            when = stated.stated_at if stated is not None else datetime.min.replace(tzinfo=None)
            candidates.append((when, -order, question, parse))
        if not candidates:
            return None
        stated_candidates = [c for c in candidates if c[2].key in known]
        if stated_candidates:
            _, _, question, parse = max(stated_candidates, key=lambda c: (_naive(c[0]), c[1]))
        elif pending is not None and any(c[2] is pending for c in candidates):
            question, parse = next((c[2], c[3]) for c in candidates if c[2] is pending)
        elif len(candidates) == 1:
            question, parse = candidates[0][2], candidates[0][3]
        else:
            return None
        start = norm.find(value_text)
        span = (max(start, 0), max(start, 0) + len(value_text))
        hit = FactHit(question.key, parse.value, span, round(parse.confidence, 3), parse.matched)
        return Understanding(CORRECTION, hit.confidence, norm, (hit,), source="facts")


def _negated_match(text: str, matched: str) -> bool:
    """Whether a negator comes before ``matched`` in its clause ("not in the morning")."""
    at = text.find(matched)
    if at <= 0:
        return False
    clause_start = max((m.end() for m in _CLAUSE.finditer(text, 0, at)), default=0)
    return _negated(text[clause_start:at], at - clause_start)


def _naive(when: datetime) -> datetime:
    return when.replace(tzinfo=None)


_lock = threading.Lock()
_cache: dict[tuple[str, tuple[tuple[str, str], ...]], Understander] = {}


def understander(path: str | Path | None = None, taught: Sequence[tuple[str, str]] = ()) -> Understander:
    """The understander for an intents file and taught phrasings, trained once per process."""
    key = (str(Path(path) if path is not None else INTENTS_FILE), tuple(taught))
    with _lock:
        found = _cache.get(key)
    if found is not None:
        return found
    built = Understander(IntentData.load(path), taught)
    with _lock:
        if len(_cache) > 8:
            _cache.clear()
        _cache[key] = built
    return built
