"""The SMS segment counter, checked on known cases and against the gsm0338 codec."""

from __future__ import annotations

from decimal import Decimal

import gsm0338  # noqa: F401  (registers the "gsm03.38" codec)
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dialogs.sms_segments import GSM_BASIC, GSM_EXTENDED, MAX_CHARS, count, estimate, fit, to_gsm

CASES = [
    ("", "GSM-7", 0, 0),
    ("Hello there!", "GSM-7", 12, 1),
    ("a" * 160, "GSM-7", 160, 1),
    ("a" * 161, "GSM-7", 161, 2),
    ("a" * 306, "GSM-7", 306, 2),
    ("a" * 307, "GSM-7", 307, 3),
    ("€" * 80, "GSM-7", 160, 1),  # extension characters take two septets
    ("€" * 81, "GSM-7", 162, 2),
    ("a" * 152 + "{" + "a" * 10, "GSM-7", 164, 2),  # an escape pair never straddles two parts
    ("a" * 152 + "^" + "a" * 152, "GSM-7", 306, 3),
    ("^{}[]~\\|€", "GSM-7", 18, 1),
    ("Ça coûte 5 €", "UCS-2", 12, 1),  # û is not GSM-7
    ("Thanks 😀", "UCS-2", 9, 1),  # an emoji is two UTF-16 units
    ("你" * 70, "UCS-2", 70, 1),
    ("你" * 71, "UCS-2", 71, 2),
    ("你" * 134, "UCS-2", 134, 2),
    ("你" * 135, "UCS-2", 135, 3),
    ("a" * 66 + "😀" + "a" * 10, "UCS-2", 78, 2),  # a surrogate pair never straddles two parts
    ("Straße, ΔΣΩ, Øre, ¿qué?", "GSM-7", 23, 1),
]


@pytest.mark.parametrize(("text", "encoding", "units", "segments"), CASES)
def test_known_texts(text: str, encoding: str, units: int, segments: int) -> None:
    assert tuple(count(text)) == (encoding, units, segments)


def test_look_alikes_become_gsm() -> None:
    text = "It\u2019s \u201cgreat\u201d \u2014 really\u2026\u00a0ok \u2013 \u2018yes\u2019"
    assert count(text).encoding == "UCS-2"
    assert to_gsm(text) == "It's \"great\" - really... ok - 'yes'"
    assert count(to_gsm(text)).encoding == "GSM-7"
    assert to_gsm("Ça coûte 5 €, 😀") == "Ça coûte 5 €, 😀"  # real letters and emoji are kept


def test_estimate_prices_segments() -> None:
    assert estimate("a" * 161, Decimal("0.0079")) == ("GSM-7", 2, Decimal("0.0158"))
    assert estimate("It\u2019s ok", Decimal("0.01")) == ("GSM-7", 1, Decimal("0.01"))
    assert estimate("你好", Decimal("0.01")).encoding == "UCS-2"


def test_nothing_over_1600_characters_is_sent() -> None:
    long = "word " * 500
    out = fit(long)
    assert len(out) <= MAX_CHARS and out.endswith("word...")
    assert fit("a  b\u2019s") == "a b's"


ALPHABET = st.sampled_from([*sorted(GSM_BASIC | GSM_EXTENDED), "é", "û", "ç", "😀", "你", "’", "\t"])


@given(st.text(alphabet=ALPHABET, max_size=400) | st.text(max_size=200))
def test_encoding_and_length_agree_with_the_gsm0338_codec(text: str) -> None:
    result = count(text)
    try:
        septets = len(text.encode("gsm03.38"))
    except UnicodeEncodeError:
        septets = None
    if "\x1b" in text:  # the codec passes the escape character itself through; we never send it
        return
    if septets is None:
        assert result.encoding == "UCS-2"
        assert result.units == len(text.encode("utf-16-le")) // 2
    else:
        assert (result.encoding, result.units) == ("GSM-7", septets)
    single, part = (160, 153) if result.encoding == "GSM-7" else (70, 67)
    if result.units <= single:
        assert result.segments == (1 if text else 0)
    else:
        # At least the plain division; at most one more part per part (never-split pairs).
        plain = -(-result.units // part)
        assert plain <= result.segments <= plain + result.units // part
