"""SMS encoding and segments: what a text costs to send, and how to keep it cheap.

An SMS is GSM-7 when every character is in the GSM 03.38 alphabet (the extension characters
``^ { } [ ] ~ \\ | €`` and form feed take two septets each), otherwise UCS-2 (UTF-16 code units,
so an emoji counts two). One segment holds 160 septets or 70 UCS-2 units; a longer message is sent
in parts of 153 septets or 67 units (the rest is the concatenation header). A part never ends in
the middle of an escape pair or a surrogate pair, so a few texts need one more part than a plain
division says.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Literal, NamedTuple

Encoding = Literal["GSM-7", "UCS-2"]

MAX_CHARS = 1600  # Twilio refuses longer bodies
GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENDED = frozenset("^{}[]~\\|€\f")

_SINGLE = {"GSM-7": 160, "UCS-2": 70}
_PART = {"GSM-7": 153, "UCS-2": 67}

# Look-alikes that would force UCS-2 (and so halve what one segment holds) for no visible gain.
_LOOKALIKES = str.maketrans(
    {
        **dict.fromkeys("‘’‚‛′`´", "'"),
        **dict.fromkeys("“”„‟″«»", '"'),
        **dict.fromkeys("‐‑‒–—―−", "-"),
        **dict.fromkeys("\u00a0\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
                        "\u202f\u205f\u3000\t", " "),
        **dict.fromkeys("\u200b\u200c\u200d\u2060\ufeff\u00ad", ""),
        "…": "...",
        "•": "-",
        "·": "-",
        "‹": "<",
        "›": ">",
        "×": "x",
    }
)  # fmt: skip


class Segments(NamedTuple):
    """How a text travels: its encoding, its length in septets or UTF-16 units, its parts."""

    encoding: Encoding
    units: int
    segments: int


class Estimate(NamedTuple):
    """What a broadcast of one text costs per recipient."""

    encoding: Encoding
    segments: int
    cost: Decimal


def is_gsm(text: str) -> bool:
    """True when every character of ``text`` is in the GSM 03.38 alphabet (with extensions)."""
    return all(c in GSM_BASIC or c in GSM_EXTENDED for c in text)


def _widths(text: str, encoding: Encoding) -> list[int]:
    if encoding == "GSM-7":
        return [2 if c in GSM_EXTENDED else 1 for c in text]
    return [2 if ord(c) > 0xFFFF else 1 for c in text]


def count(text: str) -> Segments:
    """The encoding, length and number of segments of ``text`` (0 segments for an empty text)."""
    encoding: Encoding = "GSM-7" if is_gsm(text) else "UCS-2"
    widths = _widths(text, encoding)
    units = sum(widths)
    if units <= _SINGLE[encoding]:
        return Segments(encoding, units, 1 if units else 0)
    part, parts, used = _PART[encoding], 1, 0
    for width in widths:  # a character never straddles two parts
        if used + width > part:
            parts, used = parts + 1, 0
        used += width
    return Segments(encoding, units, parts)


def to_gsm(text: str) -> str:
    """``text`` with look-alike characters (curly quotes, long dashes, odd spaces, ellipsis...)
    replaced by their GSM-7 equivalents. Other characters (accents, emoji) are kept."""
    return text.translate(_LOOKALIKES)


def estimate(text: str, price_per_segment: Decimal) -> Estimate:
    """Encoding, segments and cost of sending ``text`` (after look-alike replacement) once."""
    seg = count(to_gsm(text))
    return Estimate(seg.encoding, seg.segments, seg.segments * price_per_segment)


_SPACES = re.compile(r"[ ]{2,}")


def fit(text: str) -> str:
    """``text`` made ready to send: look-alikes replaced, runs of spaces squeezed, and cut at a
    word boundary (with "...") when longer than :data:`MAX_CHARS`.

    A text still over the segment budget is sent as one (concatenated) message rather than split:
    the outbox tracks one provider message per row, and parts sent as separate messages can arrive
    out of order. The sender logs such texts so their wording can be shortened.
    """
    out = _SPACES.sub(" ", to_gsm(text)).strip()
    if len(out) <= MAX_CHARS:
        return out
    cut = out[: MAX_CHARS - 3]
    space = cut.rfind(" ")
    if space > MAX_CHARS // 2:
        cut = cut[:space]
    return cut.rstrip() + "..."
