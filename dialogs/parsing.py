"""Answer parsing: sloppy customer text to a stored value, with a confidence the engine can threshold.

Confidence scale: 1.0 exact (a label/synonym as whole words, an option number, a plain number);
~0.95 an elongated word ("yesss"); 0.65-0.95 a typo, from the rapidfuzz ratio ("evnings" 0.9);
0.9 hedged numbers and budget ceilings ("about 5", "under 50"); 0.8 ranges ("3-5 gigs");
<= 0.7 guesses from the topic alone; <= 0.5 when two different answers fit; <= 0.3 out of range.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, TypeVar

from rapidfuzz import fuzz
from rapidfuzz.distance import OSA

from dialogs.bank import Kind, Option, Question, QuestionBank

_T = TypeVar("_T")


def _per_question(build: Callable[[Question], _T]) -> Callable[[Question], _T]:
    """Cache ``build`` per question object (hashing a frozen pydantic model costs more than the work)."""
    cache: dict[int, tuple[Question, _T]] = {}

    def cached(question: Question) -> _T:
        hit = cache.get(id(question))
        if hit is None or hit[0] is not question:
            hit = cache[id(question)] = (question, build(question))
        return hit[1]

    return cached


REMEMBER_TEXT_MAX = 200  # texts up to this long have what is worked out from them remembered
_forgetters: list[Callable[[], None]] = []


def remembered(work: Callable[[str], _T]) -> Callable[[str], _T]:
    """``work`` (a pure function of a text, giving an immutable value) remembered for short texts:
    customers send the same few words again and again ("yes", "evenings", "stop"), and one turn
    looks at its text several ways. Long texts are worked out every time (bounded memory)."""
    cached = lru_cache(maxsize=4096)(work)
    _forgetters.append(cached.cache_clear)

    def call(text: str) -> _T:
        return cached(text) if len(text) <= REMEMBER_TEXT_MAX else work(text)

    call.__doc__ = work.__doc__
    call.__name__ = work.__name__
    return call


def forget_remembered() -> None:
    """Forget everything remembered about texts (a benchmark timing the work itself calls this)."""
    for forget in _forgetters:
        forget()
    _parses.clear()


MAX_CHARS = 500  # only the start of a message is parsed, so a huge message stays cheap
FREE_TEXT_MAX = 500


@dataclass(frozen=True, slots=True)
class Parse:
    """An understood answer: the value to store, how sure we are, and the text it came from."""

    value: Any
    confidence: float
    matched: str


# -- text -----------------------------------------------------------------------------------------

_ASCII = str.maketrans(
    {
        **dict.fromkeys("‘’‚‛′`´", "'"),
        **dict.fromkeys("“”„‟″", '"'),
        **dict.fromkeys("‐‑‒–—―−⁃", "-"),
    }
)
# Control characters (but not the whitespace ones, which separate words) and invisible format
# characters: NUL, bidi overrides, zero-width spaces, the BOM, the soft hyphen.
_INVISIBLE = re.compile(
    r"[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]"
)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")  # half an emoji from a broken client: not storable


@remembered
def normalize(text: str) -> str:
    """NFKC, lowercase, ASCII quotes and dashes, no control characters, single spaces, stripped."""
    text = unicodedata.normalize("NFKC", text).translate(_ASCII).lower()
    return " ".join(_INVISIBLE.sub("", text).split())


@dataclass(frozen=True, slots=True)
class _Token:
    text: str  # apostrophes removed: "don't" -> "dont"
    kind: str  # "num" | "word" | "sym"
    start: int  # span in the normalized text
    end: int


_TOKEN = re.compile(
    r"(?P<num>\d{1,3}(?:,\d{3})+(?![\d,])(?:\.\d+)?|\d+(?:[.,]\d+)?)"
    r"|(?P<word>[^\W\d_]+(?:'[^\W\d_]+)*)"
    r"|(?P<sym>[$€£¥~#/+%-]|[\u2600-\u27bf\U0001f000-\U0001faff])"
)
_LETTER_HYPHEN = re.compile(r"(?<=[^\W\d_])-(?=[^\W\d_])")  # "e-mail", "twenty-two": two words


def _tokens(norm: str) -> list[_Token]:
    spaced = _LETTER_HYPHEN.sub(" ", norm)
    return [
        _Token(m.group().replace("'", ""), m.lastgroup or "", m.start(), m.end())
        for m in _TOKEN.finditer(spaced)
    ]


_REPEAT = re.compile(r"(.)\1+")


def _squeeze(word: str) -> str:
    return _REPEAT.sub(r"\1", word)


@lru_cache(maxsize=64)
def _analyse(text: str) -> tuple[str, tuple[_Token, ...]]:
    """The normalized start of ``text`` and its tokens (cached: one message is parsed many ways)."""
    norm = normalize(text[:MAX_CHARS])
    return norm, tuple(_tokens(norm))


def _span(norm: str, tokens: Sequence[_Token], start: int, end: int) -> str:
    return norm[tokens[start].start : tokens[end - 1].end]


# -- phrase matching --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Phrase:
    value: Any
    words: tuple[str, ...]
    text: str
    squeezed: tuple[str, ...]
    letters: int  # length without spaces


@dataclass(frozen=True, slots=True)
class _Hit:
    value: Any
    start: int  # token indexes, end exclusive
    end: int
    score: float


def _phrases(pairs: Iterable[tuple[Any, str]]) -> tuple[_Phrase, ...]:
    out: dict[tuple[Any, tuple[str, ...]], _Phrase] = {}
    for value, phrase in pairs:
        words = tuple(t.text for t in _tokens(normalize(phrase)))
        if words:
            squeezed = tuple(_squeeze(w) for w in words)
            text = " ".join(words)
            out.setdefault((value, words), _Phrase(value, words, text, squeezed, len(text) - text.count(" ")))
    return tuple(out.values())


def _hits(tokens: Sequence[_Token], phrases: Sequence[_Phrase], *, tiny: int = 2) -> list[_Hit]:
    """Every place a phrase occurs: exactly (1.0), elongated ("yesss", 0.95) or with a typo.

    Phrases of at most ``tiny`` characters ("am", "me") only count in messages of up to three
    words, where they are the answer rather than an ordinary word of a sentence.
    """
    words = [t.text for t in tokens]
    squeezed = [_squeeze(w) for w in words]
    n = len(words)
    starts: dict[str, list[int]] = {}
    for i, (word, short) in enumerate(zip(words, squeezed, strict=True)):
        starts.setdefault(word, []).append(i)
        if short != word:
            starts.setdefault(short, []).append(i)
    first_letters = {w[0] for w in words if w}
    windows: dict[int, dict[str, list[tuple[int, str]]]] = {}
    hits: list[_Hit] = []
    for p in phrases:
        k = len(p.words)
        if len(p.text) <= tiny and n > 3:
            continue
        target = p.squeezed
        if p.words[0] in starts or target[0] in starts:
            for i in sorted({*starts.get(p.words[0], ()), *starts.get(target[0], ())}):
                if tuple(words[i : i + k]) == p.words:
                    hits.append(_Hit(p.value, i, i + k, 1.0))
                elif tuple(squeezed[i : i + k]) == target:
                    hits.append(_Hit(p.value, i, i + k, 0.95))
        if p.letters < 5 or p.text[0] not in first_letters:
            continue  # short words are too easily confused with other short words
        for size in range(max(1, k - 1), k + 2):
            if size not in windows:
                by_letter: dict[str, list[tuple[int, str]]] = {}
                for i in range(n - size + 1):
                    window = " ".join(words[i : i + size])
                    by_letter.setdefault(window[0], []).append((i, window))
                windows[size] = by_letter
            # Same first letter only: "night" must not match "right", and typos rarely hit it.
            for i, window in windows[size].get(p.text[0], ()):
                if window != p.text and abs(len(window) - len(p.text)) <= len(p.text) // 3 + 1:
                    ratio = fuzz.ratio(window, p.text, score_cutoff=75)
                    if ratio:
                        hits.append(_Hit(p.value, i, i + size, round((ratio / 100) ** 1.5, 3)))
    return hits


_NEGATORS = frozenset({"not", "no", "never", "dont", "except", "without"})


def _select(hits: list[_Hit], tokens: Sequence[_Token], norm: str, *, negation: bool) -> list[_Hit]:
    """The best non-overlapping hits, best (then longest) first; "no telegram" drops telegram."""
    chosen: list[_Hit] = []
    for hit in sorted(hits, key=lambda h: (-h.score, h.start - h.end, h.start)):
        if any(hit.start < c.end and c.start < hit.end for c in chosen):
            continue
        if negation and hit.start > 0:
            before = tokens[hit.start - 1]
            if before.text in _NEGATORS and not norm[before.end : tokens[hit.start].start].strip():
                continue
        chosen.append(hit)
    return chosen


def _decide(chosen: list[_Hit]) -> tuple[_Hit, float] | None:
    """The best hit; its confidence drops to 0.5 when another value was named too."""
    if not chosen:
        return None
    best = chosen[0]
    ambiguous = any(h.value != best.value for h in chosen)
    return best, min(best.score, 0.5) if ambiguous else best.score


@_per_question
def _option_phrases(question: Question) -> tuple[_Phrase, ...]:
    pairs: list[tuple[Any, str]] = []
    for index, option in enumerate(question.options):
        pairs.append((index, option.label))
        if isinstance(option.value, str):
            pairs.append((index, option.value.replace("_", " ")))
        pairs.extend((index, s) for s in option.synonyms)
    return _phrases(pairs)


def _option_hits(question: Question, norm: str, tokens: Sequence[_Token]) -> list[_Hit]:
    return _select(_hits(tokens, _option_phrases(question)), tokens, norm, negation=True)


_CODE = re.compile(
    r"\b(?:select|drop|delete|insert|update|union|alter|truncate)\b.{0,40}?"
    r"\b(?:from|table|into|set|where|select|database)\b|<\s*/?\s*[a-z][^>]*>|\$[({]|;\s*--"
)  # SQL, markup or shell: text that looks like code is never a confident answer
_OPTION_NUMBER = re.compile(r"(?:option|choice|number|no\.?|#)?\s*#?\s*(\d{1,2})\s*[.)]?")


@remembered
def looks_like_code(text: str) -> bool:
    """Whether ``text`` looks like SQL, markup or shell rather than something a customer means."""
    return _CODE.search(normalize(text[:MAX_CHARS])) is not None


def _option_number(question: Question, norm: str) -> Option | None:
    m = _OPTION_NUMBER.fullmatch(norm)
    if m and 1 <= int(m.group(1)) <= len(question.options):
        return question.options[int(m.group(1)) - 1]
    return None


# -- public API -------------------------------------------------------------------------------------


_PARSED_MAX = 1024  # remembered parses per question (the memory starts again when full)


# Per question object: (the question, its remembered parses by text).
_parses: dict[int, tuple[Question, dict[str, Parse | None]]] = {}


def _parsed(question: Question) -> dict[str, Parse | None]:
    hit = _parses.get(id(question))
    if hit is None or hit[0] is not question:
        if len(_parses) >= 64:  # banks rebuilt after teaching leave their old questions behind
            _parses.clear()
        hit = _parses[id(question)] = (question, {})
    return hit[1]


def parse_answer(question: Question, text: str) -> Parse | None:
    """Understand ``text`` as an answer to ``question``; None when nothing in it could be one.

    Parsing is a pure function of the question and the text, and customers give the same short
    answers over and over ("yes", "evenings", "$40"): parses of short texts are remembered per
    question object.
    """
    if len(text) > REMEMBER_TEXT_MAX:
        return _parse_answer(question, text)
    cache = _parsed(question)
    try:
        parse = cache[text]
    except KeyError:
        parse = _parse_answer(question, text)
        if len(cache) >= _PARSED_MAX:
            cache.clear()
        cache[text] = parse
    if parse is not None and isinstance(parse.value, dict):  # a time window: the caller's own copy
        return Parse(dict(parse.value), parse.confidence, parse.matched)
    return parse


def _parse_answer(question: Question, text: str) -> Parse | None:
    if question.kind is Kind.FREE_TEXT:
        return _free_text(text)
    norm, tokens = _analyse(text)
    if not norm:
        return None
    if question.kind is Kind.CHOICE:
        parse = _choice(question, norm, tokens)
    elif question.kind is Kind.TIME_WINDOW:
        parse = _time_window(question, norm, tokens)
    elif question.kind is Kind.YES_NO:
        parse = _yes_no(norm, tokens) or _yes_no_by_topic(question, norm, tokens)
    else:
        parse = _amount(question, norm, tokens)
    if parse is not None and _CODE.search(norm):
        # "'; DROP TABLE message; --" names an option ("message") but is nobody's answer.
        return Parse(parse.value, min(parse.confidence, 0.3), parse.matched)
    return parse


def parse_yes_no(text: str) -> Parse | None:
    """Understand ``text`` as yes (True) or no (False); None when it is neither."""
    norm, tokens = _analyse(text)
    return _yes_no(norm, tokens) if norm else None


def mentions(question: Question, text: str) -> bool:
    """Whether ``text`` names the topic of ``question`` (whole words, a typo allowed in long words)."""
    words = [t.text for t in _analyse(text)[1]]
    by_letter = _topics_by_letter(question)
    for i, word in enumerate(words):
        # Every match shares its first letter with the topic's first word (see _same_word).
        for topic in by_letter.get(word[:1], ()):
            k = len(topic)
            if i + k <= len(words) and all(
                _same_word(w, t) for w, t in zip(words[i : i + k], topic, strict=True)
            ):
                return True
    return False


@_per_question
def _topics_by_letter(question: Question) -> dict[str, list[tuple[str, ...]]]:
    index: dict[str, list[tuple[str, ...]]] = {}
    for topic in _topic_words(question):
        index.setdefault(topic[0][:1], []).append(topic)
    return index


def find_question(bank: QuestionBank, topic: str) -> Question | None:
    """The question a customer's topic phrase ("budget", "contact time", "top ups") refers to."""
    phrase = " ".join(t.text for t in _tokens(normalize(topic[:100])) if t.kind != "sym")
    if not phrase:
        return None
    scored: list[tuple[float, int, Question]] = []
    for order, question in enumerate(bank):
        names = [question.key.replace("_", " "), normalize(question.name)]
        names += [" ".join(w) for w in _topic_words(question)]
        score = max(max(fuzz.ratio(phrase, n), min(fuzz.token_set_ratio(phrase, n), 95.0)) for n in names)
        if len(phrase) >= 4:
            score = max(score, 0.85 * fuzz.partial_ratio(phrase, normalize(question.text)))
        scored.append((score, -order, question))
    scored.sort(key=lambda s: (s[0], s[1]), reverse=True)
    best = scored[0]
    if best[0] < 80 or (len(scored) > 1 and scored[1][0] >= best[0] - 1 and best[0] < 100):
        return None  # nothing close, or two questions fit equally ("contact")
    return best[2]


def format_value(question: Question, value: Any) -> str:
    """How the bot says a stored value: "text message", "$40.00", "5 GB", "between 18:00 and 20:00"."""
    kind = question.kind
    if kind is Kind.YES_NO:
        return ("yes" if value else "no") if isinstance(value, bool) else str(value)
    if kind in (Kind.CHOICE, Kind.TIME_WINDOW):
        if isinstance(value, dict):
            option = question.option(value.get("window"))
            if option is None or value.get("window") == "custom":
                return f"between {value.get('start')} and {value.get('end')}"
            return option.label
        option = question.option(value)
        return option.label if option else str(value)
    if kind is Kind.MONEY:
        try:
            return f"${Decimal(str(value)).quantize(_CENT, ROUND_HALF_UP):,}"
        except (InvalidOperation, ValueError):
            return str(value)
    if kind is Kind.NUMBER and isinstance(value, int | float) and not isinstance(value, bool):
        number = format(Decimal(str(value)).normalize(), "f")
        unit = question.unit or ""
        if value == 1 and unit.endswith("s") and not unit.isupper():
            unit = unit[:-1]  # "1 line"
        return f"{number} {unit}".strip()
    return str(value)


# -- topics -----------------------------------------------------------------------------------------


@_per_question
def _topic_words(question: Question) -> tuple[tuple[str, ...], ...]:
    return tuple(p.words for p in _phrases((None, t) for t in question.topics))


def _same_word(word: str, topic: str) -> bool:
    if word == topic or word == topic + "s" or topic == word + "s":  # "top-ups", "line"
        return True
    # A one-letter typo in a long word ("budegt"), never in the first letter ("sage" is not "usage").
    return (
        len(topic) >= 5
        and len(word) >= 4
        and word[0] == topic[0]
        and OSA.distance(word, topic, score_cutoff=1) <= 1
    )


# -- choices ------------------------------------------------------------------------------------------


def _choice(question: Question, norm: str, tokens: Sequence[_Token]) -> Parse | None:
    option = _option_number(question, norm)
    if option is not None:
        return Parse(option.value, 1.0, norm)
    decided = _decide(_option_hits(question, norm, tokens))
    if decided is None:
        return None
    hit, confidence = decided
    return Parse(question.options[hit.value].value, confidence, _span(norm, tokens, hit.start, hit.end))


# -- time windows ---------------------------------------------------------------------------------


def _clock_pattern(n: int) -> str:
    return (
        rf"(?:(?<!\d)(?P<h{n}>\d{{1,2}})(?::(?P<m{n}>[0-5]\d))?(?!\d)"
        rf"(?:\s*(?P<ap{n}>[ap])\.?m\b\.?)?|(?P<w{n}>noon|midday|midnight))"
    )


_T1, _T2 = _clock_pattern(1), _clock_pattern(2)
_BETWEEN = re.compile(rf"\bbetween\s+{_T1}\s+and\s+{_T2}")
_SPAN = re.compile(rf"(?:\bfrom\s+)?{_T1}\s*(?:-|\bto\b|\btill?\b|\buntil\b)\s*{_T2}")
_AFTER = re.compile(rf"\b(?:after|from|since|past)\s+{_T1}")
_BEFORE = re.compile(rf"\b(?:before|until|till?|by)\s+{_T1}")
_AROUND = re.compile(rf"(?:\b(?:around|about|round)\s+|~\s*){_T1}")
_AT = re.compile(rf"(?:\bat\s+{_T1}|(?<!\d)(?P<h2>\d{{1,2}})(?::(?P<m2>[0-5]\d))?\s*(?P<ap2>[ap])\.?m\b)")


@dataclass(frozen=True, slots=True)
class _Clock:
    minutes: int
    meridiem: str | None  # "a" | "p" | None
    explicit: bool  # am/pm, a 24-hour time or a word like noon


def _clock(m: re.Match[str], n: int) -> _Clock | None:
    groups = m.groupdict()
    if word := groups.get(f"w{n}"):
        return _Clock(1439 if word == "midnight" else 720, None, True)
    if groups.get(f"h{n}") is None:
        return None
    hour, minute, ap = int(m.group(f"h{n}")), int(m.group(f"m{n}") or 0), m.group(f"ap{n}")
    if ap:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if ap == "p" else 0)
    elif hour > 23:
        return None
    return _Clock(hour * 60 + minute, ap, bool(ap) or hour >= 13 or m.group(f"m{n}") is not None)


def _guess_pm(clock: _Clock) -> int:
    # Without am/pm, 1-7 means the afternoon or evening: nobody is contacted at 6 in the morning.
    if clock.meridiem is None and clock.minutes < 8 * 60 and clock.minutes >= 60:
        return clock.minutes + 12 * 60
    return clock.minutes


def _explicit_window(norm: str) -> tuple[int, int, float, str] | None:
    """(start, end, confidence, matched) from times in the text, or None; end may be unknown (-1)."""
    for pattern in (_BETWEEN, _SPAN):
        m = pattern.search(norm)
        if m is None:
            continue
        a, b = _clock(m, 1), _clock(m, 2)
        if a is None or b is None:
            continue
        end = _guess_pm(b)
        if a.meridiem is None and b.meridiem is not None and a.minutes < 12 * 60:
            # "6-8pm": the first time shares the second's am/pm, unless that puts it after the end.
            shared = a.minutes + (12 * 60 if b.meridiem == "p" else 0)
            start = shared if shared < end else a.minutes
        else:
            start = _guess_pm(a)
        if b.meridiem is None and end <= start and end < 12 * 60:
            end += 12 * 60
        return start, end, 1.0 if a.explicit or b.explicit else 0.9, m.group().strip()
    for pattern, shape in ((_AFTER, "after"), (_BEFORE, "before"), (_AROUND, "around"), (_AT, "at")):
        m = pattern.search(norm)
        clock = (_clock(m, 1) or _clock(m, 2)) if m else None
        if m is None or clock is None:
            continue
        t = _guess_pm(clock)
        confidence = 1.0 if clock.explicit else 0.9
        if shape == "after":
            return t, -1, confidence, m.group().strip()
        if shape == "before":
            return -1, t, confidence, m.group().strip()
        if shape == "around":
            return t - 60, t + 60, 0.8, m.group().strip()
        return t, t + 60, confidence, m.group().strip()
    return None


def _hhmm(minutes: int) -> str:
    minutes = max(0, min(minutes, 1439))
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def _minutes(hhmm: str | None) -> int:
    hours, _, mins = (hhmm or "00:00").partition(":")
    return int(hours) * 60 + int(mins)


def _window_value(option: Option) -> dict[str, str]:
    return {"window": str(option.value), "start": option.start or "", "end": option.end or ""}


def _time_window(question: Question, norm: str, tokens: Sequence[_Token]) -> Parse | None:
    option = _option_number(question, norm)
    if option is not None:
        return Parse(_window_value(option), 1.0, norm)
    explicit = _explicit_window(norm)
    if explicit is None:
        decided = _decide(_option_hits(question, norm, tokens))
        if decided is None:
            return None
        hit, confidence = decided
        option = question.options[hit.value]
        return Parse(_window_value(option), confidence, _span(norm, tokens, hit.start, hit.end))
    start, end, confidence, matched = explicit
    earliest = min(_minutes(o.start) for o in question.options)
    latest = max(_minutes(o.end) for o in question.options)
    if start < 0:  # "before 10am"
        start = earliest if end > earliest else end - 60
    if end < 0:  # "after 6pm"
        end = latest if start < latest else start + 60
    inside = max(start, earliest), min(end, latest)
    if end <= start or inside[0] >= inside[1]:
        confidence = 0.3  # backwards, or entirely outside the hours we ever contact anyone
    elif inside != (start, end):
        start, end = inside  # partly outside: keep the part inside
        confidence = min(confidence, 0.8)
    window = next(
        (o for o in question.options if (_minutes(o.start), _minutes(o.end)) == (start, end)),
        None,
    )
    value = {"window": str(window.value) if window else "custom", "start": _hhmm(start), "end": _hhmm(end)}
    return Parse(value, confidence, matched)


# -- yes / no -------------------------------------------------------------------------------------

_YES = (
    "yes", "y", "ya", "yah", "yeah", "yea", "yep", "yup", "yas", "sure", "ok", "okay", "okey", "k", "kk",
    "of course", "ofc", "definitely", "absolutely", "certainly", "please do", "yes please", "please",
    "correct", "right", "thats right", "true", "indeed", "totally", "affirmative", "aye", "alright",
    "all right", "i do", "i would", "i will", "yes i do", "do it", "go ahead", "go for it", "sounds good",
    "why not", "no problem", "no worries", "for sure", "of course i do", "you bet", "i think so",
    "si", "oui", "ja", "👍", "👌", "✅", "✔", "🆗", "💯",
)  # fmt: skip
_NO = (
    "no", "n", "nope", "nah", "naw", "nay", "never", "not", "not really", "no thanks", "no thank you",
    "no way", "not at all", "of course not", "definitely not", "absolutely not", "certainly not",
    "i dont", "i do not", "dont", "do not", "please dont", "i would not", "i wouldnt", "i wont",
    "wont", "false", "negative", "rather not", "id rather not", "no need", "not interested", "hardly ever",
    "nein", "👎", "❌", "✖", "🚫",
)  # fmt: skip
# Phrases that contain a yes/no word but are neither ("not sure"): matched only to block the word.
_NEITHER = ("i dont know", "dont know", "not sure", "no idea", "dont care", "i dont mind", "not yet sure")
_YES_NO_PHRASES = _phrases(
    [*((True, p) for p in _YES), *((False, p) for p in _NO), *((None, p) for p in _NEITHER)]
)


def _yes_no(norm: str, tokens: Sequence[_Token]) -> Parse | None:
    chosen = _select(_hits(tokens, _YES_NO_PHRASES, tiny=1), tokens, norm, negation=False)
    decided = _decide([h for h in chosen if h.value is not None])
    if decided is None:
        return None
    hit, confidence = decided
    return Parse(hit.value, confidence, _span(norm, tokens, hit.start, hit.end))


_DOUBT = frozenset({"not", "never", "dont", "doesnt", "rarely", "hardly", "seldom", "no"})


def _yes_no_by_topic(question: Question, norm: str, tokens: Sequence[_Token]) -> Parse | None:
    # "I travel to Spain every summer" says yes without saying "yes": a guess, below the threshold.
    if not mentions(question, norm):
        return None
    if any(t.text in _DOUBT for t in tokens):
        return Parse(False, 0.6, norm)
    return Parse(True, 0.7, norm)


# -- numbers and money --------------------------------------------------------------------------------

_CENT = Decimal("0.01")
_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
    "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
)  # fmt: skip
_SMALL = {w: i for i, w in enumerate(_ONES)} | {"none": 0, "nothing": 0, "nil": 0, "dozen": 12}
_TENS = {w: 10 * i for i, w in enumerate(("twenty", "thirty", "forty", "fifty"), start=2)} | {
    w: 10 * i for i, w in enumerate(("sixty", "seventy", "eighty", "ninety"), start=6)
}
_VAGUE = {"couple": (2, 0.8), "few": (3, 0.7), "several": (4, 0.6)}
_SCALES = {"hundred": Decimal(100), "thousand": Decimal(1000), "k": Decimal(1000), "grand": Decimal(1000)}
_SCALES_WORDS = {"hundred", "thousand", "million", "dozen", "couple", "few", "half"}
_DATA_UNITS = {
    **dict.fromkeys(("gb", "gig", "gigs", "gigabyte", "gigabytes", "g", "gbs"), Decimal(1)),
    **dict.fromkeys(("mb", "meg", "megs", "megabyte", "megabytes", "mbs"), Decimal("0.001")),
    **dict.fromkeys(("tb", "terabyte", "terabytes", "tbs"), Decimal(1000)),
}
_CURRENCY_SYMBOLS = frozenset("$€£¥")
_CURRENCY_WORDS = frozenset(
    (
        "usd",
        "us",
        "eur",
        "gbp",
        "dollar",
        "dollars",
        "bucks",
        "buck",
        "euro",
        "euros",
        "pound",
        "pounds",
        "quid",
    )
)
_HEDGES = frozenset(
    ("about", "around", "approximately", "approx", "roughly", "maybe", "probably", "perhaps", "like", "ish",
     "abt", "circa", "guess", "think", "estimate", "somewhere", "something", "~")
)  # fmt: skip
_UPPER_BEFORE = (
    "under", "below", "less than", "max", "maximum", "up to", "upto", "no more than", "not more than",
    "at most", "within", "lower than", "cheaper than", "not over", "no more then", "less then",
)  # fmt: skip
_LOWER_BEFORE = ("over", "above", "more than", "at least", "minimum", "min", "upwards of", "greater than")
_UPPER_AFTER = ("max", "tops", "or less", "at most", "maximum", "or under", "at the most")
_LOWER_AFTER = ("or more", "plus", "+", "at least", "minimum", "or above", "or over")


@dataclass(frozen=True, slots=True)
class _Num:
    value: Decimal
    start: int  # token indexes, end exclusive (past any unit)
    end: int
    confidence: float
    unit: Decimal | None = None  # data unit, in GB
    marker: str | None = None  # "money", "data" or "unit": what the number is said to be


def _word_number(words: Sequence[str], i: int) -> tuple[Decimal, int, float] | None:
    """A number in words from ``words[i]`` ("twenty two", "a hundred", "one and a half")."""
    total = current = Decimal(0)
    confidence, j, seen = 1.0, i, False
    while j < len(words):
        w, nxt = words[j], words[j + 1] if j + 1 < len(words) else ""
        if w in _SMALL:
            current += _SMALL[w]
        elif w in _TENS:
            current += _TENS[w]
        elif w in _VAGUE:
            current += _VAGUE[w][0]
            confidence = min(confidence, _VAGUE[w][1])
        elif w == "half":
            current += Decimal("0.5")
        elif w == "hundred":
            current = (current or Decimal(1)) * 100
        elif w in ("thousand", "million"):
            total += (current or Decimal(1)) * (1000 if w == "thousand" else 1_000_000)
            current = Decimal(0)
        elif (w in ("a", "an") and nxt in _SCALES_WORDS) or (
            w == "and" and seen and (nxt in _SMALL or nxt in _TENS or nxt in ("a", "half"))
        ):
            j += 1  # "a hundred", "one and a half"
            continue
        else:
            break
        seen = True
        j += 1
        if total + current > 10**12:
            return None
    return (total + current, j, confidence) if seen else None


def _numbers(question: Question, tokens: Sequence[_Token]) -> list[_Num]:
    words = [t.text for t in tokens]
    unit_words = {u, u.rstrip("s")} if (u := (question.unit or "").lower()) else set()
    found: list[_Num] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.kind == "num":
            if len(token.text) > 15:
                i += 1
                continue
            # "1,200" is twelve hundred, "1,5" is one and a half.
            thousands = re.fullmatch(r"\d{1,3}(,\d{3})+(\.\d+)?", token.text)
            digits = token.text.replace(",", "") if thousands else token.text.replace(",", ".")
            value, end, confidence = Decimal(digits), i + 1, 1.0
            if end < len(tokens) and words[end] in _SCALES:
                value, end = value * _SCALES[words[end]], end + 1
        elif token.kind == "word" and (parsed := _word_number(words, i)) is not None:
            value, end, confidence = parsed
        else:
            i += 1
            continue
        start, unit, marker = i, None, None
        if start > 0 and (words[start - 1] in _CURRENCY_SYMBOLS or words[start - 1] in _CURRENCY_WORDS):
            start, marker = start - 1, "money"
        if end < len(tokens):
            after = words[end]
            if after in _DATA_UNITS:
                unit, marker, end = _DATA_UNITS[after], "data", end + 1
            elif after in _CURRENCY_SYMBOLS or after in _CURRENCY_WORDS:
                marker, end = "money", end + 1
            elif after in unit_words:
                marker, end = "unit", end + 1
        found.append(_Num(value, start, end, confidence, unit, marker))
        i = end
    return found


def _is_range(a: _Num, b: _Num, words: Sequence[str]) -> bool:
    between = [w for w in words[a.end : b.start] if w not in _CURRENCY_SYMBOLS]
    if between == ["and"]:
        return a.start > 0 and words[a.start - 1] == "between"
    return between in (["-"], ["to"], ["or"], ["till"], ["until"])


def _ends_with(words: Sequence[str], phrases: Iterable[str]) -> bool:
    text = " " + " ".join(words)
    return any(text.endswith(" " + p) for p in phrases)


def _starts_with(words: Sequence[str], phrases: Iterable[str]) -> bool:
    text = " ".join(words) + " "
    return any(text.startswith(p + " ") for p in phrases)


def _amount(question: Question, norm: str, tokens: Sequence[_Token]) -> Parse | None:
    """A number or money answer: numerals, words, units, ranges, hedges, limits and options."""
    money = question.kind is Kind.MONEY
    words = [t.text for t in tokens]
    target_unit = _DATA_UNITS.get((question.unit or "").lower())
    # "$40" is no answer to how much data, nor "5 gigs" to a budget.
    wanted = "money" if money else "data" if target_unit else "unit"
    nums = [n for n in _numbers(question, tokens) if n.marker in (None, wanted)]
    # Candidates: (value, confidence, first token, end token, marked)
    candidates: list[tuple[Decimal, float, int, int, bool]] = []
    i = 0
    while i < len(nums):
        a = nums[i]
        if i + 1 < len(nums) and _is_range(a, nums[i + 1], words):
            b = nums[i + 1]
            lo, hi = _in_unit(a, target_unit, b.unit), _in_unit(b, target_unit, a.unit)
            value = hi if money else (lo + hi) / 2  # a budget range means "up to the top of it"
            candidates.append(
                (value, min(a.confidence, b.confidence, 0.8), a.start, b.end, bool(a.marker or b.marker))
            )
            i += 2
            continue
        candidates.append(
            (_in_unit(a, target_unit, None), a.confidence, a.start, a.end, a.marker is not None)
        )
        i += 1
    for hit in _option_hits(question, norm, tokens):
        value = Decimal(str(question.options[hit.value].value))
        candidates.append((value, hit.score, hit.start, hit.end, False))
    if not candidates:
        return None
    candidates.sort(key=lambda c: c[2])
    if len({c[0] for c in candidates}) == 1:
        value, confidence, start, end, _ = max(candidates, key=lambda c: c[1])
    else:
        marked = [c for c in candidates if c[4]]
        value, confidence, start, end, _ = marked[0] if len(marked) == 1 else candidates[0]
        confidence = min(confidence, 0.9 if len(marked) == 1 else 0.5)
    before = [w for w in words[max(0, start - 4) : start] if w not in _CURRENCY_SYMBOLS]
    after = words[end : end + 3]
    if _ends_with(before, _UPPER_BEFORE) or _starts_with(after, _UPPER_AFTER):
        confidence = min(confidence, 0.9 if money else 0.8)
    elif _ends_with(before, _LOWER_BEFORE) or _starts_with(after, _LOWER_AFTER):
        confidence = min(confidence, 0.7)
    if _HEDGES.intersection(words) or "or so" in norm or "give or take" in norm:
        confidence = min(confidence, 0.9)
    low = question.minimum if question.minimum is not None else float("-inf")
    high = question.maximum if question.maximum is not None else float("inf")
    if not low <= float(value) <= high:
        confidence = min(confidence, 0.3)
    matched = _span(norm, tokens, start, end)
    if money:
        try:
            return Parse(f"{value.quantize(_CENT, ROUND_HALF_UP):f}", confidence, matched)
        except InvalidOperation:
            return None
    value = value.quantize(Decimal("0.001"), ROUND_HALF_UP).normalize()
    return Parse(int(value) if value == value.to_integral_value() else float(value), confidence, matched)


def _in_unit(num: _Num, target: Decimal | None, fallback: Decimal | None) -> Decimal:
    """``num`` in the question's data unit ("500 MB" is 0.5 when the question asks in GB)."""
    unit = num.unit or fallback
    if target is None or unit is None:
        return num.value
    return num.value * unit / target


# -- free text ------------------------------------------------------------------------------------


def _free_text(text: str) -> Parse | None:
    clean = _SURROGATE.sub("\ufffd", _CONTROL.sub("", text)).strip()[:FREE_TEXT_MAX].rstrip()
    if not normalize(clean):
        return None
    if clean.endswith("?"):
        confidence = 0.4  # a question back to us, not an answer
    elif not any(ch.isalnum() for ch in clean):
        confidence = 0.6
    else:
        confidence = 1.0
    return Parse(clean, confidence, clean)
